CREATE OR REPLACE FUNCTION @S.retry_job(q text, jid text, now double precision)
RETURNS text LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    st text;
BEGIN
    SELECT state INTO st FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF st = 'failed' THEN
        PERFORM @S._publish(@S._retry(q, jid, now));
    END IF;
    RETURN st;
END $$;
