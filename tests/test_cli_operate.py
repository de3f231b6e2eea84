"""Operating a running system from the command line, as subprocesses, on SQLite,
PostgreSQL (``?schema=``) and Redis (``?prefix=``): add work, look at it, act on it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from reliability.stores import PG_DSN, REDIS_URL, skip_unless_available

REPO = Path(__file__).resolve().parent.parent


def conveyor(*args: str, url: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    env.pop("CONVEYOR_STORE_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "conveyor_core.cli", *args, "--store", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if ok:
        assert done.returncode == 0, f"conveyor {' '.join(args)}: {done.stderr}{done.stdout}"
    return done


def as_json(*args: str, url: str) -> object:
    return json.loads(conveyor(*args, "--json", url=url).stdout)


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    kind = request.param
    skip_unless_available(kind)
    tag = uuid.uuid4().hex[:10]
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'ops.db'}"
        return
    if kind == "postgres":
        schema = f"conveyor_cli_{tag}"
        yield f"{PG_DSN}?schema={schema}"
        import anyio
        import asyncpg

        async def drop() -> None:
            conn = await asyncpg.connect(PG_DSN)
            try:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            finally:
                await conn.close()

        anyio.run(drop)
        return
    prefix = f"conveyor-cli-{tag}"
    yield f"{REDIS_URL}?prefix={prefix}"
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def test_add_look_and_act_from_the_command_line(url: str, tmp_path: Path) -> None:
    flow = tmp_path / "order.json"
    flow.write_text(
        json.dumps(
            {
                "name": "ship",
                "queue_name": "orders",
                "opts": {"job_id": "order-1"},
                "children": [
                    {"name": "pick", "queue_name": "stock", "data": {"sku": "PEN-7"}},
                    {"name": "pick", "queue_name": "stock", "data": {"sku": "INK-2"}},
                    {"name": "pick", "queue_name": "stock", "data": {"sku": "PAD-1"}},
                ],
            }
        ),
        encoding="utf-8",
    )
    added = as_json("flow", "add", str(flow), url=url)
    assert added == [{"id": "order-1", "queue": "orders"}]
    later = as_json(
        "add", "mail", "reminder", "--data", '{"to": "ann"}', "--opts", '{"delay": 3600}', url=url
    )
    assert isinstance(later, dict) and later["state"] == "delayed"

    queues = as_json("queues", url=url)
    assert isinstance(queues, list)
    counts = {q["name"]: q["counts"] for q in queues}
    assert counts["stock"]["waiting"] == 3 and counts["orders"]["waiting-children"] == 1

    page = as_json("jobs", "stock", "--search", "ink", url=url)
    assert isinstance(page, dict)
    assert [job["data"]["sku"] for job in page["jobs"]] == ["INK-2"]
    first = as_json("jobs", "stock", "--limit", "2", url=url)
    assert isinstance(first, dict) and len(first["jobs"]) == 2 and first["next_cursor"]
    rest = as_json("jobs", "stock", "--limit", "2", "--cursor", first["next_cursor"], url=url)
    assert isinstance(rest, dict) and len(rest["jobs"]) == 1

    drawn = conveyor("flow", "order-1", "--queue", "orders", "--max-children", "2", url=url)
    assert drawn.stdout.count("stock · pick") == 2
    assert "1 more child not shown" in drawn.stdout
    tree = as_json("flow", "order-1", "--queue", "orders", "--max-children", "2", url=url)
    assert isinstance(tree, dict) and tree["hidden_children"] == 1
    assert [child["hidden_children"] for child in tree["children"]] == [0, 0]

    promoted = as_json("job", "promote", later["id"], "--queue", "mail", url=url)
    assert isinstance(promoted, dict) and promoted["job"]["state"] == "waiting"
    refused = conveyor("job", "retry", later["id"], "--queue", "mail", url=url, ok=False)
    assert refused.returncode == 1 and "only a failed job can be retried" in refused.stderr
    shown = as_json("job", "show", "order-1", "--queue", "orders", url=url)
    assert isinstance(shown, dict) and len(shown["children"]["unprocessed"]) == 3

    conveyor("queue", "pause", "stock", url=url)
    paused = {q["name"]: q["paused"] for q in as_json("queues", url=url)}  # type: ignore[union-attr]
    assert paused["stock"] is True
    conveyor("queue", "resume", "stock", url=url)
    drained = as_json("queue", "drain", "mail", url=url)
    assert drained == {"queue": "mail", "action": "drain", "jobs": 1}

    missing = conveyor("job", "show", "nope", "--queue", "orders", url=url, ok=False)
    assert missing.returncode == 1 and "not found" in missing.stderr

    cancelled = as_json(
        "job", "cancel", "order-1", "--queue", "orders", "--reason", "out of ink", url=url
    )
    assert isinstance(cancelled, dict) and cancelled["cancelled"] == 4
    assert cancelled["job"]["state"] == "failed"
    assert cancelled["job"]["failed_reason"] == "cancelled: out of ink"
    picks = as_json("jobs", "stock", "--state", "failed", url=url)
    assert isinstance(picks, dict)
    assert {job["failed_reason"] for job in picks["jobs"]} == {"cancelled: out of ink"}
    again = conveyor("job", "cancel", "order-1", "--queue", "orders", url=url)
    assert "0 jobs cancelled" in again.stdout and "failed" in again.stdout
    gone = conveyor("job", "cancel", "nope", "--queue", "orders", url=url, ok=False)
    assert gone.returncode == 1 and "not found" in gone.stderr


HANDLERS = """
from pathlib import Path

FIXED = Path(__file__).with_name("fixed")


async def pick(job):
    return {"picked": job.data["sku"]}


async def ship(job):
    return {"shipped": len(await job.get_children_values())}


async def charge(job):
    if not FIXED.exists():
        raise RuntimeError("card declined")
    return {"charged": job.data["amount"]}


HANDLERS = {"stock": pick, "orders": ship, "billing": charge}
"""


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def test_a_session_from_the_command_line(url: str, tmp_path: Path) -> None:
    """Add a flow and a job, run one worker process on several queues, see a failure,
    show the job, retry it, pause and resume a queue, clean up."""
    (tmp_path / "shop_handlers.py").write_text(HANDLERS, encoding="utf-8")
    flow = tmp_path / "order.json"
    flow.write_text(
        json.dumps(
            {
                "name": "ship",
                "queue_name": "orders",
                "opts": {"job_id": "order-7"},
                "children": [
                    {"name": "pick", "queue_name": "stock", "data": {"sku": "PEN-7"}},
                    {"name": "pick", "queue_name": "stock", "data": {"sku": "INK-2"}},
                ],
            }
        ),
        encoding="utf-8",
    )
    conveyor("flow", "add", str(flow), url=url)
    charge = as_json("add", "billing", "charge", "--data", '{"amount": 12}', url=url)
    assert isinstance(charge, dict)

    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("CONVEYOR_STORE_URL", None)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "conveyor_core.cli",
            "worker",
            "shop_handlers:HANDLERS",
            "--queue",
            "stock",
            "--queue",
            "orders",
            "--queue",
            "billing",
            "--lock-duration",
            "5",
            "--stalled-interval",
            "5",
            "--log-level",
            "debug",
            "--store",
            url,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def state(job_id: str, queue: str) -> str:
            shown = as_json("job", "show", job_id, "--queue", queue, url=url)
            assert isinstance(shown, dict)
            return str(shown["state"])

        wait_for(lambda: state("order-7", "orders") == "completed", "the flow")
        wait_for(lambda: state(charge["id"], "billing") == "failed", "the failed charge")
        failed = as_json("jobs", "billing", "--state", "failed", url=url)
        assert isinstance(failed, dict) and [j["id"] for j in failed["jobs"]] == [charge["id"]]
        shown = conveyor("job", "show", charge["id"], "--queue", "billing", url=url).stdout
        assert "card declined" in shown and "RuntimeError" in shown  # reason and stacktrace

        (tmp_path / "fixed").write_text("", encoding="utf-8")
        conveyor("job", "retry", charge["id"], "--queue", "billing", url=url)
        wait_for(lambda: state(charge["id"], "billing") == "completed", "the retried charge")

        conveyor("queue", "pause", "stock", url=url)
        held = as_json("add", "stock", "pick", "--data", '{"sku": "PAD-1"}', url=url)
        assert isinstance(held, dict)
        time.sleep(1.0)  # a paused queue holds the job, however long we look
        assert state(held["id"], "stock") == "waiting"
        conveyor("queue", "resume", "stock", url=url)
        wait_for(lambda: state(held["id"], "stock") == "completed", "the job after resume")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            log, _ = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            log, _ = worker.communicate()
    assert worker.returncode == 0, log
    assert "queues stock, orders, billing" in log
    assert re.search(r"\d\d:\d\d:\d\d\.\d{3}\S* ERROR +failed billing charge", log), log
    assert re.search(r"DEBUG +started stock pick", log), log
    assert "worker closed" in log

    cleaned = as_json("queue", "clean", "stock", "--grace", "0", url=url)
    assert cleaned == {"queue": "stock", "action": "clean", "jobs": 3}
    counts = {q["name"]: q["counts"] for q in as_json("queues", url=url)}  # type: ignore[union-attr]
    assert "stock" not in counts, "a queue left with no job is not listed"
    assert counts["billing"]["completed"] == 1


def test_a_registry_without_the_queue_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "shop_handlers.py").write_text(HANDLERS, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conveyor_core.cli",
            "worker",
            "shop_handlers:HANDLERS",
            "--queue",
            "stock",
            "--queue",
            "returns",
            "--store",
            "memory://",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "has no handler for queue 'returns'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
