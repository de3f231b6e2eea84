-- Adds n finished jobs of kind k to the queue's count of the minute of now. Counts are
-- spread over a few rows per minute (by server process), so concurrent transactions
-- finishing jobs of one queue do not wait on one row; a new row also drops the minutes
-- that fell out of the kept window.
CREATE OR REPLACE FUNCTION @S._count_finished(q text, k text, now double precision, n integer)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    m bigint := floor(now / 60);
    sh integer := pg_backend_pid() % 8;
BEGIN
    UPDATE @S.metrics SET count = count + n
    WHERE queue = q AND kind = k AND minute = m AND shard = sh;
    IF NOT FOUND THEN
        INSERT INTO @S.metrics (queue, kind, minute, shard, count) VALUES (q, k, m, sh, n)
        ON CONFLICT (queue, kind, minute, shard)
        DO UPDATE SET count = @S.metrics.count + excluded.count;
        DELETE FROM @S.metrics WHERE queue = q AND kind = k AND minute < m - @METRICS_MINUTES;
    END IF;
END $$;
