-- DEPENDENCY COUNTS, as a statement trigger on deps: the parents' counters of processed,
-- failed and ignored records move by what the statement changed, whichever transition
-- ran it. (``pending`` is moved by the transitions themselves: RELEASE CHECK reads it
-- under the parent's row lock.) Parents are updated one at a time in key order, the
-- order in which complete_jobs locks them, so two transactions never deadlock here.
-- Deleting records moves no counter: a record is deleted while pending (a dropped or
-- removed dependency; a retry makes a record pending again first) or with its parent.
CREATE OR REPLACE FUNCTION @S._count_dependencies() RETURNS trigger LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- A dependency is written pending, or processed when its child has completed
        -- already (add_dag): never failed or ignored.
        FOR r IN
            SELECT parent_queue AS pq, parent_id AS pid, count(*)::integer AS p
            FROM new_rows WHERE status = 'processed'
            GROUP BY parent_queue, parent_id ORDER BY parent_queue, parent_id
        LOOP
            UPDATE @S.jobs SET deps_processed = deps_processed + r.p
            WHERE queue = r.pq AND id = r.pid;
        END LOOP;
    ELSIF TG_OP = 'UPDATE' THEN
        FOR r IN
            SELECT pq, pid, sum(p)::integer AS p, sum(f)::integer AS f, sum(i)::integer AS i
            FROM (
                SELECT parent_queue AS pq, parent_id AS pid, (status = 'processed')::integer AS p,
                       (status = 'failed')::integer AS f, (status = 'ignored')::integer AS i
                FROM new_rows WHERE status <> 'pending'
                UNION ALL
                SELECT parent_queue, parent_id, -(status = 'processed')::integer,
                       -(status = 'failed')::integer, -(status = 'ignored')::integer
                FROM old_rows WHERE status <> 'pending'
            ) moved
            GROUP BY pq, pid HAVING sum(p) <> 0 OR sum(f) <> 0 OR sum(i) <> 0
            ORDER BY pq, pid
        LOOP
            UPDATE @S.jobs SET deps_processed = deps_processed + r.p,
                deps_failed = deps_failed + r.f, deps_ignored = deps_ignored + r.i
            WHERE queue = r.pq AND id = r.pid;
        END LOOP;
    END IF;
    RETURN NULL;
END $$;
