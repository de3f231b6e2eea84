CREATE OR REPLACE FUNCTION @S.release_jobs(q text, ids text[], toks text[],
                                           now double precision)
RETURNS boolean[] LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    res boolean[];
    i integer;
    cancelled text;
BEGIN
    PERFORM @S._worker_commit();
    res := array_fill(false, ARRAY[cardinality(ids)]);
    FOR i IN 1 .. coalesce(cardinality(ids), 0) LOOP
        UPDATE @S.jobs SET lock_token = NULL, lock_until = NULL
        WHERE queue = q AND id = ids[i] AND state = 'active' AND lock_token = toks[i]
        RETURNING cancel_reason INTO cancelled;
        IF FOUND THEN
            res[i] := true;
            IF cancelled IS NOT NULL THEN
                evs := evs || @S._final_failure(q, ids[i], cancelled, now);
            ELSE
                evs := array_append(evs, @S._to_waiting(q, ids[i], now));
            END IF;
        END IF;
    END LOOP;
    PERFORM @S._publish(evs);
    RETURN res;
END $$;
