-- Whether a parent still needs a job: it exists, is neither completed nor failed, and
-- holds a pending dependency on it (PARENT LINKS).
CREATE OR REPLACE FUNCTION @S._still_needed(q text, jid text)
RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM @S._links(q, jid) l
        JOIN @S.jobs p ON p.queue = l.pq AND p.id = l.pid
        JOIN @S.deps d ON d.parent_queue = l.pq AND d.parent_id = l.pid
                      AND d.child_queue = q AND d.child_id = jid
        WHERE p.state NOT IN ('completed', 'failed') AND d.status = 'pending'
    );
END $$;
