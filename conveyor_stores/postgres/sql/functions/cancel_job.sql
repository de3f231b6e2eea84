-- CANCEL of a job: it and its unfinished descendants, children before parents, the job
-- last. Returns how many were cancelled, or NULL when the job does not exist. Each job
-- is locked and its state read again before it is cancelled, so one that finished
-- meanwhile is left alone and one taken meanwhile gets a cancel request.
CREATE OR REPLACE FUNCTION @S.cancel_job(q text, jid text, why text, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    r record;
    j record;
    keep bigint;
    n integer := 0;
BEGIN
    SELECT state INTO j FROM @S.jobs WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF j.state IN ('completed', 'failed') THEN
        RETURN 0;
    END IF;
    FOR r IN
        -- A finished descendant stays, but may hold unfinished children of its own.
        WITH RECURSIVE tree(pq, pid, cq, cid, path, doomed) AS (
            SELECT d.parent_queue, d.parent_id, d.child_queue, d.child_id, ARRAY[d.pos],
                   c.state NOT IN ('completed', 'failed')
            FROM @S.deps d JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
            WHERE d.parent_queue = q AND d.parent_id = jid
            UNION ALL
            SELECT d.parent_queue, d.parent_id, d.child_queue, d.child_id, t.path || d.pos,
                   c.state NOT IN ('completed', 'failed')
            FROM tree t
            JOIN @S.deps d ON d.parent_queue = t.cq AND d.parent_id = t.cid
            JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
        )
        -- A parent's path is a prefix of its children's: descending puts children first.
        SELECT pq, pid, cq, cid FROM tree WHERE doomed ORDER BY path DESC
    LOOP
        SELECT state, cancel_reason INTO j FROM @S.jobs WHERE queue = r.cq AND id = r.cid
        FOR UPDATE;
        CONTINUE WHEN NOT FOUND OR j.state IN ('completed', 'failed');
        -- Its parent is cancelled too (or finished): the dependency fails, no policy.
        UPDATE @S.deps SET status = 'failed', value = NULL, reason = why
        WHERE parent_queue = r.pq AND parent_id = r.pid
          AND child_queue = r.cq AND child_id = r.cid AND status = 'pending';
        IF FOUND THEN
            UPDATE @S.jobs SET pending = pending - 1 WHERE queue = r.pq AND id = r.pid;
        END IF;
        CONTINUE WHEN j.state = 'active' AND j.cancel_reason IS NOT NULL;
        evs := array_append(evs, @S._ev(r.cq, 'cancelled', r.cid,
                                        jsonb_build_object('reason', why), now));
        n := n + 1;
        IF j.state = 'active' THEN
            UPDATE @S.jobs SET cancel_reason = why WHERE queue = r.cq AND id = r.cid;
        ELSE
            UPDATE @S.jobs SET state = 'failed', failed_reason = why, finished_at = now,
                lock_token = NULL, lock_until = NULL, cancel_reason = NULL,
                order_key = nextval('@S.order_seq')
            WHERE queue = r.cq AND id = r.cid
            RETURNING keep_failed INTO keep;
            PERFORM @S._count_finished(r.cq, 'failed', now, 1);
            evs := array_append(evs, @S._ev(r.cq, 'failed', r.cid,
                                            jsonb_build_object('reason', why), now));
            PERFORM @S._retain(r.cq, r.cid, 'failed', keep);
        END IF;
    END LOOP;
    SELECT state, cancel_reason INTO j FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF FOUND AND j.state NOT IN ('completed', 'failed')
            AND NOT (j.state = 'active' AND j.cancel_reason IS NOT NULL) THEN
        evs := array_append(evs, @S._ev(q, 'cancelled', jid,
                                        jsonb_build_object('reason', why), now));
        n := n + 1;
        IF j.state = 'active' THEN
            UPDATE @S.jobs SET cancel_reason = why WHERE queue = q AND id = jid;
        ELSE
            evs := evs || @S._final_failure(q, jid, why, now);
        END IF;
    END IF;
    PERFORM @S._publish(evs);
    RETURN n;
END $$;
