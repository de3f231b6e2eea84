-- Returns the job's state before removal, or NULL when it does not exist.
CREATE OR REPLACE FUNCTION @S.remove_job(q text, jid text, now double precision)
RETURNS text LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    st text;
BEGIN
    SELECT state INTO st FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF st IS NOT NULL AND st <> 'active' THEN
        PERFORM @S._publish(@S._remove(q, jid, now));
    END IF;
    RETURN st;
END $$;
