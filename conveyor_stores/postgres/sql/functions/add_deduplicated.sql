-- DEDUPLICATION of the store protocol: add one standalone job unless a live job holds
-- its deduplication id. The entry's row is locked first (inserted if missing, as a
-- placeholder the add below overwrites or the rollback takes away), so concurrent adds
-- of one id run one after the other and write exactly one job.
CREATE OR REPLACE FUNCTION @S.add_deduplicated(
    did text, ttl double precision, ext boolean, repl boolean,
    jid text, q text, jname text, jdata text, jopts text, jstate text, prio integer,
    jlifo boolean, jdelay double precision, keep_c bigint, keep_f bigint,
    now double precision, OUT job_id text, OUT written boolean)
LANGUAGE plpgsql AS $$
DECLARE
    entry record;
    live record;
    evs jsonb[] := '{}';
BEGIN
    INSERT INTO @S.deduplication (queue, id, job_id) VALUES (q, did, '')
    ON CONFLICT (queue, id) DO NOTHING;
    SELECT d.job_id, d.expires_at INTO entry FROM @S.deduplication d
    WHERE d.queue = q AND d.id = did FOR UPDATE;
    SELECT j.id, j.state INTO live FROM @S.jobs j WHERE j.queue = q AND j.id = entry.job_id
    FOR UPDATE;
    IF FOUND AND ((entry.expires_at IS NULL AND live.state NOT IN ('completed', 'failed'))
                  OR now < entry.expires_at) THEN
        IF repl AND live.state = 'delayed' THEN
            UPDATE @S.jobs SET data = jdata WHERE queue = q AND id = live.id;
            evs := evs || @S._to_delayed(q, live.id, now + jdelay, now);
        END IF;
        IF ext AND ttl IS NOT NULL THEN
            UPDATE @S.deduplication SET expires_at = now + ttl WHERE queue = q AND id = did;
        END IF;
        evs := evs || @S._ev(q, 'deduplicated', live.id,
                             jsonb_build_object('deduplication_id', did,
                                                'deduplicated_job_id', jid), now);
        PERFORM @S._publish(evs);
        job_id := live.id;
        written := false;
        RETURN;
    END IF;
    written := (@S.add_jobs(ARRAY[1], ARRAY[jid], ARRAY[q], ARRAY[jname], ARRAY[jdata],
                            ARRAY[jopts], ARRAY[jstate], ARRAY[prio], ARRAY[jlifo],
                            ARRAY[jdelay], ARRAY[keep_c], ARRAY[keep_f], ARRAY[NULL::text],
                            ARRAY[NULL::text], ARRAY[NULL::text], now))[1];
    IF written THEN
        UPDATE @S.deduplication SET job_id = jid, expires_at = now + ttl
        WHERE queue = q AND id = did;
    ELSIF entry.job_id = '' THEN
        DELETE FROM @S.deduplication WHERE queue = q AND id = did;
    END IF;
    job_id := jid;
END $$;
