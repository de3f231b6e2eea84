-- Removes the given jobs (each as by REMOVE, skipping ones already gone).
CREATE OR REPLACE FUNCTION @S._remove_each(q text, jids text[], now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    jid text;
BEGIN
    FOREACH jid IN ARRAY jids LOOP
        evs := evs || @S._remove(q, jid, now);
    END LOOP;
    RETURN evs;
END $$;
