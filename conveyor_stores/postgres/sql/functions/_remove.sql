-- REMOVE of a job: it and its unfinished descendants that no parent outside the removal
-- still needs; its parents' pending dependencies on it are deleted and count as
-- resolved. A removed job's row goes first, so the checks of its children no longer see
-- it as a parent; a shared child still needed by a job not removed yet is looked at
-- again when that job is removed (its row is gone by then).
CREATE OR REPLACE FUNCTION @S._remove(q text, jid text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    lq text[];
    lid text[];
    sq text[] := ARRAY[q];
    sid text[] := ARRAY[jid];
    sdoomed boolean[] := ARRAY[true];
    wq text[] := '{}';
    wid text[] := '{}';
    top integer := 1;
    nq text;
    nid text;
    doomed boolean;
    r record;
    e jsonb;
    i integer;
BEGIN
    PERFORM 1 FROM @S.jobs WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN evs;
    END IF;
    SELECT coalesce(array_agg(l.pq), '{}'), coalesce(array_agg(l.pid), '{}') INTO lq, lid
    FROM @S._links(q, jid) l;
    WHILE top > 0 LOOP
        nq := sq[top];
        nid := sid[top];
        doomed := sdoomed[top];
        top := top - 1;
        IF doomed THEN
            DELETE FROM @S.jobs WHERE queue = nq AND id = nid;
            CONTINUE WHEN NOT FOUND;  -- reached twice, removed already
            evs := array_append(evs, @S._ev(nq, 'removed', nid, NULL, now));
        END IF;
        FOR r IN
            SELECT d.child_queue AS cq, d.child_id AS cid,
                   c.state IN ('completed', 'failed') AS finished,
                   c.pending + c.deps_processed + c.deps_failed + c.deps_ignored > 0 AS has,
                   EXISTS (SELECT 1 FROM @S.parent_links k
                           WHERE k.queue = c.queue AND k.id = c.id) AS shared
            FROM @S.deps d JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
            WHERE d.parent_queue = nq AND d.parent_id = nid
            ORDER BY d.pos
        LOOP
            IF r.finished THEN
                -- A finished child stays, but may hold unfinished children of its own.
                IF r.has AND NOT EXISTS (
                    SELECT 1 FROM unnest(wq, wid) AS x(q, id) WHERE x.q = r.cq AND x.id = r.cid
                ) THEN
                    wq := array_append(wq, r.cq);
                    wid := array_append(wid, r.cid);
                    top := top + 1;
                    sq[top] := r.cq;
                    sid[top] := r.cid;
                    sdoomed[top] := false;
                END IF;
                CONTINUE;
            END IF;
            -- A job of a tree has one parent, which is leaving or finished.
            CONTINUE WHEN r.shared AND @S._still_needed(r.cq, r.cid);
            IF r.has THEN
                top := top + 1;
                sq[top] := r.cq;
                sid[top] := r.cid;
                sdoomed[top] := true;
            ELSE
                PERFORM @S._delete(r.cq, r.cid);
                evs := array_append(evs, @S._ev(r.cq, 'removed', r.cid, NULL, now));
            END IF;
        END LOOP;
        IF doomed THEN
            PERFORM @S._delete(nq, nid);
        END IF;
    END LOOP;
    FOR i IN 1 .. cardinality(lq) LOOP
        DELETE FROM @S.deps
        WHERE parent_queue = lq[i] AND parent_id = lid[i]
          AND child_queue = q AND child_id = jid AND status = 'pending';
        IF FOUND THEN
            e := @S._resolved(lq[i], lid[i], now);
            IF e IS NOT NULL THEN
                evs := array_append(evs, e);
            END IF;
        END IF;
    END LOOP;
    RETURN evs;
END $$;
