-- RELEASE of a parent leaving waiting-children.
CREATE OR REPLACE FUNCTION @S._release(q text, jid text, d double precision,
                                       now double precision)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF d > 0 THEN
        RETURN @S._to_delayed(q, jid, now + d, now);
    END IF;
    RETURN @S._to_waiting(q, jid, now);
END $$;
