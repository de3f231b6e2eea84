CREATE OR REPLACE FUNCTION @S._to_delayed(q text, jid text, at double precision,
                                          now double precision)
RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    UPDATE @S.jobs SET state = 'delayed', run_at = at, order_key = nextval('@S.order_seq')
    WHERE queue = q AND id = jid;
    RETURN @S._ev(q, 'delayed', jid, jsonb_build_object('run_at', at), now);
END $$;
