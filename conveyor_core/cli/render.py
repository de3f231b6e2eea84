"""Terminal rendering of flows and queues with rich: trees with colored states, tables."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from .. import Job, JobNode
from ..models import ALL_STATES, JobState

STATE_STYLES: Mapping[JobState, str] = {
    JobState.WAITING: "yellow",
    JobState.DELAYED: "magenta",
    JobState.ACTIVE: "bold cyan",
    JobState.COMPLETED: "bold green",
    JobState.FAILED: "bold red",
    JobState.WAITING_CHILDREN: "blue",
}


def state_text(state: JobState | str) -> Text:
    """A job state in its color."""
    state = JobState(state)
    return Text(state.value, style=STATE_STYLES[state])


def short_json(value: Any, limit: int = 60) -> str:
    """Compact JSON of a value, cut to ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _job_label(job: Job, *, show_result: bool, show_id: bool) -> Text:
    label = Text.assemble(
        (job.queue_name, "bold"),
        " · ",
        job.name,
        "  ",
        state_text(job.state),
    )
    attempts = job.opts.attempts
    if job.state is JobState.COMPLETED and job.attempts_made > 1:
        label.append(f"  after {job.attempts_made} attempts", style="dim")
    elif not job.state.finished and job.attempts_made > 0:
        label.append(f"  attempt {job.attempts_made + 1}/{attempts}", style="magenta")
        if job.failed_reason:
            label.append(f" (last: {job.failed_reason})", style="dim")
    if job.state is JobState.FAILED and job.failed_reason:
        label.append(f"  {job.failed_reason}", style="red")
    if show_result and job.state is JobState.COMPLETED:
        label.append(f"  → {short_json(job.return_value)}", style="green")
    if show_id:
        label.append(f"  {job.id}", style="dim")
    return label


def flow_tree(node: JobNode, *, show_results: bool = False, show_ids: bool = True) -> Tree:
    """The flow under ``node`` as a rich ``Tree``: queue, job name and state per node."""
    tree = Tree(_job_label(node.job, show_result=show_results, show_id=show_ids), guide_style="dim")
    stack: list[tuple[Tree, JobNode]] = [(tree, node)]
    while stack:  # explicit stack: a 1,000-level chain must not hit the recursion limit
        branch, current = stack.pop()
        for child in current.children:
            sub = branch.add(_job_label(child.job, show_result=show_results, show_id=show_ids))
            stack.append((sub, child))
    return tree


def results_table(node: JobNode) -> Table:
    """One row per job of the flow (in tree order): its state, attempts and result."""
    table = Table(title="Results", title_justify="left")
    table.add_column("job", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("tries", justify="right", no_wrap=True)
    table.add_column("result / reason", overflow="fold", ratio=1)
    for current in node.walk():
        job = current.job
        if job.state is JobState.COMPLETED:
            outcome = Text(short_json(job.return_value, limit=200))
        else:
            outcome = Text(job.failed_reason or "", style="red")
        table.add_row(escape(job.name), state_text(job.state), str(job.attempts_made), outcome)
    return table


def counts_table(rows: Sequence[tuple[str, bool, Mapping[str, int]]]) -> Table:
    """Queues with their job counts per state (and whether each is paused)."""
    table = Table(title="Queues", title_justify="left")
    table.add_column("queue", style="bold")
    for state in ALL_STATES:
        table.add_column(Text(state.value, style=STATE_STYLES[state]), justify="right")
    table.add_column("paused")
    for name, paused, counts in rows:
        cells = [str(counts.get(state.value, 0)) for state in ALL_STATES]
        table.add_row(escape(name), *cells, "yes" if paused else "")
    return table
