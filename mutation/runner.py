"""Run a test suite against each mutant of a file, each in its own copy of the packages.

The project tree is never written to. For every worker slot the runner copies the
target's packages into a temporary directory, puts that directory first on the path of
the test subprocess and writes one mutant at a time into the copy (deleting its compiled
form each time, so no stale bytecode survives a rewrite).

A first, unmutated run records which lines of the target each test executes. A mutant
is then run only against the tests that execute one of its lines, in suite order, with
``-x``; a mutant whose lines no test executes survives without a run (``uncovered``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import Protocol

from .ledger import (
    DETECTED,
    ERROR,
    KILLED,
    SURVIVED,
    TIMEOUT,
    UNCOVERED,
    Entry,
    Ledger,
    digest,
)
from .mutators import Mutant, Mutator, mutator_for

_TRACE_PLUGIN = '''"""Record the lines of the mutation target that each test executes."""
import json
import os
import sys
import threading
import time

import pytest

_TARGET = os.path.realpath(os.environ["MUTATION_TRACE_TARGET"])
_OUTPUT = os.environ["MUTATION_TRACE_OUTPUT"]
_current = [""]
_lines = {"": set()}
_order = []
_seconds = {}


def _local(frame, event, arg):
    if event == "line":
        _lines[_current[0]].add(frame.f_lineno)
    return _local


_is_target = {}


def _global(frame, event, arg):
    name = frame.f_code.co_filename
    hit = _is_target.get(name)
    if hit is None:
        hit = _is_target[name] = os.path.realpath(name) == _TARGET
    if hit:
        _lines[_current[0]].add(frame.f_lineno)
        return _local
    return None


sys.settrace(_global)
threading.settrace(_global)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    _lines.setdefault(item.nodeid, set())
    _order.append(item.nodeid)
    started = time.monotonic()
    yield
    _seconds[item.nodeid] = time.monotonic() - started
    _current[0] = ""


def pytest_sessionfinish(session, exitstatus):
    sys.settrace(None)
    modules = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()}
    with open(_OUTPUT, "w") as out:
        json.dump(
            {
                "order": _order,
                "seconds": _seconds,
                "lines": {key: sorted(value) for key, value in _lines.items()},
                "modules": modules,
            },
            out,
        )
'''


@dataclass(frozen=True)
class Target:
    """What to mutate and which suite judges the mutants."""

    name: str
    root: Path
    """The project root; ``path`` and ``packages`` are relative to it."""
    path: str
    """The mutated file, e.g. ``conveyor_core/engine.py``."""
    packages: tuple[str, ...]
    """Top-level packages (directories under ``root``) copied for every run."""
    suite_files: dict[str, str]
    """Files written next to the copied packages: test modules, ``conftest.py``..."""
    pytest_args: tuple[str, ...] = ()
    mutator: Mutator | None = None
    """The mutator for ``path``; by default the one registered for its suffix. SQL or Lua
    kept inside a Python module (``conveyor_stores/postgres/schema.py``) names its own."""
    units: Units | None = None
    """How to tell which tests a mutant concerns when the mutated code is not Python run
    in the test process: by default the lines each test executes."""
    service: Callable[[], Service] | None = None
    """Makes a private server for one copy (e.g. a Redis server of its own, so that a
    mutant script that never ends cannot block a shared one)."""

    def files(self) -> list[str]:
        """The mutated files: ``path``, or every file its glob pattern matches."""
        if not any(char in self.path for char in "*?["):
            return [self.path]
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(self.path))


class Service(Protocol):
    """A server the tests of one copy use, started for it and stopped after."""

    def start(self) -> dict[str, str]:
        """Start; returns the environment variables that point the tests at it."""
        ...

    def after_run(self) -> None:
        """Called after each mutant's run: make the server usable again if the mutant
        left it busy."""
        ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Units:
    """Which tests concern a mutant, by named units (PostgreSQL functions, Lua scripts).

    ``plugin`` is the source of a pytest plugin run in the unmutated run: it writes, to
    the file named by ``$MUTATION_UNITS_OUTPUT``, ``{"units": {test id: [unit, ...]},
    "modules": {module: file}}``, the units each test called. ``affected`` names the
    units a mutant changes, directly or through what they call or include. A mutant then
    runs the tests that called one of them.
    """

    plugin: str
    affected: Callable[[Mutant], frozenset[str]]
    module: str
    """A module the suite must import from the private copy (checked by the baseline)."""


@dataclass
class Outcome:
    mutant: Mutant
    status: str
    tests_run: int = 0
    seconds: float = 0.0
    detail: str = ""
    reused: bool = False
    """Taken from a ledger (see :mod:`mutation.ledger`), not run again."""


@dataclass
class Report:
    target: str
    outcomes: list[Outcome]
    equivalent: dict[str, str] = field(default_factory=dict)
    baseline_seconds: float = 0.0

    @property
    def killed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in DETECTED]

    @property
    def survivors(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status not in DETECTED]

    @property
    def equivalent_survivors(self) -> list[Outcome]:
        return [o for o in self.survivors if o.mutant.id in self.equivalent]

    @property
    def open_survivors(self) -> list[Outcome]:
        return [o for o in self.survivors if o.mutant.id not in self.equivalent]

    @property
    def stale_equivalents(self) -> list[Outcome]:
        """Mutants listed as equivalent that the suite kills after all."""
        return [o for o in self.killed if o.mutant.id in self.equivalent]

    @property
    def score(self) -> float:
        """Killed mutants among those not known to be equivalent."""
        judged = len(self.outcomes) - len(self.equivalent_survivors)
        return 1.0 if judged == 0 else len(self.killed) / judged

    def to_json(self) -> dict[str, object]:
        return {
            "target": self.target,
            "mutants": len(self.outcomes),
            "killed": len(self.killed),
            "equivalent": len(self.equivalent_survivors),
            "surviving": len(self.open_survivors),
            "score": self.score,
            "outcomes": [
                {
                    "id": o.mutant.id,
                    "path": o.mutant.path,
                    "line": o.mutant.line,
                    "scope": o.mutant.scope,
                    "kind": o.mutant.kind,
                    "original": o.mutant.original,
                    "mutated": o.mutant.mutated,
                    "status": o.status,
                    "equivalent": self.equivalent.get(o.mutant.id),
                    "tests_run": o.tests_run,
                    "seconds": round(o.seconds, 2),
                    "detail": o.detail,
                    "reused": o.reused,
                }
                for o in self.outcomes
            ],
        }


INVALID = "invalid"


def mutants_of(target: Target) -> list[Mutant]:
    """The valid mutants of every file of the target, in file order."""
    return all_mutants(target)[0]


def all_mutants(target: Target) -> tuple[list[Mutant], list[tuple[Mutant, str]]]:
    """``(valid, invalid)``: the invalid ones (not a valid program) with the reason."""
    valid: list[Mutant] = []
    invalid: list[tuple[Mutant, str]] = []
    for path in target.files():
        text = (target.root / path).read_text()
        mutator = target.mutator or mutator_for(path)
        valid.extend(mutator.mutants(text, path))
        invalid.extend(getattr(mutator, "invalid", []))
    return valid, invalid


def select(
    mutants: Sequence[Mutant],
    *,
    only: Sequence[str] = (),
    sample: int | None = None,
    seed: int = 0,
) -> list[Mutant]:
    """The mutants with the given ids (all if none), or a seeded random sample of them."""
    chosen = list(mutants)
    if only:
        wanted = set(only)
        unknown = wanted - {m.id for m in chosen}
        if unknown:
            raise ValueError(f"no mutant with id {', '.join(sorted(unknown))}")
        chosen = [m for m in chosen if m.id in wanted]
    if sample is not None and sample < len(chosen):
        picked = set(random.Random(seed).sample(range(len(chosen)), sample))
        chosen = [m for index, m in enumerate(chosen) if index in picked]
    return chosen


class _Workspace:
    """A private copy of the target's packages and suite, reused mutant after mutant."""

    def __init__(self, target: Target, parent: Path) -> None:
        self.target = target
        self.dir = Path(tempfile.mkdtemp(prefix="mutation-", dir=parent))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in target.packages:
            shutil.copytree(target.root / package, self.dir / package, ignore=ignore)
        for name, content in target.suite_files.items():
            (self.dir / name).write_text(content)
        (self.dir / "_mutation_trace.py").write_text(
            _TRACE_PLUGIN if target.units is None else target.units.plugin
        )
        self.originals = {path: (target.root / path).read_text() for path in target.files()}
        self.changed: str | None = None
        self.running: subprocess.Popen[str] | None = None
        self.stopped = False
        self.service = None if target.service is None else target.service()
        self.service_env = {} if self.service is None else self.service.start()

    def stop(self) -> None:
        """Kill the test run in progress, if any, and refuse further runs."""
        self.stopped = True
        proc = self.running
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self.service is not None:
            self.service.stop()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.dir)
        env.pop("PYTHONSTARTUP", None)
        env.update(self.service_env)
        return env

    def write(self, path: str, text: str) -> None:
        """Put ``text`` in the copy of ``path`` (the file last changed is put back first);
        its compiled form is deleted, so the next import compiles this text (other
        modules keep their compiled cache)."""
        if self.changed is not None and self.changed != path:
            self._put(self.changed, self.originals[self.changed])
        self._put(path, text)
        self.changed = path

    def _put(self, path: str, text: str) -> None:
        file = self.dir / path
        file.write_text(text)
        if file.suffix == ".py":
            Path(importlib.util.cache_from_source(str(file))).unlink(missing_ok=True)

    def pytest(
        self,
        tests: Sequence[str],
        timeout: float,
        extra: Sequence[str] = (),
        *,
        x: bool = True,
        env: dict[str, str] | None = None,
    ) -> tuple[int | None, str]:
        """Run pytest on ``tests``; ``None`` as exit code means it timed out."""
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "--no-header",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hypothesispytest",
            *(["-x"] if x else []),
            *self.target.pytest_args,
            *extra,
            *tests,
        ]
        if self.stopped:
            raise RuntimeError("the run was stopped")
        proc = self.running = subprocess.Popen(
            command,
            cwd=self.dir,
            env={**self.env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None, ""
        finally:
            self.running = None
        if self.stopped:
            # Killed by stop(): its exit code says nothing of the mutant.
            raise RuntimeError("the run was stopped")
        return proc.returncode, output


class BaselineError(RuntimeError):
    """The suite does not pass on the unmutated code, or did not run the copy."""


@dataclass(frozen=True)
class Coverage:
    order: list[str]
    """Every test, quickest first: with ``-x`` a mutant's run stops at its first failure."""
    lines: dict[str, set[int]]
    at_import: set[int]
    seconds: float

    def tests_for(self, mutant: Mutant) -> list[str]:
        span = set(range(mutant.line, mutant.end_line + 1))
        if span & self.at_import:
            return list(self.order)
        return [t for t in self.order if span & self.lines.get(t, set())]


@dataclass(frozen=True)
class UnitCoverage:
    order: list[str]
    units: dict[str, set[str]]
    affected: Callable[[Mutant], frozenset[str]]
    seconds: float

    def tests_for(self, mutant: Mutant) -> list[str]:
        changed = self.affected(mutant)
        return [t for t in self.order if changed & self.units.get(t, set())]


def _baseline(space: _Workspace, timeout: float) -> Coverage | UnitCoverage:
    if space.target.units is not None:
        return _unit_baseline(space, space.target.units, timeout)
    path = space.target.path
    space.write(path, space.originals[path])
    output_file = space.dir / "_mutation_trace.json"
    env_extra = {
        "MUTATION_TRACE_TARGET": str(space.dir / path),
        "MUTATION_TRACE_OUTPUT": str(output_file),
    }
    started = time.monotonic()
    code, output = space.pytest([], timeout, ["-p", "_mutation_trace"], x=False, env=env_extra)
    seconds = time.monotonic() - started
    if code != 0:
        tail = "\n".join(output.splitlines()[-30:])
        raise BaselineError(f"the suite does not pass on the unmutated code:\n{tail}")
    data = json.loads(output_file.read_text())
    output_file.unlink()
    module_name = space.target.path.removesuffix(".py").replace("/", ".")
    loaded = data["modules"].get(module_name)
    if loaded is None or Path(loaded).resolve() != (space.dir / path).resolve():
        raise BaselineError(
            f"the suite imported {module_name} from {loaded}, not from the private copy"
        )
    lines = {key: set(value) for key, value in data["lines"].items()}
    durations: dict[str, float] = data["seconds"]
    order = sorted(data["order"], key=lambda test: durations.get(test, 0.0))
    return Coverage(order, lines, lines.pop("", set()), seconds)


def _unit_baseline(space: _Workspace, units: Units, timeout: float) -> UnitCoverage:
    output_file = space.dir / "_mutation_units.json"
    env_extra = {"MUTATION_UNITS_OUTPUT": str(output_file)}
    started = time.monotonic()
    code, output = space.pytest([], timeout, ["-p", "_mutation_trace"], x=False, env=env_extra)
    seconds = time.monotonic() - started
    if code != 0:
        tail = "\n".join(output.splitlines()[-30:]) or "(it ran out of time)"
        raise BaselineError(f"the suite does not pass on the unmutated code:\n{tail}")
    data = json.loads(output_file.read_text())
    output_file.unlink()
    loaded = data["modules"].get(units.module)
    if loaded is None or not Path(loaded).resolve().is_relative_to(space.dir.resolve()):
        raise BaselineError(
            f"the suite imported {units.module} from {loaded}, not from the private copy"
        )
    durations: dict[str, float] = data["seconds"]
    order = sorted(data["order"], key=lambda test: durations.get(test, 0.0))
    called = {test: set(names) for test, names in data["units"].items()}
    return UnitCoverage(order, called, units.affected, seconds)


def _scope(mutant: Mutant) -> str:
    return f"{mutant.path}:{mutant.scope}"


def _failed_test(output: str) -> str:
    """The node id of the first test pytest reports as failed, or ``""``."""
    for line in output.splitlines():
        if line.startswith("FAILED "):
            return line.removeprefix("FAILED ").split(" - ", 1)[0].strip()
    return ""


def _judge(
    space: _Workspace,
    mutant: Mutant,
    coverage: Coverage | UnitCoverage,
    timeout: float,
    first: Sequence[str] = (),
) -> Outcome:
    """Run the tests that concern ``mutant``; those in ``first`` (that killed other
    mutants of its scope) before the rest, as with ``-x`` the first failure ends it."""
    tests = coverage.tests_for(mutant)
    if not tests:
        return Outcome(mutant, UNCOVERED)
    if first:
        chosen = set(tests)
        ahead = [test for test in first if test in chosen]
        if ahead:
            ahead_set = set(ahead)
            tests = ahead + [test for test in tests if test not in ahead_set]
    space.write(mutant.path, mutant.apply(space.originals[mutant.path]))
    started = time.monotonic()
    try:
        code, output = space.pytest(tests, timeout)
    finally:
        if space.service is not None:
            space.service.after_run()
    seconds = time.monotonic() - started
    if code is None:
        return Outcome(mutant, TIMEOUT, len(tests), seconds)
    if code == 0:
        return Outcome(mutant, SURVIVED, len(tests), seconds)
    if code == 1:
        return Outcome(mutant, KILLED, len(tests), seconds, _failed_test(output))
    return Outcome(mutant, ERROR, len(tests), seconds, f"pytest exit code {code}")


@contextmanager
def _workspaces(target: Target, count: int) -> Iterator[list[_Workspace]]:
    parent = Path(tempfile.mkdtemp(prefix="mutation-run-"))
    spaces: list[_Workspace] = []
    try:
        spaces.extend(_Workspace(target, parent) for _ in range(count))
        yield spaces
    finally:
        for space in spaces:
            space.stop()
        shutil.rmtree(parent, ignore_errors=True)


def run(
    target: Target,
    mutants: Sequence[Mutant],
    *,
    jobs: int = 1,
    timeout: float | None = None,
    equivalent: dict[str, str] | None = None,
    progress: Callable[[Outcome, int, int], None] | None = None,
    ledger: Ledger | None = None,
    judged: str = "",
) -> Report:
    """Judge every mutant with the target's suite; the project tree is left untouched.

    ``timeout`` is the limit for one mutant's run (seconds); by default three times the
    unmutated run plus 30 seconds. A mutant that runs out of time counts as killed.
    Interrupted, it stops its test runs and deletes its copies before returning.

    With a ``ledger``, a mutant whose kill it holds is not run again, and each mutant
    judged is written to it at once (``judged`` says when, for people).
    """
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    with _workspaces(target, max(1, min(jobs, len(mutants)))) as spaces:
        coverage = _baseline(spaces[0], 3600.0)
        limit = timeout or coverage.seconds * 3 + 30.0
        digests = {path: digest(text) for path, text in spaces[0].originals.items()}
        known = set(coverage.order)
        reused: dict[str, Outcome] = {}
        killers: dict[str, list[str]] = {}
        if ledger is not None:
            for mutant in mutants:
                entry = ledger.reusable(mutant, digests[mutant.path], known)
                if entry is not None:
                    reused[mutant.id] = Outcome(
                        mutant, entry.status, detail=entry.killed_by or "", reused=True
                    )
            killers = ledger.killers({m.id: _scope(m) for m in mutants})
        to_run = [mutant for mutant in mutants if mutant.id not in reused]
        if ledger is not None:
            # Survivors last (see mutation.ledger): they take the longest, and a run made
            # in parts would otherwise spend each part on them again before going on.
            to_run.sort(key=lambda mutant: ledger.survived(mutant, digests[mutant.path]))
        free: SimpleQueue[_Workspace] = SimpleQueue()
        for space in spaces:
            free.put(space)
        lock = threading.Lock()
        done = [0]

        def judge(mutant: Mutant) -> Outcome:
            space = free.get()
            try:
                outcome = _judge(space, mutant, coverage, limit, killers.get(_scope(mutant), ()))
            finally:
                free.put(space)
            with lock:
                if ledger is not None:
                    ledger.record([_entry(outcome, digests[mutant.path], judged)])
                done[0] += 1
                if progress is not None:
                    progress(outcome, done[0], len(to_run))
            return outcome

        pool = ThreadPoolExecutor(max_workers=len(spaces))
        try:
            futures = {mutant.id: pool.submit(judge, mutant) for mutant in to_run}
            outcomes = [reused[m.id] if m.id in reused else futures[m.id].result() for m in mutants]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for space in spaces:
                space.stop()
            # The runs in progress end at once; nothing is written after this returns.
            pool.shutdown(wait=True)
            raise
        pool.shutdown()
    return Report(target.name, outcomes, dict(equivalent or {}), coverage.seconds)


def _entry(outcome: Outcome, file_digest: str, judged: str) -> Entry:
    return Entry(
        id=outcome.mutant.id,
        path=outcome.mutant.path,
        status=outcome.status,
        file_digest=file_digest,
        killed_by=(outcome.detail or None) if outcome.status == KILLED else None,
        judged=judged,
    )
