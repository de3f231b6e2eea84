CREATE OR REPLACE FUNCTION @S._ev(q text, t text, jid text, d jsonb, ts double precision)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_array(q, t, jid, coalesce(d, '{}'::jsonb), ts)
$$;
