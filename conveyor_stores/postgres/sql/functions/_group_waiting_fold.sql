-- GROUPS, as a deferred row trigger on group_waiting_deltas: at commit, the first of
-- them folds the transaction's moves into its lanes; the others find nothing left to
-- fold.
CREATE OR REPLACE FUNCTION @S._group_waiting_fold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM @S._fold_lanes();
    RETURN NULL;
END $$;
