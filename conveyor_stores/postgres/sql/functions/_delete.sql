CREATE OR REPLACE FUNCTION @S._delete(q text, jid text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM @S.jobs WHERE queue = q AND id = jid;
    DELETE FROM @S.logs WHERE queue = q AND id = jid;
    DELETE FROM @S.deps WHERE parent_queue = q AND parent_id = jid;
    DELETE FROM @S.parent_links WHERE queue = q AND id = jid;
END $$;
