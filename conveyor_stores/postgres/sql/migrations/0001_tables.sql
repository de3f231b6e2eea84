CREATE SEQUENCE @S.order_seq;
CREATE SEQUENCE @S.dep_seq;

CREATE TABLE @S.jobs (
    id text NOT NULL,
    queue text NOT NULL,
    name text NOT NULL,
    data text NOT NULL,
    opts text NOT NULL,
    state text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    lifo boolean NOT NULL DEFAULT false,
    delay double precision NOT NULL DEFAULT 0,
    attempts_made integer NOT NULL DEFAULT 0,
    stalled_count integer NOT NULL DEFAULT 0,
    progress text,
    return_value text,
    failed_reason text,
    stacktrace text[] NOT NULL DEFAULT '{}',
    created_at double precision NOT NULL,
    processed_at double precision,
    finished_at double precision,
    run_at double precision,
    keep_completed bigint,
    keep_failed bigint,
    parent_id text,
    parent_queue text,
    parent_policy text,
    lock_token text,
    lock_until double precision,
    -- Entry order into the current state; negated for a lifo job entering waiting.
    order_key bigint NOT NULL,
    log_count integer NOT NULL DEFAULT 0,
    -- How many of this job's dependency records are pending (RELEASE CHECK in O(1)).
    pending integer NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, id)
);

CREATE INDEX jobs_take ON @S.jobs (queue, priority, order_key) WHERE state = 'waiting';
CREATE INDEX jobs_delayed ON @S.jobs (queue, run_at, id) WHERE state = 'delayed';
CREATE INDEX jobs_active ON @S.jobs (queue, lock_until) WHERE state = 'active';
CREATE INDEX jobs_finished ON @S.jobs (queue, state, order_key)
    WHERE state IN ('completed', 'failed');

CREATE TABLE @S.deps (
    parent_queue text NOT NULL,
    parent_id text NOT NULL,
    child_queue text NOT NULL,
    child_id text NOT NULL,
    pos bigint NOT NULL,
    status text NOT NULL,
    value text,
    reason text,
    PRIMARY KEY (parent_queue, parent_id, child_queue, child_id)
);

CREATE TABLE @S.logs (
    queue text NOT NULL,
    id text NOT NULL,
    idx integer NOT NULL,
    line text NOT NULL,
    PRIMARY KEY (queue, id, idx)
);

CREATE TABLE @S.queues (
    queue text PRIMARY KEY,
    paused boolean NOT NULL DEFAULT false,
    window_start double precision,
    window_count integer NOT NULL DEFAULT 0
);
