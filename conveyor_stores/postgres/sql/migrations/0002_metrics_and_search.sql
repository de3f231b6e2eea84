-- Finished jobs per queue, kind ('completed' or 'failed'), minute and shard.
CREATE TABLE @S.metrics (
    queue text NOT NULL,
    kind text NOT NULL,
    minute bigint NOT NULL,
    shard integer NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (queue, kind, minute, shard)
);

-- Search pages newest first; neither column changes after the add, so state changes
-- never touch this index (PostgreSQL updates it heap-only when nothing indexed changes).
CREATE INDEX jobs_created ON @S.jobs (queue, created_at DESC, id COLLATE "C" DESC);

-- Substring search of ids, names and data through pg_trgm, where it can be installed
-- (it serves ILIKE; the store then keeps the matches of the exact rule).
DO $do$
DECLARE
    nsp text;
BEGIN
    -- Schemas migrating at once wait here, so each sees the extension once it exists.
    PERFORM pg_advisory_xact_lock(hashtextextended('conveyor-pg_trgm', 0));
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm is not available (%): search by text scans', SQLERRM;
    END;
    SELECT n.nspname INTO nsp FROM pg_extension e
    JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm';
    IF nsp IS NOT NULL THEN
        EXECUTE format(
            'CREATE INDEX jobs_text ON @S.jobs USING gin ('
            'id %1$I.gin_trgm_ops, name %1$I.gin_trgm_ops, data %1$I.gin_trgm_ops)', nsp);
    END IF;
END $do$;
