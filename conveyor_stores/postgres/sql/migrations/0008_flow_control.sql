-- Flow control: deduplication entries (DEDUPLICATION of the store protocol: the job
-- that took the id and when the id expires, NULL without a ttl), the queue's global
-- concurrency (NULL: none) and its manual rate limit (no take before limited_until).
-- Idempotent, like 0005: an upgrade test gives an old schema these objects early.
CREATE TABLE IF NOT EXISTS @S.deduplication (
    queue text NOT NULL,
    id text NOT NULL,
    job_id text NOT NULL,
    expires_at double precision,
    PRIMARY KEY (queue, id)
);

ALTER TABLE @S.queues ADD COLUMN IF NOT EXISTS concurrency integer;
ALTER TABLE @S.queues ADD COLUMN IF NOT EXISTS limited_until double precision;

-- take_jobs gains an OUT parameter (concurrency_limited): its old form is dropped so the
-- new one can be created.
DROP FUNCTION IF EXISTS @S.take_jobs(text, integer, text, double precision, double precision,
                           integer, double precision);
