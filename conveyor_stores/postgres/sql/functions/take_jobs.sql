CREATE OR REPLACE FUNCTION @S.take_jobs(
    q text, lim integer, tok text, until double precision, now double precision,
    rl_max integer, rl_duration double precision,
    OUT taken @S.jobs[], OUT next_run_at double precision,
    OUT rate_limited_until double precision, OUT concurrency_limited boolean)
LANGUAGE plpgsql
-- Generic plans for everything a take runs: a statement with a LIMIT of a parameter
-- (the take itself, the lanes) is priced lower with the limit known, so by default it
-- is planned again at every call, which costs more than running it. Every state a take
-- reads is a constant, so a generic plan finds the same partial indexes.
@PLANNER SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    evs jsonb[];
    qrow record;
    wstart double precision;
    wcount integer := 0;
    n integer;
    cap integer;
    lanes record;
    win record;
    own_waiting bigint;
    lane_evs jsonb[];
    own_key bigint;
BEGIN
    PERFORM @S._worker_commit();
    evs := @S._promote_due(q, now, now);
    SELECT paused, concurrency, limited_until, group_concurrency, group_rate_max, served
    INTO qrow FROM @S.queues WHERE queue = q;
    cap := CASE WHEN FOUND THEN qrow.concurrency END;
    IF coalesce(qrow.paused, false) OR lim <= 0 THEN
        PERFORM @S._publish(evs);
        SELECT min(run_at) INTO next_run_at FROM @S.jobs WHERE queue = q AND state = 'delayed';
        taken := '{}';
        RETURN;
    END IF;
    -- MANUAL RATE LIMIT: nothing is taken before limited_until.
    IF now < qrow.limited_until THEN
        PERFORM @S._publish(evs);
        SELECT min(run_at) INTO next_run_at FROM @S.jobs WHERE queue = q AND state = 'delayed';
        rate_limited_until := qrow.limited_until;
        taken := '{}';
        RETURN;
    END IF;
    -- GLOBAL CONCURRENCY: the queue's row lock makes concurrent takes count the active
    -- jobs one after the other.
    IF cap IS NOT NULL THEN
        PERFORM 1 FROM @S.queues WHERE queue = q FOR UPDATE;
        n := cap - (SELECT count(*) FROM @S.jobs
                                 WHERE queue = q AND state = 'active');
        IF n <= 0 THEN
            PERFORM @S._publish(evs);
            SELECT min(run_at) INTO next_run_at FROM @S.jobs
            WHERE queue = q AND state = 'delayed';
            concurrency_limited := true;
            taken := '{}';
            RETURN;
        END IF;
        lim := least(lim, n);
    END IF;
    IF rl_max IS NOT NULL THEN
        INSERT INTO @S.queues (queue) VALUES (q) ON CONFLICT (queue) DO NOTHING;
        SELECT window_start, window_count INTO win FROM @S.queues WHERE queue = q FOR UPDATE;
        wstart := win.window_start;
        wcount := win.window_count;
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
    -- TAKE BY LANES while a waiting job has a group (counted with what this transaction
    -- moved, promotions included: see _fold_lanes); else a plain take, of jobs without a
    -- group only (an add of grouped jobs committed since the lanes were read waits for
    -- the next take, which serves it by lanes: only that take counts them out).
    IF current_setting('conveyor.lanes_pending', true) <> '' THEN
        PERFORM @S._fold_lanes();
    END IF;
    IF EXISTS (SELECT 1 FROM @S.group_lanes WHERE queue = q AND waiting > 0) THEN
        -- The own lane's waiting jobs: the queue's (STATE COUNTS) less those of its groups.
        SELECT coalesce((SELECT sum(c.n) FROM @S.state_counts c
                         WHERE c.queue = q AND c.state = 'waiting'), 0)
             + coalesce((SELECT sum(d.n) FROM @S.state_count_deltas d
                         WHERE d.queue = q AND d.state = 'waiting'), 0)
             - coalesce((SELECT sum(l.waiting) FROM @S.group_lanes l
                         WHERE l.queue = q AND l.waiting > 0), 0)
        INTO own_waiting;
        taken := '{}';
        IF qrow.group_concurrency IS NULL AND qrow.group_rate_max IS NULL THEN
            -- Without group limits no lane needs its limits read under its lock, so the
            -- take is made in one set, in the order _take_by_lanes would take: the first
            -- lim lanes (in served order, passing over lanes another take holds) give
            -- their first jobs, then their second ones, and so on, a lane with no job
            -- left dropping out (how many each gives follows from the lanes' counts).
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
                      SELECT NULL, coalesce(qrow.served, 0), own_waiting
                      WHERE own_waiting > 0) e
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
            INTO taken, lane_evs, own_key
            FROM upd;
            evs := evs || lane_evs;
            IF own_key IS NOT NULL THEN
                INSERT INTO @S.queues AS t (queue, served) VALUES (q, own_key)
                ON CONFLICT (queue) DO UPDATE SET served = excluded.served;
            END IF;
        END IF;
        IF cardinality(taken) = 0 THEN
            -- Group limits, or every lane held by other takes: one lane at a time.
            SELECT * INTO lanes FROM @S._take_by_lanes(q, lim, tok, until, now, own_waiting);
            taken := lanes.taken;
            evs := evs || lanes.evs;
            IF cardinality(taken) = 0 THEN
                concurrency_limited := lanes.concurrency_limited;
                rate_limited_until := lanes.rate_limited_until;
            END IF;
        END IF;
    ELSE
        WITH picked AS (
            SELECT id, nextval('@S.order_seq') AS k, priority, order_key FROM (
                SELECT id, priority, order_key FROM @S.jobs
                WHERE queue = q AND state = 'waiting' AND group_id IS NULL
                ORDER BY priority, order_key LIMIT lim FOR UPDATE SKIP LOCKED
            ) s
        ), upd AS (
            UPDATE @S.jobs j SET state = 'active', lock_token = tok, lock_until = until,
                processed_at = now, order_key = picked.k
            FROM picked WHERE j.queue = q AND j.id = picked.id
            RETURNING j AS r, picked.k
        )
        SELECT coalesce(array_agg(r ORDER BY k), '{}'),
               evs || array_agg(@S._ev(q, 'active', (r).id, NULL, now) ORDER BY k)
        INTO taken, evs
        FROM upd;
    END IF;
    n := cardinality(taken);
    IF rl_max IS NOT NULL AND n > 0 THEN
        UPDATE @S.queues SET window_start = wstart, window_count = wcount + n WHERE queue = q;
    END IF;
    PERFORM @S._publish(evs);
    SELECT min(run_at) INTO next_run_at FROM @S.jobs WHERE queue = q AND state = 'delayed';
END $$;
