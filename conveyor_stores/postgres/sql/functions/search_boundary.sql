-- Where a search walk from the cursor stops: the @SEARCH_SCAN-th job below it, if any.
CREATE OR REPLACE FUNCTION @S.search_boundary(q text, after_ts double precision, after_id text,
                                              OUT created_at double precision, OUT id text)
LANGUAGE sql STABLE
SET enable_bitmapscan = off SET enable_seqscan = off SET enable_sort = off SET jit = off AS $$
    SELECT j.created_at, j.id FROM @S.jobs j
    WHERE j.queue = q AND (j.created_at, j.id COLLATE "C") < (after_ts, after_id)
    ORDER BY j.created_at DESC, j.id COLLATE "C" DESC
    OFFSET @SEARCH_SCAN - 1 LIMIT 1
$$;
