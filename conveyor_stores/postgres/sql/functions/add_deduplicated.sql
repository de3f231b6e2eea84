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
    entry record;
    live record;
    fresh boolean;
    evs jsonb[] := '{}';
BEGIN
    INSERT INTO @S.deduplication (queue, id, job_id, expires_at)
    VALUES (q, did, jid, now + ttl)
    ON CONFLICT (queue, id) DO NOTHING;
    fresh := FOUND;
    IF NOT fresh THEN
        SELECT d.job_id, d.expires_at INTO entry FROM @S.deduplication d
        WHERE d.queue = q AND d.id = did FOR UPDATE;
        SELECT j.id, j.state INTO live FROM @S.jobs j
        WHERE j.queue = q AND j.id = entry.job_id FOR UPDATE;
        IF FOUND AND ((entry.expires_at IS NULL
                       AND live.state NOT IN ('completed', 'failed'))
                      OR now < entry.expires_at) THEN
            IF repl AND live.state = 'delayed' THEN
                UPDATE @S.jobs SET data = jdata WHERE queue = q AND id = live.id;
                evs := evs || @S._to_delayed(q, live.id, now + jdelay, now);
            END IF;
            IF ext AND ttl IS NOT NULL THEN
                UPDATE @S.deduplication SET expires_at = now + ttl
                WHERE queue = q AND id = did;
            END IF;
            evs := evs || @S._ev(q, 'deduplicated', live.id,
                                 jsonb_build_object('deduplication_id', did,
                                                    'deduplicated_job_id', jid), now);
            PERFORM @S._publish(evs);
            job_id := live.id;
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
