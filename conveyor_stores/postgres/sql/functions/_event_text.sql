-- An event as notification text; one too large to share a notification loses its
-- bulky data fields (and, if still too large, all of them) and is marked truncated.
CREATE OR REPLACE FUNCTION @S._event_text(e jsonb) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t text := e::text;
BEGIN
    IF octet_length(t) <= @PIECE THEN
        RETURN t;
    END IF;
    e := jsonb_set(e, '{3}', coalesce((
        SELECT jsonb_object_agg(k, v) FROM jsonb_each(e -> 3) AS x(k, v)
        WHERE octet_length(v::text) <= 200), '{}'::jsonb) || '{"truncated": true}');
    t := e::text;
    IF octet_length(t) <= @PIECE THEN
        RETURN t;
    END IF;
    RETURN jsonb_build_array(e -> 0, e -> 1, e -> 2, '{"truncated": true}'::jsonb, e -> 4)::text;
END $$;
