"""No message, log line or repr shows the password of a store URL: failed connections
to Redis and PostgreSQL (wrong port, wrong password, unreachable host), the stores'
reprs, ``open_store`` and the CLI."""

from __future__ import annotations

import logging
import socket
import traceback
import uuid
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from private_redis import private_redis

from conveyor_core import ConveyorError, StoreUnavailableError
from conveyor_core.cli import cli
from conveyor_core.redaction import redact_text, redact_url
from conveyor_stores import open_store

pytestmark = pytest.mark.anyio

UNREACHABLE = "192.0.2.1"
"""TEST-NET-1: routed nowhere, so connecting can only time out."""


@pytest.fixture
def secret() -> str:
    return f"pw-{uuid.uuid4().hex[:10]}%2Fx"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _all_text(exc: BaseException) -> str:
    """The exception's message and its whole printed traceback, causes included."""
    return str(exc) + "\n" + "".join(traceback.format_exception(exc))


async def _check_failed_open(url: str, password: str, caplog: pytest.LogCaptureFixture) -> str:
    caplog.set_level(logging.DEBUG)
    store = open_store(url)
    for shown in (repr(store), str(store)):
        assert password not in shown
    with pytest.raises(ConveyorError) as failed:
        await store.connect()
    await store.close()
    text = _all_text(failed.value)
    assert password not in text
    assert password.replace("%2F", "/") not in text
    assert password not in caplog.text and password.replace("%2F", "/") not in caplog.text
    code, output = await anyio.to_thread.run_sync(_cli, "status", "--store", url)
    assert code != 0 and "cannot open store" in output
    assert password not in output and password.replace("%2F", "/") not in output
    return text


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env={"CONVEYOR_STORE_URL": None})
    return result.exit_code, result.output


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
async def test_redis_on_a_wrong_port(
    scheme: str, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{scheme}://app:{secret}@127.0.0.1:{_closed_port()}/0"
    text = await _check_failed_open(url, secret, caplog)
    assert "app:***@127.0.0.1" in text


async def test_redis_unreachable_host(secret: str, caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:{secret}@{UNREACHABLE}:6379/0"
    store = open_store(url, socket_connect_timeout=1)
    assert secret not in repr(store)
    with pytest.raises(StoreUnavailableError) as failed:
        await store.connect()
    assert secret not in _all_text(failed.value)
    assert secret not in caplog.text


async def test_redis_with_a_wrong_password(
    tmp_path: Path, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    with private_redis(tmp_path, "--requirepass", "the-right-one") as server:
        url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        text = await _check_failed_open(url, secret, caplog)
        assert "WRONGPASS" in text or "invalid password" in text
        # Without any password the refusal is reported too, as a Conveyor error.
        await _check_failed_open(server.url, secret, caplog)


async def test_postgresql_on_a_wrong_port(secret: str, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("asyncpg")
    url = f"postgresql://postgres:{secret}@127.0.0.1:{_closed_port()}/test"
    await _check_failed_open(url, secret, caplog)


async def test_postgresql_unreachable_host(secret: str, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("asyncpg")
    url = f"postgresql://postgres:{secret}@{UNREACHABLE}:5432/test"
    store = open_store(url, timeout=1)
    assert secret not in repr(store)
    with pytest.raises(ConveyorError) as failed:
        await store.connect()
    await store.close()
    assert secret not in _all_text(failed.value)
    assert secret not in caplog.text


def test_an_unknown_scheme_does_not_show_the_password(secret: str) -> None:
    with pytest.raises(ValueError) as refused:
        open_store(f"mysql://root:{secret}@db/app")
    assert secret not in str(refused.value)
    assert "root:***@db" in str(refused.value)
    code, output = _cli("status", "--store", f"mysql://root:{secret}@db/app")
    assert code != 0 and secret not in output


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:p%40ss@h", "rediss://user:***@h"),
        ("redis://u:with@at@h/0", "redis://u:***@h/0"),
        ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        (
            "postgresql://app:s3cret@db/app?sslmode=require&password=s3cret",
            "postgresql://app:***@db/app?sslmode=require&password=***",
        ),
        ("host=db user=app password=s3cret dbname=app", "host=db user=app password=*** dbname=app"),
        ("host=db password='s3 cret' user=app", "host=db password=*** user=app"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://app@h:6379/0", "redis://app@h:6379/0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_the_password_anywhere() -> None:
    url = "postgresql://app:p%2Fw@db/app"
    text = "auth failed for p/w (p%2Fw) at postgresql://x:y@z/q, password=zz"
    masked = redact_text(text, url)
    assert "p/w" not in masked and "p%2Fw" not in masked
    assert "x:***@z" in masked and "password=***" in masked
