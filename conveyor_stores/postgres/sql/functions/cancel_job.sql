-- CANCEL of a job: it and its unfinished descendants, the job last. Returns how many were
-- cancelled, or NULL when the job does not exist. Set-based, so a flow of many thousand
-- jobs is cancelled in a handful of statements: the descendants are found, locked (in
-- key order) and their states read again under the lock, so one that finished meanwhile
-- is left alone and one taken meanwhile gets a cancel request.
CREATE OR REPLACE FUNCTION @S.cancel_job(q text, jid text, why text, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    reason jsonb := jsonb_build_object('reason', why);
    pqs text[];
    pids text[];
    cqs text[];
    cids text[];
    fq text[];
    fid text[];
    fkeep bigint[];
    j record;
    r record;
    n integer := 0;
    k integer;
    i integer;
BEGIN
    SELECT state INTO j FROM @S.jobs WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF j.state IN ('completed', 'failed') THEN
        RETURN 0;
    END IF;
    -- The descendants (below finished ones too), with the parent each was reached from.
    WITH RECURSIVE tree(pq, pid, cq, cid) AS (
        SELECT d.parent_queue, d.parent_id, d.child_queue, d.child_id
        FROM @S.deps d WHERE d.parent_queue = q AND d.parent_id = jid
        UNION ALL
        SELECT d.parent_queue, d.parent_id, d.child_queue, d.child_id
        FROM tree t JOIN @S.deps d ON d.parent_queue = t.cq AND d.parent_id = t.cid
    )
    SELECT coalesce(array_agg(pq), '{}'), coalesce(array_agg(pid), '{}'),
           coalesce(array_agg(cq), '{}'), coalesce(array_agg(cid), '{}')
    INTO pqs, pids, cqs, cids FROM tree;
    PERFORM 1 FROM @S.jobs c JOIN unnest(cqs, cids) AS x(cq, cid)
        ON c.queue = x.cq AND c.id = x.cid
    ORDER BY c.queue, c.id FOR UPDATE OF c;
    -- Each unfinished descendant's pending dependency fails: its parent is cancelled too
    -- (or finished), so no policy applies.
    WITH live AS (
        SELECT x.pq, x.pid, x.cq, x.cid
        FROM unnest(pqs, pids, cqs, cids) AS x(pq, pid, cq, cid)
        JOIN @S.jobs c ON c.queue = x.cq AND c.id = x.cid
        WHERE c.state NOT IN ('completed', 'failed')
    ), resolved AS (
        UPDATE @S.deps d SET status = 'failed', value = NULL, reason = why
        FROM live
        WHERE d.parent_queue = live.pq AND d.parent_id = live.pid
          AND d.child_queue = live.cq AND d.child_id = live.cid AND d.status = 'pending'
        RETURNING d.parent_queue, d.parent_id
    )
    UPDATE @S.jobs p SET pending = p.pending - g.n
    FROM (SELECT parent_queue, parent_id, count(*)::integer AS n FROM resolved
          GROUP BY parent_queue, parent_id) g
    WHERE p.queue = g.parent_queue AND p.id = g.parent_id;
    -- Running ones get a cancel request (one that has one already is not counted).
    WITH requested AS (
        UPDATE @S.jobs c SET cancel_reason = why
        FROM unnest(cqs, cids) AS x(cq, cid)
        WHERE c.queue = x.cq AND c.id = x.cid AND c.state = 'active'
          AND c.cancel_reason IS NULL
        RETURNING c.queue, c.id
    )
    SELECT coalesce(array_agg(@S._ev(queue, 'cancelled', id, reason, now)), '{}'),
           count(*)::integer
    INTO evs, k FROM requested;
    n := n + k;
    -- Unstarted ones fail (FINAL FAILURE without a policy: their dependencies failed above).
    WITH failing AS (
        UPDATE @S.jobs c SET state = 'failed', failed_reason = why, finished_at = now,
            lock_token = NULL, lock_until = NULL, cancel_reason = NULL,
            order_key = nextval('@S.order_seq')
        FROM unnest(cqs, cids) AS x(cq, cid)
        WHERE c.queue = x.cq AND c.id = x.cid
          AND c.state IN ('waiting', 'delayed', 'waiting-children')
        RETURNING c.queue, c.id, c.keep_failed
    )
    SELECT coalesce(array_agg(queue), '{}'), coalesce(array_agg(id), '{}'),
           coalesce(array_agg(keep_failed), '{}')
    INTO fq, fid, fkeep FROM failing;
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
    FOR i IN 1 .. cardinality(fq) LOOP
        IF fkeep[i] IS NOT NULL THEN
            PERFORM @S._retain(fq[i], fid[i], 'failed', fkeep[i]);
        END IF;
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
