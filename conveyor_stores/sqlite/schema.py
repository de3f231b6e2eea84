"""The SQLite schema and its forward migrations.

The schema version is kept in ``PRAGMA user_version``. :func:`migrate` runs inside one
``BEGIN IMMEDIATE`` transaction, so several processes opening the same file at once
apply each step exactly once: the first takes the write lock and migrates, the others
wait on the lock (``busy_timeout``) and then find nothing left to do.
"""

from __future__ import annotations

import hashlib
import sqlite3
from functools import lru_cache

_V1 = (
    # One row per job, stored in insertion order (the rowid), so the jobs a worker
    # takes and finishes together share pages. ``order_key`` places the job among the jobs
    # of its queue in the same state, so that one index serves every ordered access:
    #   waiting: ``priority << 41`` plus an offset from ``2**40``: ``+n`` behind the
    #            queue's jobs of that priority (fifo), ``-n`` in front of them (lifo);
    #   delayed: ``run_at`` in whole microseconds;
    #   others:  the order in which jobs entered the state (listing and retention).
    # ``pending`` counts the job's ``pending`` dependencies (kept exact by the backend),
    # so a release check is O(1) however many children a parent has.
    """
    CREATE TABLE jobs (
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        data TEXT NOT NULL,
        opts TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        lifo INTEGER NOT NULL DEFAULT 0,
        delay REAL NOT NULL DEFAULT 0,
        attempts_made INTEGER NOT NULL DEFAULT 0,
        stalled_count INTEGER NOT NULL DEFAULT 0,
        progress TEXT,
        return_value TEXT,
        failed_reason TEXT,
        stacktrace TEXT,
        created_at REAL NOT NULL,
        processed_at REAL,
        finished_at REAL,
        run_at REAL,
        keep_completed INTEGER,
        keep_failed INTEGER,
        parent_id TEXT,
        parent_queue TEXT,
        parent_policy TEXT,
        lock_token TEXT,
        lock_until REAL,
        state TEXT NOT NULL,
        order_key INTEGER NOT NULL DEFAULT 0,
        pending INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (queue, id)
    )
    """,
    # The only secondary index: take order, due delayed jobs, listings, counts,
    # retention, clean and stalled recovery all read it. Few indexes keep a commit
    # small (each page a transaction touches is written to the WAL).
    "CREATE INDEX jobs_state ON jobs (queue, state, order_key)",
    # A parent's children; ``seq`` keeps insertion order, and replacing a record in
    # place keeps its ``seq``.
    """
    CREATE TABLE dependencies (
        parent_queue TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        child_queue TEXT NOT NULL,
        child_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        value TEXT,
        reason TEXT,
        PRIMARY KEY (parent_queue, parent_id, child_queue, child_id)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE logs (
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        line TEXT NOT NULL,
        PRIMARY KEY (queue, id, seq)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE queues (
        name TEXT PRIMARY KEY,
        paused INTEGER NOT NULL DEFAULT 0,
        window_start REAL,
        window_count INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID
    """,
    # Event ids only grow: a new row gets max(id) + 1, and pruning always keeps the
    # newest row, so a subscriber's "everything after id N" never skips or repeats one.
    # Subscribers read id ranges, so no index on ``queue`` is needed.
    """
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        type TEXT NOT NULL,
        job_id TEXT,
        data TEXT,
        ts REAL NOT NULL,
        written_at REAL NOT NULL
    )
    """,
)

_V2 = (
    # Search: newest first by (created_at, id). Neither column changes after the add,
    # so state changes never touch this index.
    "CREATE INDEX jobs_created ON jobs (queue, created_at, id)",
    # Substring search of ids, names and data: an FTS5 trigram index over the jobs
    # table (external content), kept by triggers. Updates that change neither the name
    # nor the data (every state change) skip it.
    """
    CREATE VIRTUAL TABLE jobs_text USING fts5(
        id, name, data, content='jobs', content_rowid='rowid', tokenize='trigram'
    )
    """,
    "INSERT INTO jobs_text (jobs_text) VALUES ('rebuild')",
    """
    CREATE TRIGGER jobs_text_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO jobs_text (rowid, id, name, data)
        VALUES (new.rowid, new.id, new.name, new.data);
    END
    """,
    """
    CREATE TRIGGER jobs_text_delete AFTER DELETE ON jobs BEGIN
        INSERT INTO jobs_text (jobs_text, rowid, id, name, data)
        VALUES ('delete', old.rowid, old.id, old.name, old.data);
    END
    """,
    """
    CREATE TRIGGER jobs_text_update AFTER UPDATE OF name, data ON jobs
    WHEN old.data IS NOT new.data OR old.name IS NOT new.name BEGIN
        INSERT INTO jobs_text (jobs_text, rowid, id, name, data)
        VALUES ('delete', old.rowid, old.id, old.name, old.data);
        INSERT INTO jobs_text (rowid, id, name, data)
        VALUES (new.rowid, new.id, new.name, new.data);
    END
    """,
    # Finished jobs per queue, kind ('completed' or 'failed') and minute.
    """
    CREATE TABLE metrics (
        queue TEXT NOT NULL,
        kind TEXT NOT NULL,
        minute INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (queue, kind, minute)
    ) WITHOUT ROWID
    """,
)

_V3 = (
    # Job schedulers; the index serves the due ones, earliest first.
    """
    CREATE TABLE schedulers (
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        timing TEXT NOT NULL,
        template TEXT NOT NULL,
        next_run_at REAL,
        iterations INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (queue, id)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX schedulers_next ON schedulers (queue, next_run_at, id)",
)

_V4 = (
    # Large flows: a parent's children by insertion order (a page is a range of this
    # index), and counters of its dependency records per status beside ``pending``,
    # kept exact by the backend with every dependency write.
    "CREATE INDEX dependencies_order ON dependencies (parent_queue, parent_id, seq)",
    "ALTER TABLE jobs ADD COLUMN deps_processed INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN deps_failed INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE jobs ADD COLUMN deps_ignored INTEGER NOT NULL DEFAULT 0",
    """
    UPDATE jobs SET
        deps_processed = (SELECT count(*) FROM dependencies d WHERE d.parent_queue = jobs.queue
                          AND d.parent_id = jobs.id AND d.status = 'processed'),
        deps_failed = (SELECT count(*) FROM dependencies d WHERE d.parent_queue = jobs.queue
                       AND d.parent_id = jobs.id AND d.status = 'failed'),
        deps_ignored = (SELECT count(*) FROM dependencies d WHERE d.parent_queue = jobs.queue
                        AND d.parent_id = jobs.id AND d.status = 'ignored')
    WHERE EXISTS (SELECT 1 FROM dependencies d WHERE d.parent_queue = jobs.queue
                  AND d.parent_id = jobs.id)
    """,
)

_V7 = (
    # DAGs: a job's parent links beyond its first parent (parent_id), in order.
    """
    CREATE TABLE parent_links (
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        parent_queue TEXT NOT NULL,
        parent_id TEXT NOT NULL,
        policy TEXT NOT NULL,
        PRIMARY KEY (queue, id, seq)
    ) WITHOUT ROWID
    """,
)

_V5 = (
    # CANCEL REQUEST: the reason an active job is to be cancelled with; read by key.
    "ALTER TABLE jobs ADD COLUMN cancel_reason TEXT",
)

_V8 = (
    # Flow control: deduplication entries (DEDUPLICATION of the store protocol), the
    # queue's global concurrency and its manual rate limit.
    """
    CREATE TABLE deduplication (
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        job_id TEXT NOT NULL,
        expires_at REAL,
        PRIMARY KEY (queue, id)
    ) WITHOUT ROWID
    """,
    "ALTER TABLE queues ADD COLUMN concurrency INTEGER",
    "ALTER TABLE queues ADD COLUMN limited_until REAL",
)

_V9 = (
    # GROUPS: a job's group; a group's waiting jobs in take order, and the jobs without a
    # group in take order (the queue's own lane), each found without walking the other
    # lanes; a group's jobs per state; the lanes' served numbers, rate windows and
    # waiting jobs (kept by the backend as grouped jobs enter and leave waiting); the
    # queue's group limits and its last served number.
    "ALTER TABLE jobs ADD COLUMN group_id TEXT",
    "CREATE INDEX jobs_group_waiting ON jobs (queue, group_id, order_key) "
    "WHERE state = 'waiting' AND group_id IS NOT NULL",
    "CREATE INDEX jobs_own_waiting ON jobs (queue, order_key) "
    "WHERE state = 'waiting' AND group_id IS NULL",
    "CREATE INDEX jobs_group ON jobs (queue, group_id, state) WHERE group_id IS NOT NULL",
    """
    CREATE TABLE lanes (
        queue TEXT NOT NULL,
        group_id TEXT NOT NULL,
        served INTEGER NOT NULL DEFAULT 0,
        window_start REAL,
        window_count INTEGER NOT NULL DEFAULT 0,
        waiting INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (queue, group_id)
    ) WITHOUT ROWID
    """,
    # The lanes in the order a take serves them; the queue's own lane ("") keeps no
    # count, it is found through jobs_own_waiting.
    "CREATE INDEX lanes_ready ON lanes (queue, served, group_id) WHERE waiting > 0",
    "ALTER TABLE queues ADD COLUMN group_concurrency INTEGER",
    "ALTER TABLE queues ADD COLUMN group_rate_max INTEGER",
    "ALTER TABLE queues ADD COLUMN group_rate_duration REAL",
    "ALTER TABLE queues ADD COLUMN served INTEGER NOT NULL DEFAULT 0",
)

_V10 = (
    # GROUPS: one index of a group's jobs per state in order serves a lane's first
    # waiting job, a group's active jobs and its counts; a take or a completion moves
    # a job within its group's entries (one page), where two indexes took two.
    "DROP INDEX jobs_group_waiting",
    "DROP INDEX jobs_group",
    "CREATE INDEX jobs_group ON jobs (queue, group_id, state, order_key) "
    "WHERE group_id IS NOT NULL",
)

_V11 = (
    # GROUPS: a group's finished jobs are counted in its lane, and jobs_group holds only
    # its unfinished jobs, by state first: the jobs a take serves leave their groups'
    # waiting entries for the one range of active entries, and finishing them writes
    # that range alone, where it wrote each job's group again.
    "DROP INDEX jobs_group",
    "CREATE INDEX jobs_group ON jobs (queue, state, group_id, order_key) "
    "WHERE group_id IS NOT NULL AND state NOT IN ('completed', 'failed')",
    "ALTER TABLE lanes ADD COLUMN completed INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE lanes ADD COLUMN failed INTEGER NOT NULL DEFAULT 0",
    """
    INSERT INTO lanes (queue, group_id, completed, failed)
    SELECT queue, group_id, sum(state = 'completed'), sum(state = 'failed') FROM jobs
    WHERE group_id IS NOT NULL AND state IN ('completed', 'failed')
    GROUP BY queue, group_id
    ON CONFLICT (queue, group_id) DO UPDATE SET
        completed = excluded.completed, failed = excluded.failed
    """,
)

_V12 = (
    # GROUPS: a lane counts its group's jobs in every state, so a group's active jobs
    # (its concurrency) and its counts are read from one row, and only a group's
    # waiting jobs are indexed, by group and take order (the lane's first job): taking
    # or finishing a job writes its lane's row, which the take writes anyway, and no
    # page of the active jobs' entries. The index leads with the queue's number
    # (:func:`queue_key`), not its name: entries a third of the size put the first
    # jobs of the lanes one take serves (neighbours in group order) on fewer pages.
    "DROP INDEX jobs_group",
    "ALTER TABLE jobs ADD COLUMN queue_key INTEGER",
    "UPDATE jobs SET queue_key = conveyor_queue_key(queue) WHERE group_id IS NOT NULL",
    "CREATE INDEX jobs_group_waiting ON jobs (queue_key, group_id, order_key) "
    "WHERE state = 'waiting' AND group_id IS NOT NULL",
    "ALTER TABLE lanes ADD COLUMN active INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE lanes ADD COLUMN delayed INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE lanes ADD COLUMN waiting_children INTEGER NOT NULL DEFAULT 0",
    # The queue's last served number moves to its own lane's row (group ""), which a
    # take reads anyway and whose page it mostly writes anyway.
    "ALTER TABLE lanes ADD COLUMN last_served INTEGER NOT NULL DEFAULT 0",
    """
    INSERT INTO lanes (queue, group_id, last_served)
    SELECT name, '', served FROM queues WHERE served > 0
    ON CONFLICT (queue, group_id) DO UPDATE SET last_served = excluded.last_served
    """,
    """
    INSERT INTO lanes (queue, group_id, active, delayed, waiting_children)
    SELECT queue, group_id, sum(state = 'active'), sum(state = 'delayed'),
        sum(state = 'waiting-children') FROM jobs
    WHERE group_id IS NOT NULL AND state IN ('active', 'delayed', 'waiting-children')
    GROUP BY queue, group_id
    ON CONFLICT (queue, group_id) DO UPDATE SET
        active = excluded.active, delayed = excluded.delayed,
        waiting_children = excluded.waiting_children
    """,
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    _V1,
    _V2,
    _V3,
    _V4,
    _V5,
    _V7,
    _V8,
    _V9,
    _V10,
    _V11,
    _V12,
)
"""Step ``i`` takes the schema from version ``i`` to ``i + 1``. Append, never edit."""

SCHEMA_VERSION = len(MIGRATIONS)


@lru_cache(maxsize=4096)
def queue_key(queue: str) -> int:
    """A 32-bit number for a queue's name (``jobs.queue_key`` of its grouped jobs). Two
    names may share one: every query through ``jobs_group_waiting`` checks the name too,
    so sharing costs a longer walk, never a wrong answer."""
    digest = hashlib.blake2b(queue.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class SchemaTooNewError(RuntimeError):
    """The file was written by a newer version of Conveyor."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to :data:`SCHEMA_VERSION`; returns how many steps ran.

    ``conn`` must be in autocommit mode (``isolation_level=None``).
    """
    conn.create_function("conveyor_queue_key", 1, queue_key, deterministic=True)
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"the database has schema version {version}, newer than this Conveyor "
                f"understands ({SCHEMA_VERSION}); upgrade Conveyor"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                conn.execute(statement)
        # PRAGMA takes no parameters; the value is our own integer, never user data.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION - version
