-- DEDUPLICATION step 1, shared by add_deduplicated and add_dag (DEDUPLICATED NODE): once
-- the entry of deduplication id `did` is known to exist, lock it and its job; if the
-- entry is live, carry out replace (`jdata`, `jdelay` of the job not written) and extend
-- on that job and return its id with the events to publish (`deduplicated` on it, naming
-- the job `jid` that was not written). A free entry returns NULL and no events.
CREATE OR REPLACE FUNCTION @S._dedup_live(
    q text, did text, ttl double precision, ext boolean, repl boolean,
    jid text, jdata text, jdelay double precision, now double precision,
    OUT live_id text, OUT evs jsonb[])
LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    entry record;
    live record;
BEGIN
    evs := '{}';
    SELECT d.job_id, d.expires_at INTO entry FROM @S.deduplication d
    WHERE d.queue = q AND d.id = did FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT j.id, j.state INTO live FROM @S.jobs j
    WHERE j.queue = q AND j.id = entry.job_id FOR UPDATE;
    IF NOT FOUND OR ((entry.expires_at IS NULL AND live.state NOT IN ('completed', 'failed'))
                     OR now < entry.expires_at) IS NOT TRUE THEN
        RETURN;
    END IF;
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
    live_id := live.id;
END $$;
