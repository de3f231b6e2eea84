-- STATE COUNTS. A queue's jobs per state, read in O(states) instead of counting the
-- queue's rows (seconds at a million jobs), exact and transactional.
--
-- A counter row per (queue, state) moved by every transition would be exact too, but
-- every worker of a queue would update the same few rows: each transition would wait for
-- the previous one to commit, and a transaction holding a counter row while it waits for
-- a job row another holds (and that one then wanting the counter) would deadlock. So the
-- transitions only ever INSERT: a statement trigger on jobs (_count_states) appends, per
-- statement, the change per (queue, state) read from its transition tables to
-- state_count_deltas. get_counts sums a queue's base rows in state_counts and its
-- deltas; folding the deltas into the base (_fold_counts) happens now and then, by
-- whoever gets the queue's advisory lock without waiting, in one transaction with the
-- deletion of the deltas it folded. Deleting jobs (remove, clean, obliterate, retention,
-- drain) appends negative deltas like any other statement, so counts stay exact and a
-- queue name used again starts from nothing left over.
CREATE TABLE @S.state_counts (
    queue text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL,
    PRIMARY KEY (queue, state)
);

-- Rows come and go all the time and the table stays small: vacuumed at a fixed number
-- of dead rows rather than a fraction of a tiny table.
CREATE TABLE @S.state_count_deltas (
    queue text NOT NULL,
    state text NOT NULL,
    n bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000);

CREATE INDEX state_count_deltas_queue ON @S.state_count_deltas (queue);

-- Counts the statements that appended deltas, to fold at one in FOLD_EVERY.
CREATE SEQUENCE @S.state_count_folds;

-- The triggers come first: they lock jobs against writes until this migration commits,
-- so the count below sees every job and every later change is a delta.
CREATE TRIGGER jobs_counted_insert AFTER INSERT ON @S.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._count_states();
CREATE TRIGGER jobs_counted_update AFTER UPDATE ON @S.jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._count_states();
CREATE TRIGGER jobs_counted_delete AFTER DELETE ON @S.jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._count_states();

INSERT INTO @S.state_counts (queue, state, n)
SELECT queue, state, count(*) FROM @S.jobs GROUP BY queue, state;
