CREATE OR REPLACE FUNCTION @S.add_jobs(
    grps integer[], ids text[], qs text[], names text[], datas text[], optss text[],
    states text[], prios integer[], lifos boolean[], delays double precision[],
    keep_cs bigint[], keep_fs bigint[], pids text[], pqs text[], policies text[],
    gids text[], now double precision)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[];
    skipped integer[];
    ngroups integer;
    ext record;
    pstate text;
BEGIN
    -- A job id used twice in one call fails the insert below with a unique violation.
    SELECT coalesce(array_agg(g), '{}') INTO skipped
    FROM unnest(grps, ids, qs) WITH ORDINALITY AS x(g, i, q, o)
    WHERE (o = 1 OR grps[o - 1] <> g)
      AND (SELECT 1 FROM @S.jobs j WHERE j.queue = x.q AND j.id = x.i LIMIT 1) IS NOT NULL;

    -- ADD TO AN EXISTING PARENT: a written group's first job may name an existing job,
    -- which must be waiting-children or active; it gets one more pending dependency.
    FOR ext IN
        SELECT x.pq, x.pid, count(*) AS n
        FROM unnest(grps, pids, pqs) WITH ORDINALITY AS x(g, pid, pq, o)
        WHERE (o = 1 OR grps[o - 1] <> g) AND x.pid IS NOT NULL AND NOT (x.g = ANY (skipped))
        GROUP BY x.pq, x.pid
        ORDER BY x.pq, x.pid
    LOOP
        SELECT state INTO pstate FROM @S.jobs WHERE queue = ext.pq AND id = ext.pid FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'job % not found in queue %', ext.pid, ext.pq
                USING ERRCODE = 'CV404', DETAIL = ext.pq, HINT = ext.pid;
        END IF;
        IF pstate NOT IN ('waiting-children', 'active') THEN
            RAISE EXCEPTION 'job % in queue % is %: only a job that is waiting-children or '
                'active can take new children', quote_literal(ext.pid), quote_literal(ext.pq),
                pstate USING ERRCODE = 'CV409';
        END IF;
        UPDATE @S.jobs SET pending = pending + ext.n WHERE queue = ext.pq AND id = ext.pid;
    END LOOP;

    WITH items AS (
        SELECT x.*, nextval('@S.order_seq') AS k FROM (
            SELECT * FROM unnest(grps, ids, qs, names, datas, optss, states, prios, lifos,
                                 delays, keep_cs, keep_fs, pids, pqs, policies, gids)
                WITH ORDINALITY AS t(g, id, queue, name, data, opts, state, priority, lifo,
                                     delay, keep_c, keep_f, pid, pq, policy, gid, o)
            WHERE NOT (t.g = ANY (skipped))
            ORDER BY t.o
        ) x
    ), children AS (
        SELECT pq AS cpq, pid AS cpid, count(*) AS n FROM items
        WHERE pid IS NOT NULL GROUP BY pq, pid
    ), ins AS (
        INSERT INTO @S.jobs (id, queue, name, data, opts, state, priority, lifo, delay,
                             created_at, run_at, keep_completed, keep_failed, parent_id,
                             parent_queue, parent_policy, order_key, pending, group_id)
        SELECT id, queue, name, data, opts, state, priority, lifo, delay, now,
               CASE WHEN state = 'delayed' THEN now + delay END, keep_c, keep_f, pid, pq,
               policy, CASE WHEN state = 'waiting' AND lifo THEN -k ELSE k END,
               coalesce(children.n, 0), gid
        FROM items LEFT JOIN children ON children.cpq = items.queue AND children.cpid = items.id
    ), dep AS (
        INSERT INTO @S.deps (parent_queue, parent_id, child_queue, child_id, pos, status)
        SELECT pq, pid, queue, id, k, 'pending' FROM items WHERE pid IS NOT NULL
    )
    SELECT array_agg(ev ORDER BY k, n) INTO evs FROM (
        SELECT k, 0 AS n, @S._ev(queue, 'added', id, jsonb_build_object('name', name), now) AS ev
        FROM items
        UNION ALL
        SELECT k, 1, @S._ev(queue, state, id,
                            CASE WHEN state = 'delayed'
                                 THEN jsonb_build_object('run_at', now + delay) END, now)
        FROM items
    ) e;
    PERFORM @S._publish(evs);
    ngroups := coalesce(grps[cardinality(grps)], 0);
    RETURN ARRAY(SELECT NOT (g = ANY (skipped)) FROM generate_series(1, ngroups) AS g ORDER BY g);
END $$;
