-- Large flows. A parent's children by insertion order: a page is a range of this index.
-- Positions are never negative; the predicate keeps the index to the queries that state
-- it (the page reads), so lookups of one record by its key keep using the primary key
-- instead of walking a parent's children in this index.
CREATE INDEX deps_order ON @S.deps (parent_queue, parent_id, pos) WHERE pos >= 0;

-- Counters of a parent's dependency records per status beside ``pending``, moved by the
-- statement triggers on deps (created after the functions, in the next file's step).
ALTER TABLE @S.jobs
    ADD COLUMN deps_processed integer NOT NULL DEFAULT 0,
    ADD COLUMN deps_failed integer NOT NULL DEFAULT 0,
    ADD COLUMN deps_ignored integer NOT NULL DEFAULT 0;

UPDATE @S.jobs j
SET deps_processed = c.processed, deps_failed = c.failed, deps_ignored = c.ignored
FROM (
    SELECT parent_queue, parent_id,
           count(*) FILTER (WHERE status = 'processed') AS processed,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'ignored') AS ignored
    FROM @S.deps WHERE status <> 'pending' GROUP BY parent_queue, parent_id
) c
WHERE j.queue = c.parent_queue AND j.id = c.parent_id;
