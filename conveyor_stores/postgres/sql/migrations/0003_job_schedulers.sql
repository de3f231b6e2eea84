-- Job schedulers: what each one adds per tick, when (timing, compared as text on
-- upsert), the next tick and how many ticks wrote jobs. The partial index serves the
-- due ones, earliest first.
CREATE TABLE @S.schedulers (
    queue text NOT NULL,
    id text NOT NULL,
    timing text NOT NULL,
    template text NOT NULL,
    next_run_at double precision,
    iterations bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, id)
);

CREATE INDEX schedulers_next ON @S.schedulers (queue, next_run_at, id COLLATE "C")
    WHERE next_run_at IS NOT NULL;
