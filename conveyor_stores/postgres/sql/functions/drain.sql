CREATE OR REPLACE FUNCTION @S.drain(q text, with_delayed boolean, now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    jids text[];
    n integer := 0;
    jid text;
BEGIN
    jids := ARRAY(
        SELECT id FROM (
            SELECT id, 0 AS s, priority::double precision AS a, order_key AS b, '' AS c
            FROM @S.jobs WHERE queue = q AND state = 'waiting'
            UNION ALL
            SELECT id, 1, run_at, 0, id FROM @S.jobs
            WHERE with_delayed AND queue = q AND state = 'delayed'
        ) x ORDER BY s, a, b, c);
    FOREACH jid IN ARRAY jids LOOP
        IF EXISTS (SELECT 1 FROM @S.jobs WHERE queue = q AND id = jid) THEN
            evs := evs || @S._remove(q, jid, now);
            n := n + 1;
        END IF;
    END LOOP;
    evs := array_append(evs, @S._ev(q, 'drained', NULL, jsonb_build_object('count', n), now));
    PERFORM @S._publish(evs);
    RETURN n;
END $$;
