-- Writes a DAG (see StoreInterface.add_dag): the new jobs, then per edge in order the
-- child's parent link and the parent's dependency record, then RELEASE CHECK of the
-- new jobs in waiting-children. Refusals raise before anything is written: CV410 (a job
-- that exists), CV404 (a missing existing child), CV409 (a failed existing child).
-- DEDUPLICATED NODE comes first: per entry (dpos: 0-based index into the jobs), the
-- entry is taken for its node, or a live holder (_dedup_live) stands in for the node:
-- the node is left out (gone) and its edges take the holder as their child. Returns a
-- row per entry: the job holding its id and whether that is the node, written.
CREATE OR REPLACE FUNCTION @S.add_dag(
    dpos integer[], dids text[], dttls double precision[], dexts boolean[], dreps boolean[],
    ids text[], qs text[], names text[], datas text[], optss text[], states text[],
    prios integer[], lifos boolean[], delays double precision[], keep_cs bigint[],
    keep_fs bigint[], gids text[], epqs text[], epids text[], ecqs text[], ecids text[], epolicies text[],
    now double precision)
RETURNS TABLE (dedup_job_id text, dedup_job_written boolean) LANGUAGE plpgsql AS $$
DECLARE
    dedup_ids text[] := '{}';
    dedup_written boolean[] := '{}';
    gone integer[] := '{}';
    hqs text[] := '{}';
    hnodes text[] := '{}';
    hids text[] := '{}';
    devs jsonb[] := '{}';
    held record;
    dhid text;
    di integer;
    evs jsonb[];
    r record;
    c record;
    e jsonb;
    enth bigint[];
    enew boolean[];
    edone boolean[];
    evalue text[];
BEGIN
    FOR n IN 1 .. coalesce(array_length(dpos, 1), 0) LOOP
        di := dpos[n] + 1;
        INSERT INTO @S.deduplication (queue, id, job_id, expires_at)
        VALUES (qs[di], dids[n], ids[di], now + dttls[n])
        ON CONFLICT (queue, id) DO NOTHING;
        dhid := NULL;
        IF NOT FOUND THEN
            SELECT * INTO held FROM @S._dedup_live(qs[di], dids[n], dttls[n], dexts[n],
                                                   dreps[n], ids[di], datas[di], delays[di], now);
            dhid := held.live_id;
            IF dhid IS NULL THEN
                UPDATE @S.deduplication SET job_id = ids[di], expires_at = now + dttls[n]
                WHERE queue = qs[di] AND id = dids[n];
            ELSE
                devs := devs || held.evs;
            END IF;
        END IF;
        dedup_ids := dedup_ids || coalesce(dhid, ids[di]);
        dedup_written := dedup_written || (dhid IS NULL);
        IF dhid IS NOT NULL THEN
            gone := gone || di;
            hqs := hqs || qs[di];
            hnodes := hnodes || ids[di];
            hids := hids || dhid;
        END IF;
    END LOOP;
    IF cardinality(gone) > 0 THEN
        -- Edges to a left-out node go to its holder; a repeated edge is dropped.
        SELECT coalesce(array_agg(y.pq ORDER BY y.o), '{}'),
               coalesce(array_agg(y.pid ORDER BY y.o), '{}'),
               coalesce(array_agg(y.cq ORDER BY y.o), '{}'),
               coalesce(array_agg(y.cid ORDER BY y.o), '{}'),
               coalesce(array_agg(y.policy ORDER BY y.o), '{}')
        INTO epqs, epids, ecqs, ecids, epolicies
        FROM (
            SELECT DISTINCT ON (x.pq, x.pid, x.cq, coalesce(h.holder, x.cid))
                   x.pq, x.pid, x.cq, coalesce(h.holder, x.cid) AS cid, x.policy, x.o
            FROM unnest(epqs, epids, ecqs, ecids, epolicies)
                WITH ORDINALITY AS x(pq, pid, cq, cid, policy, o)
            LEFT JOIN unnest(hqs, hnodes, hids) AS h(q, node, holder)
                ON h.q = x.cq AND h.node = x.cid
            ORDER BY x.pq, x.pid, x.cq, coalesce(h.holder, x.cid), x.o
        ) y;
    END IF;

    SELECT x.q, x.id INTO r FROM unnest(qs, ids) WITH ORDINALITY AS x(q, id, o)
    JOIN @S.jobs j ON j.queue = x.q AND j.id = x.id WHERE x.o <> ALL (gone) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'CV410',
            MESSAGE = format('job id %L already exists in queue %L', r.id, r.q);
    END IF;
    -- Children already in the store, locked in a fixed order.
    FOR r IN
        SELECT DISTINCT x.cq, x.cid FROM unnest(ecqs, ecids) AS x(cq, cid)
        WHERE NOT EXISTS (SELECT 1 FROM unnest(qs, ids) AS n(q, id)
                          WHERE n.q = x.cq AND n.id = x.cid)
        ORDER BY x.cq, x.cid
    LOOP
        SELECT state INTO c FROM @S.jobs WHERE queue = r.cq AND id = r.cid FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'CV404', MESSAGE = r.cq, DETAIL = r.cid;
        END IF;
        IF c.state = 'failed' THEN
            RAISE EXCEPTION USING ERRCODE = 'CV409',
                MESSAGE = format('job %L of queue %L has failed: retry it before a new job '
                                 'depends on it', r.cid, r.cq);
        END IF;
    END LOOP;

    -- Per edge: which link of its child it is (1: the first), whether the child is new,
    -- and, for a completed child, its value.
    SELECT coalesce(array_agg(y.nth ORDER BY y.o), '{}'),
           coalesce(array_agg(y.new_child ORDER BY y.o), '{}'),
           coalesce(array_agg(y.done ORDER BY y.o), '{}'),
           coalesce(array_agg(y.value ORDER BY y.o), '{}')
    INTO enth, enew, edone, evalue
    FROM (
        SELECT x.o, row_number() OVER (PARTITION BY x.cq, x.cid ORDER BY x.o) AS nth,
               j.id IS NULL AS new_child, coalesce(j.state = 'completed', false) AS done,
               j.return_value AS value
        FROM unnest(ecqs, ecids) WITH ORDINALITY AS x(cq, cid, o)
        LEFT JOIN @S.jobs j ON j.queue = x.cq AND j.id = x.cid
    ) y;

    WITH items AS (
        SELECT t.*, nextval('@S.order_seq') AS k FROM (
            SELECT * FROM unnest(ids, qs, names, datas, optss, states, prios, lifos, delays,
                                 keep_cs, keep_fs, gids)
                WITH ORDINALITY AS u(id, queue, name, data, opts, state, priority, lifo, delay,
                                     keep_c, keep_f, gid, o)
            ORDER BY u.o
        ) t WHERE t.o <> ALL (gone)
    ), ins AS (
        INSERT INTO @S.jobs (id, queue, name, data, opts, state, priority, lifo, delay,
                             created_at, run_at, keep_completed, keep_failed, parent_id,
                             parent_queue, parent_policy, order_key, pending, group_id)
        SELECT i.id, i.queue, i.name, i.data, i.opts, i.state, i.priority, i.lifo, i.delay, now,
               CASE WHEN i.state = 'delayed' THEN now + i.delay END, i.keep_c, i.keep_f,
               f.pid, f.pq, f.policy,
               CASE WHEN i.state = 'waiting' AND i.lifo THEN -i.k ELSE i.k END,
               coalesce(w.n, 0), i.gid
        FROM items i
        LEFT JOIN (
            SELECT p.pq, p.pid, count(*) AS n FROM unnest(epqs, epids, ecqs, ecids, epolicies, enth, enew, edone, evalue)
            WITH ORDINALITY AS p(pq, pid, cq, cid, policy, nth, new_child, done, value, o)
            WHERE NOT p.done GROUP BY p.pq, p.pid
        ) w ON w.pq = i.queue AND w.pid = i.id
        LEFT JOIN unnest(epqs, epids, ecqs, ecids, epolicies, enth, enew, edone, evalue)
            WITH ORDINALITY AS f(pq, pid, cq, cid, policy, nth, new_child, done, value, o)
            ON f.cq = i.queue AND f.cid = i.id AND f.nth = 1
    )
    SELECT array_agg(ev ORDER BY k, n) INTO evs FROM (
        SELECT k, 0 AS n, @S._ev(queue, 'added', id, jsonb_build_object('name', name), now) AS ev
        FROM items
        UNION ALL
        SELECT k, 1, @S._ev(queue, state, id,
                            CASE WHEN state = 'delayed'
                                 THEN jsonb_build_object('run_at', now + delay) END, now)
        FROM items
    ) ev;
    -- Further links of new children, in order.
    INSERT INTO @S.parent_links (queue, id, seq, parent_queue, parent_id, policy)
    SELECT x.cq, x.cid, x.nth - 2, x.pq, x.pid, x.policy FROM unnest(epqs, epids, ecqs, ecids, epolicies, enth, enew, edone, evalue)
            WITH ORDINALITY AS x(pq, pid, cq, cid, policy, nth, new_child, done, value, o)
    WHERE x.new_child AND x.nth > 1;
    -- Links of children already in the store: their first parent if they have none.
    FOR r IN SELECT * FROM unnest(epqs, epids, ecqs, ecids, epolicies, enth, enew, edone, evalue)
            WITH ORDINALITY AS x(pq, pid, cq, cid, policy, nth, new_child, done, value, o)
             WHERE NOT x.new_child ORDER BY x.o LOOP
        UPDATE @S.jobs SET parent_queue = r.pq, parent_id = r.pid, parent_policy = r.policy
        WHERE queue = r.cq AND id = r.cid AND parent_id IS NULL;
        IF NOT FOUND THEN
            INSERT INTO @S.parent_links (queue, id, seq, parent_queue, parent_id, policy)
            SELECT r.cq, r.cid, coalesce(max(k.seq) + 1, 0), r.pq, r.pid, r.policy
            FROM @S.parent_links k WHERE k.queue = r.cq AND k.id = r.cid;
        END IF;
    END LOOP;
    INSERT INTO @S.deps (parent_queue, parent_id, child_queue, child_id, pos, status, value)
    SELECT x.pq, x.pid, x.cq, x.cid, nextval('@S.order_seq'),
           CASE WHEN x.done THEN 'processed' ELSE 'pending' END,
           CASE WHEN x.done THEN x.value END
    FROM (SELECT * FROM unnest(epqs, epids, ecqs, ecids, epolicies, enth, enew, edone, evalue)
            WITH ORDINALITY AS e(pq, pid, cq, cid, policy, nth, new_child, done, value, o) ORDER BY e.o) x;
    -- RELEASE CHECK of the new jobs waiting for children, in the order given.
    FOR r IN
        SELECT u.id, u.q, j.delay FROM unnest(ids, qs) WITH ORDINALITY AS u(id, q, o)
        JOIN @S.jobs j ON j.queue = u.q AND j.id = u.id
        WHERE j.state = 'waiting-children' AND j.pending <= 0 ORDER BY u.o
    LOOP
        e := @S._release(r.q, r.id, r.delay, now);
        evs := array_append(evs, e);
    END LOOP;
    PERFORM @S._publish(devs || evs);
    RETURN QUERY SELECT * FROM unnest(dedup_ids, dedup_written);
END $$;
