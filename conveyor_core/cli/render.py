"""Terminal rendering of flows and queues with rich: trees with colored states, tables."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

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


_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def _needs_escape(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Zl", "Zp") or char in _BIDI_CONTROLS


def safe_text(value: object, style: str = "") -> Text:
    """``value`` as text that prints literally on a terminal: every stored string the CLI
    prints (names, ids, reasons, data, messages) goes through here.

    Control characters (ESC, carriage return, C1 codes such as CSI, line and paragraph
    separators, bidirectional overrides) are shown as Python-style escapes (``\\x1b``,
    ``\\n``, ``\\u202e``), so stored text can neither move the cursor, recolour the
    terminal nor spoof a line. The result is a rich ``Text``, which rich never reads as
    markup or emoji codes: a name like ``[bold]x`` prints as it is.
    """
    text = value if isinstance(value, str) else str(value)
    if not text.isprintable():
        text = "".join(
            char.encode("unicode_escape").decode("ascii") if _needs_escape(char) else char
            for char in text
        )
    return Text(text, style=style)


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
        safe_text(job.queue_name, "bold"),
        " · ",
        safe_text(job.name),
        "  ",
        state_text(job.state),
    )
    attempts = job.opts.attempts
    if job.state is JobState.COMPLETED and job.attempts_made > 1:
        label.append(f"  after {job.attempts_made} attempts", style="dim")
    elif not job.state.finished and job.attempts_made > 0:
        label.append(f"  attempt {job.attempts_made + 1}/{attempts}", style="magenta")
        if job.failed_reason:
            label.append(safe_text(f" (last: {job.failed_reason})", "dim"))
    if job.state is JobState.FAILED and job.failed_reason:
        label.append(safe_text(f"  {job.failed_reason}", "red"))
    if show_result and job.state is JobState.COMPLETED:
        label.append(safe_text(f"  → {short_json(job.return_value)}", "green"))
    if show_id:
        label.append(safe_text(f"  {job.id}", "dim"))
    return label


def flow_tree(node: JobNode, *, show_results: bool = False, show_ids: bool = True) -> Tree:
    """The flow under ``node`` as a rich ``Tree``: queue, job name and state per node; a
    DAG's shared job is drawn once, and marked "shared" at its other places."""
    tree = Tree(_job_label(node.job, show_result=show_results, show_id=show_ids), guide_style="dim")
    stack: list[tuple[Tree, JobNode]] = [(tree, node)]
    while stack:  # explicit stack: a 1,000-level chain must not hit the recursion limit
        branch, current = stack.pop()
        for child in current.children:
            if child.shown_elsewhere:
                # A DAG's shared job: drawn once, with its children, where it first appears.
                branch.add(_shared_label(child.job, show_id=show_ids))
                continue
            sub = branch.add(_job_label(child.job, show_result=show_results, show_id=show_ids))
            stack.append((sub, child))
    return tree


def _shared_label(job: Job, *, show_id: bool) -> Text:
    label = Text.assemble(
        safe_text(job.queue_name, "bold"), " · ", safe_text(job.name), "  ", ("↑ shared", "cyan")
    )
    label.append("  (drawn above)", style="dim")
    if show_id:
        label.append(safe_text(f"  {job.id}", "dim"))
    return label


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
            outcome = safe_text(short_json(job.return_value, limit=200))
        else:
            outcome = safe_text(job.failed_reason or "", "red")
        table.add_row(safe_text(job.name), state_text(job.state), str(job.attempts_made), outcome)
    return table


def counts_table(
    rows: Sequence[tuple[str, bool, Mapping[str, int]]],
    rates: Sequence[tuple[int, int]] | None = None,
) -> Table:
    """Queues with their job counts per state (and whether each is paused); with
    ``rates``, each queue's completed and failed jobs of the last whole minute."""
    table = Table(title="Queues", title_justify="left")
    table.add_column("queue", style="bold", overflow="fold")
    for state in ALL_STATES:
        table.add_column(Text(state.value, style=STATE_STYLES[state]), justify="right")
    table.add_column("paused")
    if rates is not None:
        table.add_column("done/min", justify="right")
        table.add_column("failed/min", justify="right")
    for index, (name, paused, counts) in enumerate(rows):
        cells = [str(counts.get(state.value, 0)) for state in ALL_STATES]
        more = [] if rates is None else [str(rates[index][0]), str(rates[index][1])]
        table.add_row(safe_text(name), *cells, "yes" if paused else "", *more)
    return table
