"""The crash-test workload: standalone jobs and three-level flows whose handlers fail on
planned early attempts, and the rules that say what each job must end as.

A job's plan lives in its data, so every worker process (and every replacement of a
killed one) makes the same decision for the same attempt:

* ``fail_until``: attempts ``1..fail_until`` raise; later attempts succeed;
* ``always_fail``: every attempt raises, so the job fails for good after its attempts.

Flows are ``root -> 3 children -> 2 grandchildren each``; a flow's ``scenario`` makes
one grandchild always fail under one failure policy (or none, for ``ok``).

Step jobs (``step_parts`` in their data) add that many children while they run
(``Job.add_children``, ids derived from their own), save the step (``update_data``) and
park (``wait_for_children``); the re-run reduces the children's values. A worker killed
anywhere in between must not make a re-run add a child twice or reduce too early.

DAGs are diamonds (``extract`` shared by ``clean`` and ``stats``, which ``report`` waits
for); in the ``ignore`` scenario the shared ``extract`` always fails and both dependents
ignore it.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

QUEUES = ("crash-a", "crash-b", "crash-c")
ATTEMPTS = 3
SCENARIOS = ("ok", "ok", "ignore", "drop", "continue", "fail", "remove")
DAG_SCENARIOS = ("ok", "ok", "ignore")


@dataclass
class FlowPlan:
    """What one flow is made of, to check it afterwards."""

    scenario: str
    root: tuple[str, str]
    children: list[tuple[str, str]] = field(default_factory=list)
    grandchildren: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    doomed: tuple[str, str] | None = None
    """The grandchild that always fails (``None`` in an ``ok`` flow)."""


@dataclass
class DagPlan:
    """One diamond DAG, to check it afterwards."""

    scenario: str
    extract: tuple[str, str]
    clean: tuple[str, str]
    stats: tuple[str, str]
    report: tuple[str, str]


@dataclass
class Workload:
    standalone: list[dict[str, Any]]
    """``Queue.add_bulk`` items, each with ``queue`` added."""
    flows: list[dict[str, Any]]
    """``FlowProducer.add`` trees."""
    plans: list[FlowPlan]
    always_fail: set[tuple[str, str]]
    fail_until: dict[tuple[str, str], int]
    steps: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    """Step jobs (also in ``standalone``) and the children each adds while it runs."""
    dags: list[list[dict[str, Any]]] = field(default_factory=list)
    """``FlowProducer.add_dag`` entries."""
    dag_plans: list[DagPlan] = field(default_factory=list)

    @property
    def job_count(self) -> int:
        return (
            len(self.standalone)
            + sum(len(parts) for parts in self.steps.values())
            + sum(
                1 + len(p.children) + sum(len(g) for g in p.grandchildren.values())
                for p in self.plans
            )
            + 4 * len(self.dags)
        )


def _plan_data(rng: random.Random, always: bool) -> dict[str, Any]:
    return {"fail_until": rng.choice((0, 0, 1, 2)), "always_fail": always, "pad": "x" * 20}


def build(jobs: int, flows: int, seed: int) -> Workload:
    """``jobs`` standalone jobs over the queues and ``flows`` three-level flows."""
    rng = random.Random(seed)
    tag = uuid.uuid4().hex[:8]
    opts = {"attempts": ATTEMPTS}
    standalone = []
    always: set[tuple[str, str]] = set()
    fail_until: dict[tuple[str, str], int] = {}
    for n in range(jobs):
        queue = QUEUES[n % len(QUEUES)]
        job_id = f"s{tag}-{n}"
        data = _plan_data(rng, always=rng.random() < 0.05)
        if data["always_fail"]:
            always.add((queue, job_id))
        fail_until[(queue, job_id)] = data["fail_until"]
        standalone.append(
            {"queue": queue, "name": "single", "data": data, "opts": {**opts, "job_id": job_id}}
        )
    steps: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for n in range(max(1, flows // 4)):
        step_id = f"t{tag}-{n}"
        key = (QUEUES[0], step_id)
        steps[key] = [(QUEUES[2], part_id(step_id, k)) for k in range(STEP_PARTS)]
        for k, part in enumerate(steps[key]):
            fail_until[part] = part_plan(k)["fail_until"]
        fail_until[key] = 0
        standalone.append(
            {
                "queue": QUEUES[0],
                "name": "step",
                "data": {"fail_until": 0, "always_fail": False, "step_parts": STEP_PARTS},
                "opts": {**opts, "job_id": step_id},
            }
        )
    trees = []
    plans = []
    for f in range(flows):
        scenario = SCENARIOS[f % len(SCENARIOS)]
        root_id = f"f{tag}-{f}"
        plan = FlowPlan(scenario, (QUEUES[0], root_id))
        children = []
        for c in range(3):
            child_id = f"{root_id}.{c}"
            child_key = (QUEUES[1], child_id)
            plan.children.append(child_key)
            child_opts: dict[str, Any] = {**opts, "job_id": child_id}
            if scenario == "remove" and c == 0:
                child_opts["fail_parent_on_child_failure"] = "remove"
            grandchildren = []
            plan.grandchildren[child_key] = []
            for g in range(2):
                gc_id = f"{child_id}.{g}"
                gc_key = (QUEUES[2], gc_id)
                plan.grandchildren[child_key].append(gc_key)
                doomed = scenario != "ok" and c == 0 and g == 0
                data = _plan_data(rng, always=doomed)
                fail_until[gc_key] = data["fail_until"]
                gc_opts: dict[str, Any] = {**opts, "job_id": gc_id}
                if doomed:
                    plan.doomed = gc_key
                    always.add(gc_key)
                    flag = {
                        "ignore": "ignore_dependency_on_failure",
                        "drop": "remove_dependency_on_failure",
                        "continue": "continue_parent_on_failure",
                        "fail": "fail_parent_on_failure",
                    }.get(scenario)
                    if flag:
                        gc_opts[flag] = True
                grandchildren.append(
                    {"name": "leaf", "queue_name": QUEUES[2], "data": data, "opts": gc_opts}
                )
            data = _plan_data(rng, always=False)
            fail_until[child_key] = data["fail_until"]
            children.append(
                {
                    "name": "middle",
                    "queue_name": QUEUES[1],
                    "data": data,
                    "opts": child_opts,
                    "children": grandchildren,
                }
            )
        data = _plan_data(rng, always=False)
        fail_until[plan.root] = data["fail_until"]
        trees.append(
            {
                "name": "root",
                "queue_name": QUEUES[0],
                "data": data,
                "opts": {**opts, "job_id": root_id},
                "children": children,
            }
        )
        plans.append(plan)
    workload = Workload(standalone, trees, plans, always, fail_until, steps)
    for d in range(max(1, flows // 4)):
        _add_diamond(workload, rng, DAG_SCENARIOS[d % len(DAG_SCENARIOS)], f"d{tag}-{d}")
    return workload


STEP_PARTS = 4


def part_id(step_id: str, k: int) -> str:
    """The id of a step job's ``k``-th child: derived from the step job's own, so that
    a re-run adding its children again writes nothing."""
    return f"{step_id}.p{k}"


def part_plan(k: int) -> dict[str, Any]:
    return {"fail_until": k % 3, "always_fail": False}


def _add_diamond(workload: Workload, rng: random.Random, scenario: str, stem: str) -> None:
    """One diamond DAG: extract (shared), clean and stats (each depending on it), report."""
    keys = {
        part: (QUEUES[i % len(QUEUES)], f"{stem}.{part}")
        for i, part in enumerate(("extract", "clean", "stats", "report"))
    }
    nodes: list[dict[str, Any]] = []
    for part, deps in (
        ("extract", []),
        ("clean", ["extract"]),
        ("stats", ["extract"]),
        ("report", ["clean", "stats"]),
    ):
        queue, job_id = keys[part]
        always = scenario == "ignore" and part == "extract"
        data = _plan_data(rng, always=always)
        workload.fail_until[keys[part]] = data["fail_until"]
        if always:
            workload.always_fail.add(keys[part])
        opts: dict[str, Any] = {"attempts": ATTEMPTS, "job_id": job_id}
        if scenario == "ignore" and part in ("clean", "stats"):
            opts["fail_parent_on_child_failure"] = "ignore"
        nodes.append(
            {
                "id": part,
                "name": part,
                "queue_name": queue,
                "data": data,
                "opts": opts,
                "depends_on": deps,
            }
        )
    workload.dags.append(nodes)
    workload.dag_plans.append(
        DagPlan(scenario, keys["extract"], keys["clean"], keys["stats"], keys["report"])
    )


async def handle(job: Any) -> Any:
    """The handler every worker process runs (see the module docstring)."""
    plan = job.data
    attempt = job.attempts_made + 1
    if "step_parts" in plan:
        if plan.get("step") != "reduce":
            await job.add_children(
                [
                    {
                        "name": "part",
                        "queue_name": QUEUES[2],
                        "data": part_plan(k),
                        "opts": {"attempts": ATTEMPTS, "job_id": part_id(job.id, k)},
                    }
                    for k in range(plan["step_parts"])
                ]
            )
            await job.update_data({**plan, "step": "reduce"})
        # Also when the saved step is "reduce" already: a re-run after a crash between
        # update_data and the park must still wait for the children.
        await job.wait_for_children()
    values = await job.get_children_values()
    if plan["always_fail"]:
        raise RuntimeError(f"planned failure of {job.id}")
    if attempt <= plan["fail_until"]:
        raise RuntimeError(f"planned failure of attempt {attempt} of {job.id}")
    return {"id": job.id, "attempt": attempt, "children": sorted(values)}
