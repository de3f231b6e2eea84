-- GROUPS, as a statement trigger on jobs: every statement that moves jobs with a group
-- into or out of waiting (add, promotion, release, retry, stall recovery, take, remove,
-- clean, drain, obliterate) moves each of their lanes' count of waiting jobs once, by
-- what it changed, making a lane on its group's first waiting job. Once per statement
-- and lane, however many jobs (a row trigger would update one lane row once per job: a
-- bulk add to one group would walk all the row's earlier versions each time), and in
-- lane order, so statements moving several lanes lock them in one order.
CREATE OR REPLACE FUNCTION @S._group_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO @S.group_lanes AS l (queue, group_id, waiting)
        SELECT queue, group_id, count(*) FROM new_rows
        WHERE group_id IS NOT NULL AND state = 'waiting'
        GROUP BY queue, group_id ORDER BY queue, group_id
        ON CONFLICT (queue, group_id) DO UPDATE SET waiting = l.waiting + excluded.waiting;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO @S.group_lanes AS l (queue, group_id, waiting)
        SELECT queue, group_id, -count(*) FROM old_rows
        WHERE group_id IS NOT NULL AND state = 'waiting'
        GROUP BY queue, group_id ORDER BY queue, group_id
        ON CONFLICT (queue, group_id) DO UPDATE SET waiting = l.waiting + excluded.waiting;
    ELSE
        INSERT INTO @S.group_lanes AS l (queue, group_id, waiting)
        SELECT queue, group_id, sum(n) FROM (
            SELECT queue, group_id, 1 AS n FROM new_rows
            WHERE group_id IS NOT NULL AND state = 'waiting'
            UNION ALL
            SELECT queue, group_id, -1 FROM old_rows
            WHERE group_id IS NOT NULL AND state = 'waiting'
        ) moved
        GROUP BY queue, group_id HAVING sum(n) <> 0 ORDER BY queue, group_id
        ON CONFLICT (queue, group_id) DO UPDATE SET waiting = l.waiting + excluded.waiting;
    END IF;
    RETURN NULL;
END $$;
