-- REMOVE CHILD DEPENDENCY. Returns NULL when the job does not exist, else whether it
-- had a parent link (now cleared).
CREATE OR REPLACE FUNCTION @S.remove_child_dependency(q text, jid text, now double precision)
RETURNS boolean LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    j record;
    e jsonb;
BEGIN
    SELECT parent_queue, parent_id INTO j FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF j.parent_id IS NULL THEN
        RETURN false;
    END IF;
    UPDATE @S.jobs SET parent_queue = NULL, parent_id = NULL, parent_policy = NULL
    WHERE queue = q AND id = jid;
    DELETE FROM @S.deps
    WHERE parent_queue = j.parent_queue AND parent_id = j.parent_id
      AND child_queue = q AND child_id = jid AND status = 'pending';
    IF FOUND THEN
        e := @S._resolved(j.parent_queue, j.parent_id, now);
        IF e IS NOT NULL THEN
            PERFORM @S._publish(ARRAY[e]);
        END IF;
    END IF;
    RETURN true;
END $$;
