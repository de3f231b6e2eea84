"""The ``conveyor`` command as a user runs it: demo, status, flow, worker, and its errors."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from conveyor_core import (
    FlowProducer,
    Job,
    JobFailedError,
    JobNode,
    Queue,
    QueueEvents,
    Worker,
)
from conveyor_core.cli import cli
from conveyor_stores import open_store

REPO = Path(__file__).resolve().parent.parent
FAST = ["--speed", "20"]


# Wide lines whatever the caller's COLUMNS says: a long temporary path or a table of
# eight columns would wrap at 80.
WIDE = {"COLUMNS": "200"}


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"CONVEYOR_STORE_URL": None, **WIDE})
    return result.exit_code, result.output


def test_demo_on_memory_completes_every_job() -> None:
    code, output = invoke("demo", "--store", "memory://", *FAST)
    assert code == 0, output
    assert "All 8 jobs completed." in output
    for queue in ("orders", "inventory", "payments", "shipping", "printing", "logistics"):
        assert f"demo-{queue}" in output
    # The payment's first attempt fails on purpose and is retried.
    assert "process-payment  completed  after 2 attempts" in output
    assert "Not every job completed" not in output


def test_demo_on_sqlite_then_status_and_flow(sqlite_path: str) -> None:
    url = f"sqlite:///{sqlite_path}"
    code, output = invoke("demo", "--store", url, *FAST)
    assert code == 0, output
    assert "All 8 jobs completed." in output
    match = re.search(r"conveyor flow (\S+) --queue (\S+)", output)
    assert match, output
    root_id, root_queue = match.groups()

    code, status = invoke("status", "--store", url)
    assert code == 0, status
    rows = {line.split()[1]: line for line in status.splitlines() if "demo-" in line}
    assert set(rows) >= {"demo-orders", "demo-payments", "demo-analytics"}
    # columns: queue, waiting, delayed, active, completed, failed, waiting-children
    assert re.search(r"demo-orders\s+│\s+0\s+│\s+0\s+│\s+0\s+│\s+1\s+│\s+0\s+│\s+0", status)

    code, tree = invoke("flow", root_id, "--queue", root_queue, "--store", url)
    assert code == 0, tree
    assert tree.count(" completed ") == 8
    assert "process-order" in tree and "schedule-pickup" in tree
    assert '"status": "fulfilled"' in tree  # results are shown


def test_second_demo_runs_a_fresh_flow(sqlite_path: str) -> None:
    url = f"sqlite:///{sqlite_path}"
    ids = []
    for _ in range(2):
        code, output = invoke("demo", "--store", url, *FAST)
        assert code == 0, output
        match = re.search(r"conveyor flow (\S+)", output)
        assert match, output
        ids.append(match.group(1))
    assert ids[0] != ids[1]


def test_status_of_an_empty_store(sqlite_path: str) -> None:
    code, output = invoke("status", "--store", f"sqlite:///{sqlite_path}")
    assert code == 0
    assert "no queues" in output


def test_store_url_comes_from_the_environment(sqlite_path: str) -> None:
    result = CliRunner().invoke(
        cli, ["status"], env={"CONVEYOR_STORE_URL": f"sqlite:///{sqlite_path}", **WIDE}
    )
    assert result.exit_code == 0
    assert sqlite_path in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--store", "bogus://x"], "unknown store URL scheme"),
        (["demo", "--store", "not a url"], "not a store URL"),
        (["status", "--store", "postgresql://postgres@127.0.0.1:1/test"], "cannot open store"),
        (["status", "--store", "redis://127.0.0.1:1/0"], "cannot open store"),
        (["worker", "no_such_module_xyz:handle", "--queue", "q"], "cannot import handler"),
        (["worker", "no-colon", "--queue", "q"], "module:attribute"),
        (["worker", "json:no_such_attr", "--queue", "q"], "has no attribute"),
        (["flow", "nope", "--queue", "q", "--store", "memory://"], "no job 'nope'"),
        (["conformance", "no_such_module_xyz:make"], "cannot import store factory"),
    ],
)
def test_user_errors_are_one_line_without_traceback(args: list[str], message: str) -> None:
    code, output = invoke(*args)
    assert code != 0
    assert message in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_password_is_not_shown_in_errors() -> None:
    code, output = invoke("status", "--store", "postgresql://user:s3cret@127.0.0.1:1/db")
    assert code != 0
    assert "s3cret" not in output


@pytest.mark.anyio
async def test_worker_command_runs_jobs_and_finishes_the_active_one_on_sigterm(
    sqlite_path: str, tmp_path: Path
) -> None:
    (tmp_path / "cli_handlers.py").write_text(
        textwrap.dedent(
            """
            import anyio

            async def handle(job):
                await anyio.sleep(job.data.get("sleep", 0))
                return {"doubled": job.data["n"] * 2}
            """
        )
    )
    url = f"sqlite:///{sqlite_path}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    env.pop("CONVEYOR_STORE_URL", None)
    command = [sys.executable, "-m", "conveyor_core.cli", "worker", "cli_handlers:handle"]
    async with (
        open_store(url) as store,
        await anyio.open_process(
            [*command, "--queue", "maths", "--concurrency", "2", "--store", url],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.STDOUT,
        ) as process,
        QueueEvents("maths", store=store) as events,
    ):
        try:
            queue = Queue("maths", store=store)
            first = await queue.add("double", {"n": 21})
            assert await first.wait_until_finished(timeout=30) == {"doubled": 42}

            slow = await queue.add("double", {"n": 5, "sleep": 1.0})
            await events.wait_for("active", slow.id, timeout=30)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await process.wait()
            assert process.stdout is not None
            output = b"".join([chunk async for chunk in process.stdout]).decode()
            assert code == 0, output
            assert "worker closed" in output
            # Graceful: the job that was running when the signal came was allowed to finish.
            await slow.refresh()
            assert slow.state == "completed", output
            assert slow.return_value == {"doubled": 10}
        finally:
            if process.returncode is None:
                process.kill()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own (the conformance suite runs pytest itself)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "conveyor_core.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_conformance_command_passes_for_a_conforming_store() -> None:
    result = run_cli("conformance", "conveyor_stores:MemoryStore", "--", "-q", "-k", "policy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout
    assert "failed" not in result.stdout


def test_conformance_command_fails_for_something_that_is_not_a_store() -> None:
    result = run_cli("conformance", "builtins:object", "--", "-q", "-x", "-k", "drop_policy")
    assert result.returncode not in (0, 5), result.stdout + result.stderr
    assert "must return a store" in result.stdout


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            "x = 1\ndef handle(job:\n    return 1\n",
            ["line 2", "SyntaxError", "never closed"],
            id="syntax",
        ),
        pytest.param(
            "def handle(job):\n  return 1\n   oops\n", ["line 3", "IndentationError"], id="indent"
        ),
        pytest.param(
            "import json\nvalue = undefined_name\n",
            ["line 2", "NameError", "undefined_name"],
            id="raises",
        ),
        pytest.param(
            "import no_such_dependency_xyz\n", ["line 1", "no_such_dependency_xyz"], id="dependency"
        ),
    ],
)
def test_handler_module_that_does_not_import_is_one_line_naming_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, expected: list[str]
) -> None:
    module = f"broken_handlers_{abs(hash(source))}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    code, output = invoke("worker", f"{module}:handle", "--queue", "q", "--store", "memory://")
    assert code != 0
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert f"{module}.py" in output, output
    for fragment in expected:
        assert fragment in output, output


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["worker", "json:loads", "--queue", "q", "--concurrency", "0"], "--concurrency"),
        (["worker", "json:loads", "--queue", "", "--store", "memory://"], "--queue"),
        (
            ["worker", "json:loads", "--queue", "q", "--shutdown-timeout", "soon"],
            "--shutdown-timeout",
        ),
        (["worker", "json:loads"], "--queue"),
        (["flow", "some-id", "--queue", "", "--store", "memory://"], "--queue"),
        (["status", "--no-such-option"], "--no-such-option"),
    ],
)
def test_invalid_options_are_one_line_naming_the_option(args: list[str], option: str) -> None:
    code, output = invoke(*args)
    assert code == 2, output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert option in output


HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eevil\r"
"""Clears the screen, retitles the terminal, a C1 CSI, a bidi override, a carriage
return: stored text that must reach the terminal as visible escapes."""

CONTROL_CHARACTERS = ("\x1b", "\x07", "\x9b", "\u202e", "\r")


def assert_printed_literally(output: str) -> None:
    for char in CONTROL_CHARACTERS:
        assert char not in output, (char, output)
    assert "\\x1b[2J" in output and "\\x9b31m" in output and "\\u202e" in output, output


def test_status_and_flow_escape_control_characters_and_markup(sqlite_path: str) -> None:
    url = f"sqlite:///{sqlite_path}"
    node = anyio.run(_add_hostile_flow, url)

    code, status = invoke("status", "--store", url)
    assert code == 0, status
    assert_printed_literally(status)
    assert "[bold]plain" in status

    code, tree = invoke("flow", node.job.id, "--queue", node.job.queue_name, "--store", url)
    assert code == 0, tree
    assert_printed_literally(tree)
    assert "[bold]parent" in tree and "[red]child[/red]" in tree and "[bold]plain" in tree
    assert "reason\\x1b[2J" in tree  # the failed child's stored reason

    code, missing = invoke("flow", f"none{HOSTILE}", "--queue", "q", "--store", url)
    assert code != 0
    assert "\x1b" not in missing and "\x9b" not in missing


async def _fail_hostile(job: Job) -> None:
    raise ValueError(f"reason{HOSTILE}")


async def _add_hostile_flow(url: str) -> JobNode:
    """A flow whose names, ids and failure reason hold control characters and markup."""
    async with open_store(url) as store:
        node = await FlowProducer(store=store).add(
            {
                "name": f"[bold]parent{HOSTILE}",
                "queue_name": f"q{HOSTILE}",
                "opts": {"job_id": f"root{HOSTILE}"},
                "children": [{"name": "[red]child[/red]", "queue_name": "[bold]plain"}],
            }
        )
        child = node.children[0].job
        async with Worker("[bold]plain", _fail_hostile, store=store, drain_delay=0.05):
            with pytest.raises(JobFailedError):
                await child.wait_until_finished(timeout=30)
    return node


@pytest.mark.anyio
async def test_worker_log_lines_escape_control_characters(sqlite_path: str, tmp_path: Path) -> None:
    (tmp_path / "hostile_handlers.py").write_text(
        "async def handle(job):\n"
        "    if job.data['fail']:\n"
        "        raise ValueError('reason' + job.data['text'])\n"
        "    return job.data['text']\n"
    )
    url = f"sqlite:///{sqlite_path}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    env.pop("CONVEYOR_STORE_URL", None)
    command = [sys.executable, "-m", "conveyor_core.cli", "worker", "hostile_handlers:handle"]
    async with (
        open_store(url) as store,
        await anyio.open_process(
            [*command, "--queue", "hostile", "--store", url],
            cwd=tmp_path,
            env=env,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        try:
            queue = Queue("hostile", store=store)
            ok = await queue.add(f"[bold]name{HOSTILE}", {"fail": False, "text": HOSTILE})
            bad = await queue.add("[red]x", {"fail": True, "text": HOSTILE}, {"job_id": HOSTILE})
            assert await ok.wait_until_finished(timeout=30) == HOSTILE
            with pytest.raises(JobFailedError):
                await bad.wait_until_finished(timeout=30)
            process.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                await process.wait()
            assert process.stdout is not None
            output = b"".join([chunk async for chunk in process.stdout]).decode()
        finally:
            if process.returncode is None:
                process.kill()
    assert_printed_literally(output)
    assert "[bold]name\\x1b[2J" in output and "[red]x \\x1b[2J" in output, output
    assert "completed" in output and "failed" in output


async def _add_diamond(url: str) -> str:
    async with open_store(url) as store:
        jobs = await FlowProducer(store=store).add_dag(
            [
                {"id": "extract", "name": "extract", "queue_name": "etl"},
                {"id": "clean", "name": "clean", "queue_name": "etl", "depends_on": ["extract"]},
                {"id": "stats", "name": "stats", "queue_name": "etl", "depends_on": ["extract"]},
                {
                    "id": "report",
                    "name": "report",
                    "queue_name": "out",
                    "depends_on": ["clean", "stats"],
                },
            ]
        )
        return jobs["report"].id


def test_flow_draws_a_dag_with_its_shared_job_once(sqlite_path: str) -> None:
    url = f"sqlite:///{sqlite_path}"
    report_id = anyio.run(_add_diamond, url)
    code, tree = invoke("flow", report_id, "--queue", "out", "--store", url)
    assert code == 0, tree
    lines = [line for line in tree.splitlines() if "extract" in line]
    assert len(lines) == 2, tree
    assert sum("waiting " in line or line.rstrip().endswith("waiting") for line in lines) == 1
    assert sum("shared" in line for line in lines) == 1, tree
    code, as_json = invoke("flow", report_id, "--queue", "out", "--store", url, "--json")
    assert code == 0, as_json
    assert as_json.count('"shown_elsewhere": true') == 1
