-- Marks failed every pending dependency of a parent on a job that has not started, and
-- fails with "parent failed" each such job no parent still needs, and theirs in turn
-- (a depth-first walk, as the engine's); no policy applies upward from these failures.
-- A shared job is looked at again from each of its failing parents; the last of them
-- finds no parent still needing it.
CREATE OR REPLACE FUNCTION @S._fail_unstarted_children(pq text, pid text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    sq text[] := ARRAY[pq];
    sid text[] := ARRAY[pid];
    dq text[] := '{}';
    did text[] := '{}';
    nq text;
    nid text;
    r record;
    keep bigint;
    top integer := 1;
    i integer;
BEGIN
    WHILE top > 0 LOOP
        nq := sq[top];
        nid := sid[top];
        top := top - 1;
        FOR r IN
            SELECT d.child_queue AS cq, d.child_id AS cid, c.pending > 0 AS waits,
                   EXISTS (SELECT 1 FROM @S.parent_links k
                           WHERE k.queue = c.queue AND k.id = c.id) AS shared
            FROM @S.deps d JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
            WHERE d.parent_queue = nq AND d.parent_id = nid AND d.status = 'pending'
              AND c.state IN ('waiting', 'delayed', 'waiting-children')
            ORDER BY d.pos
        LOOP
            UPDATE @S.deps SET status = 'failed', value = NULL, reason = 'parent failed'
            WHERE parent_queue = nq AND parent_id = nid
              AND child_queue = r.cq AND child_id = r.cid AND status = 'pending';
            IF FOUND THEN
                UPDATE @S.jobs SET pending = pending - 1 WHERE queue = nq AND id = nid;
            END IF;
            -- A job of a tree has this one parent, which no longer needs it.
            CONTINUE WHEN r.shared AND (EXISTS (
                SELECT 1 FROM unnest(dq, did) AS x(q, id) WHERE x.q = r.cq AND x.id = r.cid
            ) OR @S._still_needed(r.cq, r.cid));
            dq := array_append(dq, r.cq);
            did := array_append(did, r.cid);
            IF r.waits THEN
                top := top + 1;
                sq[top] := r.cq;
                sid[top] := r.cid;
            END IF;
        END LOOP;
    END LOOP;
    FOR i IN 1 .. cardinality(dq) LOOP
        UPDATE @S.jobs SET state = 'failed', failed_reason = 'parent failed',
            finished_at = now, lock_token = NULL, lock_until = NULL,
            order_key = nextval('@S.order_seq')
        WHERE queue = dq[i] AND id = did[i]
          AND state IN ('waiting', 'delayed', 'waiting-children')
        RETURNING keep_failed INTO keep;
        IF FOUND THEN
            PERFORM @S._count_finished(dq[i], 'failed', now, 1);
            evs := array_append(evs, @S._ev(dq[i], 'failed', did[i],
                                            '{"reason": "parent failed"}', now));
            PERFORM @S._retain(dq[i], did[i], 'failed', keep);
        END IF;
    END LOOP;
    RETURN evs;
END $$;
