-- GROUPS, as a row trigger on jobs that fires only for a job with a group entering or
-- leaving waiting: moves its lane's count of waiting jobs, making the lane on its
-- first waiting job.
CREATE OR REPLACE FUNCTION @S._group_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'DELETE' AND NEW.state = 'waiting' THEN
        INSERT INTO @S.group_lanes AS l (queue, group_id, waiting)
        VALUES (NEW.queue, NEW.group_id, 1)
        ON CONFLICT (queue, group_id) DO UPDATE SET waiting = l.waiting + 1;
    ELSE
        UPDATE @S.group_lanes SET waiting = waiting - 1
        WHERE queue = OLD.queue AND group_id = OLD.group_id;
    END IF;
    RETURN NULL;
END $$;
