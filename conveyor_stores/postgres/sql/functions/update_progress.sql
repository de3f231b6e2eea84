CREATE OR REPLACE FUNCTION @S.update_progress(q text, jid text, prog text,
                                              now double precision)
RETURNS boolean LANGUAGE plpgsql
@PLANNER AS $$
BEGIN
    UPDATE @S.jobs SET progress = prog WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM @S._publish(ARRAY[@S._ev(q, 'progress', jid, jsonb_build_object('progress', prog),
                                     now)]);
    RETURN true;
END $$;
