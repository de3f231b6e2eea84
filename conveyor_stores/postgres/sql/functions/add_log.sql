-- Returns the new log length, or NULL when the job does not exist.
CREATE OR REPLACE FUNCTION @S.add_log(q text, jid text, line text)
RETURNS integer LANGUAGE sql
@PLANNER AS $$
    WITH u AS (
        UPDATE @S.jobs SET log_count = log_count + 1 WHERE queue = q AND id = jid
        RETURNING log_count
    ), ins AS (
        INSERT INTO @S.logs (queue, id, idx, line) SELECT q, jid, log_count - 1, line FROM u
    )
    SELECT log_count FROM u
$$;
