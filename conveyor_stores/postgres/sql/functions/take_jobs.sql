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
BEGIN
    PERFORM @S._worker_commit();
    evs := @S._promote_due(q, now, now);
    SELECT paused, window_start, window_count, concurrency, limited_until INTO qrow
    FROM @S.queues WHERE queue = q;
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
    -- TAKE BY LANES while a waiting job has a group (counted with what this transaction
    -- moved, promotions included: see _fold_lanes); else a plain take, of jobs without a
    -- group only (an add of grouped jobs committed since the lanes were read waits for
    -- the next take, which serves it by lanes: only that take counts them out).
    IF current_setting('conveyor.lanes_pending', true) <> '' THEN
        PERFORM @S._fold_lanes();
    END IF;
    IF EXISTS (SELECT 1 FROM @S.group_lanes WHERE queue = q AND waiting > 0) THEN
        SELECT * INTO lanes FROM @S._take_by_lanes(q, lim, tok, until, now);
        taken := lanes.taken;
        evs := evs || lanes.evs;
        IF cardinality(taken) = 0 THEN
            concurrency_limited := lanes.concurrency_limited;
            rate_limited_until := lanes.rate_limited_until;
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
