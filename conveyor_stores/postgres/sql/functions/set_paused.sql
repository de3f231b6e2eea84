CREATE OR REPLACE FUNCTION @S.set_paused(q text, p boolean, now double precision)
RETURNS void LANGUAGE plpgsql
@PLANNER AS $$
BEGIN
    INSERT INTO @S.queues (queue, paused) VALUES (q, p)
    ON CONFLICT (queue) DO UPDATE SET paused = p;
    PERFORM @S._publish(ARRAY[@S._ev(q, CASE WHEN p THEN 'paused' ELSE 'resumed' END, NULL,
                                     NULL, now)]);
END $$;
