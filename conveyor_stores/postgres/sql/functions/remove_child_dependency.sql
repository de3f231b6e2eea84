-- REMOVE CHILD DEPENDENCY. Returns NULL when the job does not exist, else whether it
-- had a parent link (now cleared, with its further links).
CREATE OR REPLACE FUNCTION @S.remove_child_dependency(q text, jid text, now double precision)
RETURNS boolean LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    j record;
    l record;
    e jsonb;
    evs jsonb[] := '{}';
BEGIN
    SELECT parent_queue, parent_id INTO j FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF j.parent_id IS NULL THEN
        RETURN false;
    END IF;
    FOR l IN SELECT * FROM @S._links(q, jid) LOOP
        DELETE FROM @S.deps
        WHERE parent_queue = l.pq AND parent_id = l.pid
          AND child_queue = q AND child_id = jid AND status = 'pending';
        IF FOUND THEN
            e := @S._resolved(l.pq, l.pid, now);
            IF e IS NOT NULL THEN
                evs := array_append(evs, e);
            END IF;
        END IF;
    END LOOP;
    UPDATE @S.jobs SET parent_queue = NULL, parent_id = NULL, parent_policy = NULL
    WHERE queue = q AND id = jid;
    DELETE FROM @S.parent_links WHERE queue = q AND id = jid;
    PERFORM @S._publish(evs);
    RETURN true;
END $$;
