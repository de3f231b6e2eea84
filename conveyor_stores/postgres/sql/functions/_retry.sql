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
        VALUES (j.parent_queue, j.parent_id, q, jid, nextval('@S.order_seq'), 'pending');
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
