-- TAKE BY LANES (see GROUPS of the store protocol), one lane at a time: the path of a
-- queue with group limits, and of a take that found every lane held by other takes
-- (take_jobs takes by lanes in one statement otherwise). Up to lim jobs, one at a time,
-- each from the lane served least recently (served, then group id in code point order,
-- the queue's own lane counting as the empty id) among the lanes that can still give
-- one. A group's lane row is locked before its limits are read, so concurrent takes
-- count its active jobs and fill its rate window one after the other. A take waits for
-- a lane only while it holds none; holding one, it skips a lane another take holds, so
-- takes never wait on each other in a circle. A take counts each job it takes out of
-- its lane's waiting jobs itself (the row triggers of 0010_groups_triggers leave takes
-- out). own_waiting: the queue's own lane's waiting jobs, as take_jobs counted them.
-- Jobs come back in the order taken, with their events; concurrency_limited and
-- rate_limited_until say which group limits held a lane back (the caller reports them
-- only when nothing was taken).
CREATE OR REPLACE FUNCTION @S._take_by_lanes(
    q text, lim integer, tok text, until double precision, now double precision,
    own_waiting bigint, OUT taken @S.jobs[], OUT evs jsonb[], OUT concurrency_limited boolean,
    OUT rate_limited_until double precision)
LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    limits record;
    own_served bigint;
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
