-- PARENT LINKS of a job: its first parent (parent_id), then its further links in order.
-- (PL/pgSQL, not SQL: earlier migrations create it before parent_links exists.)
CREATE OR REPLACE FUNCTION @S._links(q text, jid text)
RETURNS TABLE (pq text, pid text, policy text) LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT l.lq, l.lid, l.lpolicy FROM (
        SELECT j.parent_queue AS lq, j.parent_id AS lid,
               coalesce(j.parent_policy, 'fail') AS lpolicy, -1::bigint AS seq
        FROM @S.jobs j WHERE j.queue = q AND j.id = jid AND j.parent_id IS NOT NULL
        UNION ALL
        SELECT k.parent_queue, k.parent_id, k.policy, k.seq
        FROM @S.parent_links k WHERE k.queue = q AND k.id = jid
    ) l ORDER BY l.seq;
END $$;
