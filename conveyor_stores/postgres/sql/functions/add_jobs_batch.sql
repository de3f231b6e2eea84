-- add_jobs for a big batch sent as one JSON array of rows [group, id, queue, name, data,
-- opts, state, priority, lifo, delay, keep_completed, keep_failed, parent_id,
-- parent_queue, parent_policy, group_id]: one text parameter is cheap for the client to send,
-- where sixteen arrays of thousands of values are not.
CREATE OR REPLACE FUNCTION @S.add_jobs_batch(batch text, now double precision)
RETURNS boolean[] LANGUAGE sql AS $$
    SELECT @S.add_jobs(
        array_agg((r ->> 0)::integer ORDER BY o), array_agg(r ->> 1 ORDER BY o),
        array_agg(r ->> 2 ORDER BY o), array_agg(r ->> 3 ORDER BY o),
        array_agg(r ->> 4 ORDER BY o), array_agg(r ->> 5 ORDER BY o),
        array_agg(r ->> 6 ORDER BY o), array_agg((r ->> 7)::integer ORDER BY o),
        array_agg((r ->> 8)::boolean ORDER BY o), array_agg((r ->> 9)::double precision ORDER BY o),
        array_agg((r ->> 10)::bigint ORDER BY o), array_agg((r ->> 11)::bigint ORDER BY o),
        array_agg(r ->> 12 ORDER BY o), array_agg(r ->> 13 ORDER BY o),
        array_agg(r ->> 14 ORDER BY o), array_agg(r ->> 15 ORDER BY o), now)
    FROM jsonb_array_elements(batch::jsonb) WITH ORDINALITY AS x(r, o)
$$;
