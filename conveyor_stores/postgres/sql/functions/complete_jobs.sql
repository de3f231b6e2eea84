CREATE OR REPLACE FUNCTION @S.complete_jobs(q text, ids text[], toks text[], vals text[],
                                            now double precision)
RETURNS boolean[] LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    res boolean[];
    done record;
    r record;
    e jsonb;
    pqs text[] := '{}';
    pids text[] := '{}';
    cids text[] := '{}';
    cvals text[] := '{}';
    kept boolean := false;
    finished integer := 0;
BEGIN
    PERFORM @S._worker_commit();
    res := array_fill(false, ARRAY[cardinality(ids)]);
    FOR done IN
        WITH items AS (
            -- Order keys follow the items, so RETENTION sees them finish in order.
            SELECT i.*, nextval('@S.order_seq') AS k FROM (
                SELECT * FROM unnest(ids, toks, vals) WITH ORDINALITY AS t(id, tok, val, o)
                ORDER BY t.o
            ) i
        ), upd AS (
            UPDATE @S.jobs j SET state = 'completed', return_value = x.val, finished_at = now,
                attempts_made = j.attempts_made + 1, lock_token = NULL, lock_until = NULL,
                order_key = x.k
            FROM items x
            WHERE j.queue = q AND j.id = x.id AND j.state = 'active' AND j.lock_token = x.tok
              AND j.cancel_reason IS NULL
            RETURNING x.o, j.id, j.return_value, j.parent_queue, j.parent_id, j.keep_completed
        )
        SELECT * FROM upd ORDER BY o
    LOOP
        res[done.o] := true;
        finished := finished + 1;
        evs := array_append(evs, @S._ev(q, 'completed', done.id,
                                        jsonb_build_object('return_value', done.return_value),
                                        now));
        IF done.parent_id IS NOT NULL THEN
            pqs := array_append(pqs, done.parent_queue);
            pids := array_append(pids, done.parent_id);
            cids := array_append(cids, done.id);
            cvals := array_append(cvals, done.return_value);
            -- A DAG's shared job resolves its dependency in every parent.
            FOR r IN SELECT parent_queue, parent_id FROM @S.parent_links
                     WHERE queue = q AND id = done.id ORDER BY seq LOOP
                pqs := array_append(pqs, r.parent_queue);
                pids := array_append(pids, r.parent_id);
                cids := array_append(cids, done.id);
                cvals := array_append(cvals, done.return_value);
            END LOOP;
        END IF;
        kept := kept OR done.keep_completed IS NOT NULL;
    END LOOP;
    IF finished > 0 THEN
        PERFORM @S._count_finished(q, 'completed', now, finished);
    END IF;
    IF finished < coalesce(cardinality(ids), 0) THEN
        -- CANCEL REQUEST: such a job fails for good with the request's reason instead.
        FOR done IN
            UPDATE @S.jobs j SET attempts_made = j.attempts_made + 1
            FROM unnest(ids, toks) WITH ORDINALITY AS x(id, tok, o)
            WHERE j.queue = q AND j.id = x.id AND j.state = 'active' AND j.lock_token = x.tok
              AND j.cancel_reason IS NOT NULL
            RETURNING x.o, j.id, j.cancel_reason
        LOOP
            res[done.o] := true;
            evs := evs || @S._final_failure(q, done.id, done.cancel_reason, now);
        END LOOP;
    END IF;
    IF cardinality(pqs) > 0 THEN
        -- Each parent's dependency on its child becomes processed; those that were
        -- pending resolve, counted per parent (parents locked in a fixed order).
        FOR r IN
            WITH resolved AS (
                UPDATE @S.deps d SET status = 'processed', value = x.val, reason = NULL
                FROM unnest(pqs, pids, cids, cvals) AS x(pq, pid, cid, val)
                WHERE d.parent_queue = x.pq AND d.parent_id = x.pid
                  AND d.child_queue = q AND d.child_id = x.cid AND d.status = 'pending'
                RETURNING d.parent_queue, d.parent_id
            )
            SELECT parent_queue, parent_id, count(*)::integer AS n FROM resolved
            GROUP BY parent_queue, parent_id ORDER BY parent_queue, parent_id
        LOOP
            e := @S._resolved(r.parent_queue, r.parent_id, now, r.n);
            IF e IS NOT NULL THEN
                evs := array_append(evs, e);
            END IF;
        END LOOP;
        UPDATE @S.deps d SET status = 'processed', value = x.val, reason = NULL
        FROM unnest(pqs, pids, cids, cvals) AS x(pq, pid, cid, val)
        WHERE d.parent_queue = x.pq AND d.parent_id = x.pid
          AND d.child_queue = q AND d.child_id = x.cid AND d.status IN ('failed', 'ignored');
    END IF;
    IF kept THEN
        -- RETENTION of each item as of its own completion: later items of the batch
        -- (higher order keys) do not count against it.
        FOR done IN
            SELECT x.id, x.ok FROM unnest(ids, res) WITH ORDINALITY AS x(id, ok, o)
            WHERE x.ok ORDER BY x.o
        LOOP
            SELECT keep_completed, order_key INTO r FROM @S.jobs
            WHERE queue = q AND id = done.id AND state = 'completed';
            IF FOUND AND r.keep_completed IS NOT NULL THEN
                PERFORM @S._retain(q, done.id, 'completed', r.keep_completed, r.order_key);
            END IF;
        END LOOP;
    END IF;
    PERFORM @S._publish(evs);
    RETURN res;
END $$;
