"""``SQLiteBackend``: the record-level :class:`~conveyor_core.engine.Backend` over sqlite3.

Every method runs on the store's own thread, inside the transaction the store opened
(``BEGIN IMMEDIATE`` for transitions, a deferred read transaction for reads).

Some writes are buffered and written in bulk with ``executemany`` before the next query
that could see them, and at the latest just before ``COMMIT``:

* new jobs (``save(job, None)``), and the dependency records of a parent that is itself
  new in this transaction, which is how a flow of 10,000 children costs a handful of
  statements instead of tens of thousands; until then ``get`` and the dependency
  methods answer from the buffer, so the engine sees one consistent store;
* events, which nothing reads inside a transition.

Every other change is written at once. ``order_key`` values are computed from the index
once per transaction and queue and state, then counted on in memory.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Literal

from conveyor_core.engine import Lane, fold_ascii
from conveyor_core.models import MAX_PRIORITY, JobState, ParentPolicy
from conveyor_core.store import (
    METRICS_MINUTES,
    ChildDependency,
    DependencyStatus,
    EventRecord,
    GroupLimits,
    JobRecord,
    ParentLink,
    SchedulerRecord,
)

from .schema import queue_key

WAITING = JobState.WAITING
DELAYED = JobState.DELAYED
ACTIVE = JobState.ACTIVE
COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED
WAITING_CHILDREN = JobState.WAITING_CHILDREN

Key = tuple[str, str]

_STATES = {state.value: state for state in JobState}
_LANE_COUNTED = (WAITING, COMPLETED, FAILED, ACTIVE, DELAYED, WAITING_CHILDREN)
"""The states of a lane's counts, in the order of :data:`_LANE_COLUMNS`: a lane counts its
group's jobs in every state, so that the take, the group concurrency and the group
counts read one row, and only waiting jobs need an index (``jobs_group_waiting``)."""
_LANE_COLUMNS = ("waiting", "completed", "failed", "active", "delayed", "waiting_children")
_LANE_INDEX: dict[JobState, int] = {state: i for i, state in enumerate(_LANE_COUNTED)}
_NO_DELTAS = (0,) * len(_LANE_COUNTED)
_WAITING_AT = _LANE_INDEX[WAITING]


def _lane_moves(first: int, *, but: str | None = None) -> str:
    """``SET`` terms moving each lane count by a parameter, numbered from ``first``; the
    count ``but`` is left out (its parameter keeps its number, unread)."""
    return ", ".join(
        f"{name} = {name} + ?{i}" for i, name in enumerate(_LANE_COLUMNS, first) if name != but
    )


def _params(first: int, count: int) -> str:
    return ", ".join(f"?{i}" for i in range(first, first + count))


_LANE_COUNT = f"UPDATE lanes SET {_lane_moves(3)} WHERE queue = ?1 AND group_id = ?2"
"""A lane's counts move by the deltas ``?3…``."""
_LANE_COUNT_KEPT = (
    f"UPDATE lanes SET {_lane_moves(3, but=_LANE_COLUMNS[_WAITING_AT])} "
    "WHERE queue = ?1 AND group_id = ?2"
)
""":data:`_LANE_COUNT` of a lane whose waiting count does not move (its ``?3`` unread)."""
_LANE_SERVE = (
    f"UPDATE lanes SET served = ?3, window_start = ?4, window_count = ?5, {_lane_moves(6)} "
    "WHERE queue = ?1 AND group_id = ?2"
)
"""A lane served in this transaction: its served number and window, and its counts."""
_LANE_NEW_COUNT = (
    f"INSERT INTO lanes (queue, group_id, {', '.join(_LANE_COLUMNS)}) "
    f"VALUES (?1, ?2, {_params(3, len(_LANE_COLUMNS))}) ON CONFLICT DO NOTHING"
)
_LANE_NEW_SERVE = (
    f"INSERT INTO lanes (queue, group_id, served, window_start, window_count, "
    f"{', '.join(_LANE_COLUMNS)}) VALUES ({_params(1, 5 + len(_LANE_COLUMNS))}) "
    "ON CONFLICT DO NOTHING"
)
"""A lane's first row, with what its update found no row for; a lane that has one is
left as the update wrote it."""
_LINK_INSERT = (
    "INSERT INTO parent_links (queue, id, seq, parent_queue, parent_id, policy) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
_SCHEDULER_COLUMNS = "queue, id, timing, template, next_run_at, iterations"
_POLICIES = {policy.value: policy for policy in ParentPolicy}
_STATUSES: dict[str, DependencyStatus] = {
    "pending": "pending",
    "processed": "processed",
    "failed": "failed",
    "ignored": "ignored",
}

_FIELDS = (
    "name",
    "data",
    "opts",
    "priority",
    "lifo",
    "delay",
    "attempts_made",
    "stalled_count",
    "progress",
    "return_value",
    "failed_reason",
    "stacktrace",
    "created_at",
    "processed_at",
    "finished_at",
    "run_at",
    "keep_completed",
    "keep_failed",
    "parent_id",
    "parent_queue",
    "parent_policy",
    "lock_token",
    "lock_until",
    "cancel_reason",
    "group_id",
    "state",
)
"""Every column of a job but its key, in :func:`_fields` order; ``state`` comes last so
an update that keeps the state can leave it (and so the index) alone."""

_COLUMNS = ", ".join(("id", "queue", *_FIELDS))
_STATE_AT = 1 + len(_FIELDS)
"""Where ``state`` is in a row of ``_SELECT``: the last column."""
_SELECT = f"SELECT {_COLUMNS} FROM jobs"
_COLUMNS_OF_J = ", ".join(f"j.{name}" for name in _COLUMNS.split(", "))
_GET = f"{_SELECT} WHERE queue = ? AND id = ?"
_INSERT = (
    f"INSERT INTO jobs ({_COLUMNS}, queue_key, order_key, pending, deps_processed, "
    f"deps_failed, deps_ignored) VALUES ({', '.join('?' * (len(_FIELDS) + 8))})"
)
_FIXED = frozenset(("name", "opts", "created_at", "group_id"))
"""Columns written once, by the add: an update leaves them out, as SQLite rewrites the
entries of every index over a column an ``UPDATE`` sets (``jobs_created``, the group
indexes), whether or not its value changed."""
_CHANGING = tuple(name for name in _FIELDS if name not in _FIXED)
_changing = itemgetter(*(i for i, name in enumerate(_FIELDS) if name not in _FIXED))
"""The values of :data:`_CHANGING` out of :func:`_fields`."""
_UPDATE_SAME_STATE = (
    f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in _CHANGING[:-1])} "
    "WHERE queue = ? AND id = ?"
)
_UPDATE = (
    f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in _CHANGING)}, order_key = ? "
    "WHERE queue = ? AND id = ?"
)

_ORDER_BY = {
    WAITING: "order_key",
    DELAYED: "order_key, id",
    ACTIVE: "order_key",
    COMPLETED: "order_key DESC",
    FAILED: "order_key DESC",
    WAITING_CHILDREN: "order_key",
}
"""Listing order per state (the protocol's ``get_jobs`` order); see ``order_key``."""

_OLDEST_FIRST = {**_ORDER_BY, COMPLETED: "order_key", FAILED: "order_key"}

PRIORITY_SHIFT = 41
"""Waiting jobs of priority ``p`` have ``order_key`` in ``[p << 41, (p + 1) << 41)``."""
_MIDDLE = 1 << 40

_DEP_COLUMNS = "child_queue, child_id, status, value, reason"
_DEP_INSERT = (
    "INSERT INTO dependencies "
    "(parent_queue, parent_id, child_queue, child_id, seq, status, value, reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DEP_WHERE = "parent_queue = ? AND parent_id = ? AND child_queue = ? AND child_id = ?"
_DEP_COUNT = (
    # A dependency record of the parent went from status ?1 (NULL: it is new) to ?2
    # (NULL: it was deleted): move one count between the parent's counters.
    "UPDATE jobs SET "
    "pending = pending + (?2 IS 'pending') - (?1 IS 'pending'), "
    "deps_processed = deps_processed + (?2 IS 'processed') - (?1 IS 'processed'), "
    "deps_failed = deps_failed + (?2 IS 'failed') - (?1 IS 'failed'), "
    "deps_ignored = deps_ignored + (?2 IS 'ignored') - (?1 IS 'ignored') "
    "WHERE queue = ?3 AND id = ?4"
)
_DEP_PAGE = (
    f"SELECT seq, {_DEP_COLUMNS} FROM dependencies "
    "WHERE parent_queue = ? AND parent_id = ? AND seq > ? ORDER BY seq LIMIT ?"
)

_SEARCH_SCAN = 5000
"""Rows one search call looks at, at most, when it walks the queue (no usable index
for its filters): a page stays cheap on any queue; a sparse match takes more pages."""
_TEXT_CANDIDATES = 1000
"""Rows the trigram index may name for a text before a search walks the queue instead."""
_SEARCH_SCAN_FIRST = (
    f"{_SELECT} INDEXED BY jobs_created WHERE queue = ? ORDER BY created_at DESC, id DESC LIMIT ?"
)
_SEARCH_SCAN_AFTER = (
    f"{_SELECT} INDEXED BY jobs_created WHERE queue = ? AND (created_at, id) < (?, ?) "
    "ORDER BY created_at DESC, id DESC LIMIT ?"
)

_EVENT_INSERT = (
    "INSERT INTO events (queue, type, job_id, data, ts, written_at) VALUES (?, ?, ?, ?, ?, ?)"
)

_DISTINCT_QUEUES = """
    WITH RECURSIVE q(name) AS (
        SELECT min(queue) FROM jobs
        UNION ALL
        SELECT (SELECT min(queue) FROM jobs WHERE queue > q.name) FROM q
        WHERE q.name IS NOT NULL
    )
    SELECT name FROM q WHERE name IS NOT NULL
    UNION
    SELECT name FROM queues WHERE paused
    ORDER BY 1
"""
"""Distinct queue names by skip-scan of the primary key: one seek per queue."""

PRUNE_EVERY = 1000
"""Events written by this connection between two prunings of the events table."""

_encode_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_encode_str = json.encoder.encode_basestring


def _encode_event(data: dict[str, Any]) -> str:
    """Compact JSON of an event's data; a fast path for the flat dicts the engine emits."""
    parts = []
    for key, value in data.items():
        kind = type(value)
        if kind is str:
            parts.append(f"{_encode_str(key)}:{_encode_str(value)}")
        elif kind is int or (kind is float and math.isfinite(value)):
            parts.append(f"{_encode_str(key)}:{value!r}")
        else:
            return _encode_json(data)
    return "{" + ",".join(parts) + "}"


_INT_MAX = 2**63 - 1
"""The largest SQLite INTEGER."""


def _micros(timestamp: float | None) -> int:
    """``order_key`` of a delayed job: its ``run_at`` in whole microseconds, rounded down
    (clamped to SQLite's integers; jobs beyond them keep their order by ``run_at``)."""
    micros = (timestamp or 0.0) * 1_000_000
    if not micros < _INT_MAX:  # also infinity and NaN
        return _INT_MAX
    if micros <= -_INT_MAX:
        return -_INT_MAX
    return math.floor(micros)


def _count(value: int | None) -> int | None:
    """A retention count as SQLite can store it: keeping more than 2**63 - 1 jobs is
    keeping them all."""
    return value if value is None or value <= _INT_MAX else _INT_MAX


def _record(row: Any) -> JobRecord:
    stacktrace = row[13]
    policy = row[22]
    return JobRecord(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        _STATES[row[_STATE_AT]],
        row[5],
        bool(row[6]),
        row[7],
        row[8],
        row[9],
        row[10],
        row[11],
        row[12],
        json.loads(stacktrace) if stacktrace else [],
        row[14],
        row[15],
        row[16],
        row[17],
        row[18],
        row[19],
        row[20],
        row[21],
        None if policy is None else _POLICIES[policy],
        row[23],
        row[24],
        row[25],
        row[26],
    )


def _fields(job: JobRecord) -> tuple[Any, ...]:
    policy = job.parent_policy
    return (
        job.name,
        job.data,
        job.opts,
        job.priority,
        int(job.lifo),
        job.delay,
        job.attempts_made,
        job.stalled_count,
        job.progress,
        job.return_value,
        job.failed_reason,
        json.dumps(job.stacktrace) if job.stacktrace else None,
        job.created_at,
        job.processed_at,
        job.finished_at,
        job.run_at,
        _count(job.keep_completed),
        _count(job.keep_failed),
        job.parent_id,
        job.parent_queue,
        None if policy is None else policy.value,
        job.lock_token,
        job.lock_until,
        job.cancel_reason,
        job.group_id,
        job.state.value,
    )


def _dependency(row: Any) -> ChildDependency:
    return ChildDependency(row[0], row[1], _STATUSES[row[2]], row[3], row[4])


def _limit_offset(start: int, end: int | None) -> tuple[int, int] | None:
    """``LIMIT``/``OFFSET`` for indexes ``start`` to ``end`` inclusive; ``None`` if the
    range uses negative indexes (then the caller slices in Python)."""
    if start < 0 or (end is not None and end < 0):
        return None
    if end is None:
        return -1, start
    return max(end - start + 1, 0), start


class SQLiteBackend:
    """:class:`~conveyor_core.engine.Backend` over one sqlite3 connection."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        events_retention: int = 10_000,
        events_min_age: float = 10.0,
    ) -> None:
        self.conn = conn
        self.events_retention = events_retention
        self.events_min_age = events_min_age
        self._new: dict[Key, JobRecord] = {}
        self._new_order: dict[Key, int] = {}
        self._new_deps: dict[Key, dict[Key, ChildDependency]] = {}
        self._new_links: dict[Key, list[ParentLink]] = {}
        self._events: list[tuple[str, str, str | None, str | None, float, float]] = []
        self._keys: dict[tuple[str, str, int, bool], int] = {}
        self._absent: set[Key] = set()
        self._dedup: dict[Key, tuple[str, float | None] | None] = {}
        self._lane_counts: dict[Key, list[int]] = {}
        """Per lane, how many of its jobs entered (or, negative, left) each of
        :data:`_LANE_COUNTED` in this transaction."""
        self._lane_put: dict[Key, Lane] = {}
        self._served: dict[str, int] = {}
        self._since_prune = 0
        self.woken: set[str] = set()
        self.emitted: set[str] = set()

    # ---------------------------------------------------------------- transaction

    def finish(self) -> None:
        """Write everything buffered; called just before ``COMMIT``."""
        self._flush()
        self._flush_lanes()
        self._absent.clear()
        self._dedup.clear()
        if self._events:
            self.conn.executemany(_EVENT_INSERT, self._events)
            self._since_prune += len(self._events)
            self._events.clear()
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._prune_events()
        self._keys.clear()

    def discard(self) -> None:
        """Forget everything buffered and every signal; called on ``ROLLBACK``."""
        self._new.clear()
        self._new_order.clear()
        self._new_deps.clear()
        self._new_links.clear()
        self._events.clear()
        self._keys.clear()
        self._absent.clear()
        self._dedup.clear()
        self._lane_counts.clear()
        self._lane_put.clear()
        self._served.clear()
        self.woken.clear()
        self.emitted.clear()

    def take_signals(self) -> tuple[set[str], set[str]]:
        """The queues woken and the queues that got events in the committed transaction."""
        woken, emitted = self.woken, self.emitted
        self.woken, self.emitted = set(), set()
        return woken, emitted

    def _flush(self) -> None:
        """Write buffered new jobs and their dependency records."""
        if not self._new:
            return
        new_deps = self._new_deps
        order = self._new_order
        rows = []
        for key, job in self._new.items():
            deps = new_deps.get(key)
            counts = dict.fromkeys(_STATUSES, 0)
            if deps:
                for dep in deps.values():
                    counts[dep.status] += 1
            rows.append(
                (
                    job.id,
                    job.queue,
                    *_fields(job),
                    None if job.group_id is None else queue_key(job.queue),
                    order.get(key, 0),
                    *counts.values(),
                )
            )
        self.conn.executemany(_INSERT, rows)
        if new_deps:
            self.conn.executemany(
                _DEP_INSERT,
                [
                    (pq, pid, dep.queue, dep.id, seq, dep.status, dep.value, dep.reason)
                    for (pq, pid), deps in new_deps.items()
                    for seq, dep in enumerate(deps.values())
                ],
            )
        if self._new_links:
            self.conn.executemany(
                _LINK_INSERT,
                [
                    (queue, job_id, seq, link.queue, link.id, link.policy.value)
                    for (queue, job_id), links in self._new_links.items()
                    for seq, link in enumerate(links)
                ],
            )
        self._new = {}
        self._new_order = {}
        self._new_deps = {}
        self._new_links = {}

    def _order_key(self, job: JobRecord) -> int:
        """A new ``order_key`` for ``job`` entering (or re-entering) its state.

        The last key handed out per queue and state (and priority and direction, for
        ``waiting``) is read once per transaction through the index, then counted on in
        memory, so jobs buffered in this transaction are ordered too.
        """
        state = job.state
        if state is DELAYED:
            return _micros(job.run_at)
        if state is WAITING:
            lifo = job.lifo
            priority = min(max(job.priority, -MAX_PRIORITY), MAX_PRIORITY)
            cache_key = (job.queue, "waiting", priority, lifo)
            last = self._keys.get(cache_key)
            if last is None:
                low = priority << PRIORITY_SHIFT
                row = self.conn.execute(
                    f"SELECT {'min' if lifo else 'max'}(order_key) FROM jobs INDEXED BY jobs_state "
                    "WHERE queue = ? AND state = 'waiting' AND order_key >= ? AND order_key < ?",
                    (job.queue, low, low + (1 << PRIORITY_SHIFT)),
                ).fetchone()
                last = low + _MIDDLE if row[0] is None else int(row[0])
            key = last - 1 if lifo else last + 1
        else:
            cache_key = (job.queue, state.value, 0, False)
            last = self._keys.get(cache_key)
            if last is None:
                row = self.conn.execute(
                    "SELECT max(order_key) FROM jobs INDEXED BY jobs_state "
                    "WHERE queue = ? AND state = ?",
                    (job.queue, state.value),
                ).fetchone()
                last = 0 if row[0] is None else int(row[0])
            key = last + 1
        self._keys[cache_key] = key
        return key

    def _prune_events(self) -> None:
        """Delete the events beyond the newest ``events_retention`` that are older than
        ``events_min_age``: every event below the first one kept for its age.

        Ids follow the order of writing, so the first young event is found by walking up
        from the oldest through the events deleted: a prune reads what it deletes and one
        row more, however many young events the table holds. It always keeps the newest
        row, so the next id is never one already handed out."""
        conn = self.conn
        newest = conn.execute("SELECT max(id) FROM events").fetchone()[0]
        if newest is None:
            return
        bound = int(newest) - max(self.events_retention, 1) + 1
        young = conn.execute(
            "SELECT id FROM events WHERE id < ? AND written_at >= ? ORDER BY id LIMIT 1",
            (bound, time.time() - self.events_min_age),
        ).fetchone()
        conn.execute("DELETE FROM events WHERE id < ?", (bound if young is None else young[0],))

    # ---------------------------------------------------------------- records

    def prefetch_absent(self, keys: Sequence[Key]) -> None:
        """Learn in a few queries which of ``keys`` name no job yet, so that ``get`` of
        those (as when a big flow is checked for existing ids) needs no query at all.
        Valid until the end of the transaction."""
        if len(keys) < 16:
            return
        by_queue: dict[str, list[str]] = {}
        for queue, job_id in keys:
            by_queue.setdefault(queue, []).append(job_id)
        absent = self._absent
        for queue, ids in by_queue.items():
            found = {
                row[0]
                for row in self.conn.execute(
                    "SELECT id FROM jobs WHERE queue = ? "
                    "AND id IN (SELECT value FROM json_each(?))",
                    (queue, json.dumps(ids)),
                )
            }
            absent.update((queue, job_id) for job_id in ids if job_id not in found)

    def get(self, queue: str, job_id: str) -> JobRecord | None:
        key = (queue, job_id)
        job = self._new.get(key)
        if job is not None:
            return job
        if key in self._absent:
            return None
        row = self.conn.execute(_GET, key).fetchone()
        return None if row is None else _record(row)

    def save(self, job: JobRecord, old_state: JobState | None, *, requeue: bool = False) -> None:
        state = job.state
        moved = old_state is not state or requeue or state is DELAYED
        if job.group_id is not None and state is not old_state:
            self._count_lane(job.queue, job.group_id, old_state, state)
        if state is DELAYED:
            # A new or moved run time may be earlier than the one idle workers sleep
            # until; waking them makes them take again and learn the new ``next_run_at``.
            self.woken.add(job.queue)
        key = (job.queue, job.id)
        if old_state is None or key in self._new:
            self._new[key] = job
            if moved:
                self._new_order[key] = self._order_key(job)
            return
        values = _changing(_fields(job))
        if moved:
            self.conn.execute(_UPDATE, (*values, self._order_key(job), *key))
        else:
            self.conn.execute(_UPDATE_SAME_STATE, (*values[:-1], *key))

    def delete(self, queue: str, job_id: str) -> None:
        key = (queue, job_id)
        new = self._new.pop(key, None)
        if new is not None and new.group_id is not None:
            self._count_lane(queue, new.group_id, new.state, None)
        if new is not None:
            self._new_order.pop(key, None)
            self._new_deps.pop(key, None)
            self._new_links.pop(key, None)
            return
        self._flush()
        conn = self.conn
        gone = conn.execute(
            "DELETE FROM jobs WHERE queue = ? AND id = ? RETURNING group_id, state", key
        ).fetchone()
        if gone is not None and gone[0] is not None:
            self._count_lane(queue, gone[0], _STATES[gone[1]], None)
        conn.execute("DELETE FROM logs WHERE queue = ? AND id = ?", key)
        conn.execute("DELETE FROM dependencies WHERE parent_queue = ? AND parent_id = ?", key)
        conn.execute("DELETE FROM parent_links WHERE queue = ? AND id = ?", key)

    def first_waiting(self, queue: str, limit: int) -> list[JobRecord]:
        self._flush()
        rows = self.conn.execute(
            f"{_SELECT} INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'waiting' ORDER BY order_key LIMIT ?",
            (queue, limit),
        ).fetchall()
        return [_record(row) for row in rows]

    def first_waiting_each(
        self, queue: str, groups: Sequence[str | None]
    ) -> list[JobRecord | None]:
        self._flush()
        # One statement for all the lanes, each lane's first job found through its own
        # index: a group's through jobs_group_waiting, the own lane's (JSON null) through
        # jobs_own_waiting.
        rows = self.conn.execute(
            f"SELECT g.key, {_COLUMNS_OF_J} FROM json_each(?2) g JOIN jobs j ON j.rowid = "
            "CASE WHEN g.value IS NULL THEN (SELECT rowid FROM jobs INDEXED BY jobs_own_waiting "
            "WHERE queue = ?1 AND state = 'waiting' AND group_id IS NULL "
            "ORDER BY order_key LIMIT 1) "
            "ELSE (SELECT rowid FROM jobs INDEXED BY jobs_group_waiting WHERE queue_key = ?3 "
            "AND group_id = g.value AND state = 'waiting' AND queue = ?1 "
            "ORDER BY order_key LIMIT 1) END",
            (queue, json.dumps(list(groups)), queue_key(queue)),
        ).fetchall()
        found: list[JobRecord | None] = [None] * len(groups)
        for row in rows:
            found[row[0]] = _record(row[1:])
        return found

    def _flush_lanes(self, *, for_take: bool = False) -> None:
        """Write the lanes' counts, served numbers and windows, and the queues' last
        served numbers (in their own lanes' rows), kept in memory while a transaction
        takes jobs.

        ``for_take``: only what a take reads (the lanes served or whose waiting count
        moved); the other lanes' counts wait for the next full flush, so that a lane
        finishing jobs and then served is written once."""
        counts, puts = self._lane_counts, self._lane_put
        if puts:
            self._write_lanes(
                _LANE_SERVE,
                _LANE_NEW_SERVE,
                [
                    (*key, lane.served, *(lane.window or (None, 0)), *counts.pop(key, _NO_DELTAS))
                    for key, lane in puts.items()
                ],
            )
            puts.clear()
        if counts:
            # A lane whose waiting count stays is written without it: SQLite rewrites
            # the lane's lanes_ready entry for an update that sets ``waiting``.
            waiting_moved: list[tuple[Any, ...]] = []
            waiting_kept: list[tuple[Any, ...]] = []
            for key, deltas in list(counts.items()):
                if deltas[_WAITING_AT]:
                    waiting_moved.append((*key, *deltas))
                elif for_take:
                    continue  # written by the next full flush
                elif any(deltas):
                    waiting_kept.append((*key, *deltas))
                del counts[key]
            self._write_lanes(_LANE_COUNT, _LANE_NEW_COUNT, waiting_moved)
            self._write_lanes(_LANE_COUNT_KEPT, _LANE_NEW_COUNT, waiting_kept)
        if self._served:
            self.conn.executemany(
                "INSERT INTO lanes (queue, group_id, last_served) VALUES (?, '', ?) "
                "ON CONFLICT (queue, group_id) DO UPDATE SET last_served = excluded.last_served",
                list(self._served.items()),
            )
            self._served.clear()

    def _write_lanes(self, update: str, insert: str, rows: list[tuple[Any, ...]]) -> None:
        """Update the lanes' rows; a lane with no row yet (its group's first job) gets
        one with the same values, the lanes that have one being left as updated."""
        if rows and self.conn.executemany(update, rows).rowcount < len(rows):
            self.conn.executemany(insert, rows)

    def has_grouped_waiting(self, queue: str) -> bool:
        self._flush_lanes(for_take=True)
        row = self.conn.execute(
            "SELECT 1 FROM lanes INDEXED BY lanes_ready WHERE queue = ? AND waiting > 0 LIMIT 1",
            (queue,),
        ).fetchone()
        return row is not None

    def ready_lanes(self, queue: str, limit: int) -> list[tuple[str, Lane]]:
        self._flush()
        self._flush_lanes(for_take=True)
        conn = self.conn
        rows = conn.execute(
            "SELECT group_id, served, window_start, window_count FROM lanes "
            "INDEXED BY lanes_ready WHERE queue = ? AND waiting > 0 "
            "ORDER BY served, group_id LIMIT ?",
            (queue, limit),
        ).fetchall()
        # The queue's own lane, if a job without a group waits, and the queue's last
        # served number (kept in the own lane's row), which the lanes served next count on.
        own_served, last_served, own_waiting = conn.execute(
            "SELECT coalesce(l.served, 0), coalesce(l.last_served, 0), EXISTS (SELECT 1 FROM "
            "jobs INDEXED BY jobs_own_waiting WHERE queue = ?1 AND state = 'waiting' "
            "AND group_id IS NULL) FROM (SELECT 1) LEFT JOIN lanes l "
            "ON l.queue = ?1 AND l.group_id = ''",
            (queue,),
        ).fetchone()
        self._served.setdefault(queue, int(last_served))
        if own_waiting:
            rows.append(("", own_served, None, 0))
            rows.sort(key=lambda row: (row[1], row[0]))
        return [
            (str(g), Lane(int(served), None if start is None else (float(start), int(count))))
            for g, served, start, count in rows[:limit]
        ]

    def put_lane(self, queue: str, group: str, lane: Lane) -> None:
        self._lane_put[(queue, group)] = lane

    def _count_lane(
        self, queue: str, group: str, old: JobState | None, new: JobState | None
    ) -> None:
        """A job of ``group`` went from ``old`` to ``new`` (``None``: it is new, or
        deleted); the lane's counts of :data:`_LANE_COUNTED` (every state) follow."""
        key = (queue, group)
        deltas = self._lane_counts.get(key)
        if deltas is None:
            deltas = self._lane_counts[key] = [0] * len(_LANE_COUNTED)
        if old is not None:
            deltas[_LANE_INDEX[old]] -= 1
        if new is not None:
            deltas[_LANE_INDEX[new]] += 1

    def next_served(self, queue: str) -> int:
        served = self._served.get(queue)
        if served is None:
            found = self.conn.execute(
                "SELECT last_served FROM lanes WHERE queue = ? AND group_id = ''", (queue,)
            ).fetchone()
            served = 0 if found is None else int(found[0])
        self._served[queue] = served + 1
        return served + 1

    def count_group(self, queue: str, group: str, state: JobState) -> int:
        # The lane's row and what this transaction moved, unwritten yet. The column's
        # name is one of our own constants, never user data.
        at = _LANE_INDEX[state]
        row = self.conn.execute(
            f"SELECT {_LANE_COLUMNS[at]} FROM lanes WHERE queue = ? AND group_id = ?",
            (queue, group),
        ).fetchone()
        pending = self._lane_counts.get((queue, group), _NO_DELTAS)[at]
        return (0 if row is None else int(row[0])) + pending

    def group_counts(self, queue: str) -> dict[str, dict[JobState, int]]:
        self._flush()
        self._flush_lanes()
        return {
            str(row[0]): dict(zip(_LANE_COUNTED, map(int, row[1:]), strict=True))
            for row in self.conn.execute(
                f"SELECT group_id, {', '.join(_LANE_COLUMNS)} FROM lanes "
                "WHERE queue = ? AND group_id != ''",
                (queue,),
            )
        }

    def group_limits(self, queue: str) -> GroupLimits:
        row = self.conn.execute(
            "SELECT group_concurrency, group_rate_max, group_rate_duration FROM queues "
            "WHERE name = ?",
            (queue,),
        ).fetchone()
        if row is None:
            return GroupLimits()
        rate = None if row[1] is None else (int(row[1]), float(row[2]))
        return GroupLimits(None if row[0] is None else int(row[0]), rate)

    def set_group_limits(self, queue: str, limits: GroupLimits) -> None:
        most, duration = limits.rate_limit if limits.rate_limit is not None else (None, None)
        self.conn.execute(
            "INSERT INTO queues (name, group_concurrency, group_rate_max, group_rate_duration) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "group_concurrency = excluded.group_concurrency, "
            "group_rate_max = excluded.group_rate_max, "
            "group_rate_duration = excluded.group_rate_duration",
            (queue, limits.concurrency, most, duration),
        )

    def due_delayed(self, queue: str, now: float) -> list[JobRecord]:
        self._flush()
        rows = self.conn.execute(
            f"{_SELECT} INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'delayed' AND order_key <= ? AND run_at <= ? "
            "ORDER BY order_key, id",
            (queue, _micros(now), now),
        ).fetchall()
        return [_record(row) for row in rows]

    def next_run_at(self, queue: str) -> float | None:
        self._flush()
        row = self.conn.execute(
            "SELECT min(run_at) FROM jobs INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'delayed' AND order_key = "
            "(SELECT min(order_key) FROM jobs INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'delayed')",
            (queue, queue),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def expired_active(self, queue: str, now: float) -> list[JobRecord]:
        self._flush()
        rows = self.conn.execute(
            f"{_SELECT} INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'active' AND lock_until < ? ORDER BY order_key",
            (queue, now),
        ).fetchall()
        return [_record(row) for row in rows]

    def list_jobs(
        self, queue: str, state: JobState, start: int = 0, end: int | None = None
    ) -> list[JobRecord]:
        self._flush()
        sql = (
            f"{_SELECT} INDEXED BY jobs_state "
            f"WHERE queue = ? AND state = ? ORDER BY {_ORDER_BY[state]}"
        )
        window = _limit_offset(start, end)
        if window is None:
            rows = self.conn.execute(sql, (queue, state.value)).fetchall()
            rows = rows[start : None if end is None else end + 1]
        else:
            rows = self.conn.execute(
                f"{sql} LIMIT ? OFFSET ?", (queue, state.value, *window)
            ).fetchall()
        return [_record(row) for row in rows]

    def count(self, queue: str, state: JobState) -> int:
        self._flush()
        row = self.conn.execute(
            "SELECT count(*) FROM jobs INDEXED BY jobs_state WHERE queue = ? AND state = ?",
            (queue, state.value),
        ).fetchone()
        return int(row[0])

    def counts(self, queue: str) -> dict[JobState, int]:
        """Jobs per state, every state present, in one query."""
        self._flush()
        found = dict(
            self.conn.execute(
                "SELECT state, count(*) FROM jobs INDEXED BY jobs_state "
                "WHERE queue = ? GROUP BY state",
                (queue,),
            ).fetchall()
        )
        return {state: int(found.get(state.value, 0)) for state in JobState}

    def finished_beyond(self, queue: str, state: JobState, keep: int) -> list[str]:
        self._flush()
        rows = self.conn.execute(
            "SELECT id FROM jobs INDEXED BY jobs_state WHERE queue = ? AND state = ? "
            "ORDER BY order_key DESC LIMIT -1 OFFSET ?",
            (queue, state.value, keep),
        ).fetchall()
        return [row[0] for row in rows]

    def clean_candidates(
        self, queue: str, state: JobState, older_than: float, limit: int | None
    ) -> list[str]:
        self._flush()
        stamp = "finished_at" if state.finished else "created_at"
        rows = self.conn.execute(
            "SELECT id FROM jobs INDEXED BY jobs_state "
            f"WHERE queue = ? AND state = ? AND {stamp} <= ? "
            f"ORDER BY {_OLDEST_FIRST[state]} LIMIT ?",
            (queue, state.value, older_than, -1 if limit is None else limit),
        ).fetchall()
        return [row[0] for row in rows]

    # ---------------------------------------------------------------- dependencies

    def dependencies(self, queue: str, job_id: str) -> list[ChildDependency]:
        deps = self._new_deps.get((queue, job_id))
        if deps is not None or (queue, job_id) in self._new:
            return [] if deps is None else list(deps.values())
        rows = self.conn.execute(
            f"SELECT {_DEP_COLUMNS} FROM dependencies "
            "WHERE parent_queue = ? AND parent_id = ? ORDER BY seq",
            (queue, job_id),
        ).fetchall()
        return [_dependency(row) for row in rows]

    def get_dependency(
        self, queue: str, job_id: str, child_queue: str, child_id: str
    ) -> ChildDependency | None:
        parent = (queue, job_id)
        if parent in self._new:
            return self._new_deps.get(parent, {}).get((child_queue, child_id))
        row = self.conn.execute(
            f"SELECT {_DEP_COLUMNS} FROM dependencies WHERE {_DEP_WHERE}",
            (queue, job_id, child_queue, child_id),
        ).fetchone()
        return None if row is None else _dependency(row)

    def put_dependency(self, queue: str, job_id: str, dep: ChildDependency) -> None:
        parent = (queue, job_id)
        if parent in self._new:
            self._new_deps.setdefault(parent, {})[(dep.queue, dep.id)] = dep
            return
        conn = self.conn
        names = (queue, job_id, dep.queue, dep.id)
        row = conn.execute(f"SELECT status FROM dependencies WHERE {_DEP_WHERE}", names).fetchone()
        if row is None:
            (seq,) = conn.execute(
                "SELECT coalesce(max(seq) + 1, 0) FROM dependencies "
                "WHERE parent_queue = ? AND parent_id = ?",
                parent,
            ).fetchone()
            conn.execute(_DEP_INSERT, (*names, seq, dep.status, dep.value, dep.reason))
            old_status = None
        else:
            conn.execute(
                f"UPDATE dependencies SET status = ?, value = ?, reason = ? WHERE {_DEP_WHERE}",
                (dep.status, dep.value, dep.reason, *names),
            )
            old_status = row[0]
        if old_status != dep.status:
            conn.execute(_DEP_COUNT, (old_status, dep.status, queue, job_id))

    def delete_dependency(self, queue: str, job_id: str, child_queue: str, child_id: str) -> None:
        parent = (queue, job_id)
        if parent in self._new:
            self._new_deps.get(parent, {}).pop((child_queue, child_id), None)
            return
        conn = self.conn
        row = conn.execute(
            f"DELETE FROM dependencies WHERE {_DEP_WHERE} RETURNING status",
            (queue, job_id, child_queue, child_id),
        ).fetchone()
        if row is not None:
            conn.execute(_DEP_COUNT, (row[0], None, queue, job_id))

    def parent_links(self, queue: str, job_id: str) -> list[ParentLink]:
        key = (queue, job_id)
        if key in self._new:
            return list(self._new_links.get(key, ()))
        rows = self.conn.execute(
            "SELECT parent_queue, parent_id, policy FROM parent_links "
            "WHERE queue = ? AND id = ? ORDER BY seq",
            key,
        ).fetchall()
        return [ParentLink(row[0], row[1], _POLICIES[row[2]]) for row in rows]

    def add_parent_link(self, queue: str, job_id: str, link: ParentLink) -> None:
        key = (queue, job_id)
        if key in self._new:
            self._new_links.setdefault(key, []).append(link)
            return
        (seq,) = self.conn.execute(
            "SELECT coalesce(max(seq) + 1, 0) FROM parent_links WHERE queue = ? AND id = ?", key
        ).fetchone()
        self.conn.execute(
            _LINK_INSERT, (queue, job_id, seq, link.queue, link.id, link.policy.value)
        )

    def delete_parent_links(self, queue: str, job_id: str) -> None:
        key = (queue, job_id)
        self._new_links.pop(key, None)
        self.conn.execute("DELETE FROM parent_links WHERE queue = ? AND id = ?", key)

    def pending_count(self, queue: str, job_id: str) -> int:
        parent = (queue, job_id)
        if parent in self._new:
            deps = self._new_deps.get(parent, {})
            return sum(1 for dep in deps.values() if dep.status == "pending")
        row = self.conn.execute(
            "SELECT pending FROM jobs WHERE queue = ? AND id = ?", parent
        ).fetchone()
        return 0 if row is None else int(row[0])

    def dependency_page(
        self, queue: str, job_id: str, after: int | None, limit: int
    ) -> list[tuple[int, ChildDependency]]:
        self._flush()
        rows = self.conn.execute(
            _DEP_PAGE, (queue, job_id, -1 if after is None else after, limit)
        ).fetchall()
        return [(int(row[0]), _dependency(row[1:])) for row in rows]

    def dependency_counts(self, queue: str, job_id: str) -> dict[DependencyStatus, int]:
        self._flush()
        row = self.conn.execute(
            "SELECT pending, deps_processed, deps_failed, deps_ignored FROM jobs "
            "WHERE queue = ? AND id = ?",
            (queue, job_id),
        ).fetchone()
        if row is None:
            return {}
        return dict(zip(_STATUSES.values(), (int(n) for n in row), strict=True))

    # ---------------------------------------------------------------- logs

    def add_log(self, queue: str, job_id: str, line: str) -> int:
        self._flush()
        (seq,) = self.conn.execute(
            "SELECT coalesce(max(seq) + 1, 0) FROM logs WHERE queue = ? AND id = ?",
            (queue, job_id),
        ).fetchone()
        self.conn.execute(
            "INSERT INTO logs (queue, id, seq, line) VALUES (?, ?, ?, ?)",
            (queue, job_id, seq, line),
        )
        return int(seq) + 1

    def get_logs(self, queue: str, job_id: str, start: int, end: int | None) -> list[str]:
        self._flush()
        conn = self.conn
        if start < 0 or (end is not None and end < 0):
            (total,) = conn.execute(
                "SELECT count(*) FROM logs WHERE queue = ? AND id = ?", (queue, job_id)
            ).fetchone()
            start, stop, _ = slice(start, None if end is None else end + 1).indices(total)
        else:
            stop = -1 if end is None else end + 1
        if stop != -1 and stop <= start:
            return []
        rows = conn.execute(
            "SELECT line FROM logs WHERE queue = ? AND id = ? AND seq >= ? "
            "AND (? = -1 OR seq < ?) ORDER BY seq",
            (queue, job_id, start, stop, stop),
        ).fetchall()
        return [row[0] for row in rows]

    # ---------------------------------------------------------------- queues

    def is_paused(self, queue: str) -> bool:
        row = self.conn.execute("SELECT paused FROM queues WHERE name = ?", (queue,)).fetchone()
        return bool(row and row[0])

    def set_paused(self, queue: str, paused: bool) -> None:
        self.conn.execute(
            "INSERT INTO queues (name, paused) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET paused = excluded.paused",
            (queue, int(paused)),
        )

    def rate_window(self, queue: str) -> tuple[float, int] | None:
        row = self.conn.execute(
            "SELECT window_start, window_count FROM queues WHERE name = ?", (queue,)
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return float(row[0]), int(row[1])

    def set_rate_window(self, queue: str, start: float, count: int) -> None:
        self.conn.execute(
            "INSERT INTO queues (name, window_start, window_count) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET "
            "window_start = excluded.window_start, window_count = excluded.window_count",
            (queue, start, count),
        )

    def global_concurrency(self, queue: str) -> int | None:
        row = self.conn.execute(
            "SELECT concurrency FROM queues WHERE name = ?", (queue,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def set_global_concurrency(self, queue: str, concurrency: int | None) -> None:
        self.conn.execute(
            "INSERT INTO queues (name, concurrency) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET concurrency = excluded.concurrency",
            (queue, concurrency),
        )

    def limited_until(self, queue: str) -> float | None:
        row = self.conn.execute(
            "SELECT limited_until FROM queues WHERE name = ?", (queue,)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def set_limited_until(self, queue: str, until: float) -> None:
        self.conn.execute(
            "INSERT INTO queues (name, limited_until) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET limited_until = excluded.limited_until",
            (queue, until),
        )

    def prefetch_deduplication(self, queue: str, dedup_id: str, job_id: str) -> None:
        """Read a deduplication entry, and whether ``job_id`` names no job yet, in one
        query, so that the add that follows needs neither read again. Valid until the
        end of the transaction."""
        row = self.conn.execute(
            "SELECT d.job_id, d.expires_at, "
            "EXISTS (SELECT 1 FROM jobs WHERE queue = ?1 AND id = ?3) "
            "FROM (SELECT 1) LEFT JOIN deduplication d ON d.queue = ?1 AND d.id = ?2",
            (queue, dedup_id, job_id),
        ).fetchone()
        self._dedup[(queue, dedup_id)] = None if row[0] is None else (row[0], row[1])
        if not row[2]:
            self._absent.add((queue, job_id))

    def get_deduplication(self, queue: str, dedup_id: str) -> tuple[str, float | None] | None:
        key = (queue, dedup_id)
        if key in self._dedup:
            return self._dedup[key]
        row = self.conn.execute(
            "SELECT job_id, expires_at FROM deduplication WHERE queue = ? AND id = ?",
            (queue, dedup_id),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def put_deduplication(
        self, queue: str, dedup_id: str, job_id: str, expires_at: float | None
    ) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO deduplication (queue, id, job_id, expires_at) "
            "VALUES (?, ?, ?, ?)",
            (queue, dedup_id, job_id, expires_at),
        )
        self._dedup.pop((queue, dedup_id), None)

    # ---------------------------------------------------------------- schedulers

    def get_scheduler(self, queue: str, scheduler_id: str) -> SchedulerRecord | None:
        row = self.conn.execute(
            f"SELECT {_SCHEDULER_COLUMNS} FROM schedulers WHERE queue = ? AND id = ?",
            (queue, scheduler_id),
        ).fetchone()
        return None if row is None else SchedulerRecord(*row)

    def put_scheduler(self, record: SchedulerRecord) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO schedulers (queue, id, timing, template, next_run_at, "
            "iterations) VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.queue,
                record.id,
                record.timing,
                record.template,
                record.next_run_at,
                record.iterations,
            ),
        )

    def delete_scheduler(self, queue: str, scheduler_id: str) -> bool:
        cursor = self.conn.execute(
            "DELETE FROM schedulers WHERE queue = ? AND id = ?", (queue, scheduler_id)
        )
        return cursor.rowcount > 0

    def schedulers(self, queue: str) -> list[SchedulerRecord]:
        rows = self.conn.execute(
            f"SELECT {_SCHEDULER_COLUMNS} FROM schedulers WHERE queue = ? ORDER BY id", (queue,)
        )
        return [SchedulerRecord(*row) for row in rows]

    def schedulers_by_next_run(self, queue: str, limit: int) -> list[SchedulerRecord]:
        rows = self.conn.execute(
            f"SELECT {_SCHEDULER_COLUMNS} FROM schedulers INDEXED BY schedulers_next "
            "WHERE queue = ? AND next_run_at IS NOT NULL ORDER BY next_run_at, id LIMIT ?",
            (queue, limit),
        )
        return [SchedulerRecord(*row) for row in rows]

    def delete_schedulers(self, queue: str) -> None:
        self.conn.execute("DELETE FROM schedulers WHERE queue = ?", (queue,))

    def forget_queue(self, queue: str) -> None:
        self._flush_lanes()
        self.conn.execute("DELETE FROM queues WHERE name = ?", (queue,))
        self.conn.execute("DELETE FROM deduplication WHERE queue = ?", (queue,))
        self.conn.execute("DELETE FROM metrics WHERE queue = ?", (queue,))
        self.conn.execute("DELETE FROM lanes WHERE queue = ?", (queue,))

    # ---------------------------------------------------------------- operating

    def record_metric(self, queue: str, kind: str, minute: int, count: int) -> None:
        conn = self.conn
        cursor = conn.execute(
            "UPDATE metrics SET count = count + ? WHERE queue = ? AND kind = ? AND minute = ?",
            (count, queue, kind, minute),
        )
        if cursor.rowcount:
            return
        conn.execute(
            "INSERT INTO metrics (queue, kind, minute, count) VALUES (?, ?, ?, ?)",
            (queue, kind, minute, count),
        )
        conn.execute(  # once per new minute: drop what fell out of the window
            "DELETE FROM metrics WHERE queue = ? AND kind = ? AND minute < ?",
            (queue, kind, minute - METRICS_MINUTES),
        )

    def metrics(self, queue: str, kind: str, start: int, end: int) -> dict[int, int]:
        rows = self.conn.execute(
            "SELECT minute, count FROM metrics "
            "WHERE queue = ? AND kind = ? AND minute BETWEEN ? AND ? AND count > 0 "
            "ORDER BY minute",
            (queue, kind, start, end),
        ).fetchall()
        return {minute: count for minute, count in rows}

    def search(
        self,
        queue: str,
        folded_text: str | None,
        name: str | None,
        states: Sequence[JobState] | None,
        limit: int,
        after: tuple[float, str] | None,
    ) -> tuple[list[JobRecord], tuple[float, str] | None]:
        self._flush()
        wanted = None if states is None else {state.value for state in states}

        def matches(row: Any) -> bool:
            if name is not None and row[2] != name:
                return False
            if wanted is not None and row[_STATE_AT] not in wanted:
                return False
            return folded_text is None or any(folded_text in fold_ascii(row[i]) for i in (0, 2, 3))

        if folded_text is not None and len(folded_text) >= 3:
            candidates = self._text_candidates(queue, folded_text, after)
            if candidates is not None:
                found = [_record(row) for row in candidates if matches(row)]
                if len(found) <= limit:
                    return found, None
                last = found[limit - 1]
                return found[:limit], (last.created_at, last.id)
        # Walk the queue newest first, at most _SEARCH_SCAN rows per call.
        if after is None:
            rows = self.conn.execute(_SEARCH_SCAN_FIRST, (queue, _SEARCH_SCAN))
        else:
            rows = self.conn.execute(_SEARCH_SCAN_AFTER, (queue, *after, _SEARCH_SCAN))
        found = []
        scanned = 0
        row: Any = None
        for row in rows:
            scanned += 1
            if matches(row):
                if len(found) == limit:
                    last = found[-1]
                    return found, (last.created_at, last.id)
                found.append(_record(row))
        if scanned < _SEARCH_SCAN or row is None:
            return found, None
        return found, (row[14], row[0])  # resume below the last row looked at

    def _text_candidates(
        self, queue: str, folded_text: str, after: tuple[float, str] | None
    ) -> list[Any] | None:
        """The queue's rows whose text the trigram index may contain, newest first, or
        ``None`` when they are too many to read at once (then a scan finds them sooner)."""
        phrase = '"' + folded_text.replace('"', '""') + '"'
        rowids = [
            r[0]
            for r in self.conn.execute(
                "SELECT rowid FROM jobs_text WHERE jobs_text MATCH ? LIMIT ?",
                (phrase, _TEXT_CANDIDATES + 1),
            )
        ]
        if len(rowids) > _TEXT_CANDIDATES:
            return None
        rows: list[Any] = []
        for start in range(0, len(rowids), 500):
            chunk = rowids[start : start + 500]
            rows += self.conn.execute(
                f"{_SELECT} WHERE rowid IN ({', '.join('?' * len(chunk))}) AND queue = ?",
                (*chunk, queue),
            ).fetchall()
        if after is not None:
            rows = [row for row in rows if (row[14], row[0]) < after]
        rows.sort(key=lambda row: (row[14], row[0]), reverse=True)
        return rows

    def queues(self) -> list[str]:
        self._flush()
        return [row[0] for row in self.conn.execute(_DISTINCT_QUEUES).fetchall()]

    def idle_take(self, queue: str, now: float) -> float | Literal[False] | None:
        """``False`` if a take could start or promote a job now; otherwise (nothing
        waiting, or paused, and no delayed job due) the queue's next ``run_at``."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'waiting') "
            "AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ? AND paused), "
            "EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'delayed' AND order_key <= ? AND run_at <= ?)",
            (queue, queue, queue, _micros(now), now),
        ).fetchone()
        if row[0] or row[1]:
            return False
        return self.next_run_at(queue)

    def has_expired_locks(self, queue: str, now: float) -> bool:
        """Whether an active job of the queue has ``lock_until < now``."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'active' AND lock_until < ?)",
            (queue, now),
        ).fetchone()
        return bool(row[0])

    def work_hint(self, queue: str) -> tuple[bool, int | None]:
        """Whether the queue has a waiting job and is not paused, and the ``order_key``
        of its first delayed job (its run time in microseconds)."""
        row = self.conn.execute(
            "SELECT EXISTS (SELECT 1 FROM jobs INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'waiting') "
            "AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ? AND paused), "
            "(SELECT min(order_key) FROM jobs INDEXED BY jobs_state "
            "WHERE queue = ? AND state = 'delayed')",
            (queue, queue, queue),
        ).fetchone()
        return bool(row[0]), row[1]

    # ---------------------------------------------------------------- events

    def emit(
        self, type: str, queue: str, job_id: str | None, data: dict[str, Any] | None, now: float
    ) -> None:
        self._events.append(
            (queue, type, job_id, _encode_event(data) if data else None, now, time.time())
        )
        self.emitted.add(queue)

    def wake(self, queue: str) -> None:
        self.woken.add(queue)

    def last_event_id(self) -> int:
        """The id of the newest event; every later event has a greater id."""
        row = self.conn.execute("SELECT max(id) FROM events").fetchone()
        return 0 if row[0] is None else int(row[0])

    def events_after(self, queue: str, after: int, limit: int) -> tuple[list[EventRecord], int]:
        """The queue's events with ``id > after``, oldest first (at most ``limit``), and
        the id to continue after next time.

        The next id moves past events of other queues too, so a listener of a quiet queue
        never rescans a busy queue's events. Call it in a read transaction: ids are
        handed out in commit order, so no event at or below the newest id seen can
        appear later.
        """
        conn = self.conn
        rows = conn.execute(
            "SELECT id, type, job_id, data, ts FROM events WHERE id > ? AND queue = ? "
            "ORDER BY id LIMIT ?",
            (after, queue, limit),
        ).fetchall()
        if len(rows) < limit:
            (newest,) = conn.execute("SELECT max(id) FROM events").fetchone()
            after = max(after, newest or 0)
        else:
            after = rows[-1][0]
        events = [
            EventRecord(row[1], queue, row[2], json.loads(row[3]) if row[3] else {}, row[4])
            for row in rows
        ]
        return events, after
