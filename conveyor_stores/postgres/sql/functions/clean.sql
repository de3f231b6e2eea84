CREATE OR REPLACE FUNCTION @S.clean(q text, st text, older_than double precision, lim bigint,
                                    now double precision)
RETURNS text[] LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    jids text[];
    done text[] := '{}';
    jid text;
BEGIN
    IF st IN ('completed', 'failed') THEN
        jids := ARRAY(SELECT id FROM @S.jobs
                      WHERE queue = q AND state = st AND finished_at <= older_than
                      ORDER BY order_key LIMIT lim);
    ELSIF st = 'delayed' THEN
        jids := ARRAY(SELECT id FROM @S.jobs
                      WHERE queue = q AND state = st AND created_at <= older_than
                      ORDER BY run_at, id LIMIT lim);
    ELSIF st = 'waiting' THEN
        jids := ARRAY(SELECT id FROM @S.jobs
                      WHERE queue = q AND state = st AND created_at <= older_than
                      ORDER BY priority, order_key LIMIT lim);
    ELSE
        jids := ARRAY(SELECT id FROM @S.jobs
                      WHERE queue = q AND state = st AND created_at <= older_than
                      ORDER BY order_key LIMIT lim);
    END IF;
    FOREACH jid IN ARRAY jids LOOP
        IF EXISTS (SELECT 1 FROM @S.jobs WHERE queue = q AND id = jid) THEN
            evs := evs || @S._remove(q, jid, now);
            done := array_append(done, jid);
        END IF;
    END LOOP;
    IF cardinality(done) > 0 THEN
        evs := array_append(evs, @S._ev(q, 'cleaned', NULL,
                                        jsonb_build_object('count', cardinality(done)), now));
    END IF;
    PERFORM @S._publish(evs);
    RETURN done;
END $$;
