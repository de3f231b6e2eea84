"""The PostgreSQL schema of the store, as an ordered list of migrations.

Every transition of the store protocol is a PL/pgSQL function installed in the schema,
so each protocol call is one statement and one round trip. The functions follow
``conveyor_core.engine`` step by step (FINAL FAILURE, RELEASE CHECK, REMOVE, RETENTION).

The SQL text uses two placeholders, filled in by :func:`render` from validated
identifiers only: ``@S`` (the quoted schema name) and ``@CHANNEL`` (a string literal
naming the NOTIFY channel). Queue names, ids and data are always bind parameters.

Events travel as JSON arrays ``[queue, type, job_id, data, timestamp]``, batched into as
few notifications per transaction as the payload limit allows.
"""

from __future__ import annotations

import re

SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

NOTIFY_LIMIT = 7900
"""Bytes per NOTIFY payload; PostgreSQL refuses payloads of 8000 bytes or more."""

PLANNER = "SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off"
"""Every transition touches a handful of rows through indexes. Pinning index plans keeps
cached generic plans fast while the tables grow faster than statistics are refreshed."""

_TABLES = r"""
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
"""

_FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION @S._ev(q text, t text, jid text, d jsonb, ts double precision)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_array(q, t, jid, coalesce(d, '{}'::jsonb), ts)
$$;

-- An event as notification text; one too large to share a notification loses its
-- bulky data fields (and, if still too large, all of them) and is marked truncated.
CREATE OR REPLACE FUNCTION @S._event_text(e jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t text := e::text;
BEGIN
    IF octet_length(t) <= @PIECE THEN
        RETURN t;
    END IF;
    e := jsonb_set(e, '{3}', coalesce((
        SELECT jsonb_object_agg(k, v) FROM jsonb_each(e -> 3) AS x(k, v)
        WHERE octet_length(v::text) <= 200), '{}'::jsonb) || '{"truncated": true}');
    t := e::text;
    IF octet_length(t) <= @PIECE THEN
        RETURN t;
    END IF;
    RETURN jsonb_build_array(e -> 0, e -> 1, e -> 2, '{"truncated": true}'::jsonb, e -> 4)::text;
END $$;

-- Publishes a transaction's events in as few notifications as the payload limit allows:
-- usually one; a big batch is cut, in order, into pieces of at most @LIMIT bytes.
CREATE OR REPLACE FUNCTION @S._publish(evs jsonb[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    whole text;
    piece text;
BEGIN
    IF evs IS NULL OR cardinality(evs) = 0 THEN
        RETURN;
    END IF;
    IF cardinality(evs) <= 64 THEN
        whole := array_to_json(evs)::text;
        IF octet_length(whole) <= @LIMIT THEN
            PERFORM pg_notify(@CHANNEL, whole);
            RETURN;
        END IF;
    END IF;
    -- Each event is at most @PIECE bytes, so grouping by running length / @PIECE keeps
    -- every piece under twice that.
    FOR piece IN
        SELECT '[' || string_agg(t, ',' ORDER BY o) || ']' FROM (
            SELECT o, t, (sum(octet_length(t) + 1) OVER (ORDER BY o)) / @PIECE AS chunk
            FROM (SELECT o, CASE WHEN octet_length(t0) <= @PIECE THEN t0
                                 ELSE @S._event_text(e) END AS t
                  FROM (SELECT e, o, e::text AS t0
                        FROM unnest(evs) WITH ORDINALITY AS x(e, o)) w) y
        ) z GROUP BY chunk ORDER BY chunk
    LOOP
        PERFORM pg_notify(@CHANNEL, piece);
    END LOOP;
END $$;

-- Deletes a job with its log and the dependency records it holds as a parent.
CREATE OR REPLACE FUNCTION @S._delete(q text, jid text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM @S.jobs WHERE queue = q AND id = jid;
    DELETE FROM @S.logs WHERE queue = q AND id = jid;
    DELETE FROM @S.deps WHERE parent_queue = q AND parent_id = jid;
END $$;

-- A job enters waiting: behind its priority, or in front if lifo.
CREATE OR REPLACE FUNCTION @S._to_waiting(q text, jid text, now double precision)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE @S.jobs SET state = 'waiting', run_at = NULL,
        order_key = CASE WHEN lifo THEN -nextval('@S.order_seq') ELSE nextval('@S.order_seq') END
    WHERE queue = q AND id = jid;
    RETURN @S._ev(q, 'waiting', jid, NULL, now);
END $$;

CREATE OR REPLACE FUNCTION @S._to_delayed(q text, jid text, at double precision,
                                          now double precision)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE @S.jobs SET state = 'delayed', run_at = at, order_key = nextval('@S.order_seq')
    WHERE queue = q AND id = jid;
    RETURN @S._ev(q, 'delayed', jid, jsonb_build_object('run_at', at), now);
END $$;

-- RELEASE of a parent leaving waiting-children.
CREATE OR REPLACE FUNCTION @S._release(q text, jid text, d double precision,
                                       now double precision)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF d > 0 THEN
        RETURN @S._to_delayed(q, jid, now + d, now);
    END IF;
    RETURN @S._to_waiting(q, jid, now);
END $$;

-- A pending dependency of a parent stopped being pending: RELEASE CHECK. The counter
-- update locks the parent row, so of two children resolving at once the later
-- transaction always sees the count left by the earlier one.
CREATE OR REPLACE FUNCTION @S._resolved(pq text, pid text, now double precision,
                                        n integer DEFAULT 1)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    p record;
BEGIN
    UPDATE @S.jobs SET pending = pending - n WHERE queue = pq AND id = pid
    RETURNING state, delay, pending INTO p;
    IF FOUND AND p.state = 'waiting-children' AND p.pending <= 0 THEN
        RETURN @S._release(pq, pid, p.delay, now);
    END IF;
    RETURN NULL;
END $$;

-- RETENTION after a job finished in state st.
CREATE OR REPLACE FUNCTION @S._retain(q text, jid text, st text, keep bigint,
                                      upto bigint DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    old_id text;
BEGIN
    IF keep IS NULL THEN
        RETURN;
    END IF;
    IF keep = 0 THEN
        PERFORM @S._delete(q, jid);
        RETURN;
    END IF;
    FOR old_id IN
        SELECT id FROM @S.jobs
        WHERE queue = q AND state = st AND (upto IS NULL OR order_key <= upto)
        ORDER BY order_key DESC OFFSET keep
    LOOP
        PERFORM @S._delete(q, old_id);
    END LOOP;
END $$;

-- REMOVE of a job: it and its unfinished descendants; its parent's pending dependency
-- on it is deleted and counts as resolved.
CREATE OR REPLACE FUNCTION @S._remove(q text, jid text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    r record;
    j record;
    e jsonb;
BEGIN
    SELECT parent_queue, parent_id INTO j FROM @S.jobs WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN evs;
    END IF;
    FOR r IN
        -- A finished child stays, but may hold unfinished children of its own.
        WITH RECURSIVE tree(q, id, path, doomed) AS (
            SELECT q, jid, ARRAY[]::bigint[], true
            UNION ALL
            SELECT d.child_queue, d.child_id, t.path || d.pos,
                   c.state NOT IN ('completed', 'failed')
            FROM tree t
            JOIN @S.deps d ON d.parent_queue = t.q AND d.parent_id = t.id
            JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
        )
        SELECT tree.q, tree.id FROM tree WHERE tree.doomed ORDER BY path
    LOOP
        PERFORM @S._delete(r.q, r.id);
        evs := array_append(evs, @S._ev(r.q, 'removed', r.id, NULL, now));
    END LOOP;
    IF j.parent_id IS NOT NULL THEN
        DELETE FROM @S.deps
        WHERE parent_queue = j.parent_queue AND parent_id = j.parent_id
          AND child_queue = q AND child_id = jid AND status = 'pending';
        IF FOUND THEN
            e := @S._resolved(j.parent_queue, j.parent_id, now);
            IF e IS NOT NULL THEN
                evs := array_append(evs, e);
            END IF;
        END IF;
    END IF;
    RETURN evs;
END $$;

-- Fails, with "parent failed", every pending unstarted child of a parent and theirs in
-- turn; no policy applies upward from these failures.
CREATE OR REPLACE FUNCTION @S._fail_unstarted_children(pq text, pid text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    r record;
    keep bigint;
BEGIN
    FOR r IN
        WITH RECURSIVE tree(tpq, tpid, cq, cid, path) AS (
            SELECT d.parent_queue, d.parent_id, d.child_queue, d.child_id, ARRAY[d.pos]
            FROM @S.deps d JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
            WHERE d.parent_queue = pq AND d.parent_id = pid AND d.status = 'pending'
              AND c.state IN ('waiting', 'delayed', 'waiting-children')
            UNION ALL
            SELECT d.parent_queue, d.parent_id, d.child_queue, d.child_id, t.path || d.pos
            FROM tree t
            JOIN @S.deps d ON d.parent_queue = t.cq AND d.parent_id = t.cid
            JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
            WHERE d.status = 'pending' AND c.state IN ('waiting', 'delayed', 'waiting-children')
        )
        SELECT * FROM tree ORDER BY path
    LOOP
        UPDATE @S.deps SET status = 'failed', value = NULL, reason = 'parent failed'
        WHERE parent_queue = r.tpq AND parent_id = r.tpid
          AND child_queue = r.cq AND child_id = r.cid AND status = 'pending';
        IF FOUND THEN
            UPDATE @S.jobs SET pending = pending - 1 WHERE queue = r.tpq AND id = r.tpid;
        END IF;
        UPDATE @S.jobs SET state = 'failed', failed_reason = 'parent failed',
            finished_at = now, lock_token = NULL, lock_until = NULL,
            order_key = nextval('@S.order_seq')
        WHERE queue = r.cq AND id = r.cid AND state IN ('waiting', 'delayed', 'waiting-children')
        RETURNING keep_failed INTO keep;
        IF FOUND THEN
            evs := array_append(evs, @S._ev(r.cq, 'failed', r.cid,
                                            '{"reason": "parent failed"}', now));
            PERFORM @S._retain(r.cq, r.cid, 'failed', keep);
        END IF;
    END LOOP;
    RETURN evs;
END $$;

-- FINAL FAILURE of a job, iterating up the tree while the "fail" policy propagates.
-- RETENTION of each failed job runs after its parent policy, innermost parent first.
CREATE OR REPLACE FUNCTION @S._final_failure(q text, jid text, why text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    rq text[] := '{}';
    rid text[] := '{}';
    rkeep bigint[] := '{}';
    j record;
    p record;
    dstatus text;
    e jsonb;
    i integer;
BEGIN
    LOOP
        UPDATE @S.jobs SET state = 'failed', failed_reason = why, finished_at = now,
            lock_token = NULL, lock_until = NULL, order_key = nextval('@S.order_seq')
        WHERE queue = q AND id = jid
        RETURNING parent_queue, parent_id, coalesce(parent_policy, 'fail') AS policy,
                  keep_failed
        INTO j;
        EXIT WHEN NOT FOUND;
        evs := array_append(evs, @S._ev(q, 'failed', jid, jsonb_build_object('reason', why), now));
        rq := array_append(rq, q);
        rid := array_append(rid, jid);
        rkeep := array_append(rkeep, j.keep_failed);
        EXIT WHEN j.parent_id IS NULL;
        SELECT state INTO p FROM @S.jobs
        WHERE queue = j.parent_queue AND id = j.parent_id FOR UPDATE;
        EXIT WHEN NOT FOUND;
        SELECT status INTO dstatus FROM @S.deps
        WHERE parent_queue = j.parent_queue AND parent_id = j.parent_id
          AND child_queue = q AND child_id = jid FOR UPDATE;
        EXIT WHEN NOT FOUND OR dstatus <> 'pending';
        e := NULL;
        IF j.policy IN ('ignore', 'continue', 'fail') THEN
            UPDATE @S.deps
            SET status = CASE WHEN j.policy = 'ignore' THEN 'ignored' ELSE 'failed' END,
                value = NULL, reason = why
            WHERE parent_queue = j.parent_queue AND parent_id = j.parent_id
              AND child_queue = q AND child_id = jid;
        END IF;
        IF j.policy IN ('fail', 'continue') THEN
            UPDATE @S.jobs SET pending = pending - 1
            WHERE queue = j.parent_queue AND id = j.parent_id;
        END IF;
        IF j.policy = 'fail' THEN
            EXIT WHEN p.state NOT IN ('waiting-children', 'waiting', 'delayed');
            evs := evs || @S._fail_unstarted_children(j.parent_queue, j.parent_id, now);
            why := 'child ' || jid || ' failed: ' || why;
            q := j.parent_queue;
            jid := j.parent_id;
            CONTINUE;
        ELSIF j.policy = 'ignore' THEN
            e := @S._resolved(j.parent_queue, j.parent_id, now);
        ELSIF j.policy = 'drop' THEN
            DELETE FROM @S.deps
            WHERE parent_queue = j.parent_queue AND parent_id = j.parent_id
              AND child_queue = q AND child_id = jid;
            e := @S._resolved(j.parent_queue, j.parent_id, now);
        ELSIF j.policy = 'continue' THEN
            IF p.state = 'waiting-children' THEN
                SELECT delay INTO p FROM @S.jobs
                WHERE queue = j.parent_queue AND id = j.parent_id;
                e := @S._release(j.parent_queue, j.parent_id, p.delay, now);
            END IF;
        ELSE
            evs := evs || @S._remove(j.parent_queue, j.parent_id, now);
        END IF;
        IF e IS NOT NULL THEN
            evs := array_append(evs, e);
        END IF;
        EXIT;
    END LOOP;
    FOR i IN REVERSE coalesce(cardinality(rq), 0) .. 1 LOOP
        PERFORM @S._retain(rq[i], rid[i], 'failed', rkeep[i]);
    END LOOP;
    RETURN evs;
END $$;

-- Moves a queue's due delayed jobs to waiting, earliest first.
CREATE OR REPLACE FUNCTION @S._promote_due(q text, upto double precision, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[];
BEGIN
    WITH due AS (
        SELECT s.id, s.lifo, nextval('@S.order_seq') AS k FROM (
            SELECT id, lifo FROM @S.jobs
            WHERE queue = q AND state = 'delayed' AND run_at <= upto
            ORDER BY run_at, id FOR UPDATE SKIP LOCKED
        ) s
    ), moved AS (
        UPDATE @S.jobs j SET state = 'waiting', run_at = NULL,
            order_key = CASE WHEN due.lifo THEN -due.k ELSE due.k END
        FROM due WHERE j.queue = q AND j.id = due.id
        RETURNING j.id, due.k
    )
    SELECT array_agg(@S._ev(q, 'waiting', moved.id, NULL, now) ORDER BY moved.k) INTO evs
    FROM moved;
    RETURN coalesce(evs, '{}');
END $$;

-- Worker transitions commit without waiting for the WAL flush when the session asks for
-- it (a crash of the server then at worst runs a job again); adds stay durable.
CREATE OR REPLACE FUNCTION @S._worker_commit() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('conveyor.worker_commit', true) = 'off' THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
END $$;

-- ------------------------------------------------------------------ protocol calls

CREATE OR REPLACE FUNCTION @S.add_jobs(
    grps integer[], ids text[], qs text[], names text[], datas text[], optss text[],
    states text[], prios integer[], lifos boolean[], delays double precision[],
    keep_cs bigint[], keep_fs bigint[], pids text[], pqs text[], policies text[],
    now double precision)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[];
    skipped integer[];
    ngroups integer;
BEGIN
    -- A job id used twice in one call fails the insert below with a unique violation.
    SELECT coalesce(array_agg(g), '{}') INTO skipped
    FROM unnest(grps, ids, qs) WITH ORDINALITY AS x(g, i, q, o)
    WHERE (o = 1 OR grps[o - 1] <> g)
      AND (SELECT 1 FROM @S.jobs j WHERE j.queue = x.q AND j.id = x.i LIMIT 1) IS NOT NULL;

    WITH items AS (
        SELECT x.*, nextval('@S.order_seq') AS k FROM (
            SELECT * FROM unnest(grps, ids, qs, names, datas, optss, states, prios, lifos,
                                 delays, keep_cs, keep_fs, pids, pqs, policies)
                WITH ORDINALITY AS t(g, id, queue, name, data, opts, state, priority, lifo,
                                     delay, keep_c, keep_f, pid, pq, policy, o)
            WHERE NOT (t.g = ANY (skipped))
            ORDER BY t.o
        ) x
    ), children AS (
        SELECT pq AS cpq, pid AS cpid, count(*) AS n FROM items
        WHERE pid IS NOT NULL GROUP BY pq, pid
    ), ins AS (
        INSERT INTO @S.jobs (id, queue, name, data, opts, state, priority, lifo, delay,
                             created_at, run_at, keep_completed, keep_failed, parent_id,
                             parent_queue, parent_policy, order_key, pending)
        SELECT id, queue, name, data, opts, state, priority, lifo, delay, now,
               CASE WHEN state = 'delayed' THEN now + delay END, keep_c, keep_f, pid, pq,
               policy, CASE WHEN state = 'waiting' AND lifo THEN -k ELSE k END,
               coalesce(children.n, 0)
        FROM items LEFT JOIN children ON children.cpq = items.queue AND children.cpid = items.id
    ), dep AS (
        INSERT INTO @S.deps (parent_queue, parent_id, child_queue, child_id, pos, status)
        SELECT pq, pid, queue, id, k, 'pending' FROM items WHERE pid IS NOT NULL
    )
    SELECT array_agg(ev ORDER BY k, n) INTO evs FROM (
        SELECT k, 0 AS n, @S._ev(queue, 'added', id, jsonb_build_object('name', name), now) AS ev
        FROM items
        UNION ALL
        SELECT k, 1, @S._ev(queue, state, id,
                            CASE WHEN state = 'delayed'
                                 THEN jsonb_build_object('run_at', now + delay) END, now)
        FROM items
    ) e;
    PERFORM @S._publish(evs);
    ngroups := coalesce(grps[cardinality(grps)], 0);
    RETURN ARRAY(SELECT NOT (g = ANY (skipped)) FROM generate_series(1, ngroups) AS g ORDER BY g);
END $$;

CREATE OR REPLACE FUNCTION @S.take_jobs(
    q text, lim integer, tok text, until double precision, now double precision,
    rl_max integer, rl_duration double precision,
    OUT taken @S.jobs[], OUT next_run_at double precision,
    OUT rate_limited_until double precision)
LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[];
    qrow record;
    wstart double precision;
    wcount integer := 0;
    n integer;
BEGIN
    PERFORM @S._worker_commit();
    evs := @S._promote_due(q, now, now);
    SELECT paused, window_start, window_count INTO qrow FROM @S.queues WHERE queue = q;
    IF (FOUND AND qrow.paused) OR lim <= 0 THEN
        PERFORM @S._publish(evs);
        SELECT min(run_at) INTO next_run_at FROM @S.jobs WHERE queue = q AND state = 'delayed';
        taken := '{}';
        RETURN;
    END IF;
    IF rl_max IS NOT NULL THEN
        INSERT INTO @S.queues (queue) VALUES (q) ON CONFLICT (queue) DO NOTHING;
        SELECT window_start, window_count INTO qrow FROM @S.queues WHERE queue = q FOR UPDATE;
        wstart := qrow.window_start;
        wcount := qrow.window_count;
        IF wstart IS NULL OR now >= wstart + rl_duration THEN
            wstart := now;
            wcount := 0;
        END IF;
        IF rl_max - wcount <= 0 THEN
            PERFORM @S._publish(evs);
            SELECT min(run_at) INTO next_run_at FROM @S.jobs
            WHERE queue = q AND state = 'delayed';
            rate_limited_until := wstart + rl_duration;
            taken := '{}';
            RETURN;
        END IF;
        lim := least(lim, rl_max - wcount);
    END IF;
    WITH picked AS (
        SELECT id, nextval('@S.order_seq') AS k, priority, order_key FROM (
            SELECT id, priority, order_key FROM @S.jobs
            WHERE queue = q AND state = 'waiting'
            ORDER BY priority, order_key LIMIT lim FOR UPDATE SKIP LOCKED
        ) s
    ), upd AS (
        UPDATE @S.jobs j SET state = 'active', lock_token = tok, lock_until = until,
            processed_at = now, order_key = picked.k
        FROM picked WHERE j.queue = q AND j.id = picked.id
        RETURNING j AS r, picked.k
    )
    SELECT coalesce(array_agg(r ORDER BY k), '{}'),
           array_agg(@S._ev(q, 'active', (r).id, NULL, now) ORDER BY k)
    INTO taken, evs
    FROM upd;
    n := cardinality(taken);
    IF rl_max IS NOT NULL AND n > 0 THEN
        UPDATE @S.queues SET window_start = wstart, window_count = wcount + n WHERE queue = q;
    END IF;
    PERFORM @S._publish(evs);
    SELECT min(run_at) INTO next_run_at FROM @S.jobs WHERE queue = q AND state = 'delayed';
END $$;

CREATE OR REPLACE FUNCTION @S.extend_locks(q text, ids text[], toks text[],
                                           until double precision)
RETURNS text[] LANGUAGE sql
@PLANNER AS $$
    SELECT @S._worker_commit();
    WITH upd AS (
        UPDATE @S.jobs j SET lock_until = until
        FROM unnest(ids, toks) WITH ORDINALITY AS x(id, tok, o)
        WHERE j.queue = q AND j.id = x.id AND j.state = 'active' AND j.lock_token = x.tok
        RETURNING x.id, x.o
    )
    SELECT coalesce(array_agg(id ORDER BY o), '{}') FROM upd
$$;

CREATE OR REPLACE FUNCTION @S.complete_jobs(q text, ids text[], toks text[], vals text[],
                                            now double precision)
RETURNS boolean[] LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    res boolean[];
    done record;
    r record;
    e jsonb;
    pqs text[] := '{}';
    pids text[] := '{}';
    cids text[] := '{}';
    cvals text[] := '{}';
    kept boolean := false;
BEGIN
    PERFORM @S._worker_commit();
    res := array_fill(false, ARRAY[cardinality(ids)]);
    FOR done IN
        WITH items AS (
            -- Order keys follow the items, so RETENTION sees them finish in order.
            SELECT i.*, nextval('@S.order_seq') AS k FROM (
                SELECT * FROM unnest(ids, toks, vals) WITH ORDINALITY AS t(id, tok, val, o)
                ORDER BY t.o
            ) i
        ), upd AS (
            UPDATE @S.jobs j SET state = 'completed', return_value = x.val, finished_at = now,
                attempts_made = j.attempts_made + 1, lock_token = NULL, lock_until = NULL,
                order_key = x.k
            FROM items x
            WHERE j.queue = q AND j.id = x.id AND j.state = 'active' AND j.lock_token = x.tok
            RETURNING x.o, j.id, j.return_value, j.parent_queue, j.parent_id, j.keep_completed
        )
        SELECT * FROM upd ORDER BY o
    LOOP
        res[done.o] := true;
        evs := array_append(evs, @S._ev(q, 'completed', done.id,
                                        jsonb_build_object('return_value', done.return_value),
                                        now));
        IF done.parent_id IS NOT NULL THEN
            pqs := array_append(pqs, done.parent_queue);
            pids := array_append(pids, done.parent_id);
            cids := array_append(cids, done.id);
            cvals := array_append(cvals, done.return_value);
        END IF;
        kept := kept OR done.keep_completed IS NOT NULL;
    END LOOP;
    IF cardinality(pqs) > 0 THEN
        -- Each parent's dependency on its child becomes processed; those that were
        -- pending resolve, counted per parent (parents locked in a fixed order).
        FOR r IN
            WITH resolved AS (
                UPDATE @S.deps d SET status = 'processed', value = x.val, reason = NULL
                FROM unnest(pqs, pids, cids, cvals) AS x(pq, pid, cid, val)
                WHERE d.parent_queue = x.pq AND d.parent_id = x.pid
                  AND d.child_queue = q AND d.child_id = x.cid AND d.status = 'pending'
                RETURNING d.parent_queue, d.parent_id
            )
            SELECT parent_queue, parent_id, count(*)::integer AS n FROM resolved
            GROUP BY parent_queue, parent_id ORDER BY parent_queue, parent_id
        LOOP
            e := @S._resolved(r.parent_queue, r.parent_id, now, r.n);
            IF e IS NOT NULL THEN
                evs := array_append(evs, e);
            END IF;
        END LOOP;
        UPDATE @S.deps d SET status = 'processed', value = x.val, reason = NULL
        FROM unnest(pqs, pids, cids, cvals) AS x(pq, pid, cid, val)
        WHERE d.parent_queue = x.pq AND d.parent_id = x.pid
          AND d.child_queue = q AND d.child_id = x.cid AND d.status IN ('failed', 'ignored');
    END IF;
    IF kept THEN
        -- RETENTION of each item as of its own completion: later items of the batch
        -- (higher order keys) do not count against it.
        FOR done IN
            SELECT x.id, x.ok FROM unnest(ids, res) WITH ORDINALITY AS x(id, ok, o)
            WHERE x.ok ORDER BY x.o
        LOOP
            SELECT keep_completed, order_key INTO r FROM @S.jobs WHERE queue = q AND id = done.id;
            IF FOUND AND r.keep_completed IS NOT NULL THEN
                PERFORM @S._retain(q, done.id, 'completed', r.keep_completed, r.order_key);
            END IF;
        END LOOP;
    END IF;
    PERFORM @S._publish(evs);
    RETURN res;
END $$;

CREATE OR REPLACE FUNCTION @S.fail_jobs(q text, ids text[], toks text[], reasons text[],
                                        stacks jsonb, retry_ats double precision[],
                                        now double precision)
RETURNS boolean[] LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    res boolean[];
    i integer;
BEGIN
    PERFORM @S._worker_commit();
    res := array_fill(false, ARRAY[cardinality(ids)]);
    FOR i IN 1 .. coalesce(cardinality(ids), 0) LOOP
        UPDATE @S.jobs SET attempts_made = attempts_made + 1, failed_reason = reasons[i],
            stacktrace = ARRAY(SELECT jsonb_array_elements_text(stacks -> (i - 1))),
            lock_token = NULL, lock_until = NULL
        WHERE queue = q AND id = ids[i] AND state = 'active' AND lock_token = toks[i];
        IF NOT FOUND THEN
            CONTINUE;
        END IF;
        res[i] := true;
        IF retry_ats[i] IS NULL THEN
            evs := evs || @S._final_failure(q, ids[i], reasons[i], now);
        ELSIF retry_ats[i] <= now THEN
            evs := array_append(evs, @S._to_waiting(q, ids[i], now));
        ELSE
            evs := array_append(evs, @S._to_delayed(q, ids[i], retry_ats[i], now));
        END IF;
    END LOOP;
    PERFORM @S._publish(evs);
    RETURN res;
END $$;

CREATE OR REPLACE FUNCTION @S.release_jobs(q text, ids text[], toks text[],
                                           now double precision)
RETURNS boolean[] LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    res boolean[];
    i integer;
BEGIN
    PERFORM @S._worker_commit();
    res := array_fill(false, ARRAY[cardinality(ids)]);
    FOR i IN 1 .. coalesce(cardinality(ids), 0) LOOP
        UPDATE @S.jobs SET lock_token = NULL, lock_until = NULL
        WHERE queue = q AND id = ids[i] AND state = 'active' AND lock_token = toks[i];
        IF FOUND THEN
            res[i] := true;
            evs := array_append(evs, @S._to_waiting(q, ids[i], now));
        END IF;
    END LOOP;
    PERFORM @S._publish(evs);
    RETURN res;
END $$;

CREATE OR REPLACE FUNCTION @S.recover_stalled(q text, now double precision, max_stalled bigint,
                                              OUT ids text[], OUT failed boolean[])
LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    r record;
    cnt integer;
BEGIN
    PERFORM @S._worker_commit();
    ids := '{}';
    failed := '{}';
    FOR r IN
        SELECT id FROM @S.jobs
        WHERE queue = q AND state = 'active' AND lock_until < now
        ORDER BY order_key FOR UPDATE SKIP LOCKED
    LOOP
        -- An earlier recovery in this call may have removed or failed this one.
        UPDATE @S.jobs SET stalled_count = stalled_count + 1, lock_token = NULL,
            lock_until = NULL
        WHERE queue = q AND id = r.id AND state = 'active' AND lock_until < now
        RETURNING stalled_count INTO cnt;
        IF NOT FOUND THEN
            CONTINUE;
        END IF;
        evs := array_append(evs, @S._ev(q, 'stalled', r.id, jsonb_build_object('count', cnt),
                                        now));
        ids := array_append(ids, r.id);
        IF cnt > max_stalled THEN
            UPDATE @S.jobs SET failed_reason = @STALLED WHERE queue = q AND id = r.id;
            evs := evs || @S._final_failure(q, r.id, @STALLED, now);
            failed := array_append(failed, true);
        ELSE
            evs := array_append(evs, @S._to_waiting(q, r.id, now));
            failed := array_append(failed, false);
        END IF;
    END LOOP;
    PERFORM @S._publish(evs);
END $$;

CREATE OR REPLACE FUNCTION @S.update_progress(q text, jid text, prog text,
                                              now double precision)
RETURNS boolean LANGUAGE plpgsql
@PLANNER AS $$
BEGIN
    UPDATE @S.jobs SET progress = prog WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM @S._publish(ARRAY[@S._ev(q, 'progress', jid, jsonb_build_object('progress', prog),
                                     now)]);
    RETURN true;
END $$;

-- Returns the new log length, or NULL when the job does not exist.
CREATE OR REPLACE FUNCTION @S.add_log(q text, jid text, line text)
RETURNS integer LANGUAGE sql
@PLANNER AS $$
    WITH u AS (
        UPDATE @S.jobs SET log_count = log_count + 1 WHERE queue = q AND id = jid
        RETURNING log_count
    ), ins AS (
        INSERT INTO @S.logs (queue, id, idx, line) SELECT q, jid, log_count - 1, line FROM u
    )
    SELECT log_count FROM u
$$;

-- Returns the job's state, or NULL when it does not exist.
CREATE OR REPLACE FUNCTION @S.change_priority(q text, jid text, prio integer, lf boolean)
RETURNS text LANGUAGE sql
@PLANNER AS $$
    UPDATE @S.jobs SET priority = prio, lifo = lf,
        order_key = CASE WHEN state <> 'waiting' THEN order_key
                         WHEN lf THEN -nextval('@S.order_seq')
                         ELSE nextval('@S.order_seq') END
    WHERE queue = q AND id = jid
    RETURNING state
$$;

-- Returns the job's state before the call, or NULL when it does not exist.
CREATE OR REPLACE FUNCTION @S.change_delay(q text, jid text, at double precision)
RETURNS text LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    st text;
BEGIN
    SELECT state INTO st FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF st = 'delayed' THEN
        UPDATE @S.jobs SET run_at = at WHERE queue = q AND id = jid;
    END IF;
    RETURN st;
END $$;

CREATE OR REPLACE FUNCTION @S.promote_job(q text, jid text, now double precision)
RETURNS text LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    st text;
BEGIN
    SELECT state INTO st FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF st = 'delayed' THEN
        PERFORM @S._publish(ARRAY[@S._to_waiting(q, jid, now)]);
    END IF;
    RETURN st;
END $$;

CREATE OR REPLACE FUNCTION @S.promote_jobs(q text, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[];
BEGIN
    evs := @S._promote_due(q, 'Infinity'::double precision, now);
    PERFORM @S._publish(evs);
    RETURN cardinality(evs);
END $$;

CREATE OR REPLACE FUNCTION @S._retry(q text, jid text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[];
    j record;
    p record;
    dstatus text;
BEGIN
    UPDATE @S.jobs SET attempts_made = 0, stalled_count = 0, failed_reason = NULL,
        stacktrace = '{}', return_value = NULL, finished_at = NULL
    WHERE queue = q AND id = jid RETURNING parent_queue, parent_id INTO j;
    evs := ARRAY[@S._to_waiting(q, jid, now)];
    IF j.parent_id IS NULL THEN
        RETURN evs;
    END IF;
    SELECT state INTO p FROM @S.jobs WHERE queue = j.parent_queue AND id = j.parent_id
    FOR UPDATE;
    IF NOT FOUND OR p.state NOT IN ('waiting', 'delayed', 'waiting-children') THEN
        RETURN evs;
    END IF;
    SELECT status INTO dstatus FROM @S.deps
    WHERE parent_queue = j.parent_queue AND parent_id = j.parent_id
      AND child_queue = q AND child_id = jid FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO @S.deps (parent_queue, parent_id, child_queue, child_id, pos, status)
        VALUES (j.parent_queue, j.parent_id, q, jid, nextval('@S.dep_seq'), 'pending');
    ELSIF dstatus <> 'pending' THEN
        UPDATE @S.deps SET status = 'pending', value = NULL, reason = NULL
        WHERE parent_queue = j.parent_queue AND parent_id = j.parent_id
          AND child_queue = q AND child_id = jid;
    END IF;
    IF dstatus IS DISTINCT FROM 'pending' THEN
        UPDATE @S.jobs SET pending = pending + 1
        WHERE queue = j.parent_queue AND id = j.parent_id;
    END IF;
    IF p.state <> 'waiting-children' THEN
        UPDATE @S.jobs SET state = 'waiting-children', run_at = NULL,
            order_key = nextval('@S.order_seq')
        WHERE queue = j.parent_queue AND id = j.parent_id;
        evs := array_append(evs, @S._ev(j.parent_queue, 'waiting-children', j.parent_id, NULL,
                                        now));
    END IF;
    RETURN evs;
END $$;

CREATE OR REPLACE FUNCTION @S.retry_job(q text, jid text, now double precision)
RETURNS text LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    st text;
BEGIN
    SELECT state INTO st FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF st = 'failed' THEN
        PERFORM @S._publish(@S._retry(q, jid, now));
    END IF;
    RETURN st;
END $$;

CREATE OR REPLACE FUNCTION @S.retry_jobs(q text, st text, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    jid text;
    n integer := 0;
BEGIN
    FOR jid IN
        SELECT id FROM @S.jobs WHERE queue = q AND state = st ORDER BY order_key DESC
        FOR UPDATE
    LOOP
        evs := evs || @S._retry(q, jid, now);
        n := n + 1;
    END LOOP;
    PERFORM @S._publish(evs);
    RETURN n;
END $$;

-- Returns the job's state before removal, or NULL when it does not exist.
CREATE OR REPLACE FUNCTION @S.remove_job(q text, jid text, now double precision)
RETURNS text LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    st text;
BEGIN
    SELECT state INTO st FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF st IS NOT NULL AND st <> 'active' THEN
        PERFORM @S._publish(@S._remove(q, jid, now));
    END IF;
    RETURN st;
END $$;

CREATE OR REPLACE FUNCTION @S.set_paused(q text, p boolean, now double precision)
RETURNS void LANGUAGE plpgsql
@PLANNER AS $$
BEGIN
    INSERT INTO @S.queues (queue, paused) VALUES (q, p)
    ON CONFLICT (queue) DO UPDATE SET paused = p;
    PERFORM @S._publish(ARRAY[@S._ev(q, CASE WHEN p THEN 'paused' ELSE 'resumed' END, NULL,
                                     NULL, now)]);
END $$;

-- Removes the given jobs (each as by REMOVE, skipping ones already gone).
CREATE OR REPLACE FUNCTION @S._remove_each(q text, jids text[], now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    jid text;
BEGIN
    FOREACH jid IN ARRAY jids LOOP
        evs := evs || @S._remove(q, jid, now);
    END LOOP;
    RETURN evs;
END $$;

CREATE OR REPLACE FUNCTION @S.drain(q text, with_delayed boolean, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    jids text[];
    n integer := 0;
    jid text;
BEGIN
    jids := ARRAY(
        SELECT id FROM (
            SELECT id, 0 AS s, priority::double precision AS a, order_key AS b, '' AS c
            FROM @S.jobs WHERE queue = q AND state = 'waiting'
            UNION ALL
            SELECT id, 1, run_at, 0, id FROM @S.jobs
            WHERE with_delayed AND queue = q AND state = 'delayed'
        ) x ORDER BY s, a, b, c);
    FOREACH jid IN ARRAY jids LOOP
        IF EXISTS (SELECT 1 FROM @S.jobs WHERE queue = q AND id = jid) THEN
            evs := evs || @S._remove(q, jid, now);
            n := n + 1;
        END IF;
    END LOOP;
    evs := array_append(evs, @S._ev(q, 'drained', NULL, jsonb_build_object('count', n), now));
    PERFORM @S._publish(evs);
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION @S.clean(q text, st text, older_than double precision, lim bigint,
                                    now double precision)
RETURNS text[] LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    jids text[];
    done text[] := '{}';
    jid text;
BEGIN
    IF st IN ('completed', 'failed') THEN
        jids := ARRAY(SELECT id FROM @S.jobs
                      WHERE queue = q AND state = st AND finished_at <= older_than
                      ORDER BY order_key LIMIT lim);
    ELSIF st = 'delayed' THEN
        jids := ARRAY(SELECT id FROM @S.jobs
                      WHERE queue = q AND state = st AND created_at <= older_than
                      ORDER BY run_at, id LIMIT lim);
    ELSIF st = 'waiting' THEN
        jids := ARRAY(SELECT id FROM @S.jobs
                      WHERE queue = q AND state = st AND created_at <= older_than
                      ORDER BY priority, order_key LIMIT lim);
    ELSE
        jids := ARRAY(SELECT id FROM @S.jobs
                      WHERE queue = q AND state = st AND created_at <= older_than
                      ORDER BY order_key LIMIT lim);
    END IF;
    FOREACH jid IN ARRAY jids LOOP
        IF EXISTS (SELECT 1 FROM @S.jobs WHERE queue = q AND id = jid) THEN
            evs := evs || @S._remove(q, jid, now);
            done := array_append(done, jid);
        END IF;
    END LOOP;
    IF cardinality(done) > 0 THEN
        evs := array_append(evs, @S._ev(q, 'cleaned', NULL,
                                        jsonb_build_object('count', cardinality(done)), now));
    END IF;
    PERFORM @S._publish(evs);
    RETURN done;
END $$;

CREATE OR REPLACE FUNCTION @S.obliterate(q text, force boolean, now double precision)
RETURNS boolean LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    jid text;
BEGIN
    IF NOT force AND EXISTS (SELECT 1 FROM @S.jobs WHERE queue = q AND state = 'active') THEN
        RETURN false;
    END IF;
    FOR jid IN
        SELECT id FROM @S.jobs WHERE queue = q
        ORDER BY array_position(ARRAY['waiting', 'delayed', 'active', 'completed', 'failed',
                                      'waiting-children'], state), order_key
    LOOP
        evs := evs || @S._remove(q, jid, now);
    END LOOP;
    DELETE FROM @S.queues WHERE queue = q;
    PERFORM @S._publish(evs);
    RETURN true;
END $$;
"""

MIGRATIONS: list[tuple[int, str]] = [
    (1, _TABLES + _FUNCTIONS),
]
"""``(version, sql)`` in order; a database at version ``v`` runs every later one."""

LATEST = MIGRATIONS[-1][0]


def quote_ident(name: str) -> str:
    """``name`` validated against :data:`SCHEMA_NAME` and double-quoted for SQL."""
    if not SCHEMA_NAME.match(name):
        raise ValueError(
            f"invalid schema name {name!r}: use letters, digits and underscores, "
            "not starting with a digit, at most 63 characters"
        )
    return f'"{name}"'


def quote_literal(text: str) -> str:
    """A SQL string literal of ``text`` (only ever called with validated identifiers)."""
    return "'" + text.replace("'", "''") + "'"


def render(sql: str, schema: str, channel: str, stalled_reason: str) -> str:
    """Fill the placeholders of ``sql`` for one schema."""
    return (
        sql.replace("@STALLED", quote_literal(stalled_reason))
        .replace("@CHANNEL", quote_literal(channel))
        .replace("@LIMIT", str(NOTIFY_LIMIT))
        .replace("@PIECE", str(NOTIFY_LIMIT // 2 - 10))
        .replace("@PLANNER", PLANNER)
        .replace("@S", quote_ident(schema))
    )
