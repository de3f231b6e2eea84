-- STATE COUNTS, as a statement trigger on jobs: every statement that adds, moves or
-- deletes jobs appends what it changed per (queue, state) to state_count_deltas, insert
-- only, so concurrent transitions never touch a common row. One statement in
-- FOLD_EVERY that appended something also folds its queues' deltas (_fold_counts),
-- which keeps the delta table small while workers run and no one reads the counts.
-- A transaction folds that way once at most: the deltas it appended and folded stay in
-- the delta table's index until it ends, so every further fold of the queue would walk
-- them again (a transaction removing a million jobs one statement at a time would fold
-- in quadratic time); the next transaction folds them in one go.
CREATE OR REPLACE FUNCTION @S._count_states() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO @S.state_count_deltas (queue, state, n)
        SELECT queue, state, count(*) FROM new_rows GROUP BY queue, state;
        IF FOUND AND @S._fold_due() THEN
            FOR q IN SELECT DISTINCT queue FROM new_rows LOOP
                PERFORM @S._fold_counts(q);
            END LOOP;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO @S.state_count_deltas (queue, state, n)
        SELECT queue, state, -count(*) FROM old_rows GROUP BY queue, state;
        IF FOUND AND @S._fold_due() THEN
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
        IF FOUND AND @S._fold_due() THEN
            FOR q IN SELECT DISTINCT queue FROM new_rows LOOP
                PERFORM @S._fold_counts(q);
            END LOOP;
        END IF;
    END IF;
    RETURN NULL;
END $$;
