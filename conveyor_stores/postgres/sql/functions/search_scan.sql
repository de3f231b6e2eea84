-- A page of search_jobs that walks the queue newest first, looking at no more than
-- @SEARCH_SCAN jobs below the cursor (nm, sts and pat are NULL when not filtering; pat is
-- an ILIKE pattern, the store keeps the exact matches of the rule). The walk is always an
-- ordered scan of jobs_created, whatever the statistics say.
CREATE OR REPLACE FUNCTION @S.search_scan(q text, after_ts double precision, after_id text,
                                          nm text, sts text[], pat text, lim integer)
RETURNS SETOF @S.jobs LANGUAGE sql STABLE
SET enable_bitmapscan = off SET enable_seqscan = off SET enable_sort = off SET jit = off AS $$
    WITH scan AS MATERIALIZED (
        SELECT * FROM @S.jobs
        WHERE queue = q AND (created_at, id COLLATE "C") < (after_ts, after_id)
        ORDER BY created_at DESC, id COLLATE "C" DESC
        LIMIT @SEARCH_SCAN
    )
    SELECT * FROM scan
    WHERE (nm IS NULL OR name = nm) AND (sts IS NULL OR state = ANY(sts))
      AND (pat IS NULL OR id ILIKE pat OR name ILIKE pat OR data ILIKE pat)
    ORDER BY created_at DESC, id COLLATE "C" DESC
    LIMIT lim
$$;
