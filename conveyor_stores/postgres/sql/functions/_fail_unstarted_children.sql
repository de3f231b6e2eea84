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
            PERFORM @S._count_finished(r.cq, 'failed', now, 1);
            evs := array_append(evs, @S._ev(r.cq, 'failed', r.cid,
                                            '{"reason": "parent failed"}', now));
            PERFORM @S._retain(r.cq, r.cid, 'failed', keep);
        END IF;
    END LOOP;
    RETURN evs;
END $$;
