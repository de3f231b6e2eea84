-- COMPLETE AND TAKE: complete_jobs, then take_jobs, in one call (one round trip and
-- one commit for a worker that records its finished jobs and takes new ones); the take
-- sees every change of the completions.
CREATE OR REPLACE FUNCTION @S.complete_and_take(
    q text, ids text[], toks text[], vals text[], lim integer, tok text,
    until double precision, now double precision, rl_max integer,
    rl_duration double precision,
    OUT applied boolean[], OUT taken @S.jobs[], OUT next_run_at double precision,
    OUT rate_limited_until double precision, OUT concurrency_limited boolean)
LANGUAGE plpgsql
@PLANNER AS $$
BEGIN
    applied := @S.complete_jobs(q, ids, toks, vals, now);
    SELECT t.taken, t.next_run_at, t.rate_limited_until, t.concurrency_limited
    INTO taken, next_run_at, rate_limited_until, concurrency_limited
    FROM @S.take_jobs(q, lim, tok, until, now, rl_max, rl_duration) AS t;
END $$;
