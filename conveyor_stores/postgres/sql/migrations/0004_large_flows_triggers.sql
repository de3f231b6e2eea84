-- DEPENDENCY COUNTS: every statement that writes, changes or deletes dependency records
-- moves the parents' counters by what it changed (see _count_dependencies).
CREATE TRIGGER deps_counted_insert AFTER INSERT ON @S.deps
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._count_dependencies();
CREATE TRIGGER deps_counted_update AFTER UPDATE ON @S.deps
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._count_dependencies();
CREATE TRIGGER deps_counted_delete AFTER DELETE ON @S.deps
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION @S._count_dependencies();
