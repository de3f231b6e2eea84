"""The dashboard's pages, actions and guards, through Starlette's TestClient on a
MemoryStore (the store lives on the client's event loop)."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from html import unescape
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from dashboard_seed import EVIL_DATA, EVIL_NAME, EVIL_QUEUE, seed_evil, seed_flow, seed_mail
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

from conveyor_core import FlowProducer, JobState, Queue
from conveyor_core.dashboard import create_app
from conveyor_stores import MemoryStore

T = TypeVar("T")
SECRET = b"a secret only these tests know"


class Dashboard:
    """A TestClient on a dashboard app, and a way to run coroutines on its loop."""

    def __init__(self, client: TestClient, store: MemoryStore) -> None:
        self.client = client
        self.store = store

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        assert self.client.portal is not None
        return self.client.portal.call(fn, *args)

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params=params)

    def token(self, path: str = "/", **params: Any) -> str:
        """The CSRF token of the forms on a page (the cookie comes with it)."""
        page = self.get(path, **params)
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found, page.text
        return found.group(1)

    def job_state(self, queue: str, job_id: str) -> JobState | None:
        async def read() -> JobState | None:
            job = await Queue(queue, store=self.store).get_job(job_id)
            return None if job is None else job.state

        return self.call(read)


@contextmanager
def open_dashboard(**options: Any) -> Iterator[Dashboard]:
    store = MemoryStore()
    with TestClient(create_app(store, **options), follow_redirects=False) as client:
        dash = Dashboard(client, store)
        dash.call(store.connect)
        yield dash
        dash.call(store.close)


@pytest.fixture
def dash() -> Iterator[Dashboard]:
    with open_dashboard() as opened:
        yield opened


@pytest.fixture
def mail(dash: Dashboard) -> dict[str, str]:
    return dash.call(seed_mail, dash.store)


def text_of(html: str) -> str:
    """The page's visible text, roughly: tags dropped, entities decoded."""
    return unescape(re.sub(r"<[^>]+>", " ", html))


# ---------------------------------------------------------------------- pages


def test_queues_page_shows_counts_per_state_and_the_last_hour(
    dash: Dashboard, mail: dict[str, str]
) -> None:
    page = dash.get("/")
    assert page.status_code == 200
    row = re.search(r'<tr class="queue-row" data-queue="mail">.*?</tr>', page.text, re.S)
    assert row, page.text
    counts = dict(re.findall(r'data-state="([a-z-]+)" href="[^"]*">(\d+)<', row.group(0)))
    assert counts == {
        "waiting": "1",
        "delayed": "1",
        "active": "0",
        "completed": "2",
        "failed": "1",
        "waiting-children": "0",
    }
    totals = re.findall(r'<span class="total (completed|failed)">(\d+)</span>', row.group(0))
    assert totals == [("completed", "2"), ("failed", "1")]
    lines = re.findall(r'<polyline class="(?:completed|failed)" points="([^"]+)"', row.group(0))
    assert len(lines) == 2 and all(len(line.split()) == 60 for line in lines)


def test_jobs_page_filters_by_state_text_and_name(dash: Dashboard, mail: dict[str, str]) -> None:
    every = dash.get("/jobs", queue="mail")
    assert every.status_code == 200
    assert all(job_id in every.text for job_id in mail.values())
    failed = dash.get("/jobs", queue="mail", state="failed").text
    assert mail["failed"] in failed and mail["completed"] not in failed
    assert "refused eve@example.com" in failed  # a failed job shows its reason
    by_text = dash.get("/jobs", queue="mail", text="bob@").text
    assert mail["completed_b"] in by_text and mail["completed"] not in by_text
    by_name = dash.get("/jobs", queue="mail", name="welcome").text
    assert {mail["completed"], mail["completed_b"]} <= set(re.findall(r"[0-9a-f]{32}", by_name))
    assert mail["failed"] not in by_name


def test_jobs_page_walks_the_queue_by_cursor(dash: Dashboard, mail: dict[str, str]) -> None:
    seen: list[str] = []
    url = "/jobs?queue=mail&limit=2"
    for _ in range(10):
        page = dash.client.get(url).text
        seen += re.findall(r'class="job-link" href="[^"]*">([0-9a-f]{32})<', page)
        more = re.search(r'id="next-page" href="([^"]+)"', page)
        if more is None:
            break
        url = unescape(more.group(1))
    assert sorted(seen) == sorted(mail.values())  # every job once, over three pages


def test_job_page_shows_data_result_logs_progress_and_timings(
    dash: Dashboard, mail: dict[str, str]
) -> None:
    done = text_of(dash.get("/job", queue="mail", id=mail["completed"]).text)
    for expected in ("ada@example.com", "sent_to", "working on welcome", '"done": 1'):
        assert expected in done
    assert "started" in done and "finished" in done and "ran " in done
    failed = dash.get("/job", queue="mail", id=mail["failed"]).text
    assert 'id="job-stacktrace"' in failed and "RuntimeError" in failed
    assert "refused eve@example.com" in failed


def test_job_page_links_parent_and_children(dash: Dashboard) -> None:
    root_id = dash.call(seed_flow, dash.store)
    root = dash.get("/job", queue="reports", id=root_id).text
    children = re.findall(r'class="child-link" href="([^"]+)">(part-\d)<', root)
    assert [name for _, name in children] == ["part-0", "part-1", "part-2"]
    assert 'id="flow-link"' in root
    child = dash.client.get(unescape(children[0][0])).text
    parent_link = re.search(r'id="parent-link" href="([^"]+)">report<', child)
    assert parent_link, child
    assert root_id in dash.client.get(unescape(parent_link.group(1))).text


def test_flow_page_draws_the_tree(dash: Dashboard) -> None:
    root_id = dash.call(seed_flow, dash.store)
    page = dash.get("/flow", queue="reports", id=root_id).text
    nodes = re.findall(
        r'class="node" data-queue="([^"]+)" data-id="[^"]+" data-state="([^"]+)"', page
    )
    assert nodes == [("reports", "waiting-children")] + [("parts", "waiting")] * 3


async def _seed_diamond(store: MemoryStore) -> str:
    jobs = await FlowProducer(store=store).add_dag(
        [
            {"id": "base", "name": "base", "queue_name": "parts"},
            {"id": "left", "name": "left", "queue_name": "parts", "depends_on": ["base"]},
            {"id": "right", "name": "right", "queue_name": "parts", "depends_on": ["base"]},
            {"id": "top", "name": "top", "queue_name": "reports", "depends_on": ["left", "right"]},
        ]
    )
    return jobs["top"].id


def test_flow_page_draws_a_dag_with_its_shared_job_marked(dash: Dashboard) -> None:
    top_id = dash.call(_seed_diamond, dash.store)
    response = dash.get("/flow", queue="reports", id=top_id)
    assert response.status_code == 200
    page = response.text
    assert "4 jobs" in text_of(page)
    assert page.count("shared: drawn above") == 1
    assert len(re.findall(r'class="node" data-queue="parts"', page)) == 4  # base twice


def test_missing_jobs_and_bad_parameters_get_error_pages(dash: Dashboard) -> None:
    missing = dash.get("/job", queue="mail", id="nope")
    assert missing.status_code == 404 and "nope" in text_of(missing.text)
    assert dash.get("/flow", queue="mail", id="nope").status_code == 404
    assert dash.get("/job", queue="mail").status_code == 400
    bad_state = dash.get("/jobs", queue="mail", state="sleeping")
    assert bad_state.status_code == 400 and "sleeping" in text_of(bad_state.text)


def test_metrics_are_in_prometheus_text_format(dash: Dashboard, mail: dict[str, str]) -> None:
    metrics = dash.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'conveyor_jobs{queue="mail",state="completed"} 2.0' in text
    assert 'conveyor_jobs{queue="mail",state="failed"} 1.0' in text
    assert 'conveyor_jobs_finished_last_hour{outcome="completed",queue="mail"} 2.0' in text
    assert 'conveyor_jobs_finished_window{outcome="failed",queue="mail"} 1.0' in text
    assert 'conveyor_queue_paused{queue="mail"} 0.0' in text


def test_schedulers_page_lists_each_queues_schedulers_and_next_run(
    dash: Dashboard, mail: dict[str, str]
) -> None:
    async def schedule() -> dict[str, Any]:
        mail_queue = Queue("mail", store=dash.store)
        digest = await mail_queue.upsert_job_scheduler(
            "digest",
            cron="0 7 * * *",
            tz="Europe/Paris",
            template={"name": "send-digest"},
            limit=30,
        )
        ping = await mail_queue.upsert_job_scheduler(
            "<b>ping</b>", every=90, template={"name": "ping"}
        )
        # A queue that holds no job yet: listed only when named.
        quiet = await Queue("quiet", store=dash.store).upsert_job_scheduler(
            "nightly", cron="0 3 * * *", template={"name": "sweep"}
        )
        return {"digest": digest, "ping": ping, "quiet": quiet}

    made = dash.call(schedule)
    page = dash.get("/schedulers")
    assert page.status_code == 200
    rows = re.findall(
        r'<tr class="scheduler-row" data-scheduler="([^"]*)">(.*?)</tr>', page.text, re.S
    )
    assert [unescape(row_id) for row_id, _ in rows] == ["<b>ping</b>", "digest"]
    assert "<b>ping</b>" not in page.text  # escaped, like every stored string
    cells = {unescape(row_id): text_of(row) for row_id, row in rows}
    digest = made["digest"]
    assert "0 7 * * *" in cells["digest"] and "Europe/Paris" in cells["digest"]
    assert "send-digest" in cells["digest"] and "0 of 30" in cells["digest"]
    assert digest.next_run_at.isoformat(sep=" ", timespec="milliseconds") in cells["digest"]
    assert "every 90s" in cells["<b>ping</b>"]
    assert "nightly" not in text_of(page.text)

    quiet = dash.get("/schedulers", queue="quiet")
    assert quiet.status_code == 200
    (row,) = re.findall(
        r'<tr class="scheduler-row" data-scheduler="nightly">(.*?)</tr>', quiet.text, re.S
    )
    assert "sweep" in text_of(row) and "digest" not in quiet.text
    jobs_page = dash.get("/jobs", queue="mail")
    assert 'href="/schedulers?queue=mail"' in jobs_page.text
    assert dash.get("/schedulers", queue="x\x00").status_code == 400


# ---------------------------------------------------------------------- escaping


def test_stored_markup_is_shown_as_text_on_every_page(dash: Dashboard) -> None:
    job_id = dash.call(seed_evil, dash.store)
    pages = [
        dash.get("/"),
        dash.get("/jobs", queue=EVIL_QUEUE),
        dash.get("/jobs", queue=EVIL_QUEUE, text=EVIL_DATA),
        dash.get("/job", queue=EVIL_QUEUE, id=job_id),
        dash.get("/flow", queue=EVIL_QUEUE, id=job_id),
        dash.get("/job", queue=EVIL_QUEUE, id=EVIL_NAME),  # the error page quotes it
    ]
    for page in pages:
        for markup in ("<script>alert", "<img src=x", "<svg onload"):
            assert markup not in page.text, (page.url, markup)
    job_page = text_of(pages[3].text)
    assert EVIL_NAME in job_page and EVIL_DATA in job_page and EVIL_QUEUE in job_page
    assert EVIL_NAME in text_of(pages[0].text + pages[1].text) or EVIL_QUEUE in text_of(
        pages[0].text
    )
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1].text


# ---------------------------------------------------------------------- actions


def test_retry_from_the_job_page_runs_a_failed_job_again(
    dash: Dashboard, mail: dict[str, str]
) -> None:
    token = dash.token("/job", queue="mail", id=mail["failed"])
    form = {"csrf": token, "queue": "mail", "id": mail["failed"], "action": "retry"}
    answer = dash.client.post("/job/action", data=form)
    assert answer.status_code == 303
    assert dash.job_state("mail", mail["failed"]) is JobState.WAITING
    shown = dash.client.get(answer.headers["location"]).text
    assert "The job is queued to run again." in shown and 'id="job-state">waiting<' in shown


def test_promote_and_remove(dash: Dashboard, mail: dict[str, str]) -> None:
    token = dash.token()
    post = dash.client.post
    promote = {"csrf": token, "queue": "mail", "id": mail["delayed"], "action": "promote"}
    assert post("/job/action", data=promote).status_code == 303
    assert dash.job_state("mail", mail["delayed"]) is JobState.WAITING
    remove = {"csrf": token, "queue": "mail", "id": mail["waiting"], "action": "remove"}
    assert post("/job/action", data=remove).status_code == 303
    assert dash.job_state("mail", mail["waiting"]) is None
    again = post("/job/action", data={**promote, "id": mail["completed"]})
    assert again.status_code == 409  # a completed job cannot be promoted: the page says why
    assert dash.job_state("mail", mail["completed"]) is JobState.COMPLETED


def test_cancel_from_the_job_page_fails_an_unfinished_job(
    dash: Dashboard, mail: dict[str, str]
) -> None:
    page = dash.get("/job", queue="mail", id=mail["waiting"]).text
    assert 'name="action" value="cancel"' in page
    finished = dash.get("/job", queue="mail", id=mail["completed"]).text
    assert 'name="action" value="cancel"' not in finished
    token = dash.token("/job", queue="mail", id=mail["waiting"])
    form = {"csrf": token, "queue": "mail", "id": mail["waiting"], "action": "cancel"}
    answer = dash.client.post("/job/action", data=form)
    assert answer.status_code == 303
    assert dash.job_state("mail", mail["waiting"]) is JobState.FAILED
    shown = dash.client.get(answer.headers["location"]).text
    assert "unfinished descendants are cancelled" in shown
    assert 'id="job-state">failed<' in shown and "cancelled" in shown
    refused = dash.client.post("/job/action", data={**form, "csrf": "0" * 64})
    assert refused.status_code == 403


def test_queue_actions_pause_resume_retry_failed_and_clean(
    dash: Dashboard, mail: dict[str, str]
) -> None:
    token = dash.token()

    def act(action: str, **extra: str) -> Any:
        form = {"csrf": token, "queue": "mail", "action": action, **extra}
        return dash.client.post("/queue/action", data=form)

    assert act("pause").status_code == 303
    assert "paused" in dash.get("/jobs", queue="mail").text
    assert dash.call(Queue("mail", store=dash.store).is_paused) is True
    assert act("resume").status_code == 303
    assert dash.call(Queue("mail", store=dash.store).is_paused) is False
    assert act("retry-failed").status_code == 303
    assert dash.job_state("mail", mail["failed"]) is JobState.WAITING
    assert act("clean", state="completed", grace="3600").status_code == 303
    assert dash.job_state("mail", mail["completed"]) is JobState.COMPLETED  # too recent
    assert act("clean", state="completed", grace="0").status_code == 303
    assert dash.job_state("mail", mail["completed"]) is None
    assert act("obliterate").status_code == 400  # not offered by the dashboard
    assert act("clean", state="active").status_code == 400


def test_a_post_without_the_right_token_is_refused(dash: Dashboard, mail: dict[str, str]) -> None:
    form = {"queue": "mail", "id": mail["failed"], "action": "retry"}
    assert dash.client.post("/job/action", data=form).status_code == 403  # no cookie, no token
    token = dash.token()
    refused = dash.client.post("/job/action", data={**form, "csrf": "0" * 64})
    assert refused.status_code == 403
    assert "security token" in text_of(refused.text)
    with open_dashboard() as other:  # another app: another secret
        other.call(seed_mail, other.store)
        foreign = other.token()
    assert dash.client.post("/job/action", data={**form, "csrf": foreign}).status_code == 403
    dash.client.cookies.clear()
    assert dash.client.post("/job/action", data={**form, "csrf": token}).status_code == 403
    assert dash.job_state("mail", mail["failed"]) is JobState.FAILED
    queue_form = {"queue": "mail", "action": "pause", "csrf": "x"}
    assert dash.client.post("/queue/action", data=queue_form).status_code == 403
    assert dash.call(Queue("mail", store=dash.store).is_paused) is False


def test_the_token_cookie_is_strict_and_http_only(dash: Dashboard) -> None:
    cookie = dash.get("/").headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")


# ---------------------------------------------------------------------- read-only


def test_read_only_shows_no_action_and_refuses_posts() -> None:
    with open_dashboard(read_only=True, secret=SECRET) as dash:
        check_read_only(dash)


def check_read_only(dash: Dashboard) -> None:
    mail = dash.call(seed_mail, dash.store)
    for page in (
        dash.get("/"),
        dash.get("/jobs", queue="mail"),
        dash.get("/job", queue="mail", id=mail["failed"]),
    ):
        assert page.status_code == 200
        assert '<form method="post"' not in page.text and "<button" not in page.text.replace(
            '<button type="submit">search</button>', ""
        )
        assert 'id="read-only"' in page.text
    # A token as a form would carry it (HMAC-SHA256 of the cookie under the secret):
    nonce = dash.client.cookies["conveyor_csrf"]
    token = hmac.new(SECRET, nonce.encode(), hashlib.sha256).hexdigest()
    form = {"csrf": token, "queue": "mail", "id": mail["failed"], "action": "retry"}
    assert dash.client.post("/job/action", data=form).status_code == 403
    pause = {"csrf": token, "queue": "mail", "action": "pause"}
    assert dash.client.post("/queue/action", data=pause).status_code == 403
    assert dash.job_state("mail", mail["failed"]) is JobState.FAILED


# ---------------------------------------------------------------------- auth


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_auth_guards_every_route(kind: str) -> None:
    def allow(request: Request) -> bool:
        return request.headers.get("x-user") == "ops"

    async def allow_async(request: Request) -> bool:
        return allow(request)

    with open_dashboard(auth=allow if kind == "sync" else allow_async) as dash:
        check_guarded(dash)


def check_guarded(dash: Dashboard) -> None:
    mail = dash.call(seed_mail, dash.store)
    routes = [
        ("GET", "/"),
        ("GET", "/jobs?queue=mail"),
        ("GET", f"/job?queue=mail&id={mail['failed']}"),
        ("GET", f"/flow?queue=mail&id={mail['failed']}"),
        ("GET", f"/flow/events?queue=mail&id={mail['failed']}"),
        ("GET", "/metrics"),
        ("GET", "/schedulers"),
        ("GET", "/static/dashboard.css"),
        ("GET", "/static/dashboard.js"),
        ("POST", "/job/action"),
        ("POST", "/queue/action"),
    ]
    for method, path in routes:
        answer = dash.client.request(method, path)
        assert answer.status_code == 403, (method, path)
    assert dash.client.get("/", headers={"x-user": "ops"}).status_code == 200
    css = dash.client.get("/static/dashboard.css", headers={"x-user": "ops"})
    assert css.status_code == 200 and ".state-failed" in css.text


# ---------------------------------------------------------------------- mounting


def test_mounted_under_a_prefix_every_link_stays_under_it() -> None:
    store = MemoryStore()
    outer = Starlette(routes=[Mount("/conveyor", app=create_app(store))])
    with TestClient(outer, follow_redirects=False) as client:
        assert client.portal is not None
        client.portal.call(store.connect)
        mail = client.portal.call(seed_mail, store)
        home = client.get("/conveyor/")
        assert home.status_code == 200
        links = re.findall(r'(?:href|action|src)="([^"]+)"', home.text)
        assert links and all(link.startswith("/conveyor/") for link in links), links
        assert "/conveyor" in home.headers["set-cookie"]
        jobs = client.get(unescape(re.findall(r'class="queue-link" href="([^"]+)"', home.text)[0]))
        assert mail["failed"] in jobs.text
        assert client.get("/conveyor/static/dashboard.js").status_code == 200
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', home.text)
        assert token
        form = {"csrf": token.group(1), "queue": "mail", "action": "pause"}
        answer = client.post("/conveyor/queue/action", data=form)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/conveyor/")
        client.portal.call(store.close)


# ---------------------------------------------------------------------- command line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fetch(url: str, deadline: float) -> str:
    """The page at ``url`` once the server answers (it is starting up)."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return str(answer.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.parametrize("read_only", [False, True])
def test_conveyor_dashboard_serves_the_store(tmp_path: Path, read_only: bool) -> None:
    from conveyor_stores import SQLiteStore

    path = tmp_path / "app.db"

    async def seed() -> dict[str, str]:
        async with SQLiteStore(path) as store:
            return await seed_mail(store)

    mail = anyio.run(seed)
    port = _free_port()
    command = [sys.executable, "-m", "conveyor_core.cli", "dashboard"]
    command += ["--store", f"sqlite:///{path}", "--port", str(port)]
    if read_only:
        command.append("--read-only")
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        page = _fetch(f"http://127.0.0.1:{port}/jobs?queue=mail", time.monotonic() + 30)
        assert mail["failed"] in page and "refused eve@example.com" in page
        assert ('method="post"' in page) is not read_only
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    assert f"at http://127.0.0.1:{port}/" in stderr


BENCH = [sys.executable, "-m", "benchmarks"]


def test_the_dashboard_benchmark_prints_one_line_per_page() -> None:
    repo = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [*BENCH, "--store", "sqlite", "--workload", "dashboard", "--search-jobs", "300"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["page"] for line in lines] == [
        "queues",
        "jobs, first page",
        "jobs, 21st page",
        "jobs, waiting",
        "jobs, by name",
        "jobs, rare text",
        "job",
        "metrics",
        "schedulers",
    ]
    for line in lines:
        assert line["workload"] == "dashboard" and line["store"] == "sqlite"
        assert line["n"] == 300 and line["bytes"] > 0 and line["seconds"] > 0
