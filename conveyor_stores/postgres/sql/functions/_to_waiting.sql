-- A job enters waiting: behind its priority, or in front if lifo.
CREATE OR REPLACE FUNCTION @S._to_waiting(q text, jid text, now double precision)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE @S.jobs SET state = 'waiting', run_at = NULL,
        order_key = CASE WHEN lifo THEN -nextval('@S.order_seq') ELSE nextval('@S.order_seq') END
    WHERE queue = q AND id = jid;
    RETURN @S._ev(q, 'waiting', jid, NULL, now);
END $$;
