-- A queue's jobs per state: its base rows plus the deltas not yet folded, in one
-- snapshot, after an attempt to fold them (see _fold_counts: it never waits). The work
-- is bounded by the states and the deltas, never by the queue's jobs.
CREATE OR REPLACE FUNCTION @S.get_counts(q text) RETURNS TABLE (state text, n bigint)
LANGUAGE plpgsql @PLANNER AS $$
BEGIN
    PERFORM @S._fold_counts(q);
    RETURN QUERY
    SELECT c.state, sum(c.n)::bigint FROM (
        SELECT b.state, b.n FROM @S.state_counts b WHERE b.queue = q
        UNION ALL
        SELECT d.state, d.n FROM @S.state_count_deltas d WHERE d.queue = q
    ) c
    GROUP BY c.state HAVING sum(c.n) <> 0;
END $$;
