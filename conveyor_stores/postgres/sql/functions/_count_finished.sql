-- Adds n finished jobs (n >= 1) of kind k to the queue's count of the minute of now.
-- Counts are spread over a few rows per minute (by server process), so concurrent
-- transactions finishing jobs of one queue do not wait on one row. One upsert writes the
-- row, new or not; it is new when its count is n (a row already there held 1 or more),
-- and a new row drops the minutes that fell out of the kept window.
CREATE OR REPLACE FUNCTION @S._count_finished(q text, k text, now double precision, n integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m bigint := floor(now / 60);
    total bigint;
BEGIN
    INSERT INTO @S.metrics AS t (queue, kind, minute, shard, count)
    VALUES (q, k, m, pg_backend_pid() % 8, n)
    ON CONFLICT (queue, kind, minute, shard) DO UPDATE SET count = t.count + excluded.count
    RETURNING t.count INTO total;
    IF total = n THEN
        DELETE FROM @S.metrics WHERE queue = q AND kind = k AND minute < m - @METRICS_MINUTES;
    END IF;
END $$;
