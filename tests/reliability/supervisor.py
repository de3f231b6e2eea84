"""The crash supervisor: runs worker processes over the workload while it kills them, stops
them, or cuts their connections, then checks that every job ended as it must.

Faults (``mode``):

* ``kill``: ``SIGKILL`` a random worker about every second and start a replacement;
* ``term``: ``SIGTERM`` one instead (graceful close), which must leave nothing active
  and run no handler twice;
* ``drop``: cut the workers' server connections (``pg_terminate_backend`` on
  PostgreSQL, ``CLIENT KILL`` on Redis); the processes live on.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from conveyor_core import FlowProducer, Queue
from conveyor_core.models import JobState
from conveyor_core.store import PARENT_FAILED_REASON as PARENT_FAILED
from conveyor_core.store import JobRecord, StoreInterface, child_failed_reason

from .stores import make_store
from .workload import ATTEMPTS, QUEUES, Workload, build

TESTS_DIR = Path(__file__).resolve().parent.parent
ROOT = TESTS_DIR.parent
UNFINISHED = (JobState.WAITING, JobState.ACTIVE, JobState.DELAYED, JobState.WAITING_CHILDREN)


@dataclass
class CrashReport:
    """The figures of one run; ``problems`` lists every broken guarantee."""

    store: str
    mode: str
    workers: int
    seconds_of_faults: float
    faults: int
    jobs: int
    flows: int
    handler_runs: int = 0
    extra_handler_runs: int = 0
    stalled_jobs: int = 0
    lost: int = 0
    unexpected_exits: int = 0
    """Workers that died on their own while running."""
    startup_failures: int = 0
    """Workers that could not start (their store failed to connect during a fault)."""
    elapsed: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.store}/{self.mode}: {self.faults} faults in {self.seconds_of_faults:.0f}s, "
            f"{self.jobs} jobs ({self.flows} flows), {self.handler_runs} handler runs, "
            f"{self.extra_handler_runs} extra, {self.stalled_jobs} stalled jobs, "
            f"{self.lost} lost, {self.unexpected_exits} unexpected exits, "
            f"{self.startup_failures} failed starts, "
            f"{len(self.problems)} problems, {self.elapsed:.1f}s"
        )


class Pool:
    """The worker processes, each with its own run log and output file."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.started = 0
        self.unexpected_exits = 0
        self.startup_failures = 0
        self.numbers: dict[int, int] = {}
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(TESTS_DIR), self.env.get("PYTHONPATH", "")]
        )

    def logs(self) -> list[Path]:
        return sorted(self.workdir.glob("runs-*.log"))

    def spawn(self) -> None:
        self.started += 1
        number = self.started
        config = {**self.config, "log": str(self.workdir / f"runs-{number}.log")}
        out = open(self.workdir / f"worker-{number}.out", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "reliability.worker", json.dumps(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=str(TESTS_DIR),
        )
        out.close()
        self.numbers[proc.pid] = number
        self.procs.append(proc)

    def reap(self) -> None:
        """Replace workers that died on their own."""
        for proc in list(self.procs):
            if proc.poll() is not None:
                self.procs.remove(proc)
                out = self.workdir / f"worker-{self.numbers[proc.pid]}.out"
                if b"\nready\n" in b"\n" + out.read_bytes():
                    self.unexpected_exits += 1
                else:
                    self.startup_failures += 1
                self.spawn()

    async def ready(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
        """Wait until the worker has started (its signal handling is in place)."""
        out = self.workdir / f"worker-{self.numbers[proc.pid]}.out"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if b"\nready\n" in b"\n" + out.read_bytes():
                return
            await anyio.sleep(0.05)

    async def stop(self, proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int | None:
        if sig != signal.SIGKILL:
            await self.ready(proc)
        self.procs.remove(proc)
        proc.send_signal(sig)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await anyio.sleep(0.02)
        if proc.poll() is None:
            # Hung: have it print where its tasks and threads wait, then kill it.
            number = self.numbers.get(proc.pid)
            print(f"worker {number} did not stop in {timeout}s; see worker-{number}.out")
            proc.send_signal(signal.SIGUSR1)
            await anyio.sleep(1.0)
            proc.send_signal(signal.SIGUSR2)
            await anyio.sleep(0.5)
            proc.kill()
            proc.wait()
            return None
        return proc.returncode

    async def stop_all(self, timeout: float) -> list[int | None]:
        codes = []
        for proc in list(self.procs):
            codes.append(await self.stop(proc, signal.SIGTERM, timeout))
        return codes


async def cut_connections(location: dict[str, str], name: str) -> int:
    """Cut every server connection the workers opened (they carry ``name``)."""
    if location["kind"] == "postgres":
        import asyncpg

        conn = await asyncpg.connect(location["dsn"])
        try:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1 AND pid <> pg_backend_pid()",
                name,
            )
        finally:
            await conn.close()
        return len(rows)
    if location["kind"] == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(location["url"], decode_responses=True)
        try:
            killed = 0
            for info in await client.client_list():
                if info.get("name") == name:
                    killed += int(await client.execute_command("CLIENT", "KILL", "ID", info["id"]))
        finally:
            await client.aclose()
        return killed
    raise ValueError(f"no connections to cut on a {location['kind']} store")


def connection_options(kind: str, name: str) -> dict[str, Any]:
    """Store options that tag the workers' connections with ``name``."""
    if kind == "postgres":
        return {"server_settings": {"application_name": name}}
    if kind == "redis":
        return {"client_name": name}
    return {}


async def add_workload(store: StoreInterface, workload: Workload) -> None:
    for queue_name in QUEUES:
        items = [
            {k: v for k, v in item.items() if k != "queue"}
            for item in workload.standalone
            if item["queue"] == queue_name
        ]
        queue = Queue(queue_name, store=store)
        for start in range(0, len(items), 500):
            await queue.add_bulk(items[start : start + 500])
    producer = FlowProducer(store=store)
    for start in range(0, len(workload.flows), 50):
        await producer.add_bulk(workload.flows[start : start + 50])
    for dag in workload.dags:
        await producer.add_dag(dag)


async def unfinished(store: StoreInterface) -> int:
    total = 0
    for queue in QUEUES:
        counts = await store.get_counts(queue)
        total += sum(counts[JobState(state)] for state in UNFINISHED)
    return total


async def run_crash(
    location: dict[str, str],
    mode: str,
    workdir: Path,
    *,
    workers: int = 3,
    fault_seconds: float = 3.0,
    jobs: int = 2000,
    flows: int = 100,
    settle_timeout: float = 180.0,
    seed: int | None = None,
) -> CrashReport:
    """Run the workload under faults and check it; see the module docstring."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    workload = build(jobs, flows, seed)
    report = CrashReport(
        location["kind"], mode, workers, fault_seconds, 0, workload.job_count, flows
    )
    started = time.monotonic()
    name = f"conveyor-crash-{uuid.uuid4().hex[:8]}"
    config = {
        "location": location,
        "store_options": connection_options(location["kind"], name),
        # Graceful runs use locks long enough that no lock can lapse while its worker lives.
        "lock_duration": 10.0 if mode == "term" else 1.0,
        "stalled_interval": 0.5,
        "concurrency": 4,
    }
    pool = Pool(config, workdir)
    async with make_store(location) as store:
        await add_workload(store, workload)
        for _ in range(workers):
            pool.spawn()
        deadline = time.monotonic() + fault_seconds
        while time.monotonic() < deadline:
            await anyio.sleep(rng.uniform(0.7, 1.3))
            pool.reap()
            if mode == "drop":
                report.faults += await cut_connections(location, name)
                continue
            victim = rng.choice(pool.procs)
            if mode == "kill":
                await pool.stop(victim, signal.SIGKILL, 10.0)
            else:
                code = await pool.stop(victim, signal.SIGTERM, 60.0)
                if code != 0:
                    report.problems.append(f"a worker closing on SIGTERM exited with {code}")
            report.faults += 1
            pool.spawn()
        settle = time.monotonic() + settle_timeout
        while await unfinished(store) and time.monotonic() < settle:
            pool.reap()
            await anyio.sleep(0.25)
        for code in await pool.stop_all(60.0):
            if code != 0:
                report.problems.append(f"a worker closing at the end exited with {code}")
        report.unexpected_exits = pool.unexpected_exits
        report.startup_failures = pool.startup_failures
        await verify(store, workload, pool.logs(), report)
    report.elapsed = time.monotonic() - started
    return report


def read_runs(
    logs: list[Path],
) -> tuple[Counter[tuple[str, str]], dict[tuple[str, str], list[int]]]:
    runs: Counter[tuple[str, str]] = Counter()
    seen_values: dict[tuple[str, str], list[int]] = {}
    for path in logs:
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) != 5:
                continue  # a line cut short by SIGKILL
            key = (parts[0], parts[1])
            runs[key] += 1
            seen_values.setdefault(key, []).append(int(parts[3]))
    return runs, seen_values


async def verify(
    store: StoreInterface, workload: Workload, logs: list[Path], report: CrashReport
) -> None:
    """Check every job's final state, every parent's values, and count handler runs."""
    problems = report.problems
    jobs: dict[tuple[str, str], JobRecord] = {}
    for queue in QUEUES:
        for record in await store.get_jobs(queue, list(JobState), 0, None):
            jobs[(queue, record.id)] = record
    stuck = [(k, j.state.value) for k, j in jobs.items() if j.state in UNFINISHED]
    if stuck:
        problems.append(f"{len(stuck)} jobs never finished, e.g. {stuck[:5]}")
    report.stalled_jobs = sum(1 for j in jobs.values() if j.stalled_count)
    runs, seen_values = read_runs(logs)
    report.handler_runs = sum(runs.values())

    def expect(key: tuple[str, str], state: JobState, reason: str | None = None) -> None:
        job = jobs.get(key)
        if job is None:
            report.lost += 1
            problems.append(f"job {key} is lost (expected {state.value})")
            return
        if job.state is not state:
            problems.append(f"job {key} is {job.state.value}, expected {state.value}")
            return
        if state is JobState.COMPLETED:
            want = workload.fail_until[key] + 1
            # Cut connections may fail an attempt whose handler could not read the store.
            if job.attempts_made < want or (job.attempts_made != want and report.mode != "drop"):
                problems.append(
                    f"job {key} completed after {job.attempts_made} attempts, not {want}"
                )
        if reason is not None and not (job.failed_reason or "").startswith(reason):
            problems.append(f"job {key} failed with {job.failed_reason!r}, expected {reason!r}")

    def children_of(key: tuple[str, str]) -> list[str]:
        job = jobs.get(key)
        if job is None or job.return_value is None:
            return []
        return list(json.loads(job.return_value)["children"])

    for item in workload.standalone:
        key = (item["queue"], item["opts"]["job_id"])
        if key in workload.always_fail:
            expect(key, JobState.FAILED, "planned failure")
            if key in jobs and jobs[key].attempts_made != ATTEMPTS:
                problems.append(f"job {key} failed after {jobs[key].attempts_made} attempts")
        else:
            expect(key, JobState.COMPLETED)

    for plan in workload.plans:
        verify_flow(plan, jobs, workload, expect, children_of, problems, seen_values)
    for dag in workload.dag_plans:
        verify_dag(dag, expect, children_of, problems, seen_values)

    for step, parts in workload.steps.items():
        for part in parts:
            expect(part, JobState.COMPLETED)
        wanted = sorted(part_id for _, part_id in parts)
        if children_of(step) != wanted:
            problems.append(f"step job {step} reduced {children_of(step)}, not {wanted}")
        counts = await store.get_dependency_counts(*step) if step in jobs else None
        if counts is not None and counts["processed"] != len(parts):
            problems.append(f"step job {step} holds {counts}, not {len(parts)} processed")

    for key, job in jobs.items():
        count = runs.get(key, 0)
        if job.state is JobState.COMPLETED and count < job.attempts_made:
            problems.append(f"job {key}: {job.attempts_made} attempts but {count} handler runs")
        # A step job's park ends a run without an attempt.
        parks = 1 if key in workload.steps else 0
        report.extra_handler_runs += max(0, count - job.attempts_made - parks)


def verify_flow(
    plan: Any,
    jobs: dict[tuple[str, str], JobRecord],
    workload: Workload,
    expect: Any,
    children_of: Any,
    problems: list[str],
    seen_values: dict[tuple[str, str], list[int]],
) -> None:
    """The end state a flow's scenario demands (see ``workload.SCENARIOS``)."""
    completed, failed = JobState.COMPLETED, JobState.FAILED
    ids = lambda keys: sorted(k[1] for k in keys)  # noqa: E731
    doomed = plan.doomed
    first = plan.children[0]
    everyone = [plan.root, *plan.children, *[g for gs in plan.grandchildren.values() for g in gs]]

    def ran_after_children(parent: tuple[str, str], expected: int) -> None:
        for seen in seen_values.get(parent, []):
            if seen not in (expected, -1):
                problems.append(f"parent {parent} ran seeing {seen} of {expected} children values")

    if plan.scenario in ("ok", "ignore", "drop", "continue"):
        for key in everyone:
            if key == doomed:
                expect(key, failed, "planned failure")
            else:
                expect(key, completed)
        expect_root = ids(plan.children)
        if children_of(plan.root) != expect_root:
            problems.append(f"root {plan.root} holds {children_of(plan.root)}, not {expect_root}")
        ran_after_children(plan.root, 3)
        for child, grandchildren in plan.grandchildren.items():
            wanted = ids(g for g in grandchildren if g != doomed)
            got = children_of(child)
            if plan.scenario == "continue" and child == first:
                if not set(got) <= set(wanted):
                    problems.append(f"{child} holds {got}, more than {wanted}")
                continue
            if got != wanted:
                problems.append(f"{child} holds {got}, not {wanted}")
            ran_after_children(child, len(wanted))
    elif plan.scenario == "fail":
        expect(doomed, failed, "planned failure")
        expect(first, failed, child_failed_reason(doomed[1], ""))
        expect(plan.root, failed, child_failed_reason(first[1], ""))
        for key in everyone:
            if key in (doomed, first, plan.root):
                continue
            job = jobs.get(key)
            if job is None:
                problems.append(f"job {key} of a failed flow is lost")
            elif not (
                job.state is completed
                or (job.state is failed and job.failed_reason == PARENT_FAILED)
            ):
                problems.append(
                    f"job {key} of a failed flow is {job.state.value} ({job.failed_reason})"
                )
    else:  # remove
        expect(doomed, failed, "planned failure")
        if first in jobs:
            problems.append(f"{first} should have been removed with its failed child")
        expect(plan.root, completed)
        wanted = ids(plan.children[1:])
        if children_of(plan.root) != wanted:
            problems.append(f"root {plan.root} holds {children_of(plan.root)}, not {wanted}")
        ran_after_children(plan.root, 2)
        for child in plan.children[1:]:
            expect(child, completed)
            for key in plan.grandchildren[child]:
                expect(key, completed)


def verify_dag(
    plan: Any,
    expect: Any,
    children_of: Any,
    problems: list[str],
    seen_values: dict[tuple[str, str], list[int]],
) -> None:
    """A diamond's end state: the shared job ran (or failed) once for both dependents,
    each of which saw its value exactly when it completed; the sink saw both."""
    completed, failed = JobState.COMPLETED, JobState.FAILED
    shared_ok = plan.scenario == "ok"
    if shared_ok:
        expect(plan.extract, completed)
    else:
        expect(plan.extract, failed, "planned failure")
    wanted = [plan.extract[1]] if shared_ok else []
    for dependent in (plan.clean, plan.stats):
        expect(dependent, completed)
        if children_of(dependent) != wanted:
            problems.append(f"{dependent} holds {children_of(dependent)}, not {wanted}")
        for seen in seen_values.get(dependent, []):
            if seen not in (len(wanted), -1):
                problems.append(f"{dependent} ran seeing {seen} of {len(wanted)} values")
    expect(plan.report, completed)
    both = sorted([plan.clean[1], plan.stats[1]])
    if children_of(plan.report) != both:
        problems.append(f"{plan.report} holds {children_of(plan.report)}, not {both}")
    for seen in seen_values.get(plan.report, []):
        if seen not in (2, -1):
            problems.append(f"{plan.report} ran seeing {seen} of 2 values")


def save_report(report: CrashReport, path: str | None) -> None:
    """Print the figures and merge them into the JSON file at ``path`` (if given)."""
    print(report.summary())
    if not path:
        return
    target = Path(path)
    existing: dict[str, Any] = {}
    if target.exists():
        existing = json.loads(target.read_text(encoding="utf-8"))
    existing[f"{report.store}/{report.mode}"] = asdict(report)
    target.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")


async def run_in_process(
    store: StoreInterface,
    mode: str,
    workdir: Path,
    *,
    workers: int = 3,
    fault_seconds: float = 3.0,
    jobs: int = 2000,
    flows: int = 100,
    settle_timeout: float = 120.0,
    seed: int | None = None,
) -> CrashReport:
    """The in-process variant for a store that lives in one process (memory).

    ``cancel``: about every 0.3 s one worker is closed with ``timeout=0``, which cancels
    its running handlers mid-way and hands their jobs back; ``close``: one is closed
    gracefully. A replacement starts each time.
    """
    from conveyor_core import Worker

    from .workload import handle

    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    workload = build(jobs, flows, seed)
    report = CrashReport("memory", mode, workers, fault_seconds, 0, workload.job_count, flows)
    started = time.monotonic()
    log_path = workdir / "runs-inprocess.log"
    log = open(log_path, "a", encoding="utf-8")  # noqa: ASYNC230, SIM115 - flushed per run

    async def recorded(job: Any) -> Any:
        values = await job.get_children_values()
        log.write(f"{job.queue_name}\t{job.id}\t{job.attempts_made + 1}\t{len(values)}\t0\n")
        log.flush()
        await anyio.sleep(rng.uniform(0, 0.002))
        return await handle(job)

    def crew() -> list[Any]:
        return [
            Worker(
                q,
                recorded,
                store=store,
                concurrency=4,
                lock_duration=5.0,
                stalled_interval=0.5,
                max_stalled_count=1_000_000,
                drain_delay=0.5,
            )
            for q in QUEUES
        ]

    await add_workload(store, workload)
    async with anyio.create_task_group() as group:
        crews = []
        for _ in range(workers):
            members = crew()
            for worker in members:
                await group.start(worker.run)
            crews.append(members)
        deadline = time.monotonic() + fault_seconds
        while time.monotonic() < deadline:
            await anyio.sleep(rng.uniform(0.2, 0.4))
            victim = crews.pop(rng.randrange(len(crews)))
            for worker in victim:
                await (worker.close(timeout=0) if mode == "cancel" else worker.close())
            report.faults += 1
            members = crew()
            for worker in members:
                await group.start(worker.run)
            crews.append(members)
        settle = time.monotonic() + settle_timeout
        while await unfinished(store) and time.monotonic() < settle:  # noqa: ASYNC110
            await anyio.sleep(0.1)
        for members in crews:
            for worker in members:
                await worker.close()
    log.close()
    await verify(store, workload, [log_path], report)
    report.elapsed = time.monotonic() - started
    return report
