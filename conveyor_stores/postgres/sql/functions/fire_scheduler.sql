-- Fire one tick: only if the stored next_run_at still equals the tick the caller read.
-- A concurrent fire of the same tick waits on the row lock, then finds next_run_at
-- moved and writes nothing. The tick's jobs (one group, as add_jobs takes it) are
-- written in the same statement: an error of the add undoes the advance too.
CREATE OR REPLACE FUNCTION @S.fire_scheduler(
    q text, sid text, expected double precision, nxt double precision,
    ids text[], qs text[], names text[], datas text[], optss text[],
    states text[], prios integer[], lifos boolean[], delays double precision[],
    keep_cs bigint[], keep_fs bigint[], pids text[], pqs text[], policies text[],
    gids text[], now double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(cardinality(ids), 0);
BEGIN
    UPDATE @S.schedulers
    SET next_run_at = nxt, iterations = iterations + CASE WHEN n > 0 THEN 1 ELSE 0 END
    WHERE queue = q AND id = sid AND next_run_at = expected;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF n > 0 THEN
        PERFORM @S.add_jobs(array_fill(1, ARRAY[n]), ids, qs, names, datas, optss, states,
                            prios, lifos, delays, keep_cs, keep_fs, pids, pqs, policies, gids,
                            now);
    END IF;
    RETURN true;
END $$;
