-- ADD CHILDREN: add_jobs (of a batch, as add_jobs_batch takes it) whose groups are all
-- children of the active job (q, jid), only while the caller holds its lock.
CREATE OR REPLACE FUNCTION @S.add_children(q text, jid text, tok text, batch text,
                                           now double precision)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    j record;
BEGIN
    SELECT state, lock_token INTO j FROM @S.jobs WHERE queue = q AND id = jid FOR UPDATE;
    IF NOT FOUND OR j.state <> 'active' OR j.lock_token IS DISTINCT FROM tok THEN
        RAISE EXCEPTION 'job % in queue % is not active with this lock token: only the '
            'worker running it can add children to it', quote_literal(jid), quote_literal(q)
            USING ERRCODE = 'CV423';
    END IF;
    RETURN @S.add_jobs_batch(batch, now);
END $$;
