-- STATE COUNTS, compaction: folds a queue's committed deltas into its base rows, in one
-- transaction, so every snapshot sees either the deltas or their sum in the base, never
-- both. Only under the queue's advisory lock, taken without waiting: of two callers one
-- folds and the other carries on, so no reader or worker ever waits here and two folds
-- never lock the same rows. Only in READ COMMITTED (a fold in an older snapshot could
-- meet deltas another fold already removed) and never in a read-only transaction.
CREATE OR REPLACE FUNCTION @S._fold_counts(q text) RETURNS void LANGUAGE plpgsql
@PLANNER AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed'
        OR current_setting('transaction_read_only') = 'on'
        OR NOT pg_try_advisory_xact_lock(
            hashtextextended(q, '@S.state_counts'::regclass::oid::bigint)) THEN
        RETURN;
    END IF;
    -- A fresh snapshot: it sees every fold committed before the lock was granted.
    WITH gone AS (
        DELETE FROM @S.state_count_deltas WHERE queue = q RETURNING state, n
    )
    INSERT INTO @S.state_counts AS c (queue, state, n)
    SELECT q, g.state, sum(g.n) FROM gone g GROUP BY g.state HAVING sum(g.n) <> 0
    ORDER BY g.state
    ON CONFLICT (queue, state) DO UPDATE SET n = c.n + excluded.n;
    IF FOUND THEN
        DELETE FROM @S.state_counts WHERE queue = q AND n = 0;
    END IF;
END $$;
