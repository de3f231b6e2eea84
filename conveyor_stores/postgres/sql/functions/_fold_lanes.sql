-- GROUPS: moves this transaction's noted moves (_group_waiting) into its lanes' counts
-- of waiting jobs, once per lane, in lane order (statements moving several lanes lock
-- them in one order). Returns at once when there is nothing to fold.
CREATE OR REPLACE FUNCTION @S._fold_lanes() RETURNS void LANGUAGE plpgsql
@PLANNER AS $$
DECLARE
    mark text := ',' || '@S.group_lanes'::regclass::oid || ',';
    pending text := coalesce(current_setting('conveyor.lanes_pending', true), '');
BEGIN
    IF strpos(pending, mark) = 0 THEN
        RETURN;
    END IF;
    PERFORM set_config('conveyor.lanes_pending', replace(pending, mark, ''), true);
    WITH gone AS (
        DELETE FROM @S.group_waiting_deltas WHERE tx = txid_current()
        RETURNING queue, group_id, n
    )
    INSERT INTO @S.group_lanes AS l (queue, group_id, waiting)
    SELECT g.queue, g.group_id, sum(g.n) FROM gone g
    GROUP BY g.queue, g.group_id HAVING sum(g.n) <> 0
    ORDER BY g.queue, g.group_id
    ON CONFLICT (queue, group_id) DO UPDATE SET waiting = l.waiting + excluded.waiting;
END $$;
