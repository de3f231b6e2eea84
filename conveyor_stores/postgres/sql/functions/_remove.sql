-- REMOVE of a job: it and its unfinished descendants; its parent's pending dependency
-- on it is deleted and counts as resolved.
CREATE OR REPLACE FUNCTION @S._remove(q text, jid text, now double precision)
RETURNS jsonb[] LANGUAGE plpgsql AS $$
DECLARE
    evs jsonb[] := '{}';
    r record;
    j record;
    e jsonb;
BEGIN
    SELECT parent_queue, parent_id INTO j FROM @S.jobs WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN evs;
    END IF;
    FOR r IN
        -- A finished child stays, but may hold unfinished children of its own.
        WITH RECURSIVE tree(q, id, path, doomed) AS (
            SELECT q, jid, ARRAY[]::bigint[], true
            UNION ALL
            SELECT d.child_queue, d.child_id, t.path || d.pos,
                   c.state NOT IN ('completed', 'failed')
            FROM tree t
            JOIN @S.deps d ON d.parent_queue = t.q AND d.parent_id = t.id
            JOIN @S.jobs c ON c.queue = d.child_queue AND c.id = d.child_id
        )
        SELECT tree.q, tree.id FROM tree WHERE tree.doomed ORDER BY path
    LOOP
        PERFORM @S._delete(r.q, r.id);
        evs := array_append(evs, @S._ev(r.q, 'removed', r.id, NULL, now));
    END LOOP;
    IF j.parent_id IS NOT NULL THEN
        DELETE FROM @S.deps
        WHERE parent_queue = j.parent_queue AND parent_id = j.parent_id
          AND child_queue = q AND child_id = jid AND status = 'pending';
        IF FOUND THEN
            e := @S._resolved(j.parent_queue, j.parent_id, now);
            IF e IS NOT NULL THEN
                evs := array_append(evs, e);
            END IF;
        END IF;
    END IF;
    RETURN evs;
END $$;
