"""``python -m benchmarks`` runs every workload and prints JSON lines with the peers' fields.

Only the shape of the output is checked; timings belong to the benchmarks themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_benchmarks(*args: str) -> list[dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_every_workload_prints_figures_with_the_peer_fields() -> None:
    small = ["--jobs", "20", "--children", "5", "--big-children", "10", "30"]
    lines = run_benchmarks("--store", "memory://", *small)
    workloads = [line["workload"] for line in lines]
    assert workloads == [
        "enqueue_seq",
        "process",
        "flow_add",
        "flow_run",
        "flow_big_add",
        "flow_big_run",
        "flow_big_add",
        "flow_big_run",
    ]
    for line in lines:
        assert line["store"] == "memory"
        assert {"seconds", "per_s"} <= set(line)
        assert isinstance(line["seconds"], float) and line["seconds"] > 0
        assert isinstance(line["per_s"], int)
        assert ("n" in line) != ("children" in line)
    by_name = {line["workload"]: line for line in lines}
    assert by_name["enqueue_seq"]["n"] == 20
    assert by_name["process"]["n"] == 20
    assert by_name["flow_add"]["children"] == 5
    assert by_name["flow_run"]["values"] == 5  # the parent read every child's value
    assert [line["children"] for line in lines[4:]] == [10, 10, 30, 30]


def test_repeat_reports_the_median(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    lines = run_benchmarks("--store", url, "--jobs", "10", "--workload", "process", "--repeat", "3")
    assert len(lines) == 1
    assert lines[0]["workload"] == "process"
    assert lines[0]["store"] == "sqlite"
    assert lines[0]["median_of"] == 3


def test_postgres_fast_measures_the_opt_in_mode_beside_the_default(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_BENCH_PG_DSN", pg_dsn)
    lines = run_benchmarks(
        "--store", "postgres", "--store", "postgres-fast", "--jobs", "10", "--workload", "process"
    )
    assert [line["store"] for line in lines] == ["postgres", "postgres-fast"]


def test_loop_lag_prints_lateness_figures() -> None:
    lines = run_benchmarks(
        "--store", "memory://", "--workload", "loop_lag", "--jobs", "20", "--lag-jobs", "30"
    )
    assert [line["workload"] for line in lines] == ["lag_add_bulk", "lag_flow_add", "lag_process"]
    assert lines[0]["n"] == 30 and lines[1]["children"] == 29 and lines[2]["n"] == 20
    for line in lines[:2]:
        assert {"seconds", "per_s", "max_lag_ms", "max_busy_ms", "gc_max_ms"} <= set(line)
    assert {"lag_p50_ms", "lag_p99_ms", "lag_max_ms", "busy_p99_ms", "ticks"} <= set(lines[2])


def test_pickup_runs_a_worker_in_another_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    args = ["--workload", "pickup", "--pickup-jobs", "5", "--idle-seconds", "0.5"]
    lines = run_benchmarks("--store", url, "--store", "memory://", *args)
    # The memory store lives in one process: it has no pickup figure.
    assert len(lines) == 1
    (line,) = lines
    assert line["store"] == "sqlite" and line["workload"] == "pickup" and line["n"] == 5
    assert line["idle_seconds"] == 0.5
    assert {"pickup_p50_ms", "pickup_p99_ms", "pickup_max_ms", "idle_cpu_pct"} <= set(line)
    assert 0 <= line["pickup_p50_ms"] <= line["pickup_p99_ms"] <= line["pickup_max_ms"]


def test_the_schedule_workload_counts_ticks_and_jobs() -> None:
    (line,) = run_benchmarks(
        "--store", "sqlite", "--workload", "schedule", "--schedule-seconds", "1"
    )
    assert line["workload"] == "schedule"
    assert (line["store"], line["processes"], line["every"]) == ("sqlite", 3, 0.1)
    assert isinstance(line["ticks"], int) and line["ticks"] >= 1
    assert line["jobs"] == line["ticks"]
    assert isinstance(line["max_lateness_ms"], float)


def test_large_flow_prints_add_run_counts_and_pages(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'large.db'}"
    lines = run_benchmarks("--store", url, "--workload", "large_flow", "--large-children", "300")
    assert [line["workload"] for line in lines] == [
        "large_flow_add",
        "large_flow_run",
        "large_flow_counts",
        "large_flow_page",
        "large_flow_page",
    ]
    assert all(line["children"] == 300 and line["seconds"] > 0 for line in lines)
    assert lines[2]["processed"] == 300
    assert [(line["page"], line["position"], line["children_read"]) for line in lines[3:]] == [
        ("first", 0, 100),
        ("deep", 150, 100),
    ]


def test_dag_prints_add_and_run_per_size() -> None:
    lines = run_benchmarks("--store", "memory://", "--workload", "dag", "--dag-jobs", "90", "180")
    assert [line["workload"] for line in lines] == ["dag_add", "dag_run", "dag_add", "dag_run"]
    sizes = [line["n"] for line in lines]
    assert sizes[0] == sizes[1] and sizes[2] == sizes[3] and sizes[0] < sizes[2]
    for line in lines:
        assert line["store"] == "memory"
        assert isinstance(line["seconds"], float) and line["seconds"] > 0


def test_cancel_flow_cancels_a_flow_with_jobs_running_in_another_process(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'cancel.db'}"
    lines = run_benchmarks(
        "--store", "memory://", "--store", url, "--workload", "cancel_flow", "--cancel-jobs", "150"
    )
    assert [(line["store"], line["worker"]) for line in lines] == [
        ("memory", "same process"),
        ("sqlite", "other process"),
    ]
    for line in lines:
        assert line["workload"] == "cancel_flow" and line["n"] == 150 and line["running"] == 10
        assert line["cancelled"] == 150  # every job of the flow, the running ones included
        assert 0 < line["cancel_call_s"] <= line["seconds"]
        assert isinstance(line["handlers_cancelled_s"], float)


def test_flow_control_workloads_print_figures_beside_the_plain_ones() -> None:
    lines = run_benchmarks(
        "--store",
        "memory://",
        "--jobs",
        "20",
        "--workload",
        "enqueue_seq",
        "--workload",
        "enqueue_dedup",
        "--workload",
        "process",
        "--workload",
        "process_limited",
    )
    assert [line["workload"] for line in lines] == [
        "enqueue_seq",
        "enqueue_dedup",
        "process",
        "process_limited",
    ]
    assert all(line["n"] == 20 for line in lines)
    assert all(line["cpu_us_per_job"] > 0 for line in lines)
    assert lines[3]["global_concurrency"] == 10
