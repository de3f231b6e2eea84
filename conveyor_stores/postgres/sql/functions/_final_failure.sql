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
        PERFORM @S._count_finished(q, 'failed', now, 1);
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
            EXIT WHEN p.state NOT IN ('waiting-children', 'waiting', 'delayed', 'active');
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
