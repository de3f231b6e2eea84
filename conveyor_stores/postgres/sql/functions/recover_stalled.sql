CREATE OR REPLACE FUNCTION @S.recover_stalled(q text, now double precision, max_stalled bigint,
                                              OUT ids text[], OUT failed boolean[])
LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    r record;
    cnt integer;
    cancelled text;
BEGIN
    PERFORM @S._worker_commit();
    ids := '{}';
    failed := '{}';
    FOR r IN
        SELECT id FROM @S.jobs
        WHERE queue = q AND state = 'active' AND lock_until < now
        ORDER BY order_key FOR UPDATE SKIP LOCKED
    LOOP
        -- An earlier recovery in this call may have removed or failed this one.
        UPDATE @S.jobs SET stalled_count = stalled_count + 1, lock_token = NULL,
            lock_until = NULL
        WHERE queue = q AND id = r.id AND state = 'active' AND lock_until < now
        RETURNING stalled_count, cancel_reason INTO cnt, cancelled;
        IF NOT FOUND THEN
            CONTINUE;
        END IF;
        evs := array_append(evs, @S._ev(q, 'stalled', r.id, jsonb_build_object('count', cnt),
                                        now));
        ids := array_append(ids, r.id);
        IF cancelled IS NOT NULL THEN
            evs := evs || @S._final_failure(q, r.id, cancelled, now);
            failed := array_append(failed, true);
        ELSIF cnt > max_stalled THEN
            evs := evs || @S._final_failure(q, r.id, @STALLED, now);
            failed := array_append(failed, true);
        ELSE
            evs := array_append(evs, @S._to_waiting(q, r.id, now));
            failed := array_append(failed, false);
        END IF;
    END LOOP;
    PERFORM @S._publish(evs);
END $$;
