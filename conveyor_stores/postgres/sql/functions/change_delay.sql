-- Returns the job's state before the call, or NULL when it does not exist.
CREATE OR REPLACE FUNCTION @S.change_delay(q text, jid text, at double precision)
RETURNS text LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    st text;
BEGIN
    SELECT state INTO st FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF st = 'delayed' THEN
        UPDATE @S.jobs SET run_at = at WHERE queue = q AND id = jid;
        -- No event, but idle workers learn the new run_at (a notification that only
        -- wakes them: see the store's _WAKE_ONLY).
        PERFORM @S._publish(ARRAY[@S._ev(q, 'wake', jid, NULL, at)]);
    END IF;
    RETURN st;
END $$;
