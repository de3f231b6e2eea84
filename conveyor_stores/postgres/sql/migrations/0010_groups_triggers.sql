-- GROUPS: a lane's count of waiting jobs follows every entry into and exit from waiting
-- of a job with a group. A take counts the jobs it takes itself, in the update of the
-- lane's row that marks it served (_take_by_lanes: a take is the only move into active,
-- and only a take by lanes takes a job with a group). Every other move is noted by row
-- triggers whose WHEN never holds for a job without a group, so such jobs queue no
-- trigger event and cost nothing more (_group_waiting), and the notes are folded into
-- the lanes at commit (_group_waiting_fold, deferred) or earlier by a take that reads
-- them. Run again by migration 11 (which changed the update trigger), so idempotent.
DROP TRIGGER IF EXISTS jobs_group_waiting_insert ON @S.jobs;
CREATE TRIGGER jobs_group_waiting_insert AFTER INSERT ON @S.jobs
    FOR EACH ROW WHEN (NEW.group_id IS NOT NULL AND NEW.state = 'waiting')
    EXECUTE FUNCTION @S._group_waiting();
DROP TRIGGER IF EXISTS jobs_group_waiting_update ON @S.jobs;
CREATE TRIGGER jobs_group_waiting_update AFTER UPDATE OF state ON @S.jobs
    FOR EACH ROW WHEN (NEW.group_id IS NOT NULL AND NEW.state <> 'active'
                       AND (OLD.state = 'waiting') <> (NEW.state = 'waiting'))
    EXECUTE FUNCTION @S._group_waiting();
DROP TRIGGER IF EXISTS jobs_group_waiting_delete ON @S.jobs;
CREATE TRIGGER jobs_group_waiting_delete AFTER DELETE ON @S.jobs
    FOR EACH ROW WHEN (OLD.group_id IS NOT NULL AND OLD.state = 'waiting')
    EXECUTE FUNCTION @S._group_waiting();
-- The fold at commit hangs on the notes, not on jobs: jobs carry no deferred trigger.
DROP TRIGGER IF EXISTS group_waiting_deltas_fold ON @S.group_waiting_deltas;
CREATE CONSTRAINT TRIGGER group_waiting_deltas_fold AFTER INSERT ON @S.group_waiting_deltas
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION @S._group_waiting_fold();

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
