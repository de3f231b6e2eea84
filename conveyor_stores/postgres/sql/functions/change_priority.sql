-- Returns the job's state, or NULL when it does not exist.
CREATE OR REPLACE FUNCTION @S.change_priority(q text, jid text, prio integer, lf boolean)
RETURNS text LANGUAGE sql
@PLANNER AS $$
    UPDATE @S.jobs SET priority = prio, lifo = lf,
        order_key = CASE WHEN state <> 'waiting' THEN order_key
                         WHEN lf THEN -nextval('@S.order_seq')
                         ELSE nextval('@S.order_seq') END
    WHERE queue = q AND id = jid
    RETURNING state
$$;
