CREATE OR REPLACE FUNCTION @S.fail_jobs(q text, ids text[], toks text[], reasons text[],
                                        stacks jsonb, retry_ats double precision[],
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
        UPDATE @S.jobs SET attempts_made = attempts_made + 1, failed_reason = reasons[i],
            stacktrace = ARRAY(SELECT jsonb_array_elements_text(stacks -> (i - 1))),
            lock_token = NULL, lock_until = NULL
        WHERE queue = q AND id = ids[i] AND state = 'active' AND lock_token = toks[i]
        RETURNING cancel_reason INTO cancelled;
        IF NOT FOUND THEN
            CONTINUE;
        END IF;
        res[i] := true;
        IF cancelled IS NOT NULL THEN
            evs := evs || @S._final_failure(q, ids[i], cancelled, now);
        ELSIF retry_ats[i] IS NULL THEN
            evs := evs || @S._final_failure(q, ids[i], reasons[i], now);
        ELSIF retry_ats[i] <= now THEN
            evs := array_append(evs, @S._to_waiting(q, ids[i], now));
        ELSE
            evs := array_append(evs, @S._to_delayed(q, ids[i], retry_ats[i], now));
        END IF;
    END LOOP;
    PERFORM @S._publish(evs);
    RETURN res;
END $$;
