CREATE OR REPLACE FUNCTION @S.promote_jobs(q text, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[];
BEGIN
    evs := @S._promote_due(q, 'Infinity'::double precision, now);
    PERFORM @S._publish(evs);
    RETURN cardinality(evs);
END $$;
