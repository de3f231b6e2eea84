-- Flow control: deduplication entries (DEDUPLICATION of the store protocol: the job
-- that took the id and when the id expires, NULL without a ttl) and the queue's global
-- concurrency (NULL: none).
CREATE TABLE @S.deduplication (
    queue text NOT NULL,
    id text NOT NULL,
    job_id text NOT NULL,
    expires_at double precision,
    PRIMARY KEY (queue, id)
);

ALTER TABLE @S.queues ADD COLUMN concurrency integer;
