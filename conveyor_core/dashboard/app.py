"""The dashboard's routes, guards and views (see :func:`create_app`)."""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import math
import secrets
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import anyio
import jinja2
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import operations as ops
from ..errors import ConveyorError, InvalidJobStateError, JobNotFoundError
from ..events import QueueEvents
from ..flow import FlowProducer, JobNode
from ..job import Job
from ..models import ALL_STATES, JobState, QueueEvent
from ..queue import Queue
from ..store import StoreInterface

__all__ = ["Auth", "create_app"]

Auth = Callable[[Request], bool | Awaitable[bool]]
"""``auth(request) -> bool`` (or an awaitable of one): whether the request may go on."""

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
SPARK_MINUTES = 60
CHILDREN_SHOWN = 100
"""Children listed on a job's page."""
FLOW_DEPTH = 10
FLOW_CHILDREN = 50
"""Levels and children per node drawn on a flow's page (and watched by its stream)."""
HEARTBEAT_SECONDS = 15.0
CSRF_COOKIE = "conveyor_csrf"
CSRF_FIELD = "csrf"
CLEANABLE = (JobState.COMPLETED, JobState.FAILED)
DASHBOARD_QUEUE_ACTIONS: tuple[ops.QueueAction, ...] = ("pause", "resume", "retry-failed", "clean")
DONE_MESSAGES = {
    "retry": "The job is queued to run again.",
    "promote": "The job is waiting to run now.",
    "remove": "The job was removed.",
    "cancel": "The job and its unfinished descendants are cancelled.",
    "pause": "The queue is paused.",
    "resume": "The queue is running again.",
    "retry-failed": "The failed jobs are queued to run again.",
    "clean": "The finished jobs were removed.",
}
"""What the page says after an action; only these fixed texts are shown."""


class _HTTPProblem(Exception):
    """A request the dashboard answers with an error page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Guard:
    """Runs ``auth`` before every request of the app: pages, actions, static files and
    event streams alike. A false answer gets 403."""

    def __init__(self, app: ASGIApp, auth: Auth | None) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.auth is not None and scope["type"] in ("http", "websocket"):
            allowed = self.auth(Request(scope, receive))
            if inspect.isawaitable(allowed):
                allowed = await allowed
            if not allowed:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = PlainTextResponse("Forbidden", status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Csrf:
    """Double-submit tokens: a random value in a cookie and, in every form, its HMAC
    under a secret of this app. A cross-site page can make the browser send the cookie
    but can neither read it nor compute the HMAC, so its POST is refused."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def sign(self, nonce: str) -> str:
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    def nonce(self, request: Request) -> tuple[str, bool]:
        """The request's cookie value and False, or a new value and True."""
        nonce = request.cookies.get(CSRF_COOKIE, "")
        if len(nonce) == 64 and all(c in "0123456789abcdef" for c in nonce):
            return nonce, False
        return secrets.token_hex(32), True

    def valid(self, request: Request, form: FormData) -> bool:
        nonce = request.cookies.get(CSRF_COOKIE)
        token = form.get(CSRF_FIELD)
        if not nonce or not isinstance(token, str):
            return False
        return hmac.compare_digest(token.encode(), self.sign(nonce).encode())


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _short(value: Any, width: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def _stamp(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(sep=" ", timespec="milliseconds")


def _seconds_between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    return f"{(end - start).total_seconds():.3f} s"


def _sparkline(series: list[int], width: int = 120, height: int = 24) -> str:
    """The ``points`` of an SVG polyline drawing ``series`` (numbers only)."""
    top = max(series) or 1
    step = width / max(len(series) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{height - 1 - (value / top) * (height - 2):.1f}"
        for i, value in enumerate(series)
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every stored string (names, data, reasons) is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pretty"] = _pretty
    env.filters["stamp"] = _stamp
    env.filters["short"] = _short
    env.globals["states"] = [state.value for state in ALL_STATES]
    return env


class _EventStream(Response):
    """Server-sent events with the state of each job of a flow: one ``state`` event per
    job at once, then one whenever an event of the job's queue concerns it."""

    media_type = "text/event-stream"

    def __init__(self, store: StoreInterface, root: JobNode) -> None:
        # No super().__init__: it would declare a Content-Length for an endless body.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self.store = store
        self.jobs = {(node.job.queue_name, node.job.id) for node in root.walk()}

    async def _message(self, queue: str, job_id: str) -> bytes:
        job = await Queue(queue, store=self.store).get_job(job_id)
        state = "removed" if job is None else job.state.value
        data = json.dumps({"queue": queue, "id": job_id, "state": state})
        return f"event: state\ndata: {data}\n\n".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dirty: set[tuple[str, str]] = set()
        wake = anyio.Event()

        def seen(event: QueueEvent) -> None:
            nonlocal wake
            key = (event.queue_name, event.job_id or "")
            if key in self.jobs:
                dirty.add(key)
                wake.set()

        async def until_disconnected(scope_: anyio.CancelScope) -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            scope_.cancel()

        async with AsyncExitStack() as stack:
            feeds: list[QueueEvents] = []
            for queue in sorted({queue for queue, _ in self.jobs}):
                events = await stack.enter_async_context(QueueEvents(queue, store=self.store))
                events.on("*", seen)
                feeds.append(events)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as group:
                group.start_soon(until_disconnected, group.cancel_scope)
                # Listening already: whatever happened before is in this first read.
                for queue, job_id in sorted(self.jobs):
                    body = await self._message(queue, job_id)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"event: ready\ndata: {}\n\n",
                        "more_body": True,
                    }
                )
                while not any(feed.error for feed in feeds):
                    with anyio.move_on_after(HEARTBEAT_SECONDS):
                        await wake.wait()
                    wake = anyio.Event()
                    changed = sorted(dirty)
                    dirty.clear()
                    chunks = [await self._message(queue, job_id) for queue, job_id in changed]
                    body = b"".join(chunks) or b": still here\n\n"
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                # A feed broke (the store went away): end the response; the browser's
                # EventSource connects again and starts from a fresh read.
                group.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Dashboard:
    def __init__(self, store: StoreInterface, *, read_only: bool, secret: bytes) -> None:
        self.store = store
        self.read_only = read_only
        self.csrf = _Csrf(secret)
        self.env = _environment()

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def url(request: Request, path: str, **params: Any) -> str:
        """``path`` under the place the app is mounted, with ``params`` (``None``s left
        out) as the query string."""
        base = request.scope.get("root_path", "").rstrip("/")
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{base}{path}" + (f"?{query}" if query else "")

    def page(
        self, request: Request, template: str, context: Mapping[str, Any], status: int = 200
    ) -> HTMLResponse:
        nonce, new = self.csrf.nonce(request)
        html = self.env.get_template(template).render(
            **context,
            request=request,
            read_only=self.read_only,
            csrf=self.csrf.sign(nonce),
            url=lambda path, **params: self.url(request, path, **params),
            done=DONE_MESSAGES.get(request.query_params.get("done", "")),
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["cache-control"] = "no-store"
        response.headers["x-frame-options"] = "DENY"
        response.headers["content-security-policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'"
        )
        if new:
            response.set_cookie(
                CSRF_COOKIE,
                nonce,
                path=request.scope.get("root_path") or "/",
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
            )
        return response

    def problem(self, request: Request, exc: _HTTPProblem) -> HTMLResponse:
        return self.page(
            request, "error.html", {"status": exc.status, "message": exc.message}, exc.status
        )

    @staticmethod
    def required(request: Request, name: str) -> str:
        value = request.query_params.get(name)
        if not value:
            raise _HTTPProblem(400, f"the {name!r} parameter is required")
        return value

    async def form(self, request: Request) -> FormData:
        """The POSTed form, once the request may act: 403 in read-only mode or without a
        valid CSRF token."""
        if self.read_only:
            raise _HTTPProblem(403, "this dashboard is read-only")
        form = await request.form()
        if not self.csrf.valid(request, form):
            raise _HTTPProblem(
                403, "the form's security token is missing or wrong; reload the page and retry"
            )
        return form

    @staticmethod
    def field(form: FormData, name: str) -> str:
        value = form.get(name)
        if not isinstance(value, str) or not value:
            raise _HTTPProblem(400, f"the {name!r} field is required")
        return value

    def handle(
        self, endpoint: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            try:
                return await endpoint(request)
            except _HTTPProblem as exc:
                return self.problem(request, exc)
            except JobNotFoundError as exc:
                return self.problem(request, _HTTPProblem(404, str(exc)))
            except InvalidJobStateError as exc:
                return self.problem(request, _HTTPProblem(409, str(exc)))
            except (ValueError, TypeError) as exc:
                return self.problem(request, _HTTPProblem(400, str(exc).splitlines()[0]))
            except ConveyorError as exc:
                return self.problem(request, _HTTPProblem(500, str(exc).splitlines()[0]))

        return guarded

    # ------------------------------------------------------------ pages

    async def queues(self, request: Request) -> Response:
        infos = await ops.list_queues(self.store)
        rows = []
        for info in infos:
            queue = Queue(info.name, store=self.store)
            completed = await queue.get_metrics("completed", minutes=SPARK_MINUTES)
            failed = await queue.get_metrics("failed", minutes=SPARK_MINUTES)
            rows.append(
                {
                    "info": info,
                    "completed": sum(completed),
                    "failed": sum(failed),
                    "completed_line": _sparkline(completed),
                    "failed_line": _sparkline(failed),
                }
            )
        return self.page(
            request,
            "queues.html",
            {"rows": rows, "minutes": SPARK_MINUTES, "cleanable": [s.value for s in CLEANABLE]},
        )

    async def jobs(self, request: Request) -> Response:
        queue = self.required(request, "queue")
        params = request.query_params
        state = params.get("state") or None
        if state is not None and state not in {s.value for s in ALL_STATES}:
            raise _HTTPProblem(400, f"unknown state {state!r}")
        try:
            limit = int(params.get("limit") or PAGE_SIZE)
        except ValueError:
            raise _HTTPProblem(400, "limit must be a whole number") from None
        limit = min(max(limit, 1), MAX_PAGE_SIZE)
        text = params.get("text") or None
        name = params.get("name") or None
        cursor = params.get("cursor") or None
        page = await ops.search_jobs(
            self.store,
            queue,
            text=text,
            name=name,
            states=None if state is None else [state],
            limit=limit,
            cursor=cursor,
        )
        target = Queue(queue, store=self.store)
        return self.page(
            request,
            "jobs.html",
            {
                "queue": queue,
                "counts": await target.get_job_counts(),
                "paused": await target.is_paused(),
                "state": state,
                "text": text,
                "name": name,
                "cursor": cursor,
                "limit": None if limit == PAGE_SIZE else limit,
                "jobs": page.jobs,
                "next_cursor": page.next_cursor,
            },
        )

    async def job(self, request: Request) -> Response:
        queue = self.required(request, "queue")
        job_id = self.required(request, "id")
        detail = await ops.get_job_detail(self.store, queue, job_id)
        tree = await FlowProducer(store=self.store).get_flow(
            job_id, queue, depth=2, max_children=CHILDREN_SHOWN
        )
        children = [] if tree is None else [node.job for node in tree.children]
        job = detail.job
        deps = detail.children
        return self.page(
            request,
            "job.html",
            {
                "job": job,
                "detail": detail,
                "children": children,
                "children_more": len(children) >= CHILDREN_SHOWN,
                "dependency_counts": {
                    "processed": len(deps.processed),
                    "pending": len(deps.unprocessed),
                    "failed": len(deps.failed),
                    "ignored": len(deps.ignored),
                },
                "waited": _seconds_between(job.created_at, job.processed_at),
                "ran": _seconds_between(job.processed_at, job.finished_at),
                "actions": _job_actions(job),
            },
        )

    async def flow(self, request: Request) -> Response:
        queue = self.required(request, "queue")
        job_id = self.required(request, "id")
        root = await FlowProducer(store=self.store).get_flow(
            job_id, queue, depth=FLOW_DEPTH, max_children=FLOW_CHILDREN
        )
        if root is None:
            raise JobNotFoundError(queue, job_id)
        return self.page(
            request,
            "flow.html",
            {
                "root": root,
                # A DAG's shared job is drawn at each place, counted once.
                "total": len({(node.job.queue_name, node.job.id) for node in root.walk()}),
                "depth": FLOW_DEPTH,
                "max_children": FLOW_CHILDREN,
            },
        )

    async def flow_events(self, request: Request) -> Response:
        queue = self.required(request, "queue")
        job_id = self.required(request, "id")
        root = await FlowProducer(store=self.store).get_flow(
            job_id, queue, depth=FLOW_DEPTH, max_children=FLOW_CHILDREN
        )
        if root is None:
            raise JobNotFoundError(queue, job_id)
        return _EventStream(self.store, root)

    async def schedulers(self, request: Request) -> Response:
        queue = request.query_params.get("queue") or None
        found = await ops.list_schedulers(self.store, queue)
        rows = [
            {
                "scheduler": scheduler,
                "job": (scheduler.template or scheduler.flow or {}).get("name", ""),
                "flow": scheduler.flow is not None,
            }
            for scheduler in found
        ]
        return self.page(request, "schedulers.html", {"queue": queue, "rows": rows})

    async def metrics(self, request: Request) -> Response:
        from .metrics import CONTENT_TYPE, render_metrics

        return Response(await render_metrics(self.store), media_type=CONTENT_TYPE)

    # ------------------------------------------------------------ actions

    async def job_action(self, request: Request) -> Response:
        form = await self.form(request)
        queue = self.field(form, "queue")
        job_id = self.field(form, "id")
        action = self.field(form, "action")
        if action not in ops.JOB_ACTIONS:
            raise _HTTPProblem(400, f"unknown job action {action!r}")
        after = await ops.job_action(self.store, queue, job_id, action)
        if after is None:
            target = self.url(request, "/jobs", queue=queue, done=action)
        else:
            target = self.url(request, "/job", queue=queue, id=job_id, done=action)
        return RedirectResponse(target, status_code=303)

    async def queue_action(self, request: Request) -> Response:
        form = await self.form(request)
        queue = self.field(form, "queue")
        action = self.field(form, "action")
        if action not in DASHBOARD_QUEUE_ACTIONS:
            raise _HTTPProblem(400, f"unknown queue action {action!r}")
        options: dict[str, Any] = {}
        if action == "clean":
            state = form.get("state") or JobState.COMPLETED.value
            if state not in {s.value for s in CLEANABLE}:
                raise _HTTPProblem(400, f"clean removes completed or failed jobs, not {state!r}")
            try:
                grace = float(str(form.get("grace") or 0))
            except ValueError:
                raise _HTTPProblem(400, "grace must be a number of seconds") from None
            if not math.isfinite(grace) or grace < 0:
                raise _HTTPProblem(400, "grace must be a number of seconds, at least 0")
            options = {"state": state, "grace": grace}
        await ops.queue_action(self.store, queue, action, **options)
        back = form.get("back")
        if back == "jobs":
            target = self.url(request, "/jobs", queue=queue, done=action)
        else:
            target = self.url(request, "/", done=action)
        return RedirectResponse(target, status_code=303)


def _job_actions(job: Job) -> list[str]:
    """The actions the job's state allows, as buttons."""
    actions: list[str] = []
    if job.state is JobState.FAILED:
        actions.append("retry")
    if job.state is JobState.DELAYED:
        actions.append("promote")
    if not job.state.finished:
        actions.append("cancel")
    actions.append("remove")
    return actions


def create_app(
    store: StoreInterface,
    read_only: bool = False,
    auth: Auth | None = None,
    *,
    secret: bytes | None = None,
) -> Starlette:
    """The dashboard as an ASGI app on a connected ``store``.

    Serve it with any ASGI server, or mount it: ``app.mount("/conveyor",
    create_app(store))`` in FastAPI or Starlette. The store stays the caller's to connect
    and close.

    :param read_only: show everything but offer no action; POSTs are refused with 403.
    :param auth: ``auth(request) -> bool`` (or an ``async`` one) runs before every
        request, static files and event streams included; a false answer gets 403.
    :param secret: the key that signs the forms' CSRF tokens; a random one by default.
        Give the same secret to every process behind one address.
    """
    dash = _Dashboard(store, read_only=read_only, secret=secret or secrets.token_bytes(32))
    handle = dash.handle
    routes = [
        Route("/", handle(dash.queues), name="queues"),
        Route("/jobs", handle(dash.jobs), name="jobs"),
        Route("/job", handle(dash.job), name="job"),
        Route("/flow", handle(dash.flow), name="flow"),
        Route("/flow/events", handle(dash.flow_events), name="flow_events"),
        Route("/schedulers", handle(dash.schedulers), name="schedulers"),
        Route("/metrics", dash.metrics, name="metrics"),
        Route("/job/action", handle(dash.job_action), methods=["POST"], name="job_action"),
        Route("/queue/action", handle(dash.queue_action), methods=["POST"], name="queue_action"),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(_Guard, auth=auth)
    return app
