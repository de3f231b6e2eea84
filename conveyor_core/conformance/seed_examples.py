"""The flows of the product's documentation, run with real workers.

Each test adds one documented example (linear, branching, e-commerce order, robust
ETL, bulk onboarding, cross-queue report, nested deploy, children values in the parent)
and asserts the final state of every job in it.
"""

from __future__ import annotations

from typing import Any

from conveyor_core import Job, JobState
from conveyor_core.store import child_failed_reason

from ._support import Harness, Runs, final_states, nodes_by_name

COMPLETED = JobState.COMPLETED
FAILED = JobState.FAILED


def _all(states: dict[str, str | None], value: str) -> dict[str, str]:
    return dict.fromkeys(states, value)


async def _echo(job: Job) -> dict[str, Any]:
    """A handler returning its job's name and what its children returned."""
    return {
        "job": job.name,
        "children": sorted((await job.get_children_values()).values(), key=repr),
    }


class SeedExampleTests:
    """Documented flows behave as documented on this store."""

    async def test_linear_flow(self, env: Harness) -> None:
        orders, payments, notifications = (
            env.name("orders"),
            env.name("payments"),
            env.name("notifications"),
        )
        node = await env.flow.add(
            {
                "name": "process-order",
                "queue_name": orders,
                "data": {"orderId": "order-123"},
                "children": [
                    {
                        "name": "validate-payment",
                        "queue_name": payments,
                        "data": {"orderId": "order-123"},
                        "children": [
                            {
                                "name": "send-confirmation",
                                "queue_name": notifications,
                                "data": {"orderId": "order-123", "type": "confirmation"},
                            }
                        ],
                    }
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        handler = runs.handler(lambda job: {"job": job.name, "order": job.data["orderId"]})
        async with env.workers({orders: handler, payments: handler, notifications: handler}):
            await env.wait_state(node.job, COMPLETED)
        states = await final_states(env, jobs)
        assert states == _all(states, "completed")
        assert runs.order == ["send-confirmation", "validate-payment", "process-order"]
        payment = await env.reread(jobs["validate-payment"])
        assert payment is not None
        assert await payment.get_children_values() == {
            jobs["send-confirmation"].id: {"job": "send-confirmation", "order": "order-123"}
        }

    async def test_branching_user_signup_flow(self, env: Harness) -> None:
        q = {
            name: env.name(name)
            for name in ("users", "emails", "profiles", "images", "preferences", "marketing")
        }
        node = await env.flow.add(
            {
                "name": "process-user-signup",
                "queue_name": q["users"],
                "data": {"userId": "user-456", "email": "user@example.com"},
                "children": [
                    {
                        "name": "send-welcome-email",
                        "queue_name": q["emails"],
                        "data": {"userId": "user-456", "template": "welcome"},
                    },
                    {
                        "name": "create-user-profile",
                        "queue_name": q["profiles"],
                        "data": {"userId": "user-456"},
                        "children": [
                            {
                                "name": "generate-avatar",
                                "queue_name": q["images"],
                                "data": {"userId": "user-456"},
                            },
                            {
                                "name": "setup-preferences",
                                "queue_name": q["preferences"],
                                "data": {"userId": "user-456", "defaults": True},
                            },
                        ],
                    },
                    {
                        "name": "add-to-mailing-list",
                        "queue_name": q["marketing"],
                        "data": {"email": "user@example.com", "list": "new-users"},
                    },
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()
        async with env.workers(dict.fromkeys(q.values(), runs.handler())):
            root = await env.wait_state(node.job, COMPLETED)
        states = await final_states(env, jobs)
        assert states == _all(states, "completed")
        order = runs.order
        assert order[-1] == "process-user-signup"
        assert order.index("generate-avatar") < order.index("create-user-profile")
        assert order.index("setup-preferences") < order.index("create-user-profile")
        values = await root.get_children_values()
        assert sorted(v["done"] for v in values.values()) == [
            "add-to-mailing-list",
            "create-user-profile",
            "send-welcome-email",
        ]

    async def test_ecommerce_order_flow_with_payment_retries(self, env: Harness) -> None:
        names = (
            "orders",
            "inventory",
            "payments",
            "shipping",
            "printing",
            "logistics",
            "notifications",
            "analytics",
        )
        q = {name: env.name(name) for name in names}
        order = "ORD-001"
        node = await env.flow.add(
            {
                "name": "process-order",
                "queue_name": q["orders"],
                "data": {
                    "orderId": order,
                    "items": [{"id": "ITEM-1", "quantity": 2}],
                    "userId": "USER-123",
                },
                "opts": {"attempts": 3, "backoff": {"type": "exponential", "delay": 0.01}},
                "children": [
                    {
                        "name": "check-inventory",
                        "queue_name": q["inventory"],
                        "data": {"orderId": order},
                        "children": [
                            {
                                "name": "process-payment",
                                "queue_name": q["payments"],
                                "data": {"orderId": order},
                                "opts": {
                                    "attempts": 5,
                                    "backoff": {"type": "exponential", "delay": 0.002},
                                },
                                "children": [
                                    {
                                        "name": "create-shipment",
                                        "queue_name": q["shipping"],
                                        "data": {"orderId": order},
                                        "children": [
                                            {
                                                "name": "print-label",
                                                "queue_name": q["printing"],
                                                "data": {"orderId": order},
                                            },
                                            {
                                                "name": "schedule-pickup",
                                                "queue_name": q["logistics"],
                                                "data": {"orderId": order},
                                            },
                                        ],
                                    },
                                    {
                                        "name": "send-confirmation",
                                        "queue_name": q["notifications"],
                                        "data": {
                                            "orderId": order,
                                            "userId": "USER-123",
                                            "type": "order-confirmed",
                                        },
                                    },
                                    {
                                        "name": "update-analytics",
                                        "queue_name": q["analytics"],
                                        "data": {"event": "order-completed", "orderId": order},
                                    },
                                ],
                            }
                        ],
                    }
                ],
            }
        )
        jobs = nodes_by_name(node)
        runs = Runs()

        async def handle(job: Job) -> dict[str, Any]:
            runs.record(job)
            if job.name == "process-payment" and job.attempts_made < 2:
                raise RuntimeError("card network timeout")
            return await _echo(job)

        async with env.workers(dict.fromkeys(q.values(), handle)):
            root = await env.wait_state(node.job, COMPLETED)
        states = await final_states(env, jobs)
        assert states == _all(states, "completed")
        payment = await env.reread(jobs["process-payment"])
        assert payment is not None and payment.attempts_made == 3
        assert runs.count(payment) == 3
        for name in jobs:
            if name != "process-payment":
                assert runs.order.count(name) == 1, name
        shipment = await env.reread(jobs["create-shipment"])
        assert shipment is not None
        assert shipment.return_value["children"] == [
            {"children": [], "job": "print-label"},
            {"children": [], "job": "schedule-pickup"},
        ]
        assert root.return_value["job"] == "process-order"
        assert root.return_value["children"][0]["job"] == "check-inventory"

    def _etl_flow(self, env: Harness) -> tuple[dict[str, Any], dict[str, str]]:
        q = {
            name: env.name(name)
            for name in ("pipeline", "extraction", "transformation", "loading", "reporting")
        }
        tree = {
            "name": "data-pipeline",
            "queue_name": q["pipeline"],
            "data": {"datasetId": "DS-001"},
            "opts": {"attempts": 3, "backoff": {"type": "exponential", "delay": 0.01}},
            "children": [
                {
                    "name": "extract-data",
                    "queue_name": q["extraction"],
                    "data": {"datasetId": "DS-001"},
                    # The documentation waits 30 s between tries; milliseconds here.
                    "opts": {"attempts": 5, "backoff": {"type": "fixed", "delay": 0.003}},
                    "children": [
                        {
                            "name": "transform-data",
                            "queue_name": q["transformation"],
                            "data": {"datasetId": "DS-001"},
                            "opts": {"fail_parent_on_failure": True},
                            "children": [
                                {
                                    "name": "load-to-warehouse",
                                    "queue_name": q["loading"],
                                    "data": {"datasetId": "DS-001"},
                                },
                                {
                                    "name": "generate-report",
                                    "queue_name": q["reporting"],
                                    "data": {"datasetId": "DS-001"},
                                    "opts": {"ignore_dependency_on_failure": True},
                                },
                            ],
                        }
                    ],
                }
            ],
        }
        return tree, q

    async def test_etl_flow_ignores_a_failed_report(self, env: Harness) -> None:
        tree, q = self._etl_flow(env)
        node = await env.flow.add(tree)
        jobs = nodes_by_name(node)
        runs = Runs()
        ignored: dict[str, str] = {}

        async def handle(job: Job) -> dict[str, Any]:
            runs.record(job)
            if job.name == "generate-report":
                raise RuntimeError("report service down")
            if job.name == "extract-data" and job.attempts_made < 2:
                raise RuntimeError("source flaky")
            if job.name == "transform-data":
                ignored.update(await job.get_ignored_children_failures())
            return await _echo(job)

        async with env.workers(dict.fromkeys(q.values(), handle)):
            await env.wait_state(node.job, COMPLETED)
        states = await final_states(env, jobs)
        assert states == {
            "data-pipeline": "completed",
            "extract-data": "completed",
            "transform-data": "completed",
            "load-to-warehouse": "completed",
            "generate-report": "failed",
        }
        report = jobs["generate-report"]
        assert list(ignored) == [report.id] and "report service down" in ignored[report.id]
        extract = await env.reread(jobs["extract-data"])
        assert extract is not None and extract.attempts_made == 3
        transform = await env.reread(jobs["transform-data"])
        assert transform is not None
        assert transform.return_value["children"] == [{"children": [], "job": "load-to-warehouse"}]

    async def test_etl_flow_fails_the_chain_when_transform_fails(self, env: Harness) -> None:
        tree, q = self._etl_flow(env)
        node = await env.flow.add(tree)
        jobs = nodes_by_name(node)
        runs = Runs()

        async def handle(job: Job) -> dict[str, Any]:
            runs.record(job)
            if job.name == "transform-data":
                raise RuntimeError("schema mismatch")
            return await _echo(job)

        async with env.workers(dict.fromkeys(q.values(), handle)):
            pipeline = await env.wait_state(node.job, FAILED)
        states = await final_states(env, jobs)
        assert states == {
            "data-pipeline": "failed",
            "extract-data": "failed",
            "transform-data": "failed",
            "load-to-warehouse": "completed",
            "generate-report": "completed",
        }
        transform = await env.reread(jobs["transform-data"])
        extract = await env.reread(jobs["extract-data"])
        assert transform is not None and extract is not None
        assert transform.failed_reason is not None
        assert "schema mismatch" in transform.failed_reason
        assert extract.failed_reason == child_failed_reason(transform.id, transform.failed_reason)
        assert pipeline.failed_reason == child_failed_reason(extract.id, extract.failed_reason)
        assert "extract-data" not in runs.order and "data-pipeline" not in runs.order
        assert runs.order.count("transform-data") == 1, "a flow failure is not retried"

    async def test_bulk_onboarding_flows(self, env: Harness) -> None:
        onboarding, emails = env.name("onboarding"), env.name("emails")
        users = ["user-001", "user-002"]
        nodes = await env.flow.add_bulk(
            [
                {
                    "name": "onboard-user",
                    "queue_name": onboarding,
                    "data": {"userId": user},
                    "children": [
                        {
                            "name": "send-welcome-series",
                            "queue_name": emails,
                            "data": {"userId": user, "series": "welcome"},
                        }
                    ],
                }
                for user in users
            ]
        )
        assert len(nodes) == 2

        async def handle(job: Job) -> dict[str, Any]:
            values = await job.get_children_values()
            return {"user": job.data["userId"], "children": list(values.values())}

        async with env.workers({onboarding: handle, emails: handle}):
            roots = [await env.wait_state(n.job, COMPLETED) for n in nodes]
        for user, node, root in zip(users, nodes, roots, strict=True):
            assert root.return_value == {
                "user": user,
                "children": [{"user": user, "children": []}],
            }
            child = await env.reread(node.children[0].job)
            assert child is not None and child.state is COMPLETED
        assert (await env.counts(onboarding))["completed"] == 2
        assert (await env.counts(emails))["completed"] == 2

    async def test_cross_queue_report_flow(self, env: Harness) -> None:
        reports, pipeline, rendering = (
            env.name("reports"),
            env.name("data-pipeline"),
            env.name("rendering"),
        )
        node = await env.flow.add(
            {
                "name": "assemble-report",
                "queue_name": reports,
                "data": {"reportId": 42},
                "children": [
                    {"name": "fetch-sales", "queue_name": pipeline, "data": {"source": "sales"}},
                    {"name": "fetch-inventory", "queue_name": pipeline, "data": {"source": "inv"}},
                    {"name": "generate-chart", "queue_name": rendering, "data": {"type": "bar"}},
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert [child.job.queue_name for child in node.children] == [pipeline, pipeline, rendering]

        async def fetch(job: Job) -> dict[str, Any]:
            return {"source": job.data["source"], "rows": 10}

        async def render(job: Job) -> str:
            return f"{job.data['type']}.png"

        async def assemble(job: Job) -> dict[str, Any]:
            values = await job.get_children_values()
            return {"report": job.data["reportId"], "parts": len(values)}

        async with env.workers({reports: assemble, pipeline: fetch, rendering: render}):
            root = await env.wait_state(node.job, COMPLETED)
        states = await final_states(env, jobs)
        assert states == _all(states, "completed")
        assert root.return_value == {"report": 42, "parts": 3}
        assert await root.get_children_values() == {
            jobs["fetch-sales"].id: {"source": "sales", "rows": 10},
            jobs["fetch-inventory"].id: {"source": "inv", "rows": 10},
            jobs["generate-chart"].id: "bar.png",
        }

    async def test_nested_deploy_flow(self, env: Harness) -> None:
        deployments, ci, notifications = (
            env.name("deployments"),
            env.name("ci"),
            env.name("notifications"),
        )
        node = await env.flow.add(
            {
                "name": "deploy",
                "queue_name": deployments,
                "data": {"version": "2.0"},
                "children": [
                    {
                        "name": "build",
                        "queue_name": ci,
                        "data": {"target": "production"},
                        "children": [
                            {"name": "lint", "queue_name": ci, "data": {}},
                            {"name": "test", "queue_name": ci, "data": {"suite": "unit"}},
                        ],
                    },
                    {"name": "notify", "queue_name": notifications, "data": {"channel": "slack"}},
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert jobs["deploy"].state is JobState.WAITING_CHILDREN
        assert jobs["build"].state is JobState.WAITING_CHILDREN
        runs = Runs()

        async def handle(job: Job) -> dict[str, Any]:
            runs.record(job)
            return await _echo(job)

        async with env.workers({deployments: handle, ci: handle, notifications: handle}):
            root = await env.wait_state(node.job, COMPLETED)
        states = await final_states(env, jobs)
        assert states == _all(states, "completed")
        order = runs.order
        assert max(order.index("lint"), order.index("test")) < order.index("build")
        assert order[-1] == "deploy"
        build = await env.reread(jobs["build"])
        assert build is not None
        assert build.return_value["children"] == [
            {"children": [], "job": "lint"},
            {"children": [], "job": "test"},
        ]
        assert [child["job"] for child in root.return_value["children"]] == ["build", "notify"]

    async def test_children_values_in_the_parent_worker(self, env: Harness) -> None:
        reports = env.name("reports")
        node = await env.flow.add(
            {
                "name": "send-report",
                "queue_name": reports,
                "data": {"reportId": 42},
                "children": [
                    {"name": "fetch-sales", "queue_name": reports, "data": {"source": "sales"}},
                    {
                        "name": "fetch-inventory",
                        "queue_name": reports,
                        "data": {"source": "inventory"},
                    },
                ],
            }
        )
        jobs = nodes_by_name(node)
        assert node.job.state is JobState.WAITING_CHILDREN

        async def handle(job: Job) -> Any:
            if job.name == "send-report":
                values = await job.get_children_values()
                return {"report": job.data["reportId"], "data": values}
            return {"data": [job.data["source"]]}

        async with env.workers({reports: handle}):
            root = await env.wait_state(node.job, COMPLETED)
        states = await final_states(env, jobs)
        assert states == _all(states, "completed")
        assert root.return_value == {
            "report": 42,
            "data": {
                jobs["fetch-sales"].id: {"data": ["sales"]},
                jobs["fetch-inventory"].id: {"data": ["inventory"]},
            },
        }
