"""``conveyor schedulers QUEUE``: a queue's job schedulers from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio

from conveyor_core import Queue
from conveyor_stores import SQLiteStore

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2027, 1, 10, 12, 0, tzinfo=UTC).timestamp()


def conveyor(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    env.pop("CONVEYOR_STORE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "conveyor_core.cli", *args, "--store", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


async def _set_up(path: Path) -> None:
    async with SQLiteStore(str(path)) as store:
        queue = Queue("reports", store=store, clock=lambda: NOW)
        await queue.upsert_job_scheduler(
            "nightly", cron="0 3 * * *", tz="Europe/Paris", template={"name": "report"}
        )
        await queue.upsert_job_scheduler(
            "poll\x1b[31m", every=30.0, template={"name": "poll"}, limit=5
        )


def test_schedulers_lists_pattern_timezone_next_run_and_iterations(tmp_path: Path) -> None:
    path = tmp_path / "ops.db"
    anyio.run(_set_up, path)
    url = f"sqlite:///{path}"

    listed = conveyor("schedulers", "reports", "--json", url=url)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["id"] for row in rows] == ["nightly", "poll\x1b[31m"]
    nightly, poll = rows
    assert (nightly["cron"], nightly["tz"], nightly["iterations"]) == (
        "0 3 * * *",
        "Europe/Paris",
        0,
    )
    assert nightly["next_run_at"] == "2027-01-11T02:00:00Z"
    assert (poll["every"], poll["limit"], poll["next_run_at"]) == (30.0, 5, "2027-01-10T12:00:00Z")

    table = conveyor("schedulers", "reports", url=url)
    assert table.returncode == 0, table.stderr
    out = table.stdout
    assert "nightly" in out and "0 3 * * *" in out and "Europe/Paris" in out
    assert "2027-01-11 02:00:00" in out and "every 30s" in out and "0/5" in out
    # Text from the store is printed with its control characters escaped.
    assert "\x1b" not in out
    assert "poll\\x1b[31m" in out

    empty = conveyor("schedulers", "elsewhere", url=url)
    assert empty.returncode == 0 and "no job schedulers" in empty.stdout
