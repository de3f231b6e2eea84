"""The mutation tool: it makes mutants, runs them in private copies and names survivors."""

from __future__ import annotations

import ast
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mutation import PythonMutator, Target, run, select
from mutation.__main__ import main
from mutation.ledger import KILLED, SURVIVED, UNCOVERED, Ledger
from mutation.targets import equivalent

SOURCE = textwrap.dedent(
    '''
    """A module docstring."""

    LIMIT: int = 3


    def clamp(value: int, low: int, high: int) -> int:
        """Keep ``value`` within ``low`` and ``high``."""
        if value < low:
            return low
        if value > high:
            return high
        return value


    def passes(score: int, mark: int) -> bool:
        return score >= mark


    def tally(items: list[int], strict: bool = True) -> int:
        total = 0
        for item in items:
            if item and not strict or item == 7:
                total += item * 2
        return total if total > 0 else -1
    '''
)

WEAK_SUITE = textwrap.dedent(
    """
    from clampkit.core import clamp, passes


    def test_below_is_raised() -> None:
        assert clamp(-5, 0, 10) == 0


    def test_inside_is_kept() -> None:
        assert clamp(5, 0, 10) == 5


    def test_pass_and_fail() -> None:
        assert passes(90, 50) and not passes(10, 50)
    """
)

STRONG_SUITE = WEAK_SUITE + textwrap.dedent(
    """

    def test_the_mark_itself_passes() -> None:
        assert passes(50, 50)
    """
)


def test_python_mutator_makes_every_kind_of_change() -> None:
    mutants = PythonMutator().mutants(SOURCE, "clampkit/core.py")
    assert {m.kind for m in mutants} == {
        "compare",
        "boolop",
        "arith",
        "constant",
        "negate",
        "drop",
    }
    changes = {(m.original, m.mutated) for m in mutants}
    assert ("value < low", "value <= low") in changes
    assert ("value < low", "value >= low") in changes
    assert (
        "item and (not strict) or item == 7",
        "(item and (not strict)) and item == 7",
    ) in changes
    assert ("item and (not strict)", "item or not strict") in changes
    assert ("item and (not strict) or item == 7", "not (item and (not strict) or item == 7)") in (
        changes
    ), "a compound condition is negated"
    assert ("total += item * 2", "total -= item * 2") in changes
    assert ("item * 2", "item // 2") in changes
    assert ("True", "False") in changes, "a default value is mutated"
    assert ("return high", "pass") in changes
    assert ("not strict", "strict") in changes
    assert ("0", "1") in changes and ("2", "3") in changes
    assert len({m.id for m in mutants}) == len(mutants), "ids are unique"
    original = ast.dump(ast.parse(SOURCE))
    for mutant in mutants:
        changed = mutant.apply(SOURCE)
        assert ast.dump(ast.parse(changed)) != original, mutant.describe()


def test_docstrings_annotations_and_module_level_code_are_left_alone() -> None:
    mutants = PythonMutator().mutants(SOURCE, "clampkit/core.py")
    touched_lines = {m.line for m in mutants}
    for number, line in enumerate(SOURCE.splitlines(), start=1):
        if line.startswith(("LIMIT", '"""')) or line.strip().startswith('"""'):
            assert number not in touched_lines, line
    assert not any(m.original == "int" for m in mutants)


def test_mutant_ids_stay_when_other_code_moves() -> None:
    before = PythonMutator().mutants(SOURCE, "clampkit/core.py")
    moved = SOURCE.replace("LIMIT: int = 3\n", "LIMIT: int = 3\nOTHER = 4\n\n\n")
    after = PythonMutator().mutants(moved, "clampkit/core.py")
    assert [m.id for m in before] == [m.id for m in after]
    assert [m.line for m in before] != [m.line for m in after]
    renamed = PythonMutator().mutants(SOURCE, "clampkit/other.py")
    assert not {m.id for m in before} & {m.id for m in renamed}, "the file is part of the id"


def test_select_takes_ids_or_a_seeded_sample() -> None:
    mutants = PythonMutator().mutants(SOURCE, "clampkit/core.py")
    first = select(mutants, sample=5, seed=3)
    assert len(first) == 5 and first == select(mutants, sample=5, seed=3)
    assert first != select(mutants, sample=5, seed=4)
    assert select(mutants, only=[mutants[2].id]) == [mutants[2]]
    with pytest.raises(ValueError, match="no mutant with id nope"):
        select(mutants, only=["nope"])
    listed = {m.id for m in first[:2]}
    rest = select(mutants, sample=5, seed=3, skip=listed)
    assert len(rest) == 5 and not listed & {m.id for m in rest}


def _project(root: Path, suite: str) -> Target:
    package = root / "clampkit"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text(SOURCE)
    return Target(
        name="clamp",
        root=root,
        path="clampkit/core.py",
        packages=("clampkit",),
        suite_files={"test_clamp.py": suite},
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_a_weak_suite_lets_a_boundary_mutant_survive_and_a_strong_one_kills_it(
    tmp_path: Path,
) -> None:
    weak = _project(tmp_path, WEAK_SUITE)
    wanted = {
        ("score >= mark", "score > mark"),
        ("return high", "pass"),
        ("value < low", "value >= low"),
    }
    chosen = [
        m for m in PythonMutator().mutants(SOURCE, weak.path) if (m.original, m.mutated) in wanted
    ]
    before = _digest(tmp_path / weak.path)
    report = run(weak, chosen, jobs=2)
    assert _digest(tmp_path / weak.path) == before, "the project file is never written"
    by_change = {(o.mutant.original, o.mutant.mutated): o for o in report.outcomes}
    assert set(by_change) == wanted
    boundary = by_change[("score >= mark", "score > mark")]
    assert boundary.status == SURVIVED
    assert by_change[("return high", "pass")].status == UNCOVERED, "no test reaches it"
    assert by_change[("value < low", "value >= low")].status == KILLED
    assert boundary in report.open_survivors
    assert 0 < report.score < 1

    strong = _project(tmp_path, STRONG_SUITE)
    again = run(strong, [boundary.mutant], equivalent={})
    assert [o.status for o in again.outcomes] == [KILLED]
    assert again.score == 1.0

    listed = run(weak, [boundary.mutant], equivalent={boundary.mutant.id: "for the test"})
    assert listed.open_survivors == [] and len(listed.equivalent_survivors) == 1
    assert listed.score == 1.0


@pytest.mark.slow
def test_a_ledger_keeps_kills_across_runs_while_file_and_killing_test_stay(
    tmp_path: Path,
) -> None:
    weak = _project(tmp_path, WEAK_SUITE)
    wanted = {("score >= mark", "score > mark"), ("value < low", "value >= low")}
    chosen = [
        m for m in PythonMutator().mutants(SOURCE, weak.path) if (m.original, m.mutated) in wanted
    ]
    path = tmp_path / "ledger" / "clamp.jsonl"
    first = run(weak, chosen, ledger=Ledger(path, "clamp"), judged="first")
    status = {o.mutant.original: o.status for o in first.outcomes}
    assert status == {"score >= mark": SURVIVED, "value < low": KILLED}
    assert not any(o.reused for o in first.outcomes)
    lines = path.read_text().splitlines()
    assert len(lines) == 2, "each judged mutant is one line"

    # Read back from the file: the kill is taken, the survivor is judged again.
    again = run(weak, chosen, ledger=Ledger(path, "clamp"), judged="second")
    by = {o.mutant.original: o for o in again.outcomes}
    assert by["value < low"].reused and by["value < low"].status == KILLED
    assert by["value < low"].tests_run == 0, "a kill from the ledger runs no test"
    assert not by["score >= mark"].reused and by["score >= mark"].tests_run > 0

    # The killing test renamed: the kill is no longer taken, the mutant runs again.
    killer = Ledger(path, "clamp").entries[by["value < low"].mutant.id].killed_by
    assert killer is not None and killer.startswith("test_clamp.py::test_")
    name = killer.rsplit("::", 1)[1]
    renamed = _project(tmp_path, WEAK_SUITE.replace(name, "test_renamed"))
    third = run(renamed, chosen, ledger=Ledger(path, "clamp"), judged="third")
    assert not any(o.reused for o in third.outcomes)
    assert {o.mutant.original: o.status for o in third.outcomes} == status

    # The file changed: no entry of it is taken, whatever test killed it.
    (tmp_path / weak.path).write_text(SOURCE + "\n# an edit\n")
    fourth = run(weak, chosen, ledger=Ledger(path, "clamp"), judged="fourth")
    assert not any(o.reused for o in fourth.outcomes)

    (tmp_path / "other.jsonl").write_text(path.read_text())
    with pytest.raises(ValueError, match=r"other\.jsonl:1: not a ledger entry"):
        Ledger(tmp_path / "other.jsonl", "engine")


@pytest.mark.slow
@pytest.mark.slow
def test_a_ledger_run_judges_new_mutants_before_its_survivors(tmp_path: Path) -> None:
    weak = _project(tmp_path, WEAK_SUITE)
    mutants = {(m.original, m.mutated): m for m in PythonMutator().mutants(SOURCE, weak.path)}
    survivor = mutants[("score >= mark", "score > mark")]
    path = tmp_path / "ledger.jsonl"
    first = run(weak, [survivor], ledger=Ledger(path, "clamp"))
    assert [o.status for o in first.outcomes] == [SURVIVED]
    new = mutants[("value < low", "value >= low")]
    order: list[str] = []
    again = run(
        weak,
        [survivor, new],
        ledger=Ledger(path, "clamp"),
        progress=lambda outcome, done, total: order.append(outcome.mutant.id),
    )
    assert order == [new.id, survivor.id], "the mutant without a verdict goes first"
    assert [o.mutant.id for o in again.outcomes] == [survivor.id, new.id], "report order kept"


@pytest.mark.slow
def test_a_stopped_run_writes_no_verdict_for_the_mutant_it_was_running(tmp_path: Path) -> None:
    # The run is stopped as by Ctrl-C: SIGINT to a process of its own, which turns it
    # into KeyboardInterrupt whatever this process does with SIGINT.
    started = tmp_path / "started.txt"
    slow = WEAK_SUITE + textwrap.dedent(
        f"""

        def test_slowly() -> None:
            with open({str(started)!r}, "a") as out:
                out.write("run\\n")
            with open({str(started)!r}) as lines:
                runs = len(lines.read().splitlines())
            import time

            # The mutant's run (the second) waits until it is stopped.
            time.sleep(60 if runs > 1 else 0)
            assert passes(51, 50)
        """
    )
    target = _project(tmp_path, slow)
    path = tmp_path / "ledger.jsonl"
    script = tmp_path / "stopped_run.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import signal
            from pathlib import Path

            from mutation import PythonMutator, Target, run
            from mutation.ledger import Ledger

            # Ctrl-C's KeyboardInterrupt, as an interactive run has it: a process that
            # a shell without job control started in the background ignores SIGINT,
            # and its children inherit that.
            signal.signal(signal.SIGINT, signal.default_int_handler)

            target = Target(
                name="clamp",
                root=Path({str(tmp_path)!r}),
                path={target.path!r},
                packages={target.packages!r},
                suite_files={target.suite_files!r},
            )
            source = (target.root / target.path).read_text()
            mutants = PythonMutator().mutants(source, target.path)
            (boundary,) = [m for m in mutants if m.mutated == "score > mark"]
            print(boundary.id, flush=True)
            run(target, [boundary], ledger=Ledger(Path({str(path)!r}), "clamp"), timeout=120)
            print("returned", flush=True)
            """
        )
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        # The unmutated run writes the first line, the mutant's run the second.
        deadline = time.monotonic() + 120
        while not started.exists() or len(started.read_text().splitlines()) < 2:
            assert proc.poll() is None, "the run ended before its mutant's run started"
            assert time.monotonic() < deadline, "the mutant's run did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    mutant_id, *rest = out.decode().split()
    assert rest == [], "the run went on to its end"
    assert "KeyboardInterrupt" in err.decode()
    assert not path.exists() or mutant_id not in Ledger(path, "clamp").entries


def test_a_suite_failing_without_mutants_is_refused(tmp_path: Path) -> None:
    broken = _project(tmp_path, WEAK_SUITE + "\n\ndef test_wrong() -> None:\n    assert False\n")
    mutants = PythonMutator().mutants(SOURCE, broken.path)[:1]
    with pytest.raises(RuntimeError, match="does not pass on the unmutated code"):
        run(broken, mutants)


def test_equivalent_mutants_are_read_per_target(tmp_path: Path) -> None:
    listing = tmp_path / "equivalent.toml"
    listing.write_text(
        '[engine.0a1b2c3d]\nwhere = "conveyor_core/engine.py:10"\n'
        'change = "a -> b"\nwhy = "no behaviour changes"\n'
    )
    assert equivalent("engine", listing) == {"0a1b2c3d": "no behaviour changes"}
    assert equivalent("other", listing) == {}


def test_the_command_lists_engine_mutants_and_refuses_unknown_ids(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["engine", "--list", "--sample", "3", "--seed", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "3 mutants"
    assert all(line.startswith("conveyor_core/engine.py:") for line in out[:-1])
    assert main(["engine", "--only", "zzzzzzzz"]) == 2
    assert "no mutant with id zzzzzzzz" in capsys.readouterr().err
    assert main(["engine", "--list"]) == 0
    every = {line.split()[1] for line in capsys.readouterr().out.splitlines()[:-1]}
    assert main(["engine", "--list", "--skip-equivalent"]) == 0
    kept = {line.split()[1] for line in capsys.readouterr().out.splitlines()[:-1]}
    listed = every & set(equivalent("engine"))
    assert listed and kept == every - listed


SQL_SOURCE = textwrap.dedent(
    """
    -- A comment with a < and an AND, left alone.
    CREATE OR REPLACE FUNCTION @S.bump(q text, n integer) RETURNS text LANGUAGE plpgsql AS $$
    DECLARE
        s text := 'waiting';
    BEGIN
        IF n >= 2 AND q IS NOT NULL THEN
            UPDATE @S.jobs SET state = 'delayed' WHERE queue = q AND attempts BETWEEN 1 AND n;
            s := 'x<y';
        END IF;
        PERFORM 1 FROM @S.jobs WHERE queue = q FOR UPDATE;
        IF FOUND AND EXISTS (SELECT 1 FROM @S.jobs WHERE queue = q AND attempts > 7) THEN
            RETURN s;
        END IF;
        RETURN s;
    END $$;
    """
)


def test_sql_mutator_changes_only_function_bodies_and_every_mutant_parses() -> None:
    pglast = pytest.importorskip("pglast")
    from mutation.sql import SqlMutator, default_render

    mutator = SqlMutator()
    mutants = mutator.mutants(SQL_SOURCE, "fns/bump.sql")
    changes = {(m.kind, m.original, m.mutated) for m in mutants}
    assert {
        ("compare", ">=", ">"),
        ("compare", ">=", "<"),
        ("boolop", "AND", "OR"),
        ("compare", "IS NOT", "IS"),
        ("constant", "2", "3"),
        ("constant", "2", "1"),
        ("state", "'waiting'", "'delayed'"),
        ("state", "'delayed'", "'waiting'"),
        ("drop", "RETURN s;", "NULL;"),
        ("drop", "s := 'x<y';", "NULL;"),
    } <= changes
    dropped_if = [m for m in mutants if m.kind == "drop" and m.original.startswith("IF n >= 2")]
    assert len(dropped_if) == 1
    assert SQL_SOURCE[dropped_if[0].start : dropped_if[0].end].endswith("END IF;")
    # Nothing outside the body, in strings or in comments; the BETWEEN's AND is kept, as
    # is the declaration.
    assert all(SQL_SOURCE.index("$$") < m.start < SQL_SOURCE.rindex("$$") for m in mutants)
    assert not any("x<y" in m.original and m.kind != "drop" for m in mutants)
    assert not any(m.original.startswith("s text") for m in mutants)
    # The SET's `=` cannot become `<>`: that mutant does not parse and is set apart.
    assert any(m.original == "=" and m.mutated == "<>" for m, _ in mutator.invalid)
    # The select list of a PERFORM or of an EXISTS subquery is never read: its constant
    # is not changed; the constants read are.
    unread = [SQL_SOURCE.index("PERFORM 1") + 8, SQL_SOURCE.index("SELECT 1 FROM") + 7]
    constants = {m.start for m in mutants if m.kind == "constant"}
    assert SQL_SOURCE.index("> 7") + 2 in constants
    assert not constants & set(unread)
    for mutant in mutants:
        pglast.parse_plpgsql(default_render(mutant.apply(SQL_SOURCE)))
    ids = [m.id for m in mutants]
    assert len(set(ids)) == len(ids)
    again = SqlMutator().mutants("-- moved\n" + SQL_SOURCE, "fns/bump.sql")
    assert [m.id for m in again] == ids


LUA_SOURCE = textwrap.dedent(
    """
    -- a comment: if x < 1 then
    local function bump(key, n)
      local v = redis.call('HGET', key, 'state')
      if v == 'waiting' and n > 0 then
        redis.call('HSET', key, 'state',
          'active')
        n = n - 1
      elseif not v then
        return [[a < b]]
      end
      return n
    end
    return bump(KEYS[1], tonumber(ARGV[1]))
    """
)


def test_lua_mutator_makes_each_kind_of_change_and_every_mutant_compiles() -> None:
    pytest.importorskip("lupa")
    from mutation.lua import LuaMutator, compile_error

    mutants = LuaMutator().mutants(LUA_SOURCE, "lua/bump.lua")
    changes = {(m.kind, m.original, m.mutated) for m in mutants}
    assert {
        ("compare", "==", "~="),
        ("compare", ">", ">="),
        ("compare", ">", "<="),
        ("boolop", "and", "or"),
        ("negate", "not", "(nothing)"),
        ("arith", "-", "+"),
        ("constant", "1", "2"),
        ("constant", "0", "(-1)"),
        ("state", "'waiting'", "'delayed'"),
        ("state", "'active'", "'waiting'"),
        ("drop", "n = n - 1", "(nothing)"),
        ("drop", "redis.call('HSET', key, 'state', 'active')", "(nothing)"),
    } <= changes
    # The branch body of two statements is dropped as one; nothing in comments or in the
    # long string changes; a unary minus is never turned into a plus.
    assert any(
        m.kind == "drop"
        and m.original.startswith("redis.call('HSET'")
        and m.original.endswith("n = n - 1")
        for m in mutants
    )
    assert not any(m.line == 2 or ("a < b" in m.original and m.kind != "drop") for m in mutants)
    assert not any(m.original.startswith(("local function", "end", "elseif")) for m in mutants)
    for mutant in mutants:
        assert compile_error(mutant.apply(LUA_SOURCE)) is None, mutant.describe()
    assert compile_error("local x = = 1") is not None


def test_lua_tokenizer_skips_strings_and_comments() -> None:
    from mutation.lua import tokenize

    text = 'local s = \'a -- b\' -- c < d\nlocal t = "x\\"y" --[[ e\n== f ]] + [==[ g ]==]'
    assert [t.text for t in tokenize(text)] == [
        "local", "s", "=", "'a -- b'", "local", "t", "=", '"x\\"y"', "+", "[==[ g ]==]",
    ]  # fmt: skip


def test_sql_and_lua_targets_mutate_every_file_of_their_folder() -> None:
    from mutation import targets

    sql_target = targets.sql()
    lua_target = targets.lua()
    sql_files = sql_target.files()
    assert "conveyor_stores/postgres/sql/functions/take_jobs.sql" in sql_files
    assert len(sql_files) == len(
        list((targets.ROOT / "conveyor_stores/postgres/sql/functions").glob("*.sql"))
    )
    assert "conveyor_stores/redis/lua/common.lua" in lua_target.files()
    with pytest.raises(ValueError, match="postgres"):
        targets.sql("memory")


def test_sql_runs_limit_each_statement_of_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    from mutation import targets

    service = targets.sql().service
    assert service is not None
    monkeypatch.setenv("CONVEYOR_TEST_PG_DSN", "postgresql://u@h:1/d?sslmode=disable")
    assert service().start() == {
        "CONVEYOR_TEST_PG_DSN": "postgresql://u@h:1/d?sslmode=disable&statement_timeout=120000"
    }
    monkeypatch.delenv("CONVEYOR_TEST_PG_DSN")
    assert service().start()["CONVEYOR_TEST_PG_DSN"].endswith("/test?statement_timeout=120000")


def test_the_command_lists_sql_mutants_apart_from_the_invalid_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("pglast")
    assert main(["sql", "--list", "--list-invalid", "--sample", "5", "--seed", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    listed = [line for line in out if line.startswith("conveyor_stores/postgres/sql/functions/")]
    invalid = [line for line in out if line.startswith("invalid  ")]
    assert len(listed) == 5 and out[-2] == "5 mutants"
    assert invalid and out[-1].startswith(f"{len(invalid)} more are not valid programs")
    assert main(["sql", "--store", "redis", "--list"]) == 2


def test_a_private_redis_left_busy_by_a_script_is_made_usable_again() -> None:
    import shutil
    import socket
    import threading

    from mutation.targets import PrivateRedis

    if shutil.which("redis-server") is None:
        pytest.skip("needs the redis-server program")
    server = PrivateRedis()
    env = server.start()
    try:
        assert env["CONVEYOR_TEST_REDIS_URL"] == f"redis://127.0.0.1:{server.port}/0"

        def loop_forever() -> None:
            with socket.create_connection(("127.0.0.1", server.port)) as conn:
                script = "while true do end"
                conn.sendall(
                    f"*3\r\n$4\r\nEVAL\r\n${len(script)}\r\n{script}\r\n$1\r\n0\r\n".encode()
                )
                conn.recv(512)

        threading.Thread(target=loop_forever, daemon=True).start()
        for _ in range(100):
            if server._ask("PING").startswith("-BUSY"):
                break
            threading.Event().wait(0.1)
        assert server._ask("PING").startswith("-BUSY")
        server.after_run()
        assert server._ask("PING") == "+PONG"
    finally:
        server.stop()


LIMITS_LUA = textwrap.dedent(
    """
    return function(value, low, high)
      local steps = 0
      while steps < 3 do
        steps = steps + 1
      end
      if value < low then
        return low
      end
      if value > high then
        return high
      end
      return value
    end
    """
)

LIMITS_PACKAGE = textwrap.dedent(
    """
    from pathlib import Path

    import lupa

    # Read once, when imported: a resident run reloads this module for each mutant.
    SOURCE = Path(__file__).with_name("limits.lua").read_text()


    def clamp(value: int, low: int, high: int) -> int:
        return lupa.LuaRuntime().execute(SOURCE)(value, low, high)
    """
)

LIMITS_SUITE = textwrap.dedent(
    """
    import os

    import luakit

    with open(os.environ["LUAKIT_STARTS"], "a") as starts:
        starts.write(f"{os.getpid()}\\n")


    def test_below_is_raised() -> None:
        assert luakit.clamp(-5, 0, 10) == 0


    def test_inside_is_kept() -> None:
        assert luakit.clamp(5, 0, 10) == 5
    """
)

LIMITS_UNITS = textwrap.dedent(
    '''
    """Every test calls the one script."""
    import json
    import os
    import sys

    import pytest

    _order = []


    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        _order.append(item.nodeid)
        yield


    def pytest_sessionfinish(session, exitstatus):
        modules = {name: getattr(m, "__file__", None) for name, m in sys.modules.items()}
        with open(os.environ["MUTATION_UNITS_OUTPUT"], "w") as out:
            json.dump(
                {"order": _order, "seconds": {}, "units": {t: ["limits"] for t in _order},
                 "modules": modules},
                out,
            )
    '''
)


def _lua_project(root: Path, resident: tuple[str, ...] | None) -> Target:
    from mutation.lua import LuaMutator
    from mutation.runner import Units

    package = root / "luakit"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(LIMITS_PACKAGE)
    (package / "limits.lua").write_text(LIMITS_LUA)
    return Target(
        name="luakit",
        root=root,
        path="luakit/limits.lua",
        packages=("luakit",),
        suite_files={"test_luakit.py": LIMITS_SUITE},
        mutator=LuaMutator(),
        units=Units(LIMITS_UNITS, lambda mutant: frozenset({"limits"}), "luakit"),
        resident=resident,
    )


@pytest.mark.slow
def test_a_resident_run_judges_as_new_processes_do_in_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("lupa")
    from mutation.ledger import TIMEOUT
    from mutation.lua import LuaMutator

    starts = tmp_path / "starts.txt"
    monkeypatch.setenv("LUAKIT_STARTS", str(starts))
    wanted = {
        ("<", ">="): "value < low",  # killed by the first test
        (">", ">="): "value > high",  # the same results: survives
        ("+", "-"): "steps + 1",  # the loop never ends
    }
    fresh = _lua_project(tmp_path / "fresh", None)
    found = {
        wanted[(m.original, m.mutated)]: m
        for m in LuaMutator().mutants(LIMITS_LUA, fresh.path)
        if (m.original, m.mutated) in wanted
        and wanted[(m.original, m.mutated)] in LIMITS_LUA.splitlines()[m.line - 1]
    }
    # The hanging mutant in the middle: the one after it needs a new resident process.
    order = [found["value < low"], found["steps + 1"], found["value > high"]]
    by_fresh = run(fresh, order, timeout=5)
    fresh_starts = len(starts.read_text().splitlines())
    starts.unlink()
    resident = _lua_project(tmp_path / "resident", ("luakit",))
    by_resident = run(resident, order, timeout=5)
    resident_starts = len(starts.read_text().splitlines())
    assert [o.status for o in by_fresh.outcomes] == [KILLED, TIMEOUT, SURVIVED]
    assert [o.status for o in by_resident.outcomes] == [KILLED, TIMEOUT, SURVIVED]
    killer = "test_luakit.py::test_below_is_raised"
    assert by_resident.outcomes[0].detail == by_fresh.outcomes[0].detail == killer
    assert fresh_starts == 1 + len(order), "the unmutated run, then one process per mutant"
    assert resident_starts == 1 + 2, "the unmutated run, one process, one after the hang"
