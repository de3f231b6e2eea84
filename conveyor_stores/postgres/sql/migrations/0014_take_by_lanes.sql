-- TAKE BY LANES: take_jobs takes by lanes in one statement itself and hands the queue's
-- own waiting jobs to _take_by_lanes, which gains that argument; the old form is dropped
-- so the new one can be created.
DROP FUNCTION IF EXISTS @S._take_by_lanes(text, integer, text, double precision,
    double precision);
