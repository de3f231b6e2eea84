CREATE OR REPLACE FUNCTION @S._retry(q text, jid text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[];
    l record;
    p record;
    dstatus text;
BEGIN
    UPDATE @S.jobs SET attempts_made = 0, stalled_count = 0, failed_reason = NULL,
        stacktrace = '{}', return_value = NULL, finished_at = NULL
    WHERE queue = q AND id = jid;
    evs := ARRAY[@S._to_waiting(q, jid, now)];
    -- Each parent that has not finished gets its dependency back (an active one, a step
    -- job still running, keeps running).
    FOR l IN SELECT * FROM @S._links(q, jid) LOOP
        SELECT state INTO p FROM @S.jobs WHERE queue = l.pq AND id = l.pid FOR UPDATE;
        CONTINUE WHEN NOT FOUND OR p.state NOT IN ('waiting', 'delayed', 'waiting-children', 'active');
        SELECT status INTO dstatus FROM @S.deps
        WHERE parent_queue = l.pq AND parent_id = l.pid
          AND child_queue = q AND child_id = jid FOR UPDATE;
        IF NOT FOUND THEN
            dstatus := NULL;
            INSERT INTO @S.deps (parent_queue, parent_id, child_queue, child_id, pos, status)
            VALUES (l.pq, l.pid, q, jid, nextval('@S.order_seq'), 'pending');
        ELSIF dstatus <> 'pending' THEN
            UPDATE @S.deps SET status = 'pending', value = NULL, reason = NULL
            WHERE parent_queue = l.pq AND parent_id = l.pid
              AND child_queue = q AND child_id = jid;
        END IF;
        IF dstatus IS DISTINCT FROM 'pending' THEN
            UPDATE @S.jobs SET pending = pending + 1 WHERE queue = l.pq AND id = l.pid;
        END IF;
        IF p.state IN ('waiting', 'delayed') THEN
            UPDATE @S.jobs SET state = 'waiting-children', run_at = NULL,
                order_key = nextval('@S.order_seq')
            WHERE queue = l.pq AND id = l.pid;
            evs := array_append(evs, @S._ev(l.pq, 'waiting-children', l.pid, NULL, now));
        END IF;
    END LOOP;
    RETURN evs;
END $$;
