-- CANCEL of a job: it and its unfinished descendants, the job last. Returns how many were
-- cancelled, or NULL when the job does not exist. The descendants are handled a parent
-- at a time, each parent's children in a few statements that walk the parent's
-- dependency records and reach each child by its key (so the cost follows the flow, not
-- the table); each child is locked and its state read under the lock, so one that
-- finished meanwhile is left alone and one taken meanwhile gets a cancel request.
CREATE OR REPLACE FUNCTION @S.cancel_job(q text, jid text, why text, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    reason jsonb := jsonb_build_object('reason', why);
    pqs text[];
    pids text[];
    fq text[] := '{}';
    fid text[] := '{}';
    fkeep bigint[] := '{}';
    fkey bigint[] := '{}';
    sq text[] := '{}';
    sid text[] := '{}';
    j record;
    r record;
    n integer := 0;
    k integer;
BEGIN
    SELECT state INTO j FROM @S.jobs WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF j.state IN ('completed', 'failed') THEN
        RETURN 0;
    END IF;
    -- Every job of the subtree that has children (below finished ones too).
    WITH RECURSIVE tree(pq, pid, cq, cid) AS (
        SELECT d.parent_queue, d.parent_id, d.child_queue, d.child_id
        FROM @S.deps d WHERE d.parent_queue = q AND d.parent_id = jid
        UNION ALL
        SELECT d.parent_queue, d.parent_id, d.child_queue, d.child_id
        FROM tree t JOIN @S.deps d ON d.parent_queue = t.cq AND d.parent_id = t.cid
    )
    SELECT coalesce(array_agg(pq ORDER BY pq, pid), '{}'),
           coalesce(array_agg(pid ORDER BY pq, pid), '{}')
    INTO pqs, pids FROM (SELECT DISTINCT pq, pid FROM tree) parents;
    FOR r IN SELECT x.pq, x.pid FROM unnest(pqs, pids) AS x(pq, pid) LOOP
        PERFORM 1 FROM @S.deps d JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
        WHERE d.parent_queue = r.pq AND d.parent_id = r.pid
        ORDER BY c.queue, c.id FOR UPDATE OF c;
        -- The parent is cancelled too (or finished): its pending dependencies on
        -- unfinished children fail, and no policy applies.
        WITH resolved AS (
            UPDATE @S.deps d SET status = 'failed', value = NULL, reason = why
            FROM @S.jobs c
            WHERE d.parent_queue = r.pq AND d.parent_id = r.pid AND d.status = 'pending'
              AND c.queue = d.child_queue AND c.id = d.child_id
              AND c.state NOT IN ('completed', 'failed')
            RETURNING 1
        )
        SELECT count(*)::integer INTO k FROM resolved;
        IF k > 0 THEN
            UPDATE @S.jobs SET pending = pending - k WHERE queue = r.pq AND id = r.pid;
        END IF;
        -- Running children get a cancel request (one that has one already is not counted).
        WITH requested AS (
            UPDATE @S.jobs c SET cancel_reason = why
            FROM @S.deps d
            WHERE d.parent_queue = r.pq AND d.parent_id = r.pid
              AND c.queue = d.child_queue AND c.id = d.child_id
              AND c.state = 'active' AND c.cancel_reason IS NULL
            RETURNING c.queue, c.id
        )
        SELECT evs || coalesce(array_agg(@S._ev(queue, 'cancelled', id, reason, now)), '{}'),
               count(*)::integer
        INTO evs, k FROM requested;
        n := n + k;
        -- Unstarted children fail (FINAL FAILURE without a policy, see above).
        WITH failing AS (
            UPDATE @S.jobs c SET state = 'failed', failed_reason = why, finished_at = now,
                lock_token = NULL, lock_until = NULL, cancel_reason = NULL,
                order_key = nextval('@S.order_seq')
            FROM @S.deps d
            WHERE d.parent_queue = r.pq AND d.parent_id = r.pid
              AND c.queue = d.child_queue AND c.id = d.child_id
              AND c.state IN ('waiting', 'delayed', 'waiting-children')
              AND NOT EXISTS (SELECT 1 FROM @S.parent_links k
                              WHERE k.queue = c.queue AND k.id = c.id)
            RETURNING c.queue, c.id, c.keep_failed, c.order_key
        )
        SELECT fq || coalesce(array_agg(queue), '{}'), fid || coalesce(array_agg(id), '{}'),
               fkeep || coalesce(array_agg(keep_failed), '{}'),
               fkey || coalesce(array_agg(order_key), '{}')
        INTO fq, fid, fkeep, fkey FROM failing;
        -- Unstarted children with several parents fail below, once, by FINAL FAILURE.
        SELECT sq || coalesce(array_agg(c.queue), '{}'), sid || coalesce(array_agg(c.id), '{}')
        INTO sq, sid
        FROM @S.deps d JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
        WHERE d.parent_queue = r.pq AND d.parent_id = r.pid
          AND c.state IN ('waiting', 'delayed', 'waiting-children')
          AND EXISTS (SELECT 1 FROM @S.parent_links k WHERE k.queue = c.queue AND k.id = c.id);
    END LOOP;
    -- A shared job's dependencies held inside the subtree failed above; its FINAL FAILURE
    -- applies the policy of its parents outside the subtree (PARENT LINKS).
    FOR r IN SELECT DISTINCT x.q, x.id FROM unnest(sq, sid) AS x(q, id) ORDER BY x.q, x.id LOOP
        SELECT state INTO j FROM @S.jobs WHERE queue = r.q AND id = r.id FOR UPDATE;
        CONTINUE WHEN NOT FOUND OR j.state NOT IN ('waiting', 'delayed', 'waiting-children');
        evs := array_append(evs, @S._ev(r.q, 'cancelled', r.id, reason, now));
        evs := evs || @S._final_failure(r.q, r.id, why, now);
        n := n + 1;
    END LOOP;
    n := n + cardinality(fq);
    evs := evs || ARRAY(
        SELECT v.e FROM unnest(fq, fid) WITH ORDINALITY AS f(q, id, o)
        CROSS JOIN LATERAL (VALUES (1, @S._ev(f.q, 'cancelled', f.id, reason, now)),
                                   (2, @S._ev(f.q, 'failed', f.id, reason, now))) AS v(t, e)
        ORDER BY f.o, v.t
    );
    FOR r IN SELECT f.q, count(*)::integer AS c FROM unnest(fq) AS f(q) GROUP BY f.q LOOP
        PERFORM @S._count_finished(r.q, 'failed', now, r.c);
    END LOOP;
    -- RETENTION of each failed job as of its own failure (in the order they failed).
    FOR r IN
        SELECT f.q, f.id, f.keep, f.k FROM unnest(fq, fid, fkeep, fkey) AS f(q, id, keep, k)
        WHERE f.keep IS NOT NULL ORDER BY f.k
    LOOP
        PERFORM @S._retain(r.q, r.id, 'failed', r.keep, r.k);
    END LOOP;
    -- The job itself last: its own FINAL FAILURE applies its parent's policy.
    SELECT state, cancel_reason INTO j FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF FOUND AND j.state NOT IN ('completed', 'failed')
            AND NOT (j.state = 'active' AND j.cancel_reason IS NOT NULL) THEN
        evs := array_append(evs, @S._ev(q, 'cancelled', jid, reason, now));
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
