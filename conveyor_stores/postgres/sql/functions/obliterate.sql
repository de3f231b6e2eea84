CREATE OR REPLACE FUNCTION @S.obliterate(q text, force boolean, now double precision)
RETURNS boolean LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    jid text;
BEGIN
    IF NOT force AND EXISTS (SELECT 1 FROM @S.jobs WHERE queue = q AND state = 'active') THEN
        RETURN false;
    END IF;
    FOR jid IN
        SELECT id FROM @S.jobs WHERE queue = q
        ORDER BY array_position(ARRAY['waiting', 'delayed', 'active', 'completed', 'failed',
                                      'waiting-children'], state), order_key
    LOOP
        evs := evs || @S._remove(q, jid, now);
    END LOOP;
    DELETE FROM @S.queues WHERE queue = q;
    DELETE FROM @S.metrics WHERE queue = q;
    DELETE FROM @S.schedulers WHERE queue = q;
    DELETE FROM @S.deduplication WHERE queue = q;
    PERFORM @S._fold_lanes();
    DELETE FROM @S.group_lanes WHERE queue = q;
    PERFORM @S._publish(evs);
    RETURN true;
END $$;
