-- DAGs: a job's parent links beyond its first parent (jobs.parent_id), in the order
-- they were made, each with the policy of its edge.
CREATE TABLE IF NOT EXISTS @S.parent_links (
    queue text NOT NULL,
    id text NOT NULL,
    seq bigint NOT NULL,
    parent_queue text NOT NULL,
    parent_id text NOT NULL,
    policy text NOT NULL,
    PRIMARY KEY (queue, id, seq)
);
