"""The commands that operate a running system: queues, jobs, actions, adding work.

Each command opens the store named by ``--store`` (or ``$CONVEYOR_STORE_URL``), calls
the operations layer (:mod:`conveyor_core.operations`) and prints the result: tables for
people, or with ``--json`` one JSON document for scripts. Text that comes from the store
is printed with control characters escaped.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .. import operations as ops
from ..errors import ConveyorError
from ..flow import FlowProducer, JobNode
from ..job import Job
from ..models import ALL_STATES, JobState
from ..schedulers import JobScheduler
from ..store import StoreInterface
from .app import _Commands, _console, _queue_name, cli, store_option
from .render import counts_table, flow_tree, safe_text, short_json, state_text
from .support import UserError, opened_store, redact, run, store_url

T = TypeVar("T")

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (one document) instead of a table."
)
queue_option = click.option(
    "--queue", "queue_name", required=True, callback=_queue_name, help="Queue of the job."
)
_STATE_NAMES = [state.value for state in ALL_STATES]


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def _with_store(store: str | None, action: Callable[[StoreInterface], Awaitable[T]]) -> T:
    """Open the store, run ``action`` on it, close it; errors are one line."""
    url = store_url(store)

    async def main() -> T:
        async with opened_store(url) as opened:
            try:
                return await action(opened)
            except (ConveyorError, ValueError) as exc:
                raise UserError(str(exc).splitlines()[0]) from None

    return run(main)


def _parse_json(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what} is not JSON: {exc.msg} at column {exc.colno}") from None


# ---------------------------------------------------------------------- queues


def _queue_rows(infos: list[ops.QueueInfo]) -> list[tuple[str, bool, dict[str, int]]]:
    return [(info.name, info.paused, info.counts) for info in infos]


@cli.command()
@json_option
@store_option
def queues(as_json: bool, store: str | None) -> None:
    """List the queues with their job counts per state."""
    _show_queues(as_json, store)


def _show_queues(as_json: bool, store: str | None) -> None:
    infos = _with_store(store, ops.list_queues)
    if as_json:
        _print_json([ops.queue_to_json(info) for info in infos])
        return
    console = _console()
    if not infos:
        console.print(Text.assemble("no queues in ", safe_text(redact(store_url(store)))))
        return
    console.print(counts_table(_queue_rows(infos)))


@cli.command()
@click.option(
    "--watch",
    "watch",
    type=click.FloatRange(min=0.2),
    default=None,
    metavar="SECONDS",
    help="Redraw every SECONDS seconds (with throughput per minute) until Ctrl-C.",
)
@json_option
@store_option
def status(watch: float | None, as_json: bool, store: str | None) -> None:
    """Show every queue with its job counts per state."""
    if watch is None or as_json:
        _show_queues(as_json, store)
        return
    url = store_url(store)
    console = _console()

    async def main() -> None:
        async with opened_store(url) as opened:
            with Live(console=console, auto_refresh=False) as live:
                while True:
                    live.update(await _status_view(opened, url), refresh=True)
                    await anyio.sleep(watch)

    with contextlib.suppress(KeyboardInterrupt):
        run(main)


async def _status_view(store: StoreInterface, url: str) -> Group:
    from ..queue import Queue

    infos = await ops.list_queues(store)
    rates: list[tuple[int, int]] = []
    for info in infos:
        queue = Queue(info.name, store=store)
        done = await queue.get_metrics("completed", minutes=2)
        failed = await queue.get_metrics("failed", minutes=2)
        rates.append((done[0], failed[0]))  # the last whole minute
    table = counts_table(_queue_rows(infos), rates=rates)
    footer = Text.assemble(
        ("store ", "dim"), safe_text(redact(url), "dim"), ("  (Ctrl-C to stop)", "dim")
    )
    if not infos:
        return Group(Text("no queues yet"), footer)
    return Group(table, footer)


# ---------------------------------------------------------------------- jobs


def _jobs_table(queue: str, page: list[Job]) -> Table:
    table = Table(title=f"Jobs of {queue}", title_justify="left")
    table.add_column("id", overflow="fold")
    table.add_column("name", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("data / result / reason", overflow="fold", ratio=1)
    for job in page:
        if job.state is JobState.FAILED:
            detail = safe_text(job.failed_reason or "", "red")
        elif job.state is JobState.COMPLETED:
            detail = safe_text(short_json(job.return_value), "green")
        else:
            detail = safe_text(short_json(job.data))
        created = job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else ""
        table.add_row(
            safe_text(job.id),
            safe_text(job.name),
            state_text(job.state),
            str(job.attempts_made),
            created,
            detail,
        )
    return table


@cli.command()
@click.argument("queue_name", metavar="QUEUE", callback=_queue_name)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(_STATE_NAMES),
    help="Only jobs in this state (repeatable).",
)
@click.option("--search", "text", default=None, help="Text the id, name or data contains.")
@click.option("--name", default=None, help="Only jobs with this name.")
@click.option(
    "--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="Page size."
)
@click.option("--cursor", default=None, help="Continue after a page (its next cursor).")
@json_option
@store_option
def jobs(
    queue_name: str,
    states: tuple[str, ...],
    text: str | None,
    name: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
    store: str | None,
) -> None:
    """List a queue's jobs, newest first, a page at a time."""

    async def action(opened: StoreInterface) -> Any:
        return await ops.search_jobs(
            opened,
            queue_name,
            text=text,
            name=name,
            states=list(states) or None,
            limit=limit,
            cursor=cursor,
        )

    page = _with_store(store, action)
    if as_json:
        _print_json(
            {"jobs": [ops.job_to_json(job) for job in page.jobs], "next_cursor": page.next_cursor}
        )
        return
    console = _console()
    if page.jobs:
        console.print(_jobs_table(queue_name, page.jobs))
    else:
        console.print("no jobs on this page")
    if page.next_cursor is not None:
        console.print(
            Text.assemble(("more: --cursor ", "dim"), safe_text(repr(page.next_cursor), "dim"))
        )


@cli.group(cls=_Commands)
def job() -> None:
    """Show one job, or retry, remove, promote or cancel it."""


def _detail_view(detail: ops.JobDetail) -> Group:
    job_ = detail.job
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows: list[tuple[str, Text]] = [
        ("id", safe_text(job_.id)),
        ("queue", safe_text(job_.queue_name)),
        ("name", safe_text(job_.name)),
        ("state", state_text(job_.state)),
        ("attempts", Text(f"{job_.attempts_made} of {job_.opts.attempts}")),
        ("data", safe_text(json.dumps(job_.data, ensure_ascii=False))),
    ]
    if job_.progress is not None:
        rows.append(("progress", safe_text(json.dumps(job_.progress, ensure_ascii=False))))
    if job_.state is JobState.COMPLETED:
        rows.append(("result", safe_text(json.dumps(job_.return_value, ensure_ascii=False))))
    if job_.failed_reason:
        rows.append(("reason", safe_text(job_.failed_reason, "red")))
    for label, stamp in (
        ("created", job_.created_at),
        ("started", job_.processed_at),
        ("finished", job_.finished_at),
    ):
        if stamp is not None:
            rows.append((label, Text(stamp.isoformat(timespec="milliseconds"))))
    if detail.parent is not None:
        rows.append(
            (
                "parent",
                Text.assemble(
                    safe_text(detail.parent.queue_name), " / ", safe_text(detail.parent.id)
                ),
            )
        )
    children = detail.children
    counts = {
        "processed": len(children.processed),
        "pending": len(children.unprocessed),
        "failed": len(children.failed),
        "ignored": len(children.ignored),
    }
    if any(counts.values()):
        rows.append(("children", Text(", ".join(f"{n} {k}" for k, n in counts.items() if n))))
    for label, value in rows:
        table.add_row(label, value)
    parts: list[Any] = [table]
    if detail.logs:
        parts.append(Text("logs", style="bold"))
        parts.extend(safe_text(f"  {line}") for line in detail.logs)
    if job_.stacktrace:
        parts.append(Text("stacktrace", style="bold"))
        parts.extend(safe_text(line.rstrip("\n"), "dim") for line in job_.stacktrace)
    return Group(*parts)


@job.command("show")
@click.argument("job_id")
@queue_option
@json_option
@store_option
def job_show(job_id: str, queue_name: str, as_json: bool, store: str | None) -> None:
    """Show a job: data, result, progress, logs, stacktrace and dependencies."""
    detail = _with_store(store, lambda s: ops.get_job_detail(s, queue_name, job_id))
    if as_json:
        _print_json(ops.detail_to_json(detail))
    else:
        _console().print(_detail_view(detail))


def _job_action_command(action: ops.JobAction, summary: str) -> None:
    @job.command(action, help=summary)
    @click.argument("job_id")
    @queue_option
    @json_option
    @store_option
    def command(job_id: str, queue_name: str, as_json: bool, store: str | None) -> None:
        after = _with_store(store, lambda s: ops.job_action(s, queue_name, job_id, action))
        if as_json:
            _print_json(
                {"action": action, "job": None if after is None else ops.job_to_json(after)}
            )
            return
        outcome = "removed" if after is None else after.state.value
        _console().print(
            Text.assemble(f"{action}: ", safe_text(job_id), " is now ", safe_text(outcome))
        )


_job_action_command("retry", "Run a failed job again (its parent waits for it again).")
_job_action_command("remove", "Remove a job and its unfinished descendants.")
_job_action_command("promote", "Move a delayed job to waiting now.")


@job.command("cancel")
@click.argument("job_id")
@queue_option
@click.option("--reason", default=None, help="Why; the jobs fail with 'cancelled: REASON'.")
@json_option
@store_option
def job_cancel(
    job_id: str, queue_name: str, reason: str | None, as_json: bool, store: str | None
) -> None:
    """Cancel a job and every unfinished job below it.

    Jobs not started fail at once; running ones have their handlers cancelled by their
    workers, then fail. None is retried. A finished job is left as it is.
    """
    count, after = _with_store(store, lambda s: ops.cancel_job(s, queue_name, job_id, reason))
    if as_json:
        _print_json(
            {
                "action": "cancel",
                "cancelled": count,
                "job": None if after is None else ops.job_to_json(after),
            }
        )
        return
    outcome = "removed" if after is None else after.state.value
    _console().print(
        Text.assemble(
            f"cancel: {count} job{'' if count == 1 else 's'} cancelled; ",
            safe_text(job_id),
            " is now ",
            safe_text(outcome),
        )
    )


# ---------------------------------------------------------------------- queue actions


@cli.group(cls=_Commands)
def queue() -> None:
    """Pause, resume, drain, clean, obliterate a queue, or retry its failed jobs."""


def _queue_action_command(
    action: ops.QueueAction, summary: str, *extra: Callable[[Any], Any]
) -> None:
    def command(queue_name: str, as_json: bool, store: str | None, **options: Any) -> None:
        touched = _with_store(store, lambda s: ops.queue_action(s, queue_name, action, **options))
        if as_json:
            _print_json({"queue": queue_name, "action": action, "jobs": touched})
            return
        done = Text.assemble(f"{action}: ", safe_text(queue_name))
        if touched is not None:
            done.append(f" ({touched} job{'' if touched == 1 else 's'})")
        _console().print(done)

    for decorate in (store_option, json_option, *extra):
        command = decorate(command)
    command = click.argument("queue_name", metavar="QUEUE", callback=_queue_name)(command)
    queue.command(action, help=summary)(command)


_queue_action_command("pause", "Stop workers from taking the queue's jobs.")
_queue_action_command("resume", "Let workers take the queue's jobs again.")
_queue_action_command(
    "drain",
    "Remove the waiting jobs (and with --include-delayed the delayed ones).",
    click.option("--include-delayed", is_flag=True, help="Remove delayed jobs too."),
)
_queue_action_command(
    "clean",
    "Remove finished jobs older than --grace seconds.",
    click.option(
        "--grace",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help="Keep jobs that finished less than this many seconds ago.",
    ),
    click.option(
        "--state",
        type=click.Choice([s for s in _STATE_NAMES if s != "active"]),
        default="completed",
        show_default=True,
        help="Which jobs to remove.",
    ),
    click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many."),
)
_queue_action_command(
    "obliterate",
    "Delete the queue and everything in it.",
    click.option("--force", is_flag=True, help="Even while jobs are active."),
)
_queue_action_command("retry-failed", "Run every failed job of the queue again.")


# ---------------------------------------------------------------------- adding work


@cli.command()
@click.argument("queue_name", metavar="QUEUE", callback=_queue_name)
@click.argument("name")
@click.option("--data", default=None, metavar="JSON", help="The job's data, as JSON.")
@click.option("--opts", default=None, metavar="JSON", help="Job options, as a JSON object.")
@json_option
@store_option
def add(
    queue_name: str,
    name: str,
    data: str | None,
    opts: str | None,
    as_json: bool,
    store: str | None,
) -> None:
    """Add a job named NAME to QUEUE."""
    value = _parse_json(data, "--data")
    options = _parse_json(opts, "--opts")
    if options is not None and not isinstance(options, dict):
        raise UserError("--opts must be a JSON object, e.g. '{\"attempts\": 3}'")
    added = _with_store(store, lambda s: ops.add_job(s, queue_name, name, value, options))
    if as_json:
        _print_json(ops.job_to_json(added))
        return
    _console().print(
        Text.assemble(
            "added ",
            safe_text(added.id),
            " to ",
            safe_text(queue_name),
            f" ({added.state.value})",
        )
    )


class _FlowCommands(_Commands):
    """``conveyor flow JOB_ID`` draws a flow; ``conveyor flow add FILE`` adds one."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_FlowCommands, invoke_without_command=False)
def flow() -> None:
    """Draw a flow (conveyor flow JOB_ID --queue Q) or add flows from a JSON file."""


def _mark_truncated(node: JobNode, max_children: int | None, tree: Any) -> None:
    """Note, under each drawn node cut to ``max_children``, how many children are hidden."""
    if max_children is None:
        return
    stack = [(node, tree)]
    while stack:
        current, branch = stack.pop()
        drawn = list(branch.children)
        if hidden := current.hidden_children:
            noun = "child" if hidden == 1 else "children"
            branch.add(
                Text(f"… {hidden:,} more {noun} not shown (--max-children {max_children})", "dim")
            )
        stack.extend(zip(current.children, drawn, strict=False))


@flow.command("show")
@click.argument("job_id")
@queue_option
@click.option(
    "--depth", type=click.IntRange(min=1), default=10, show_default=True, help="Levels to show."
)
@click.option(
    "--max-children",
    type=click.IntRange(min=1),
    default=25,
    show_default=True,
    help="Children shown under each job.",
)
@json_option
@store_option
def flow_show(
    job_id: str,
    queue_name: str,
    depth: int,
    max_children: int,
    as_json: bool,
    store: str | None,
) -> None:
    """Draw the flow under JOB_ID with each job's state and result."""

    async def action(opened: StoreInterface) -> JobNode | None:
        return await FlowProducer(store=opened).get_flow(
            job_id, queue_name, depth=depth, max_children=max_children
        )

    node = _with_store(store, action)
    if node is None:
        raise UserError(f"no job {job_id!r} in queue {queue_name!r}")
    if as_json:
        _print_json(_node_json(node))
        return
    tree = flow_tree(node, show_results=True)
    _mark_truncated(node, max_children, tree)
    _console().print(tree)


def _node_json(node: JobNode) -> dict[str, Any]:
    root: dict[str, Any] = {
        **ops.job_to_json(node.job),
        "children": [],
        "hidden_children": node.hidden_children,
    }
    stack = [(node, root)]
    while stack:  # explicit stack: a chain may be far deeper than the recursion limit
        current, out = stack.pop()
        for child in current.children:
            child_out = {
                **ops.job_to_json(child.job),
                "children": [],
                "hidden_children": child.hidden_children,
            }
            if child.shown_elsewhere:
                child_out["shown_elsewhere"] = True
            out["children"].append(child_out)
            stack.append((child, child_out))
    return root


@flow.command("add")
@click.argument("path", metavar="FILE.json", type=click.Path(dir_okay=False))
@json_option
@store_option
def flow_add(path: str, as_json: bool, store: str | None) -> None:
    """Add the flow (a JSON object) or flows (a JSON list) in FILE.json, all or nothing."""
    try:
        flows = ops.load_flow_file(path)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    nodes = _with_store(store, lambda s: ops.add_flow(s, flows))
    if as_json:
        _print_json([{"id": n.job.id, "queue": n.job.queue_name} for n in nodes])
        return
    console: Console = _console()
    for node in nodes:
        console.print(
            Text.assemble(
                "added flow ",
                safe_text(node.job.id),
                " in ",
                safe_text(node.job.queue_name),
                f" ({len(node.walk())} jobs)",
            )
        )


# ---------------------------------------------------------------------- schedulers


def _scheduler_to_json(scheduler: JobScheduler) -> dict[str, Any]:
    return scheduler.model_dump(mode="json")


def _schedulers_table(queue: str, schedulers: list[JobScheduler]) -> Table:
    table = Table(title=f"Job schedulers of {queue}", title_justify="left")
    table.add_column("id", overflow="fold")
    table.add_column("pattern", overflow="fold")
    table.add_column("tz", no_wrap=True)
    table.add_column("next run (UTC)", no_wrap=True)
    table.add_column("iterations", justify="right")
    table.add_column("adds", overflow="fold", ratio=1)
    for scheduler in schedulers:
        next_run = scheduler.next_run_at
        if scheduler.flow is not None:
            adds = f"flow {scheduler.flow.get('name')}"
        else:
            adds = str((scheduler.template or {}).get("name"))
        table.add_row(
            safe_text(scheduler.id),
            safe_text(scheduler.pattern),
            safe_text(scheduler.tz or "UTC") if scheduler.cron is not None else Text("-"),
            next_run.strftime("%Y-%m-%d %H:%M:%S") if next_run else Text("done", "dim"),
            str(scheduler.iterations) + ("" if scheduler.limit is None else f"/{scheduler.limit}"),
            safe_text(adds),
        )
    return table


@cli.command()
@click.argument("queue_name", metavar="QUEUE", callback=_queue_name)
@json_option
@store_option
def schedulers(queue_name: str, as_json: bool, store: str | None) -> None:
    """List a queue's job schedulers: pattern, timezone, next run and iterations."""
    from ..queue import Queue

    found = _with_store(store, lambda opened: Queue(queue_name, store=opened).get_job_schedulers())
    if as_json:
        _print_json([_scheduler_to_json(scheduler) for scheduler in found])
        return
    console = _console()
    if not found:
        console.print(Text.assemble("no job schedulers in ", safe_text(queue_name)))
        return
    console.print(_schedulers_table(queue_name, found))


# ---------------------------------------------------------------------- dashboard


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port."
)
@click.option("--read-only", is_flag=True, help="Show everything, offer no action.")
@store_option
def dashboard(host: str, port: int, read_only: bool, store: str | None) -> None:
    """Serve the web dashboard (needs the dashboard extra) until Ctrl-C."""
    try:
        import uvicorn

        from ..dashboard import create_app
    except ImportError as exc:
        raise UserError(
            f"the dashboard needs packages that are not installed ({exc.name}); "
            "pip install 'conveyor-queue[dashboard]'"
        ) from None
    url = store_url(store)

    async def main() -> None:
        async with opened_store(url) as opened:
            config = uvicorn.Config(
                create_app(opened, read_only=read_only),
                host=host,
                port=port,
                lifespan="off",
                timeout_graceful_shutdown=2,
                log_level="warning",
            )
            server = uvicorn.Server(config)
            click.echo(
                f"dashboard of {redact(url)} at http://{host}:{port}/"
                + (" (read-only)" if read_only else ""),
                err=True,
            )
            await server.serve()

    with contextlib.suppress(KeyboardInterrupt):
        run(main)
