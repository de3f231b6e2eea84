-- RETENTION after a job finished in state st.
CREATE OR REPLACE FUNCTION @S._retain(q text, jid text, st text, keep bigint,
                                      upto bigint DEFAULT NULL)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    old_id text;
BEGIN
    IF keep IS NULL THEN
        RETURN;
    END IF;
    IF keep = 0 THEN
        PERFORM @S._delete(q, jid);
        RETURN;
    END IF;
    FOR old_id IN
        SELECT id FROM @S.jobs
        WHERE queue = q AND state = st AND (upto IS NULL OR order_key <= upto)
        ORDER BY order_key DESC OFFSET keep
    LOOP
        PERFORM @S._delete(q, old_id);
    END LOOP;
END $$;
