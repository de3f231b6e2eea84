-- A page of search_jobs found through the trigram index (jobs_text): every job below the
-- cursor whose id, name or data matches the ILIKE pattern, newest first. The queue is
-- compared in a form no index serves, so the plan is the trigram index alone, however
-- stale the statistics (the store keeps the exact matches of the rule).
CREATE OR REPLACE FUNCTION @S.search_text(q text, after_ts double precision, after_id text,
                                          nm text, sts text[], pat text, lim integer)
RETURNS SETOF @S.jobs LANGUAGE sql STABLE
SET enable_indexscan = off SET enable_seqscan = off SET jit = off AS $$
    SELECT * FROM @S.jobs
    WHERE (id ILIKE pat OR name ILIKE pat OR data ILIKE pat)
      AND queue || '' = q AND (created_at, id COLLATE "C") < (after_ts, after_id)
      AND (nm IS NULL OR name = nm) AND (sts IS NULL OR state = ANY(sts))
    ORDER BY created_at DESC, id COLLATE "C" DESC
    LIMIT lim
$$;
