-- Moves a queue's due delayed jobs to waiting, earliest first.
CREATE OR REPLACE FUNCTION @S._promote_due(q text, upto double precision, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[];
BEGIN
    WITH due AS (
        SELECT s.id, s.lifo, nextval('@S.order_seq') AS k FROM (
            SELECT id, lifo FROM @S.jobs
            WHERE queue = q AND state = 'delayed' AND run_at <= upto
            ORDER BY run_at, id FOR UPDATE SKIP LOCKED
        ) s
    ), moved AS (
        UPDATE @S.jobs j SET state = 'waiting', run_at = NULL,
            order_key = CASE WHEN due.lifo THEN -due.k ELSE due.k END
        FROM due WHERE j.queue = q AND j.id = due.id
        RETURNING j.id, due.k
    )
    SELECT array_agg(@S._ev(q, 'waiting', moved.id, NULL, now) ORDER BY moved.k) INTO evs
    FROM moved;
    RETURN coalesce(evs, '{}');
END $$;
