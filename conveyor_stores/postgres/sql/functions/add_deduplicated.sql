-- DEDUPLICATION of the store protocol: add one standalone job unless a live job holds
-- its deduplication id. The common case, an id no entry holds yet, is one insert of the
-- entry and one of the job. Otherwise the entry's row is locked first, so concurrent
-- adds of one id run one after the other and write exactly one job.
CREATE OR REPLACE FUNCTION @S.add_deduplicated(
    did text, ttl double precision, ext boolean, repl boolean,
    jid text, q text, jname text, jdata text, jopts text, jstate text, prio integer,
    jlifo boolean, jdelay double precision, keep_c bigint, keep_f bigint, gid text,
    now double precision, OUT job_id text, OUT written boolean)
LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    held record;
    fresh boolean;
BEGIN
    INSERT INTO @S.deduplication (queue, id, job_id, expires_at)
    VALUES (q, did, jid, now + ttl)
    ON CONFLICT (queue, id) DO NOTHING;
    fresh := FOUND;
    IF NOT fresh THEN
        SELECT * INTO held FROM @S._dedup_live(q, did, ttl, ext, repl, jid, jdata, jdelay, now);
        IF held.live_id IS NOT NULL THEN
            PERFORM @S._publish(held.evs);
            job_id := held.live_id;
            written := false;
            RETURN;
        END IF;
    END IF;
    -- As add_jobs of one standalone job: an existing id writes nothing.
    INSERT INTO @S.jobs (id, queue, name, data, opts, state, priority, lifo, delay,
                         created_at, run_at, keep_completed, keep_failed, order_key, group_id)
    VALUES (jid, q, jname, jdata, jopts, jstate, prio, jlifo, jdelay, now,
            CASE WHEN jstate = 'delayed' THEN now + jdelay END, keep_c, keep_f,
            CASE WHEN jstate = 'waiting' AND jlifo THEN -nextval('@S.order_seq')
                 ELSE nextval('@S.order_seq') END, gid)
    ON CONFLICT (queue, id) DO NOTHING;
    written := FOUND;
    job_id := jid;
    IF written THEN
        IF NOT fresh THEN
            UPDATE @S.deduplication SET job_id = jid, expires_at = now + ttl
            WHERE queue = q AND id = did;
        END IF;
        PERFORM @S._publish(ARRAY[
            @S._ev(q, 'added', jid, jsonb_build_object('name', jname), now),
            @S._ev(q, jstate, jid, CASE WHEN jstate = 'delayed'
                                        THEN jsonb_build_object('run_at', now + jdelay) END,
                   now)]);
    ELSIF fresh THEN
        DELETE FROM @S.deduplication WHERE queue = q AND id = did;
    END IF;
END $$;
