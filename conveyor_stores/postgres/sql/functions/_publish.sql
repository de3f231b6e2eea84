-- Publishes a transaction's events in as few notifications as the payload limit allows:
-- usually one; a big batch is cut, in order, into pieces of at most @LIMIT bytes.
CREATE OR REPLACE FUNCTION @S._publish(evs jsonb[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    whole text;
    piece text;
BEGIN
    IF evs IS NULL OR cardinality(evs) = 0 THEN
        RETURN;
    END IF;
    IF cardinality(evs) <= 64 THEN
        whole := array_to_json(evs)::text;
        IF octet_length(whole) <= @LIMIT THEN
            PERFORM pg_notify(@CHANNEL, whole);
            RETURN;
        END IF;
    END IF;
    -- Each event is at most @PIECE bytes, so grouping by running length / @PIECE keeps
    -- every piece under twice that.
    FOR piece IN
        SELECT '[' || string_agg(t, ',' ORDER BY o) || ']' FROM (
            SELECT o, t, (sum(octet_length(t) + 1) OVER (ORDER BY o)) / @PIECE AS chunk
            FROM (SELECT o, CASE WHEN octet_length(t0) <= @PIECE THEN t0
                                 ELSE @S._event_text(e) END AS t
                  FROM (SELECT e, o, e::text AS t0
                        FROM unnest(evs) WITH ORDINALITY AS x(e, o)) w) y
        ) z GROUP BY chunk ORDER BY chunk
    LOOP
        PERFORM pg_notify(@CHANNEL, piece);
    END LOOP;
END $$;
