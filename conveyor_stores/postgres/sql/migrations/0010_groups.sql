-- GROUPS. A job's group (NULL: none; set when added, never changed). Everything below
-- is partial on group_id IS NOT NULL or lives in tables of its own, so jobs without a
-- group cost what they cost before. Idempotent, like 0005: an upgrade test gives an old
-- schema these objects early.
ALTER TABLE @S.jobs ADD COLUMN IF NOT EXISTS group_id text;

-- A group's waiting jobs in take order (a lane's first job).
CREATE INDEX IF NOT EXISTS jobs_group_waiting ON @S.jobs (queue, group_id, priority, order_key)
    WHERE state = 'waiting' AND group_id IS NOT NULL;
-- A group's jobs per state: its active jobs (its concurrency) and get_group_counts.
CREATE INDEX IF NOT EXISTS jobs_group_state ON @S.jobs (queue, group_id, state)
    WHERE group_id IS NOT NULL;

-- A queue's lanes, one per group that ever had a waiting job: when it was last served
-- (0: never; else a number of order_seq, greater than every earlier one), how many of
-- its jobs are waiting (kept by the triggers of 0010_groups_triggers) and its rate
-- window.
CREATE TABLE IF NOT EXISTS @S.group_lanes (
    queue text NOT NULL,
    group_id text NOT NULL,
    served bigint NOT NULL DEFAULT 0,
    waiting bigint NOT NULL DEFAULT 0,
    window_start double precision,
    window_count integer NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, group_id)
);
-- What this transaction's statements moved in and out of waiting, per lane, until it is
-- folded into group_lanes (_fold_lanes): only ever written and emptied by one
-- transaction, so no other sees its rows or waits on them.
CREATE TABLE IF NOT EXISTS @S.group_waiting_deltas (
    tx bigint NOT NULL,
    queue text NOT NULL,
    group_id text NOT NULL,
    n integer NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);
CREATE INDEX IF NOT EXISTS group_waiting_deltas_tx ON @S.group_waiting_deltas (tx);

-- The lanes that have a waiting job, least recently served first: a take finds the
-- next lane without looking at the groups that have none.
CREATE INDEX IF NOT EXISTS group_lanes_ready ON @S.group_lanes (queue, served, group_id COLLATE "C")
    WHERE waiting > 0;

-- The queue's group limits (NULL: none) and when its own lane (its jobs without a
-- group) was last served.
ALTER TABLE @S.queues ADD COLUMN IF NOT EXISTS group_concurrency integer;
ALTER TABLE @S.queues ADD COLUMN IF NOT EXISTS group_rate_max integer;
ALTER TABLE @S.queues ADD COLUMN IF NOT EXISTS group_rate_duration double precision;
ALTER TABLE @S.queues ADD COLUMN IF NOT EXISTS served bigint NOT NULL DEFAULT 0;

-- The adds gain a parameter for the jobs' groups: their old forms are dropped so the new
-- ones can be created.
DROP FUNCTION IF EXISTS @S.add_jobs(integer[], text[], text[], text[], text[], text[], text[],
    integer[], boolean[], double precision[], bigint[], bigint[], text[], text[], text[],
    double precision);
DROP FUNCTION IF EXISTS @S.add_dag(text[], text[], text[], text[], text[], text[], integer[],
    boolean[], double precision[], bigint[], bigint[], text[], text[], text[], text[], text[],
    double precision);
DROP FUNCTION IF EXISTS @S.add_deduplicated(text, double precision, boolean, boolean, text,
    text, text, text, text, text, integer, boolean, double precision, bigint, bigint,
    double precision);
DROP FUNCTION IF EXISTS @S.fire_scheduler(text, text, double precision, double precision,
    text[], text[], text[], text[], text[], text[], integer[], boolean[], double precision[],
    bigint[], bigint[], text[], text[], text[], double precision);
