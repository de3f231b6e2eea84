"""``conveyor demo``: an e-commerce order flow across eight queues, drawn live.

The flow is BullMQ's order-processing example: an order waits for its inventory check,
which waits for the payment, which waits for shipping (itself waiting for a label and a
pickup), the confirmation e-mail and the analytics update. Children run before their
parents, so the leaves start first and the order finishes last. The payment fails its
first attempt on purpose, so its retry with exponential backoff is visible.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from .. import FlowProducer, Job, JobNode, Worker
from ..models import JobState
from ..store import StoreInterface
from .render import flow_tree, results_table, safe_text, state_text
from .support import UserError

Handler = Callable[[Job], Awaitable[Any]]

POLL_INTERVAL = 0.2
"""Seconds between two reads of the flow while it runs."""


def order_flow(prefix: str, order_id: str, speed: float) -> dict[str, Any]:
    """The order flow tree, with queue names under ``prefix``."""

    def node(name: str, queue: str, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"name": name, "queue_name": prefix + queue, "data": data, **extra}

    order = {"order_id": order_id}
    return node(
        "process-order",
        "orders",
        {**order, "items": [{"id": "ITEM-1", "quantity": 2}], "user_id": "USER-123"},
        children=[
            node(
                "check-inventory",
                "inventory",
                order,
                children=[
                    node(
                        "process-payment",
                        "payments",
                        {**order, "amount": 59.90, "currency": "EUR"},
                        opts={
                            "attempts": 5,
                            "backoff": {"type": "exponential", "delay": 0.1 / speed},
                        },
                        children=[
                            node(
                                "create-shipment",
                                "shipping",
                                order,
                                children=[
                                    node("print-label", "printing", order),
                                    node("schedule-pickup", "logistics", order),
                                ],
                            ),
                            node(
                                "send-confirmation",
                                "notifications",
                                {**order, "user_id": "USER-123", "type": "order-confirmed"},
                            ),
                            node(
                                "update-analytics",
                                "analytics",
                                {"event": "order-completed", **order},
                            ),
                        ],
                    )
                ],
            )
        ],
    )


def handlers(speed: float) -> dict[str, Handler]:
    """One handler per queue (without prefix): a short sleep, then a small JSON result."""

    async def work() -> None:
        await anyio.sleep(random.uniform(0.2, 0.8) / speed)

    async def print_label(job: Job) -> Any:
        await work()
        return {"label": f"LBL-{job.data['order_id']}", "format": "pdf"}

    async def schedule_pickup(job: Job) -> Any:
        await work()
        return {"carrier": "DHL", "pickup": "tomorrow 09:00"}

    async def create_shipment(job: Job) -> Any:
        await work()
        parts = list((await job.get_children_values()).values())
        merged = {
            key: value for part in parts if isinstance(part, dict) for key, value in part.items()
        }
        return {"shipment": f"SHP-{job.data['order_id']}", **merged}

    async def send_confirmation(job: Job) -> Any:
        await work()
        return {"email": "sent", "to": job.data["user_id"]}

    async def update_analytics(job: Job) -> Any:
        await work()
        return {"recorded": job.data["event"]}

    async def process_payment(job: Job) -> Any:
        await work()
        if job.attempts_made == 0:
            raise RuntimeError("payment gateway timed out (simulated)")
        return {
            "charged": job.data["amount"],
            "currency": job.data["currency"],
            "attempt": job.attempts_made + 1,
        }

    async def check_inventory(job: Job) -> Any:
        await work()
        return {"reserved": True}

    async def process_order(job: Job) -> Any:
        await work()
        return {"order_id": job.data["order_id"], "status": "fulfilled"}

    return {
        "printing": print_label,
        "logistics": schedule_pickup,
        "shipping": create_shipment,
        "notifications": send_confirmation,
        "analytics": update_analytics,
        "payments": process_payment,
        "inventory": check_inventory,
        "orders": process_order,
    }


async def run_demo(
    store: StoreInterface,
    console: Console,
    *,
    prefix: str = "demo-",
    speed: float = 1.0,
    timeout: float = 120.0,
    store_hint: str | None = None,
    show_hints: bool = True,
) -> bool:
    """Add a fresh order flow, run it with one worker per queue while drawing it.

    Returns whether every job of the flow completed. ``show_hints`` ends with the
    commands that show the flow again, with ``--store store_hint`` if given.
    """
    order_id = f"ORD-{uuid.uuid4().hex[:8].upper()}"
    producer = FlowProducer(store=store)
    live_view = console.is_terminal
    try:
        root = await producer.add(order_flow(prefix, order_id, speed))
        root_id, root_queue = root.job.id, root.job.queue_name
        queue_handlers = handlers(speed)
        console.print(
            f"Order [bold]{order_id}[/]: {len(root.walk())} jobs in "
            f"{len(queue_handlers)} queues, one worker per queue."
        )
        node: JobNode = root
        async with AsyncExitStack() as workers:
            for queue, handle in queue_handlers.items():
                worker = Worker(prefix + queue, handle, store=store, concurrency=4)
                await workers.enter_async_context(worker)
            if live_view:
                with Live(
                    flow_tree(root, show_ids=False),
                    console=console,
                    refresh_per_second=10,
                    transient=True,
                ) as live:
                    show = lambda node: live.update(flow_tree(node, show_ids=False))  # noqa: E731
                    node = await _follow(producer, root_id, root_queue, show, timeout)
            else:
                node = await _follow(producer, root_id, root_queue, _ChangeLog(console), timeout)
        # The workers are closed now; read the final states once more.
        final = await producer.get_flow(root_id, root_queue) or node
    finally:
        await producer.close()
    everything_completed = all(n.job.state is JobState.COMPLETED for n in final.walk())
    console.print(Group("", flow_tree(final, show_ids=False), "", results_table(final)))
    if everything_completed:
        console.print(f"[bold green]All {len(final.walk())} jobs completed.[/]")
    else:
        console.print("[bold red]Not every job completed.[/]")
    if show_hints:
        store_option = f" --store {store_hint}" if store_hint else ""
        console.print(
            safe_text(f"See it again: conveyor flow {root_id} --queue {root_queue}{store_option}"),
            style="dim",
            soft_wrap=True,
        )
        console.print(
            safe_text(f"Queue counts: conveyor status{store_option}"), style="dim", soft_wrap=True
        )
    return everything_completed


class _ChangeLog:
    """Without a terminal to redraw: one line per state change seen while polling."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.seen: dict[str, tuple[JobState, int]] = {}

    def __call__(self, node: JobNode) -> None:
        for current in node.walk():
            job = current.job
            now = (job.state, job.attempts_made)
            before = self.seen.get(job.id)
            if before == now:
                continue
            self.seen[job.id] = now
            line = Text.assemble(
                safe_text(job.queue_name), " · ", safe_text(job.name), ": ", state_text(job.state)
            )
            if before is not None and now[1] > before[1] and job.state is not JobState.COMPLETED:
                reason = f" (attempt {job.attempts_made} failed: {job.failed_reason})"
                line.append(safe_text(reason, "dim"))
            self.console.print(line)


async def _follow(
    producer: FlowProducer,
    root_id: str,
    root_queue: str,
    show: Callable[[JobNode], None],
    timeout: float,
) -> JobNode:
    """Re-read the flow a few times a second, showing it, until its root job finished."""
    try:
        with anyio.fail_after(timeout):
            while True:
                node = await producer.get_flow(root_id, root_queue)
                if node is None:
                    raise UserError(f"the demo flow {root_id} disappeared from the store")
                show(node)
                if node.job.state.finished:
                    return node
                await anyio.sleep(POLL_INTERVAL)
    except TimeoutError:
        raise UserError(f"the demo flow did not finish within {timeout:g} seconds") from None
