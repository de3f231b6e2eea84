-- GROUPS, as a row trigger on jobs that fires only for a job with a group entering or
-- leaving waiting (add, promotion, release, retry, stall recovery, take, remove, clean,
-- drain, obliterate): notes the move in group_waiting_deltas, insert only, and marks the
-- transaction as having moves to fold (see _fold_lanes, which the deferred trigger
-- _group_waiting_fold runs at commit). Updating the lane's row here instead would
-- make a bulk add to one group walk all the row's earlier versions for every job.
CREATE OR REPLACE FUNCTION @S._group_waiting() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    mark text := ',' || '@S.group_lanes'::regclass::oid || ',';
    pending text := coalesce(current_setting('conveyor.lanes_pending', true), '');
BEGIN
    IF TG_OP <> 'DELETE' AND NEW.state = 'waiting' THEN
        INSERT INTO @S.group_waiting_deltas (tx, queue, group_id, n)
        VALUES (txid_current(), NEW.queue, NEW.group_id, 1);
    ELSE
        INSERT INTO @S.group_waiting_deltas (tx, queue, group_id, n)
        VALUES (txid_current(), OLD.queue, OLD.group_id, -1);
    END IF;
    IF strpos(pending, mark) = 0 THEN
        PERFORM set_config('conveyor.lanes_pending', pending || mark, true);
    END IF;
    RETURN NULL;
END $$;
