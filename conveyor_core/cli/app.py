"""The ``conveyor`` command: demo, worker, status, flow and conformance."""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any

import anyio
import click
from anyio.abc import TaskStatus
from rich.console import Console
from rich.text import Text

from .. import Job, JobState, Worker
from ..queue import check_name
from ..registry import open_store
from .demo import run_demo
from .render import safe_text
from .support import (
    DEFAULT_STORE_URL,
    STORE_URL_ENV,
    UserError,
    describe,
    import_handlers,
    import_object,
    opened_store,
    redact,
    run,
    store_url,
)

if TYPE_CHECKING:
    from ..metrics import WorkerMetrics

STORE_HELP = (
    "Store URL: memory://, sqlite:///rel.db, sqlite:////abs.db, postgresql://…, redis://… "
    f"(default: ${STORE_URL_ENV}, else sqlite:///conveyor.db)."
)
store_option = click.option("--store", "store", metavar="URL", default=None, help=STORE_HELP)


def _console() -> Console:
    """Rich output; when not on a terminal (CI, pipes), wide lines instead of wrapping."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=120)
    return console


class _Commands(click.Group):
    """The command group; a mistyped option is one line naming it, without the usage."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


def _one_line(exc: click.UsageError) -> click.ClickException:
    if isinstance(exc, click.exceptions.NoArgsIsHelpError) or exc.ctx is None:
        return exc
    return OptionError(f"{exc.format_message()} (see '{exc.ctx.command_path} --help')")


class OptionError(UserError):
    """A command line that does not parse: exit code 2, as for click's usage errors."""

    exit_code = 2


def _queue_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value, "queue name")
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="conveyor-queue", prog_name="conveyor")
def cli() -> None:
    """Conveyor: async job queues and flows on memory, SQLite, PostgreSQL or Redis."""


@cli.command()
@store_option
@click.option(
    "--speed",
    type=click.FloatRange(min=0.1),
    default=1.0,
    show_default=True,
    help="Divide every simulated work time (and the payment backoff) by this.",
)
@click.option(
    "--prefix",
    default="demo-",
    show_default=True,
    help="Prefix of the demo's queue names, keeping them apart from real queues.",
)
def demo(store: str | None, speed: float, prefix: str) -> None:
    """Run an e-commerce order flow across eight queues and draw it live."""
    url = store_url(store)
    console = _console()

    async def main() -> bool:
        async with opened_store(url) as opened:
            console.print(safe_text(f"store: {redact(url)}", "dim"))
            return await run_demo(
                opened,
                console,
                prefix=prefix,
                speed=speed,
                store_hint=None if url == DEFAULT_STORE_URL else redact(url),
                show_hints=not url.startswith("memory:"),  # a memory store ends with the demo
            )

    if not run(main):
        sys.exit(1)


LOG_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _queue_names(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    names = tuple(_queue_name(ctx, param, value) for value in values)
    if len(set(names)) != len(names):
        raise click.BadParameter("a queue is named twice", ctx, param)
    return names


@cli.command()
@click.argument("handler", metavar="MODULE:HANDLER")
@click.option(
    "--queue",
    "queue_names",
    required=True,
    multiple=True,
    callback=_queue_names,
    help="Queue to take jobs from (repeatable: one process serves several queues).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Jobs run at the same time, per queue.",
)
@click.option(
    "--lock-duration",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds a job's lock lasts; it is renewed while the handler runs. A killed "
    "worker's jobs run again once their locks expire.",
)
@click.option(
    "--stalled-interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds between checks for jobs whose lock expired.",
)
@click.option(
    "--max-stalled-count",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Stalls a job survives; one more fails it.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="On SIGINT/SIGTERM, wait at most this many seconds for active jobs "
    "(default: until they finish); unfinished jobs go back to waiting. The worker "
    "gives up on a store that does not answer about a second after that. A second "
    "signal exits at once.",
)
@click.option(
    "--log-level",
    type=click.Choice(list(LOG_LEVELS)),
    default="info",
    show_default=True,
    help="debug: every job started too; info: completions and lifecycle; warning: "
    "attempts that will be retried and stalls; error: failures and errors only.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve the workers' Prometheus metrics (jobs completed, failed and retried, "
    "processing and waiting times) at http://HOST:PORT/metrics; needs the prometheus "
    "extra. 0 picks a free port (printed).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics server listens on.",
)
@store_option
def worker(
    handler: str,
    queue_names: tuple[str, ...],
    concurrency: int,
    lock_duration: float,
    stalled_interval: float,
    max_stalled_count: int,
    shutdown_timeout: float | None,
    log_level: str,
    metrics_port: int | None,
    metrics_host: str,
    store: str | None,
) -> None:
    """Run workers for one or more queues until SIGINT or SIGTERM, then close them.

    MODULE:HANDLER names the handler, an async (or plain) function taking a Job, e.g.
    myapp.jobs:send_email, or a mapping of queue names to handlers, e.g.
    myapp.jobs:HANDLERS. The current directory is importable. Each line printed starts
    with a timestamp and a level.
    """
    handlers = import_handlers(handler, queue_names)
    url = store_url(store)
    log = _Log(_console(), LOG_LEVELS[log_level])
    logging.basicConfig(
        level=max(LOG_LEVELS[log_level], logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    metrics = None if metrics_port is None else _worker_metrics(metrics_port, metrics_host, log)

    async def main() -> None:
        async with opened_store(url) as opened:
            workers = [
                Worker(
                    name,
                    handlers[name],
                    store=opened,
                    concurrency=concurrency,
                    lock_duration=lock_duration,
                    stalled_interval=stalled_interval,
                    max_stalled_count=max_stalled_count,
                    metrics=metrics,
                )
                for name in queue_names
            ]
            for each in workers:
                _report_jobs(each, log)
            shown = Text(", ").join(safe_text(name, "bold") for name in queue_names)
            log.info(
                Text.assemble(
                    "worker for ",
                    "queue " if len(queue_names) == 1 else "queues ",
                    shown,
                    " on ",
                    safe_text(redact(url)),
                    f" (concurrency {concurrency}); stop with Ctrl-C or SIGTERM",
                )
            )
            async with anyio.create_task_group() as tg:
                # Signals are handled before the first job is taken.
                await tg.start(_close_on_signal, workers, shutdown_timeout, log)
                async with anyio.create_task_group() as running:
                    for each in workers:
                        running.start_soon(each.run)
                tg.cancel_scope.cancel()
            log.info(Text("worker closed"))

    run(main)


def _worker_metrics(port: int, host: str, log: _Log) -> WorkerMetrics:
    """A ``WorkerMetrics`` served over HTTP, or a usage error naming what went wrong."""
    try:
        from ..metrics import WorkerMetrics
    except ImportError as exc:
        raise click.UsageError(
            f"--metrics-port needs the prometheus extra: pip install 'conveyor-queue[prometheus]' "
            f"({exc})"
        ) from exc
    metrics = WorkerMetrics()
    try:
        served = metrics.serve(port, host)
    except OSError as exc:
        raise click.UsageError(
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
        ) from exc
    log.info(Text(f"metrics at http://{host}:{served}/metrics"))
    return metrics


class _Log:
    """Worker output: one line per event, with a timestamp and a level, at or above a
    threshold. Text from the store arrives already escaped (``safe_text``)."""

    def __init__(self, console: Console, threshold: int) -> None:
        self.console = console
        self.threshold = threshold

    def _line(self, level: int, name: str, style: str, text: Text) -> None:
        if level < self.threshold:
            return
        stamp = datetime.now().astimezone().isoformat(sep=" ", timespec="milliseconds")
        line = Text.assemble((stamp, "dim"), " ", (f"{name:<7}", style), " ", text)
        self.console.print(line, soft_wrap=True)  # a log line is one line, never wrapped

    def debug(self, text: Text) -> None:
        self._line(10, "DEBUG", "dim", text)

    def info(self, text: Text) -> None:
        self._line(20, "INFO", "green", text)

    def warning(self, text: Text) -> None:
        self._line(30, "WARNING", "yellow", text)

    def error(self, text: Text) -> None:
        self._line(40, "ERROR", "red", text)


def _report_jobs(the_worker: Worker, log: _Log) -> None:
    """Log a line whenever a job starts (debug), completes, an attempt fails, a job
    stalls or an error occurs (a store that cannot be reached, a lost lock)."""
    queue = safe_text(the_worker.queue_name)

    def active(job: Job) -> None:
        log.debug(
            Text.assemble("started ", queue, " ", safe_text(job.name), " ", safe_text(job.id))
        )

    def completed(job: Job, result: Any) -> None:
        log.info(
            Text.assemble("completed ", queue, " ", safe_text(job.name), " ", safe_text(job.id))
        )

    def failed(job: Job, error: BaseException) -> None:
        line = Text.assemble(
            queue, " ", safe_text(job.name), " ", safe_text(job.id), ": ", safe_text(error)
        )
        if job.state is JobState.FAILED:
            log.error(Text.assemble("failed ", line))
        else:
            log.warning(Text.assemble("attempt failed, will retry ", line))

    def stalled(job_id: str, failed_for_good: bool) -> None:
        outcome = "failed" if failed_for_good else "back to waiting"
        log.warning(Text.assemble("stalled ", queue, " ", safe_text(job_id), f": {outcome}"))

    def error(exc: BaseException) -> None:
        log.error(Text.assemble(f"{type(exc).__name__}: ", safe_text(exc)))

    if log.threshold <= 10:
        the_worker.on("active", active)
    the_worker.on("completed", completed)
    the_worker.on("failed", failed)
    the_worker.on("stalled", stalled)
    the_worker.on("error", error)


async def _close_on_signal(
    workers: list[Worker],
    timeout: float | None,
    log: _Log,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """First SIGINT/SIGTERM: close gracefully. A second one: exit at once.

    Exiting at once waits for nothing, not even the store (which may be what hangs):
    jobs still running stay active and are handed out again once their locks expire.
    """
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async with anyio.create_task_group() as tg:
            closing = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if not closing:
                    closing = True
                    log.info(Text(f"{name}: finishing active jobs, then stopping"))
                    for each in workers:
                        tg.start_soon(_close, each, timeout)
                else:
                    log.warning(
                        Text(
                            f"{name} again: exiting now; jobs still running are handed out "
                            "again when their locks expire"
                        )
                    )
                    log.console.file.flush()
                    sys.stderr.flush()
                    os._exit(128 + signum)


async def _close(the_worker: Worker, timeout: float | None) -> None:
    await the_worker.close(timeout=timeout)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("factory", metavar="URL|MODULE:FACTORY")
@click.option(
    "--shared/--not-shared",
    default=None,
    help="Whether each call of FACTORY opens the same database, so behaviour across two "
    "store objects (events, wake-ups) is tested too. Default: what the store declares "
    "in its capabilities.",
)
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
def conformance(factory: str, shared: bool | None, pytest_args: tuple[str, ...]) -> None:
    """Run the store conformance suite against a store given by URL or by MODULE:FACTORY.

    A URL (`mystore://…`, any scheme registered in the `conveyor.stores` entry-point
    group) is opened anew for each test. FACTORY returns a store that is not connected
    yet (or an awaitable of one, or an async context manager yielding a connected one).
    PYTEST_ARGS go to pytest, e.g. `conveyor conformance mystore:make -- -x -k flow`.
    Exits with pytest's exit code.
    """
    if "://" in factory:
        try:
            open_store(factory)
        except (ValueError, ImportError) as exc:
            raise UserError(f"invalid store URL {redact(factory)!r}: {describe(exc)}") from None
    else:
        import_object(factory, "store factory")  # a bad path is a clear error before pytest
    try:
        from ..conformance import run as run_conformance
    except ImportError as exc:
        raise UserError(f"the conformance suite needs pytest ({describe(exc)})") from None
    sys.exit(run_conformance(factory, shared=shared, pytest_args=pytest_args))


def main() -> None:
    """Entry point of the ``conveyor`` script."""
    cli(prog_name="conveyor")
