-- FINAL FAILURE of a job. A parent failed by the "fail" policy fails at once; its own
-- parent links are carried out after those of the jobs failed before it (a work list,
-- level by level); RETENTION of every failed job runs last, the latest failed first.
CREATE OR REPLACE FUNCTION @S._final_failure(q text, jid text, why text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    rq text[] := '{}';
    rid text[] := '{}';
    rwhy text[] := '{}';
    rkeep bigint[] := '{}';
    l record;
    p record;
    dstatus text;
    keep bigint;
    pwhy text;
    e jsonb;
    i integer := 1;
BEGIN
    UPDATE @S.jobs SET state = 'failed', failed_reason = why, finished_at = now,
        lock_token = NULL, lock_until = NULL, cancel_reason = NULL,
        order_key = nextval('@S.order_seq')
    WHERE queue = q AND id = jid
    RETURNING keep_failed INTO keep;
    IF NOT FOUND THEN
        RETURN evs;
    END IF;
    PERFORM @S._count_finished(q, 'failed', now, 1);
    evs := array_append(evs, @S._ev(q, 'failed', jid, jsonb_build_object('reason', why), now));
    rq := ARRAY[q];
    rid := ARRAY[jid];
    rwhy := ARRAY[why];
    rkeep := ARRAY[keep];
    WHILE i <= cardinality(rq) LOOP
        q := rq[i];
        jid := rid[i];
        why := rwhy[i];
        i := i + 1;
        FOR l IN SELECT * FROM @S._links(q, jid) LOOP
            SELECT state, delay INTO p FROM @S.jobs
            WHERE queue = l.pq AND id = l.pid FOR UPDATE;
            CONTINUE WHEN NOT FOUND;
            SELECT status INTO dstatus FROM @S.deps
            WHERE parent_queue = l.pq AND parent_id = l.pid
              AND child_queue = q AND child_id = jid FOR UPDATE;
            CONTINUE WHEN NOT FOUND OR dstatus <> 'pending';
            e := NULL;
            IF l.policy IN ('ignore', 'continue', 'fail') THEN
                UPDATE @S.deps
                SET status = CASE WHEN l.policy = 'ignore' THEN 'ignored' ELSE 'failed' END,
                    value = NULL, reason = why
                WHERE parent_queue = l.pq AND parent_id = l.pid
                  AND child_queue = q AND child_id = jid;
            END IF;
            IF l.policy IN ('fail', 'continue') THEN
                UPDATE @S.jobs SET pending = pending - 1 WHERE queue = l.pq AND id = l.pid;
            END IF;
            IF l.policy = 'fail' THEN
                CONTINUE WHEN p.state NOT IN ('waiting-children', 'waiting', 'delayed', 'active');
                evs := evs || @S._fail_unstarted_children(l.pq, l.pid, now);
                pwhy := 'child ' || jid || ' failed: ' || why;
                UPDATE @S.jobs SET state = 'failed', failed_reason = pwhy, finished_at = now,
                    lock_token = NULL, lock_until = NULL, cancel_reason = NULL,
                    order_key = nextval('@S.order_seq')
                WHERE queue = l.pq AND id = l.pid
                RETURNING keep_failed INTO keep;
                PERFORM @S._count_finished(l.pq, 'failed', now, 1);
                evs := array_append(evs, @S._ev(l.pq, 'failed', l.pid,
                                                jsonb_build_object('reason', pwhy), now));
                rq := array_append(rq, l.pq);
                rid := array_append(rid, l.pid);
                rwhy := array_append(rwhy, pwhy);
                rkeep := array_append(rkeep, keep);
            ELSIF l.policy = 'ignore' THEN
                e := @S._resolved(l.pq, l.pid, now);
            ELSIF l.policy = 'drop' THEN
                DELETE FROM @S.deps
                WHERE parent_queue = l.pq AND parent_id = l.pid
                  AND child_queue = q AND child_id = jid;
                e := @S._resolved(l.pq, l.pid, now);
            ELSIF l.policy = 'continue' THEN
                IF p.state = 'waiting-children' THEN
                    e := @S._release(l.pq, l.pid, p.delay, now);
                END IF;
            ELSE
                evs := evs || @S._remove(l.pq, l.pid, now);
            END IF;
            IF e IS NOT NULL THEN
                evs := array_append(evs, e);
            END IF;
        END LOOP;
    END LOOP;
    FOR i IN REVERSE cardinality(rq) .. 1 LOOP
        PERFORM @S._retain(rq[i], rid[i], 'failed', rkeep[i]);
    END LOOP;
    RETURN evs;
END $$;
