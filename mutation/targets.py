"""The mutation targets of this project: which file, which packages, which suite."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from .lua import LuaMutator, compile_error
from .mutators import Mutant
from .runner import Target, Units
from .sql import SqlMutator, functions

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT_FILE = Path(__file__).resolve().parent / "equivalent.toml"

_STORES = {
    "memory": (
        "from conveyor_stores import MemoryStore",
        "MemoryStore()",
        False,
    ),
    "sqlite": (
        "from conveyor_stores.sqlite import SQLiteStore",
        'SQLiteStore(str(tmp_path / "conveyor.db"))',
        True,
    ),
}
ENGINE_STORES = tuple(_STORES)
"""Stores whose transitions run ``conveyor_core/engine.py`` (the PostgreSQL and Redis
stores run their own server-side code: the ``sql`` and ``lua`` targets)."""
STORES = (*ENGINE_STORES, "postgres", "redis")

_SUITE = '''"""The conformance suite against {store}, judging mutants."""

import pytest

from conveyor_core.conformance import StoreConformance
{imports}


class TestConformance(StoreConformance):
    timeout = {timeout}

    @pytest.fixture
    async def store(self, tmp_path):
        async with {make} as store:
            yield store
{second}'''

_SECOND = """
    @pytest.fixture
    async def second_store(self, tmp_path):
        async with {make} as store:
            yield store
"""


WAIT_SECONDS = 5.0
"""Each wait of the suite, shorter than its default: a mutant that breaks a flow makes
tests wait for conditions that never come true, and the unmutated suite still passes
with a wide margin on a busy machine."""


SERVER_WAIT_SECONDS = 15.0
"""The same for the PostgreSQL and Redis suites: their largest flows take seconds on a
busy machine."""


def conformance_suite(store: str, wait: float = WAIT_SECONDS) -> str:
    """A test module running the conformance suite on ``store``."""
    try:
        imports, make, shared = _STORES[store]
    except KeyError:
        raise ValueError(f"unknown store {store!r} (known: {', '.join(STORES)})") from None
    second = _SECOND.format(make=make) if shared else ""
    return _SUITE.format(store=store, imports=imports, make=make, second=second, timeout=repr(wait))


def engine(store: str | None = None, root: Path = ROOT) -> Target:
    """``conveyor_core/engine.py`` judged by the conformance suite on ``store``."""
    store = store or "memory"
    return Target(
        name="engine",
        root=root,
        path="conveyor_core/engine.py",
        packages=("conveyor_core", "conveyor_stores"),
        suite_files={"test_conformance_mutation.py": conformance_suite(store)},
    )


SQL_FUNCTIONS = "conveyor_stores/postgres/sql/functions/*.sql"
LUA_SCRIPTS = "conveyor_stores/redis/lua/*.lua"

_UNITS_PLUGIN = '''"""Record the {what} each test calls (the mutation tool's unmutated run)."""
import json
import os
import sys
import time

import pytest

_OUTPUT = os.environ["MUTATION_UNITS_OUTPUT"]
_current = [""]
_units = {{"": set()}}
_order = []
_seconds = {{}}


def record(name):
    _units.setdefault(_current[0], set()).add(name)

{patch}

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    _units.setdefault(item.nodeid, set())
    _order.append(item.nodeid)
    started = time.monotonic()
    yield
    _seconds[item.nodeid] = time.monotonic() - started
    _current[0] = ""


def pytest_sessionfinish(session, exitstatus):
    modules = {{name: getattr(module, "__file__", None) for name, module in sys.modules.items()}}
    with open(_OUTPUT, "w") as out:
        json.dump(
            {{
                "order": _order,
                "seconds": _seconds,
                "units": {{key: sorted(value) for key, value in _units.items()}},
                "modules": modules,
            }},
            out,
        )
'''

_PG_PATCH = """
import contextvars
import re

import asyncpg.connection

from conveyor_stores.postgres import store as _store

_quiet = contextvars.ContextVar("mutation_quiet", default=False)
_CALL = re.compile(r'[.]\\s*"?(\\w+)"?\\s*[(]')


def _recording(name):
    original = getattr(asyncpg.connection.Connection, name)

    async def wrapper(self, query, *args, **kwargs):
        if not _quiet.get() and isinstance(query, str):
            for match in _CALL.finditer(query):
                record(match.group(1))
        return await original(self, query, *args, **kwargs)

    setattr(asyncpg.connection.Connection, name, wrapper)


def _quietly(owner, name):
    original = getattr(owner, name)

    async def wrapper(*args, **kwargs):
        token = _quiet.set(True)
        try:
            return await original(*args, **kwargs)
        finally:
            _quiet.reset(token)

    setattr(owner, name, wrapper)


for _name in ("execute", "executemany", "fetch", "fetchval", "fetchrow"):
    _recording(_name)
# A connection's warm-up and the schema's migration run on every store opened: they
# call functions for every test, but not for what it checks.
_quietly(_store.PostgresStore, "_warm")
_quietly(_store, "migrate")
"""

_REDIS_PATCH = """
from conveyor_stores.redis import store as _store

_original_run = _store.RedisStore._run


async def _run(self, script, *args, **kwargs):
    record(script)
    return await _original_run(self, script, *args, **kwargs)


_store.RedisStore._run = _run
"""


def _server_suite(root: Path, store: str, wait: float) -> dict[str, str]:
    """The repository's conformance module for ``store`` and its fixtures, with shorter
    waits (see :data:`WAIT_SECONDS`)."""
    module = (root / "tests" / f"test_conformance_{store}.py").read_text()
    classes = re.findall(r"^class (\w+)\(StoreConformance\)", module, re.M)
    module += "".join(f"\n{name}.timeout = {wait!r}\n" for name in classes)
    return {
        "conftest.py": (root / "tests" / "conftest.py").read_text(),
        f"test_conformance_{store}.py": module,
    }


SQL_STORE_TESTS = (
    "test_postgres_counts.py",
    "test_postgres_lanes.py",
    "test_postgres_search.py",
    "test_postgres_notify.py",
)
"""PostgreSQL's own tests that the SQL target runs beside the conformance suite: what the
store keeps to itself (its per-state counts folded from deltas, whatever runs at once;
how a take by lanes steps over rows another transaction holds; where a search walk
resumes after the jobs one page looked at; how a transaction's events are cut into
notifications) has no conformance test, as no other store has it."""


LUA_STORE_TESTS = ("test_redis_store.py", "test_search_scan.py")
"""The Redis store's own tests that the Lua target runs beside the conformance suite:
what the store keeps to itself (its event stream capped at ``stream_max_len``, its keys
under one hash tag, the metrics keys bounded, the bound on the jobs one search call
looks at) has no conformance test."""

LUA_SUPPORT = ("reliability/__init__.py", "reliability/stores.py")
"""Modules of ``tests/`` that :data:`LUA_STORE_TESTS` import."""


def _only(target: str, store: str | None, wanted: str) -> None:
    if store not in (None, wanted):
        raise ValueError(f"the {target} target runs on the {wanted} store, not {store!r}")


def sql(store: str | None = None, root: Path = ROOT) -> Target:
    """The PostgreSQL functions (``sql/functions/*.sql``) judged by the conformance suite
    on PostgreSQL and the store's own tests of :data:`SQL_STORE_TESTS`. A mutant runs
    the tests that called its function, or a function that calls it (directly or not)."""
    _only("sql", store, "postgres")
    from conveyor_stores.postgres import schema

    def render(text: str) -> str:
        # ``public``: pglast resolves ``%TYPE``-like lookups only in built-in schemas.
        return schema.render(text, "public", "mutation", "stalled")

    callers = _sql_callers(root)

    def affected(mutant: Mutant) -> frozenset[str]:
        return callers.get(mutant.scope, frozenset({mutant.scope}))

    return Target(
        name="sql",
        root=root,
        path=SQL_FUNCTIONS,
        packages=("conveyor_core", "conveyor_stores"),
        suite_files={
            **_server_suite(root, "postgres", SERVER_WAIT_SECONDS),
            **{name: (root / "tests" / name).read_text() for name in SQL_STORE_TESTS},
        },
        mutator=SqlMutator(render),
        units=Units(
            _UNITS_PLUGIN.format(what="PostgreSQL functions", patch=_PG_PATCH),
            affected,
            "conveyor_stores.postgres.store",
        ),
        service=StatementLimit,
        # The migrations (every function's text) are read when the module is imported.
        resident=("conveyor_stores.postgres.schema",),
    )


def _sql_callers(root: Path) -> dict[str, frozenset[str]]:
    """For each function: itself and every function that calls it, directly or not."""
    bodies: dict[str, str] = {}
    triggers: set[str] = set()
    for path in sorted(root.glob(SQL_FUNCTIONS)):
        text = path.read_text()
        for function in functions(text):
            bodies[function.name] = text[function.body_start : function.body_end]
            if function.returns == "trigger":
                triggers.add(function.name)
    calls = {
        name: {other for other in bodies if re.search(rf"\b{other}\s*\(", body)}
        for name, body in bodies.items()
    }
    # A trigger function runs whenever its table changes: as if every function called it.
    for name in calls:
        calls[name] |= triggers
    out: dict[str, frozenset[str]] = {}
    for name in bodies:
        found = {name}
        grew = True
        while grew:
            more = {caller for caller, callees in calls.items() if callees & found}
            grew = not more <= found
            found |= more
        out[name] = frozenset(found)
    return out


STATEMENT_SECONDS = 120
"""The limit on one statement of the SQL target's test runs."""


class StatementLimit:
    """The shared PostgreSQL server, each statement of one copy's tests limited to
    :data:`STATEMENT_SECONDS` (``statement_timeout``, a setting of the DSN). A mutant
    function that loops forever then fails its test; without the limit it would run on in
    its server process after the test's process is killed at the run's timeout."""

    def __init__(self, seconds: float = STATEMENT_SECONDS) -> None:
        self.seconds = seconds

    def start(self) -> dict[str, str]:
        # The default is the one of tests/conftest.py.
        dsn = os.environ.get("CONVEYOR_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
        separator = "&" if "?" in dsn else "?"
        limit = f"statement_timeout={round(self.seconds * 1000)}"
        return {"CONVEYOR_TEST_PG_DSN": dsn + separator + limit}

    def after_run(self) -> None:
        pass

    def stop(self) -> None:
        pass


class PrivateRedis:
    """A ``redis-server`` of one copy's own, on a free local port, with its data in a
    temporary directory. A mutant script that never ends blocks only this server: after
    each run a busy server gets ``SCRIPT KILL``, and is started again if that fails."""

    def __init__(self, binary: str = "redis-server") -> None:
        self.binary = binary
        self.port = 0
        self.dir = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> dict[str, str]:
        if not self.port:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.port = probe.getsockname()[1]
            self.dir = tempfile.mkdtemp(prefix="mutation-redis-")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        for _ in range(100):
            if self._ask("PING") == "+PONG":
                return {"CONVEYOR_TEST_REDIS_URL": f"redis://127.0.0.1:{self.port}/0"}
            time.sleep(0.05)
        raise RuntimeError(f"{self.binary} did not start on port {self.port}")

    def _ask(self, *words: str) -> str:
        """One command's first reply line, or an empty string if the server does not
        answer."""
        command = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                conn.sendall(command.encode())
                return conn.recv(512).decode(errors="replace").split("\r\n")[0]
        except OSError:
            return ""

    def after_run(self) -> None:
        if not self._ask("PING").startswith("-BUSY"):
            return
        self._ask("SCRIPT", "KILL")
        for _ in range(20):
            if self._ask("PING") == "+PONG":
                return
            time.sleep(0.1)
        self._terminate()
        self.start()

    def _terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        self._terminate()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def lua(store: str | None = None, root: Path = ROOT) -> Target:
    """The Redis scripts (``lua/*.lua``) judged by the conformance suite on Redis and the
    store's own tests of :data:`LUA_STORE_TESTS`. A mutant runs the tests that called a
    script whose text, as sent to the server (with the helpers of ``common.lua`` it
    uses), the mutant changes."""
    _only("lua", store, "redis")
    from conveyor_stores.redis.store import assemble_scripts

    folder = root / LUA_SCRIPTS.rsplit("/", 1)[0]
    originals = {path.stem: path.read_text() for path in sorted(folder.glob("*.lua"))}
    before = assemble_scripts(originals)

    @lru_cache(maxsize=8)
    def scripts_with(stem: str, text: str) -> dict[str, str]:
        return assemble_scripts({**originals, stem: text})

    def changed(path: str, text: str) -> frozenset[str]:
        after = scripts_with(Path(path).stem, text)
        return frozenset(name for name, source in after.items() if before.get(name) != source)

    def check(path: str, text: str) -> str | None:
        after = scripts_with(Path(path).stem, text)
        for name in sorted(changed(path, text)):
            problem = compile_error(after[name])
            if problem is not None:
                return f"{name}: {problem}"
        return None

    def affected(mutant: Mutant) -> frozenset[str]:
        return changed(mutant.path, mutant.apply(originals[Path(mutant.path).stem]))

    return Target(
        name="lua",
        root=root,
        path=LUA_SCRIPTS,
        packages=("conveyor_core", "conveyor_stores"),
        suite_files={
            **_server_suite(root, "redis", SERVER_WAIT_SECONDS),
            **{
                name: (root / "tests" / name).read_text()
                for name in (*LUA_STORE_TESTS, *LUA_SUPPORT)
            },
        },
        mutator=LuaMutator(check),
        units=Units(
            _UNITS_PLUGIN.format(what="Redis scripts", patch=_REDIS_PATCH),
            affected,
            "conveyor_stores.redis.store",
        ),
        service=PrivateRedis,
        # A store reads its scripts when it is made: nothing to reload.
        resident=(),
    )


TARGETS: dict[str, Callable[..., Target]] = {"engine": engine, "sql": sql, "lua": lua}


def equivalent(target: str, path: Path = EQUIVALENT_FILE) -> dict[str, str]:
    """Mutant ids of ``target`` known to be equivalent, each with the reason."""
    if not path.exists():
        return {}
    with path.open("rb") as source:
        data = tomllib.load(source)
    section = data.get(target, {})
    return {str(key): str(value["why"]) for key, value in section.items()}
