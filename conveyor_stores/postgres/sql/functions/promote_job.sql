CREATE OR REPLACE FUNCTION @S.promote_job(q text, jid text, now double precision)
RETURNS text LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    st text;
BEGIN
    SELECT state INTO st FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF st = 'delayed' THEN
        PERFORM @S._publish(ARRAY[@S._to_waiting(q, jid, now)]);
    END IF;
    RETURN st;
END $$;
