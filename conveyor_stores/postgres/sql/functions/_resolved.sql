-- A pending dependency of a parent stopped being pending: RELEASE CHECK. The counter
-- update locks the parent row, so of two children resolving at once the later
-- transaction always sees the count left by the earlier one.
CREATE OR REPLACE FUNCTION @S._resolved(pq text, pid text, now double precision,
                                        n integer DEFAULT 1)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    p record;
BEGIN
    UPDATE @S.jobs SET pending = pending - n WHERE queue = pq AND id = pid
    RETURNING state, delay, pending INTO p;
    IF FOUND AND p.state = 'waiting-children' AND p.pending <= 0 THEN
        RETURN @S._release(pq, pid, p.delay, now);
    END IF;
    RETURN NULL;
END $$;
