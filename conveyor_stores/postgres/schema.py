"""The PostgreSQL schema of the store: migrations and functions, in ``sql/``.

Every transition of the store protocol is a PL/pgSQL function installed in the schema,
one per file in ``sql/functions/``, so each protocol call is one statement and one round
trip. The functions follow ``conveyor_core.engine`` step by step (FINAL FAILURE, RELEASE
CHECK, REMOVE, RETENTION). Tables and indexes come from ``sql/migrations/``, in order.

The SQL text uses placeholders, filled in by :func:`render` from validated identifiers
and constants only: ``@S`` (the quoted schema name), ``@CHANNEL`` (a string literal
naming the NOTIFY channel), ``@STALLED``, ``@LIMIT``, ``@PIECE``, ``@PLANNER``,
``@METRICS_MINUTES``, ``@SEARCH_SCAN`` and ``@FOLD_EVERY``. Queue names, ids and data are
always bind parameters.

Events travel as JSON arrays ``[queue, type, job_id, data, timestamp]``, batched into as
few notifications per transaction as the payload limit allows.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources

from conveyor_core.store import METRICS_MINUTES, STALLED_REASON

SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

NOTIFY_LIMIT = 7900
"""Bytes per NOTIFY payload; PostgreSQL refuses payloads of 8000 bytes or more."""

SEARCH_SCAN = 5000
"""Jobs a search walk looks at, at most, in one call: a page stays cheap on any queue; a
sparse match takes more pages."""

FOLD_EVERY = 64
"""One statement in this many that changes job counts also folds its queues' count
deltas into their base rows (``_fold_counts``): the delta table stays small while
workers run, and a fold's cost is shared by this many transitions."""

PLANNER = (
    "SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off "
    "SET enable_bitmapscan = off SET jit = off"
)
"""Every transition touches a handful of rows through indexes. Pinning index plans keeps
cached generic plans fast while the tables grow faster than statistics are refreshed; a
plan the pinning makes look expensive must not be compiled by the JIT (a second or more
for a statement of a millisecond). No bitmap scans: with fresh statistics the planner
prices a look-up by id through the trigram index of search (``jobs_text``, which serves
only bitmap scans) below the primary key, and such a look-up reads every job whose id
shares the trigrams: milliseconds per job."""

FUNCTIONS = (
    "_ev",
    "_event_text",
    "_publish",
    "_count_finished",
    "_count_dependencies",
    "_fold_counts",
    "_fold_due",
    "_count_states",
    "get_counts",
    "_delete",
    "_links",
    "_still_needed",
    "_to_waiting",
    "_to_delayed",
    "_release",
    "_resolved",
    "_retain",
    "_remove",
    "_fail_unstarted_children",
    "_final_failure",
    "_dedup_live",
    "_promote_due",
    "_worker_commit",
    "_group_waiting",
    "_fold_lanes",
    "_group_waiting_fold",
    "add_jobs",
    "add_jobs_batch",
    "_take_by_lanes",
    "take_jobs",
    "extend_locks",
    "complete_jobs",
    "complete_and_take",
    "fail_jobs",
    "release_jobs",
    "recover_stalled",
    "update_progress",
    "add_log",
    "change_priority",
    "change_delay",
    "promote_job",
    "promote_jobs",
    "_retry",
    "retry_job",
    "retry_jobs",
    "remove_job",
    "set_paused",
    "drain",
    "clean",
    "obliterate",
    "search_scan",
    "search_boundary",
    "search_text",
    "upsert_scheduler",
    "fire_scheduler",
    "remove_child_dependency",
    "remove_unprocessed_children",
    "add_dag",
    "cancel_job",
    "add_children",
    "park_job",
    "add_deduplicated",
)
"""The PL/pgSQL functions, one per file in ``sql/functions/``, in the order they are
created (a ``LANGUAGE sql`` function must come after what it calls)."""

_SQL = resources.files(__package__).joinpath("sql")


def function_sql(name: str) -> str:
    """The text of one function's file (placeholders not yet rendered)."""
    return _SQL.joinpath("functions", f"{name}.sql").read_text(encoding="utf-8")


def migration_sql(name: str) -> str:
    """The text of one migration's file (placeholders not yet rendered)."""
    return _SQL.joinpath("migrations", f"{name}.sql").read_text(encoding="utf-8")


def all_functions_sql() -> str:
    """Every function, in creation order: run after each migration, since every
    statement is ``CREATE OR REPLACE`` and migrations may need new function bodies."""
    return "\n".join(function_sql(name) for name in FUNCTIONS)


MIGRATIONS: list[tuple[int, str]] = [
    (1, migration_sql("0001_tables") + all_functions_sql()),
    (2, migration_sql("0002_metrics_and_search") + all_functions_sql()),
    (3, migration_sql("0003_job_schedulers") + all_functions_sql()),
    (
        4,
        migration_sql("0004_large_flows")
        + all_functions_sql()
        + migration_sql("0004_large_flows_triggers"),
    ),
    (5, migration_sql("0005_cancel") + all_functions_sql()),
    # Step jobs change no table: the step installs the new and changed functions.
    (6, all_functions_sql()),
    (7, migration_sql("0007_dag") + all_functions_sql()),
    (8, migration_sql("0008_flow_control") + all_functions_sql()),
    (9, all_functions_sql() + migration_sql("0009_state_counts")),
    (
        10,
        migration_sql("0010_groups") + all_functions_sql() + migration_sql("0010_groups_triggers"),
    ),
    # A take counts the jobs it takes out of their lanes itself: the triggers and the
    # lanes' counts of 10 again, with a trigger that no longer notes takes.
    (11, all_functions_sql() + migration_sql("0010_groups_triggers")),
    # COMPLETE AND TAKE: a new function, no table changes.
    (12, all_functions_sql()),
    (13, migration_sql("0013_deps_deletes_uncounted") + all_functions_sql()),
    # Function bodies changed (takes run generic plans; a take by lanes without group
    # limits is one statement of take_jobs) and _take_by_lanes has a new signature.
    (14, migration_sql("0014_take_by_lanes") + all_functions_sql()),
    # _remove_each dropped; change_delay wakes idle workers.
    (15, migration_sql("0015_drop_remove_each") + all_functions_sql()),
]
"""``(version, sql)`` in order; a database at version ``v`` runs every later one.

A schema at the latest version runs no step, so its functions are those of the step that
brought it there: a change to any function's text needs a step of its own (at least
``(N, all_functions_sql())``), and :data:`FUNCTIONS_DIGEST` records the text the latest
step installs (a test compares them)."""

LATEST = MIGRATIONS[-1][0]

FUNCTIONS_DIGEST = "3720428d3acf8c0435f62b614ac7edef5e19616ac560c8e47e5a61a2a3cfb21b"
"""What :func:`functions_digest` gives for the functions the latest step installs."""

_DROP_FUNCTION = re.compile(r"DROP FUNCTION IF EXISTS @S\.\w+\([^)]*\)")
_CALL = re.compile(r"@S\.(\w+)\s*\(")


def _needs_functions(sql: str) -> bool:
    """Whether a migration's text creates a trigger on a function or calls one of the
    functions (naming one to drop an old signature is not a need)."""
    if "EXECUTE FUNCTION" in sql:
        return True
    names = set(FUNCTIONS)
    return any(name in names for name in _CALL.findall(_DROP_FUNCTION.sub("", sql)))


def plan(steps: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The ``(version, sql)`` to run for ``steps`` (pending :data:`MIGRATIONS`, in
    order), with the function installs no statement needs left out.

    Each step installs every function (:func:`all_functions_sql`), always the same text,
    so when several steps run, as for a new schema, an install is needed only where a
    later statement creates a trigger on a function or calls one, and once at the end;
    an install after which nothing dropped a function is not repeated. Every statement
    that needs the functions sees the versions it would see with every install run."""
    functions = all_functions_sql()
    out: list[tuple[int, str]] = []
    pending = False  # an install was skipped since the last one run
    current = False  # the functions are installed and none was dropped since
    for version, text in steps:
        chunks: list[str] = []
        for index, part in enumerate(text.split(functions)):
            if index and not current:
                pending = True
            if not part.strip():
                continue
            if pending and _needs_functions(part):
                chunks.append(functions)
                pending, current = False, True
            chunks.append(part)
            if "DROP FUNCTION" in part:
                current = False
        out.append((version, "".join(chunks)))
    if pending and out:
        last, text = out[-1]
        out[-1] = (last, text + functions)
    return out


def functions_digest() -> str:
    """SHA-256 of every function's text, rendered as every schema gets it (but for the
    schema's name and channel)."""
    text = render(all_functions_sql(), "digest", "digest", STALLED_REASON)
    return hashlib.sha256(text.encode()).hexdigest()


def quote_ident(name: str) -> str:
    """``name`` validated against :data:`SCHEMA_NAME` and double-quoted for SQL."""
    if not SCHEMA_NAME.fullmatch(name):
        raise ValueError(
            f"invalid schema name {name!r}: use letters, digits and underscores, "
            "not starting with a digit, at most 63 characters"
        )
    return f'"{name}"'


def quote_literal(text: str) -> str:
    """A SQL string literal of ``text`` (only ever called with validated identifiers)."""
    return "'" + text.replace("'", "''") + "'"


def render(sql: str, schema: str, channel: str, stalled_reason: str) -> str:
    """Fill the placeholders of ``sql`` for one schema."""
    return (
        sql.replace("@STALLED", quote_literal(stalled_reason))
        .replace("@CHANNEL", quote_literal(channel))
        .replace("@LIMIT", str(NOTIFY_LIMIT))
        .replace("@PIECE", str(NOTIFY_LIMIT // 2 - 10))
        .replace("@PLANNER", PLANNER)
        .replace("@METRICS_MINUTES", str(METRICS_MINUTES))
        .replace("@SEARCH_SCAN", str(SEARCH_SCAN))
        .replace("@FOLD_EVERY", str(FOLD_EVERY))
        .replace("@S", quote_ident(schema))
    )
