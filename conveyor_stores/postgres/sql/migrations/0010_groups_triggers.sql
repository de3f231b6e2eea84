-- GROUPS: a lane's count of waiting jobs follows every statement that moves jobs with a
-- group into or out of waiting (see _group_waiting).
DROP TRIGGER IF EXISTS jobs_group_waiting_insert ON @S.jobs;
CREATE TRIGGER jobs_group_waiting_insert AFTER INSERT ON @S.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._group_waiting();
DROP TRIGGER IF EXISTS jobs_group_waiting_update ON @S.jobs;
CREATE TRIGGER jobs_group_waiting_update AFTER UPDATE ON @S.jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._group_waiting();
DROP TRIGGER IF EXISTS jobs_group_waiting_delete ON @S.jobs;
CREATE TRIGGER jobs_group_waiting_delete AFTER DELETE ON @S.jobs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._group_waiting();

-- The counts of the jobs already there (the triggers above lock jobs against writes
-- until this migration commits).
INSERT INTO @S.group_lanes AS l (queue, group_id, waiting)
SELECT queue, group_id, count(*) FROM @S.jobs
WHERE state = 'waiting' AND group_id IS NOT NULL
GROUP BY queue, group_id
ON CONFLICT (queue, group_id) DO UPDATE SET waiting = excluded.waiting;
UPDATE @S.group_lanes l SET waiting = 0
WHERE l.waiting > 0 AND NOT EXISTS (
    SELECT 1 FROM @S.jobs j
    WHERE j.queue = l.queue AND j.group_id = l.group_id AND j.state = 'waiting');
