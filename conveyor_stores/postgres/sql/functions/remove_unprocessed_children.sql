-- REMOVE UNPROCESSED CHILDREN. Returns how many children were removed, or NULL when the
-- job does not exist. Each child is locked and its state read before it is removed, so
-- a child taken meanwhile (now active) is left to finish.
CREATE OR REPLACE FUNCTION @S.remove_unprocessed_children(q text, jid text,
                                                          now double precision)
RETURNS integer LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    evs jsonb[] := '{}';
    r record;
    st text;
    removed integer := 0;
    gone integer := 0;
    e jsonb;
BEGIN
    PERFORM 1 FROM @S.jobs WHERE queue = q AND id = jid;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    FOR r IN
        SELECT child_queue, child_id FROM @S.deps
        WHERE parent_queue = q AND parent_id = jid AND status = 'pending' ORDER BY pos
    LOOP
        SELECT state INTO st FROM @S.jobs WHERE queue = r.child_queue AND id = r.child_id
        FOR UPDATE;
        IF NOT FOUND THEN
            DELETE FROM @S.deps
            WHERE parent_queue = q AND parent_id = jid AND child_queue = r.child_queue
              AND child_id = r.child_id AND status = 'pending';
            IF FOUND THEN
                gone := gone + 1;
            END IF;
        ELSIF st <> 'active' THEN
            evs := evs || @S._remove(r.child_queue, r.child_id, now);
            removed := removed + 1;
        END IF;
    END LOOP;
    IF gone > 0 THEN
        e := @S._resolved(q, jid, now, gone);
        IF e IS NOT NULL THEN
            evs := array_append(evs, e);
        END IF;
    END IF;
    PERFORM @S._publish(evs);
    RETURN removed;
END $$;
