-- DEPENDENCY COUNTS: deleting dependency records moves no counter (a record is deleted
-- while pending, or with its parent), so deletes no longer run the counting trigger.
DROP TRIGGER IF EXISTS deps_counted_delete ON @S.deps;
