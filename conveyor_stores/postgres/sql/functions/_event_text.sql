-- An event too large to share a notification (_publish sends the others whole), as
-- notification text: it loses its bulky data fields and is marked truncated. That is
-- always small enough: every event's data has at most three fields, names and ids are
-- at most 512 bytes each, and the fields kept are at most 200 bytes.
CREATE OR REPLACE FUNCTION @S._event_text(e jsonb) RETURNS text LANGUAGE sql AS $$
    SELECT jsonb_set(e, '{3}', coalesce((
        SELECT jsonb_object_agg(k, v) FROM jsonb_each(e -> 3) AS x(k, v)
        WHERE octet_length(v::text) <= 200), '{}'::jsonb) || '{"truncated": true}')::text
$$;
