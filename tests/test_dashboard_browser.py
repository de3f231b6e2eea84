"""The dashboard in a real headless browser: Playwright drives Debian's Chromium against
a uvicorn server started here on a free port, on a SQLite file shared with the test's
own store objects (and with in-process workers).

Without Playwright or Chromium these tests skip with the reason, unless
``CONVEYOR_REQUIRE_ALL_STORES=1`` is set: then that is a failure (see ``conftest.py``).
Set ``CONVEYOR_DASHBOARD_SCREENSHOTS=DIR`` to save a screenshot of each page in DIR.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import REQUIRE_ALL
from dashboard_seed import EVIL_NAME, EVIL_QUEUE, handle, seed_evil, seed_flow, seed_mail

from conveyor_core import Queue, Worker

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = os.environ.get("CONVEYOR_DASHBOARD_SCREENSHOTS")
WAIT_MS = 20_000
"""How long a condition may take to hold in the browser (a deadline, not a timing)."""


def _need_browser() -> None:
    problem: str | None = None
    try:
        import playwright.sync_api  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        problem = f"the {exc.name} package is not installed (pip install -e '.[dev]')"
    if problem is None and not os.access(CHROMIUM, os.X_OK):
        problem = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if problem is None:
        return
    message = f"browser tests need Playwright and Chromium: {problem}"
    if REQUIRE_ALL:
        pytest.fail(f"{message} (CONVEYOR_REQUIRE_ALL_STORES is set, so this is a failure)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@asynccontextmanager
async def sqlite_store(path: Path) -> AsyncIterator[Any]:
    from conveyor_stores import SQLiteStore

    store = SQLiteStore(path, poll_interval=0.05)
    await store.connect()
    try:
        yield store
    finally:
        await store.close()


def on_file(path: Path, fn: Any, *args: Any) -> Any:
    """Run ``fn(store, *args)`` on a store of its own on the SQLite file, on an event loop
    of its own thread (Playwright's sync API holds this thread's)."""
    outcome: dict[str, Any] = {}

    async def main() -> None:
        async with sqlite_store(path) as store:
            outcome["value"] = await fn(store, *args)

    def target() -> None:
        try:
            anyio.run(main)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@contextmanager
def serve(path: Path, **options: Any) -> Iterator[str]:
    """A uvicorn server of ``create_app`` on the SQLite file, in a thread; yields its URL."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from conveyor_core.dashboard import create_app
    from conveyor_stores import SQLiteStore

    store = SQLiteStore(path, poll_interval=0.05)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await store.connect()
        try:
            yield
        finally:
            await store.close()

    app = Starlette(routes=[Mount("/", create_app(store, **options))], lifespan=lifespan)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
    assert not thread.is_alive(), "the dashboard server did not stop"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "dashboard.db"


def shot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"dashboard-{name}.png"), full_page=True)


def test_browse_search_and_retry_a_failed_job(browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    mail = on_file(db, seed_mail)
    on_file(db, seed_evil)
    dialogs: list[str] = []
    with serve(db) as base:
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(base + "/")
        mail_row = page.locator("tr.queue-row", has=page.get_by_role("link", name="mail"))
        expect(mail_row.locator('a.count[data-state="failed"]')).to_have_text("1")
        expect(mail_row.locator('a.count[data-state="completed"]')).to_have_text("2")
        shot(page, "queues")

        page.get_by_role("link", name="mail", exact=True).click()
        expect(page.locator("tr.job-row")).to_have_count(5)
        page.get_by_label("search text").fill("bob@")
        page.get_by_role("button", name="search").click()
        expect(page.locator("tr.job-row")).to_have_count(1)
        expect(page.locator("a.job-link")).to_have_text(mail["completed_b"])
        page.get_by_label("search text").fill("")
        page.get_by_role("button", name="search").click()
        expect(page.locator("tr.job-row")).to_have_count(5)
        shot(page, "jobs")
        page.get_by_role("link", name=mail["completed"]).click()
        expect(page.locator("#job-result")).to_contain_text("ada@example.com")
        shot(page, "job")
        page.go_back()

        page.locator('.tabs a[data-state="failed"]').click()
        expect(page.locator("tr.job-row")).to_have_count(1)
        page.locator("a.job-link").click()
        expect(page.locator("#job-state")).to_have_text("failed")
        expect(page.locator("#job-reason")).to_have_text("refused eve@example.com")
        page.get_by_role("button", name="retry").click()
        expect(page.locator("#job-state")).to_have_text("waiting")
        expect(page.get_by_role("status")).to_have_text("The job is queued to run again.")

        evil = page.request.get(base + "/")  # the markup job's queue is listed too
        assert evil.ok
        page.goto(base + "/")
        page.get_by_role("link", name=EVIL_QUEUE).click()
        page.locator("a.job-link").click()
        expect(page.locator("#job-name")).to_have_text(EVIL_NAME)
        page.close()
    assert dialogs == []  # no stored markup ran as script
    assert on_file(db, _state_of, "mail", mail["failed"]) == "waiting"


async def _state_of(store: Any, queue: str, job_id: str) -> str | None:
    job = await Queue(queue, store=store).get_job(job_id)
    return None if job is None else job.state.value


async def _run_flow(store: Any, root_id: str) -> None:
    reports = Queue("reports", store=store)
    async with (
        Worker("parts", handle, store=store, drain_delay=0.05),
        Worker("reports", handle, store=store, drain_delay=0.05),
    ):
        root = await reports.get_job(root_id)
        assert root is not None
        await root.wait_until_finished(timeout=30)


def test_a_flow_tree_turns_green_as_workers_run(browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    root_id = on_file(db, seed_flow)
    with serve(db) as base:
        page = browser.new_page(viewport={"width": 900, "height": 500})
        page.goto(f"{base}/flow?queue=reports&id={root_id}")
        nodes = page.locator("#flow-tree .node")
        expect(nodes).to_have_count(4)
        expect(page.locator("#live")).to_have_attribute("data-live", "live", timeout=WAIT_MS)
        expect(nodes.first).to_have_attribute("data-state", "waiting-children")
        workers = threading.Thread(target=on_file, args=(db, _run_flow, root_id))
        workers.start()
        try:
            for index in range(4):
                expect(nodes.nth(index)).to_have_attribute(
                    "data-state", "completed", timeout=WAIT_MS
                )
            badge = nodes.first.locator(".state")
            expect(badge).to_have_text("completed")
            expect(badge).to_have_css("background-color", "rgb(220, 252, 231)")
            shot(page, "flow")
        finally:
            workers.join(timeout=60)
        page.close()
    assert not workers.is_alive()


async def _schedule(store: Any) -> str:
    mail = Queue("mail", store=store)
    await mail.upsert_job_scheduler(
        "morning-digest", cron="0 7 * * *", tz="Europe/Paris", template={"name": "digest"}
    )
    ping = await mail.upsert_job_scheduler("ping", every=3600, template={"name": "ping"})
    assert ping.next_run_at is not None
    return ping.next_run_at.isoformat(sep=" ", timespec="milliseconds")


def test_the_schedulers_page_lists_each_scheduler_and_its_next_run(browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    on_file(db, seed_mail)
    next_ping = on_file(db, _schedule)
    with serve(db) as base:
        page = browser.new_page(viewport={"width": 1100, "height": 400})
        page.goto(base + "/")
        page.get_by_role("link", name="Schedulers").click()
        rows = page.locator("tr.scheduler-row")
        expect(rows).to_have_count(2)
        ping = page.locator('tr.scheduler-row[data-scheduler="ping"]')
        expect(ping.locator(".pattern")).to_have_text("every 3600s")
        expect(ping.locator(".next-run")).to_have_text(next_ping)
        digest = page.locator('tr.scheduler-row[data-scheduler="morning-digest"]')
        expect(digest.locator(".pattern")).to_have_text("0 7 * * * Europe/Paris")
        shot(page, "schedulers")
        digest.get_by_role("link", name="mail").click()
        expect(page.locator("#queue-name")).to_have_text("mail")
        page.close()


def test_read_only_offers_no_action(browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    mail = on_file(db, seed_mail)
    with serve(db, read_only=True) as base:
        page = browser.new_page()
        page.goto(f"{base}/job?queue=mail&id={mail['failed']}")
        expect(page.locator("#job-state")).to_have_text("failed")
        expect(page.locator("#read-only")).to_be_visible()
        expect(page.get_by_role("button")).to_have_count(0)
        page.goto(base + "/")
        expect(page.locator("tr.queue-row")).to_have_count(1)
        expect(page.get_by_role("button")).to_have_count(0)
        page.close()


def test_auth_keeps_out_a_browser_without_the_header(browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    on_file(db, seed_mail)
    with serve(db, auth=lambda request: request.headers.get("x-user") == "ops") as base:
        stranger = browser.new_context()
        answer = stranger.new_page().goto(base + "/")
        assert answer is not None and answer.status == 403
        stranger.close()
        operator = browser.new_context(extra_http_headers={"x-user": "ops"})
        page = operator.new_page()
        answer = page.goto(base + "/")
        assert answer is not None and answer.status == 200
        expect(page.locator("tr.queue-row")).to_have_count(1)
        # The stylesheet passed the same guard: the header is drawn dark.
        expect(page.locator("header")).to_have_css("background-color", "rgb(17, 24, 39)")
        operator.close()


def test_screenshots_are_small_pngs() -> None:
    images = Path(__file__).resolve().parent.parent / "docs" / "images"
    shots = sorted(images.glob("dashboard-*.png"))
    assert [p.name for p in shots] == [
        "dashboard-flow.png",
        "dashboard-job.png",
        "dashboard-jobs.png",
        "dashboard-queues.png",
        "dashboard-schedulers.png",
    ]
    for image in shots:
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert image.stat().st_size < 200_000, image
    assert re.search(r"dashboard-flow\.png", (images.parent / "dashboard.md").read_text())


def test_cancel_a_waiting_job_from_its_page(browser: Any, db: Path) -> None:
    from playwright.sync_api import expect

    mail = on_file(db, seed_mail)
    with serve(db) as base:
        page = browser.new_page(viewport={"width": 1200, "height": 700})
        page.goto(f"{base}/job?queue=mail&id={mail['waiting']}")
        expect(page.locator("#job-state")).to_have_text("waiting")
        page.get_by_role("button", name="cancel").click()
        expect(page.locator("#job-state")).to_have_text("failed")
        expect(page.locator("#job-reason")).to_have_text("cancelled")
        expect(page.get_by_role("status")).to_have_text(
            "The job and its unfinished descendants are cancelled."
        )
        expect(page.get_by_role("button", name="cancel")).to_have_count(0)
        page.close()
    assert on_file(db, _state_of, "mail", mail["waiting"]) == "failed"
