-- Create or replace a scheduler: the same timing keeps its next tick; iterations stay.
CREATE OR REPLACE FUNCTION @S.upsert_scheduler(
    q text, sid text, tm text, tpl text, nxt double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO @S.schedulers AS s (queue, id, timing, template, next_run_at, iterations)
    VALUES (q, sid, tm, tpl, nxt, 0)
    ON CONFLICT (queue, id) DO UPDATE SET
        template = excluded.template,
        next_run_at = CASE WHEN s.timing = excluded.timing THEN s.next_run_at
                           ELSE excluded.next_run_at END,
        timing = excluded.timing;
END $$;
