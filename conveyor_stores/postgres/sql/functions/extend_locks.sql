CREATE OR REPLACE FUNCTION @S.extend_locks(q text, ids text[], toks text[],
                                           until double precision)
RETURNS text[] LANGUAGE sql
@PLANNER AS $$
    SELECT @S._worker_commit();
    WITH upd AS (
        UPDATE @S.jobs j SET lock_until = until
        FROM unnest(ids, toks) WITH ORDINALITY AS x(id, tok, o)
        WHERE j.queue = q AND j.id = x.id AND j.state = 'active' AND j.lock_token = x.tok
        RETURNING x.id, x.o
    )
    SELECT coalesce(array_agg(id ORDER BY o), '{}') FROM upd
$$;
