-- TAKE BY LANES (see GROUPS of the store protocol): up to lim jobs, one at a time, each
-- from the lane served least recently (served, then group id in code point order, the
-- queue's own lane counting as the empty id) among the lanes that can still give one.
-- A group's lane row is locked before its limits are read, so concurrent takes count
-- its active jobs and fill its rate window one after the other. A take waits for a
-- lane only while it holds none; holding one, it skips a lane another take holds, so
-- takes never wait on each other in a circle. A take counts each job it takes out of
-- its lane's waiting jobs itself (the row triggers of 0010_groups_triggers leave takes
-- out). Jobs come back in the order taken, with
-- their events; concurrency_limited and rate_limited_until say which group limits held
-- a lane back (the caller reports them only when nothing was taken).
CREATE OR REPLACE FUNCTION @S._take_by_lanes(
    q text, lim integer, tok text, until double precision, now double precision,
    OUT taken @S.jobs[], OUT evs jsonb[], OUT concurrency_limited boolean,
    OUT rate_limited_until double precision)
LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    limits record;
    own_served bigint;
    own_waiting bigint;
    lane record;
    cur record;
    held text[] := '{}';
    holding boolean := false;
    wstart double precision;
    wcount integer;
    jid text;
    k bigint;
BEGIN
    taken := '{}';
    evs := '{}';
    concurrency_limited := false;
    SELECT group_concurrency, group_rate_max, group_rate_duration, served INTO limits
    FROM @S.queues WHERE queue = q;
    own_served := coalesce(limits.served, 0);
    -- The own lane's waiting jobs: the queue's (STATE COUNTS) less those of its groups.
    SELECT coalesce((SELECT sum(c.n) FROM @S.state_counts c
                     WHERE c.queue = q AND c.state = 'waiting'), 0)
         + coalesce((SELECT sum(d.n) FROM @S.state_count_deltas d
                     WHERE d.queue = q AND d.state = 'waiting'), 0)
         - coalesce((SELECT sum(l.waiting) FROM @S.group_lanes l
                     WHERE l.queue = q AND l.waiting > 0), 0)
    INTO own_waiting;
    IF limits.group_concurrency IS NULL AND limits.group_rate_max IS NULL THEN
        -- Without group limits no lane needs its limits read under its lock, so the
        -- take is made in one set, in the order the loop below would take: the first
        -- lim lanes (in served order, passing over lanes another take holds) give
        -- their first jobs, then their second ones, and so on, a lane with no job left
        -- dropping out (how many each gives follows from the lanes' counts).
        WITH lanes AS (
            SELECT l.group_id, l.served, l.waiting FROM @S.group_lanes l
            WHERE l.queue = q AND l.waiting > 0
            ORDER BY l.served, l.group_id COLLATE "C" LIMIT lim
            FOR UPDATE SKIP LOCKED
        ), placed AS (
            SELECT e.group_id, e.waiting,
                   row_number() OVER (ORDER BY e.served, coalesce(e.group_id, '') COLLATE "C") p
            FROM (SELECT group_id, served, waiting FROM lanes
                  UNION ALL
                  SELECT NULL, own_served, own_waiting WHERE own_waiting > 0) e
        ), slots AS (
            SELECT s.group_id, s.p FROM placed s, generate_series(1, least(s.waiting, lim)) r
            ORDER BY r, s.p LIMIT lim
        ), quotas AS (
            SELECT group_id, p, count(*) n FROM slots GROUP BY group_id, p
        ), picked AS (
            SELECT x.p, x.group_id gid, j.ctid,
                   row_number() OVER (PARTITION BY x.p ORDER BY j.priority, j.order_key) r
            FROM quotas x
            CROSS JOIN LATERAL (
                SELECT ctid, priority, order_key FROM @S.jobs
                WHERE queue = q AND group_id = x.group_id AND state = 'waiting'
                ORDER BY priority, order_key LIMIT x.n FOR UPDATE SKIP LOCKED) j
            WHERE x.group_id IS NOT NULL
            UNION ALL
            SELECT x.p, NULL, j.ctid, row_number() OVER (ORDER BY j.priority, j.order_key) r
            FROM quotas x
            CROSS JOIN LATERAL (
                SELECT ctid, priority, order_key FROM @S.jobs
                WHERE queue = q AND state = 'waiting' AND group_id IS NULL
                ORDER BY priority, order_key LIMIT x.n FOR UPDATE SKIP LOCKED) j
            WHERE x.group_id IS NULL
        ), keyed AS (
            -- Order keys in take order: round by round, each in lane order.
            SELECT s.gid, s.ctid, nextval('@S.order_seq') k
            FROM (SELECT gid, ctid FROM picked ORDER BY r, p) s
        ), served AS (
            UPDATE @S.group_lanes l SET served = t.k, waiting = l.waiting - t.n,
                window_start = NULL, window_count = 0
            FROM (SELECT gid, max(keyed.k) k, count(*) n FROM keyed WHERE gid IS NOT NULL
                  GROUP BY gid) t
            WHERE l.queue = q AND l.group_id = t.gid
        ), upd AS (
            -- The jobs, locked above, are updated where they lie (their ctid): the
            -- plan cannot stray through an index of the whole queue.
            UPDATE @S.jobs j SET state = 'active', lock_token = tok, lock_until = until,
                processed_at = now, order_key = keyed.k
            FROM keyed WHERE j.ctid = keyed.ctid
            RETURNING j AS r, keyed.k tk, keyed.gid IS NULL own
        )
        SELECT coalesce(array_agg(r ORDER BY tk), '{}'),
               coalesce(array_agg(@S._ev(q, 'active', (r).id, NULL, now) ORDER BY tk), '{}'),
               max(tk) FILTER (WHERE own)
        INTO taken, evs, k
        FROM upd;
        IF cardinality(taken) > 0 THEN
            IF k IS NOT NULL THEN
                INSERT INTO @S.queues AS t (queue, served) VALUES (q, k)
                ON CONFLICT (queue) DO UPDATE SET served = excluded.served;
            END IF;
            RETURN;
        END IF;
        -- Nothing at once (every lane held by other takes): one lane at a time, waiting
        -- for the first.
    END IF;
    WHILE cardinality(taken) < lim LOOP
        SELECT l.group_id, l.served INTO lane FROM @S.group_lanes l
        WHERE l.queue = q AND l.waiting > 0 AND l.group_id <> ALL (held)
        ORDER BY l.served, l.group_id COLLATE "C" LIMIT 1;
        IF own_waiting > 0 AND (lane.group_id IS NULL OR own_served <= lane.served) THEN
            -- No index of its own (it would cost every job without a group): the take
            -- index, past the jobs with a group before the lane's first job.
            SELECT id INTO jid FROM @S.jobs
            WHERE queue = q AND state = 'waiting' AND group_id IS NULL
            ORDER BY priority, order_key LIMIT 1 FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                own_waiting := 0;
                CONTINUE;
            END IF;
            own_waiting := own_waiting - 1;
            k := nextval('@S.order_seq');
            own_served := k;
            INSERT INTO @S.queues AS t (queue, served) VALUES (q, k)
            ON CONFLICT (queue) DO UPDATE SET served = excluded.served;
            holding := true;
        ELSIF lane.group_id IS NULL THEN
            EXIT;
        ELSE
            IF holding THEN
                SELECT * INTO cur FROM @S.group_lanes
                WHERE queue = q AND group_id = lane.group_id FOR UPDATE SKIP LOCKED;
            ELSE
                SELECT * INTO cur FROM @S.group_lanes
                WHERE queue = q AND group_id = lane.group_id FOR UPDATE;
            END IF;
            IF NOT FOUND THEN
                held := held || lane.group_id;
                CONTINUE;
            END IF;
            holding := true;
            -- Served or emptied by another take while this one waited: look again.
            CONTINUE WHEN cur.served <> lane.served OR cur.waiting <= 0;
            IF limits.group_concurrency IS NOT NULL
               AND (SELECT count(*) FROM (
                        SELECT 1 FROM @S.jobs
                        WHERE queue = q AND group_id = lane.group_id AND state = 'active'
                        LIMIT limits.group_concurrency) a) >= limits.group_concurrency THEN
                held := held || lane.group_id;
                concurrency_limited := true;
                CONTINUE;
            END IF;
            -- Without a rate limit a lane keeps no window.
            wstart := NULL;
            wcount := 0;
            IF limits.group_rate_max IS NOT NULL THEN
                wstart := cur.window_start;
                wcount := cur.window_count;
                IF wstart IS NULL OR now >= wstart + limits.group_rate_duration THEN
                    wstart := now;
                    wcount := 0;
                END IF;
                IF wcount >= limits.group_rate_max THEN
                    held := held || lane.group_id;
                    rate_limited_until := least(rate_limited_until,
                                                wstart + limits.group_rate_duration);
                    CONTINUE;
                END IF;
            END IF;
            SELECT id INTO jid FROM @S.jobs
            WHERE queue = q AND group_id = lane.group_id AND state = 'waiting'
            ORDER BY priority, order_key LIMIT 1 FOR UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                held := held || lane.group_id;
                CONTINUE;
            END IF;
            k := nextval('@S.order_seq');
            UPDATE @S.group_lanes SET served = k, waiting = waiting - 1, window_start = wstart,
                window_count = CASE WHEN wstart IS NULL THEN 0 ELSE wcount + 1 END
            WHERE queue = q AND group_id = lane.group_id;
        END IF;
        UPDATE @S.jobs j SET state = 'active', lock_token = tok, lock_until = until,
            processed_at = now, order_key = k
        WHERE j.queue = q AND j.id = jid
        RETURNING taken || j INTO taken;
        evs := evs || @S._ev(q, 'active', jid, NULL, now);
    END LOOP;
END $$;
