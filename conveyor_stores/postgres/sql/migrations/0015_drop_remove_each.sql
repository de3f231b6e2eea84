-- _remove_each had no caller left: removals walk their jobs in the functions that make them.
DROP FUNCTION IF EXISTS @S._remove_each(text, text[], double precision);
