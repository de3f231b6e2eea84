"""Run a test suite against each mutant of a file, each in its own copy of the packages.

The project tree is never written to. For every worker slot the runner copies the
target's packages into a temporary directory, puts that directory first on the path of
the test subprocess and writes one mutant at a time into the copy (deleting its compiled
form each time, so no stale bytecode survives a rewrite).

A first, unmutated run records which lines of the target each test executes. A mutant
is then run only against the tests that execute one of its lines, in suite order, with
``-x``; a mutant whose lines no test executes survives without a run (``uncovered``).

A target whose mutated files are read at run time, not imported (SQL, Lua), can keep one
pytest process per copy for mutant after mutant (:attr:`Target.resident`): it collects
the suite once and runs the tests it is sent, so a mutant killed by its first test costs
that test, not a new interpreter, an import of the packages and a collection.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import select as _select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import IO, Protocol

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


_RESIDENT_PLUGIN = '''"""Run the tests the mutation tool sends, one mutant after another, here.

Each request is one line of JSON on the file descriptor ``$MUTATION_RESIDENT_IN``
(``{"tests": [node id, ...]}``, sent once the mutant is in the copy); the answer is one
line on ``$MUTATION_RESIDENT_OUT``: the first test that failed, or null. The tests run in
the order sent and stop at the first failure; every fixture is torn down after each
request, so the next mutant starts from nothing, as in a new process.
"""
import importlib
import json
import os

import pytest

_failed = []


def pytest_runtest_logreport(report):
    if report.failed and not _failed:
        _failed.append(report.nodeid)


def _answer(out, **fields):
    out.write(json.dumps(fields) + "\\n")
    out.flush()


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session):
    reload = json.loads(os.environ["MUTATION_RESIDENT_RELOAD"])
    items = {item.nodeid: item for item in session.items}
    requests = os.fdopen(int(os.environ["MUTATION_RESIDENT_IN"]), "r")
    out = os.fdopen(int(os.environ["MUTATION_RESIDENT_OUT"]), "w")
    _answer(out, ready=len(items))
    for line in requests:
        tests = json.loads(line)["tests"]
        unknown = [test for test in tests if test not in items]
        if unknown:
            _answer(out, error=f"unknown tests: {unknown[:3]}")
            continue
        for name in reload:
            importlib.reload(importlib.import_module(name))
        _failed.clear()
        chosen = [items[test] for test in tests]
        for index, item in enumerate(chosen):
            following = chosen[index + 1] if index + 1 < len(chosen) else None
            item.ihook.pytest_runtest_protocol(item=item, nextitem=following)
            if _failed:
                break
        session._setupstate.teardown_exact(None)
        _answer(out, failed=_failed[0] if _failed else None)
    return True
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
    """Files written next to the copied packages: test modules, ``conftest.py``... (a name
    may hold a folder: ``reliability/stores.py``)."""
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
    resident: tuple[str, ...] | None = None
    """Judge mutants in one long-lived pytest process per copy (see the module's
    docstring), reloading these modules before each mutant (those that read the mutated
    files when imported); ``None``: a fresh process per mutant, as a mutated Python
    module needs."""

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
    skip: Collection[str] = (),
) -> list[Mutant]:
    """The mutants with the given ids (all if none), less those whose ids are in
    ``skip``, or a seeded random sample of them."""
    chosen = list(mutants)
    if only:
        wanted = set(only)
        unknown = wanted - {m.id for m in chosen}
        if unknown:
            raise ValueError(f"no mutant with id {', '.join(sorted(unknown))}")
        chosen = [m for m in chosen if m.id in wanted]
    chosen = [m for m in chosen if m.id not in skip]
    if sample is not None and sample < len(chosen):
        picked = set(random.Random(seed).sample(range(len(chosen)), sample))
        chosen = [m for index, m in enumerate(chosen) if index in picked]
    return chosen


_PYTEST = (
    sys.executable,
    "-m",
    "pytest",
    "-q",
    "--no-header",
    "-p",
    "no:cacheprovider",
    "-p",
    "no:hypothesispytest",
)
"""How every test run of a mutant starts (no cache written into the copy; Hypothesis's
plugin, which the suites here do not use, left out)."""


class _Workspace:
    """A private copy of the target's packages and suite, reused mutant after mutant."""

    def __init__(self, target: Target, parent: Path) -> None:
        self.target = target
        self.dir = Path(tempfile.mkdtemp(prefix="mutation-", dir=parent))
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in target.packages:
            shutil.copytree(target.root / package, self.dir / package, ignore=ignore)
        for name, content in target.suite_files.items():
            (self.dir / name).parent.mkdir(parents=True, exist_ok=True)
            (self.dir / name).write_text(content)
        (self.dir / "_mutation_trace.py").write_text(
            _TRACE_PLUGIN if target.units is None else target.units.plugin
        )
        if target.resident is not None:
            (self.dir / "_mutation_resident.py").write_text(_RESIDENT_PLUGIN)
        self._resident: subprocess.Popen[bytes] | None = None
        self._requests: IO[str] | None = None
        self._answers = -1
        self._buffer = b""
        self._served = 0
        self.originals = {path: (target.root / path).read_text() for path in target.files()}
        self.changed: str | None = None
        self.running: subprocess.Popen[str] | None = None
        self.stopped = False
        self.service = None if target.service is None else target.service()
        self.service_env = {} if self.service is None else self.service.start()

    def stop(self) -> None:
        """Kill the test run in progress, if any, and refuse further runs."""
        self.stopped = True
        for proc in (self.running, self._resident):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        if self.service is not None:
            self.service.stop()

    def close(self) -> None:
        """Release what the resident process left (once no thread uses this copy)."""
        self._end_resident()

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
            *_PYTEST,
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

    def resident(self, tests: Sequence[str], timeout: float) -> tuple[str, str] | None:
        """Run ``tests`` in the copy's resident process (see :attr:`Target.resident`):
        the status and the first failed test. ``None`` when the process could not
        answer (it died or refused the request): the caller runs them in a new one."""
        if self.stopped:
            raise RuntimeError("the run was stopped")
        try:
            if self._resident is None or self._served >= RESIDENT_REQUESTS:
                self._end_resident()
                self._start_resident(timeout)
            assert self._requests is not None
            self._served += 1
            self._requests.write(json.dumps({"tests": list(tests)}) + "\n")
            self._requests.flush()
            answer = self._answer(timeout)
        except _ResidentTimeout:
            self._end_resident()
            return TIMEOUT, ""
        except (_ResidentDied, OSError):
            self._end_resident()
            if self.stopped:
                raise RuntimeError("the run was stopped") from None
            return None
        if "failed" not in answer:
            self._end_resident()
            return None
        failed = answer["failed"]
        return (KILLED, str(failed)) if failed else (SURVIVED, "")

    def _start_resident(self, timeout: float) -> None:
        requests_in, requests_out = os.pipe()
        answers_in, answers_out = os.pipe()
        suite = sorted(name for name in self.target.suite_files if name.startswith("test_"))
        command = [
            *_PYTEST,
            "-p",
            "_mutation_resident",
            *self.target.pytest_args,
            *suite,
        ]
        env = {
            **self.env(),
            "MUTATION_RESIDENT_IN": str(requests_in),
            "MUTATION_RESIDENT_OUT": str(answers_out),
            "MUTATION_RESIDENT_RELOAD": json.dumps(list(self.target.resident or ())),
        }
        try:
            self._resident = subprocess.Popen(
                command,
                cwd=self.dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(requests_in, answers_out),
                start_new_session=True,
            )
        finally:
            os.close(requests_in)
            os.close(answers_out)
        self._requests = os.fdopen(requests_out, "w")
        self._answers = answers_in
        self._buffer = b""
        self._served = 0
        if "ready" not in self._answer(timeout):
            raise _ResidentDied

    def _answer(self, timeout: float) -> dict[str, object]:
        """The resident process's next line of JSON."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _ResidentTimeout
            readable, _, _ = _select.select([self._answers], [], [], left)
            if readable:
                chunk = os.read(self._answers, 65536)
                if not chunk:
                    raise _ResidentDied
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer = json.loads(line)
        if not isinstance(answer, dict):
            raise _ResidentDied
        return answer

    def _end_resident(self) -> None:
        proc, self._resident = self._resident, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self._requests is not None:
            with contextlib.suppress(OSError):
                self._requests.close()
            self._requests = None
        if self._answers >= 0:
            os.close(self._answers)
            self._answers = -1


RESIDENT_REQUESTS = 200
"""Mutants a resident process judges before a new one takes over (whatever a long
process gathers, it never gathers for long)."""


class _ResidentTimeout(Exception):
    """The resident process did not answer in time."""


class _ResidentDied(Exception):
    """The resident process ended or answered something else than asked."""


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
        verdict = None if space.target.resident is None else space.resident(tests, timeout)
        if verdict is None:
            verdict = _verdict(*space.pytest(tests, timeout))
    finally:
        if space.service is not None:
            space.service.after_run()
    status, detail = verdict
    return Outcome(mutant, status, len(tests), time.monotonic() - started, detail)


def _verdict(code: int | None, output: str) -> tuple[str, str]:
    """The status of a mutant, and its detail, from its pytest run's exit code."""
    if code is None:
        return TIMEOUT, ""
    if code == 0:
        return SURVIVED, ""
    if code == 1:
        return KILLED, _failed_test(output)
    return ERROR, f"pytest exit code {code}"


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
            space.close()
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
