-- Whether a statement that appended count deltas folds them (see _count_states): one in
-- FOLD_EVERY, and only the first such statement of a transaction.
CREATE OR REPLACE FUNCTION @S._fold_due() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('@S.state_count_folds') % @FOLD_EVERY <> 0
        OR current_setting('conveyor.counts_folded', true) = 'on' THEN
        RETURN false;
    END IF;
    PERFORM set_config('conveyor.counts_folded', 'on', true);
    RETURN true;
END $$;
