-- STATE COUNTS, as a statement trigger on jobs: every statement that adds, moves or
-- deletes jobs appends what it changed per (queue, state) to state_count_deltas, insert
-- only, so concurrent transitions never touch a common row. One statement in
-- FOLD_EVERY that appended something also folds its queues' deltas (_fold_counts),
-- which keeps the delta table small while workers run and no one reads the counts.
CREATE OR REPLACE FUNCTION @S._count_states() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO @S.state_count_deltas (queue, state, n)
        SELECT queue, state, count(*) FROM new_rows GROUP BY queue, state;
        IF FOUND AND nextval('@S.state_count_folds') % @FOLD_EVERY = 0 THEN
            FOR q IN SELECT DISTINCT queue FROM new_rows LOOP
                PERFORM @S._fold_counts(q);
            END LOOP;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO @S.state_count_deltas (queue, state, n)
        SELECT queue, state, -count(*) FROM old_rows GROUP BY queue, state;
        IF FOUND AND nextval('@S.state_count_folds') % @FOLD_EVERY = 0 THEN
            FOR q IN SELECT DISTINCT queue FROM old_rows LOOP
                PERFORM @S._fold_counts(q);
            END LOOP;
        END IF;
    ELSE
        -- Most updates (locks, progress, counters) move no job between states.
        INSERT INTO @S.state_count_deltas (queue, state, n)
        SELECT queue, state, sum(n) FROM (
            SELECT queue, state, 1 AS n FROM new_rows
            UNION ALL
            SELECT queue, state, -1 FROM old_rows
        ) moved
        GROUP BY queue, state HAVING sum(n) <> 0;
        IF FOUND AND nextval('@S.state_count_folds') % @FOLD_EVERY = 0 THEN
            FOR q IN SELECT DISTINCT queue FROM new_rows LOOP
                PERFORM @S._fold_counts(q);
            END LOOP;
        END IF;
    END IF;
    RETURN NULL;
END $$;
