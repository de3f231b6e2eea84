CREATE OR REPLACE FUNCTION @S.retry_jobs(q text, st text, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    jid text;
    n integer := 0;
BEGIN
    FOR jid IN
        SELECT id FROM @S.jobs WHERE queue = q AND state = st ORDER BY order_key DESC
        FOR UPDATE
    LOOP
        evs := evs || @S._retry(q, jid, now);
        n := n + 1;
    END LOOP;
    PERFORM @S._publish(evs);
    RETURN n;
END $$;
