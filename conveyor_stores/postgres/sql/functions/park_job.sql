-- PARK of an active job (wait_for_children): 1 parked, 0 no pending child (nothing
-- changes), -1 not active with this token (nothing changes). A job with a CANCEL REQUEST
-- goes through FINAL FAILURE instead (reported as parked: its handler stops).
CREATE OR REPLACE FUNCTION @S.park_job(q text, jid text, tok text, now double precision)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    j record;
BEGIN
    SELECT state, lock_token, pending, cancel_reason INTO j FROM @S.jobs
    WHERE queue = q AND id = jid FOR UPDATE;
    IF NOT FOUND OR j.state <> 'active' OR j.lock_token IS DISTINCT FROM tok THEN
        RETURN -1;
    END IF;
    IF j.cancel_reason IS NOT NULL THEN
        PERFORM @S._publish(@S._final_failure(q, jid, j.cancel_reason, now));
        RETURN 1;
    END IF;
    IF j.pending <= 0 THEN
        RETURN 0;
    END IF;
    -- No attempt is counted; the delay is spent, so its release enters waiting.
    UPDATE @S.jobs SET state = 'waiting-children', lock_token = NULL, lock_until = NULL,
        run_at = NULL, delay = 0, order_key = nextval('@S.order_seq')
    WHERE queue = q AND id = jid;
    PERFORM @S._publish(ARRAY[@S._ev(q, 'waiting-children', jid, NULL, now)]);
    RETURN 1;
END $$;
