"""Stores found by URL: options in the query, and stores of other packages registered
through the ``conveyor.stores`` entry-point group working with ``open_store`` and the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor_core import open_store
from conveyor_core.registry import registered_schemes
from conveyor_stores import MemoryStore, PostgresStore, RedisStore, SQLiteStore

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_stores_register_their_schemes() -> None:
    assert {"memory", "sqlite", "postgresql", "postgres", "redis", "rediss"} <= set(
        registered_schemes()
    )


def test_sqlite_options_come_from_the_query() -> None:
    store = open_store("sqlite:///data/app.db?poll_interval=0.05&busy_timeout=3")
    assert isinstance(store, SQLiteStore)
    assert store.path == "data/app.db"
    assert store.poll_interval == 0.05 and store.busy_timeout == 3.0


def test_postgres_schema_is_a_store_option_not_a_server_setting() -> None:
    store = open_store("postgresql://app@db.example/jobs?schema=billing&sslmode=disable")
    assert isinstance(store, PostgresStore)
    assert store.schema == "billing"
    assert store.dsn == "postgresql://app@db.example/jobs?sslmode=disable"


def test_redis_prefix_is_a_store_option() -> None:
    store = open_store("redis://127.0.0.1:6379/0?prefix=billing")
    assert isinstance(store, RedisStore)
    assert store.prefix == "billing"
    assert "prefix" not in store.url


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("sqlite:///app.db?pol_interval=1", "'pol_interval'"),
        ("postgresql://app@db/jobs?shema=x", "'shema'"),
        ("redis://localhost/0?prefx=x&colour=red", "'prefx', 'colour'"),
        ("memory://?anything=1", "'anything'"),
    ],
)
def test_an_unknown_option_is_an_error_naming_it(url: str, named: str) -> None:
    with pytest.raises(ValueError, match="unknown store URL option") as info:
        open_store(url)
    assert named in str(info.value)


def test_an_invalid_option_value_names_the_option() -> None:
    with pytest.raises(ValueError, match=r"poll_interval='soon' is invalid"):
        open_store("sqlite:///app.db?poll_interval=soon")
    with pytest.raises(ValueError, match=r"durable_worker_commits='maybe' is invalid"):
        open_store("postgresql://db/jobs?durable_worker_commits=maybe")


def test_an_option_given_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="both in the URL and as an argument"):
        open_store("sqlite:///app.db?poll_interval=0.5", poll_interval=0.1)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ValueError) as info:
        open_store("nosuch://user:hunter2@host/db")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError) as info:
        open_store("postgresql://user:hunter2@host/db?shema=x")
    assert "hunter2" not in str(info.value)


def test_keyword_options_still_work() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemoryStore)
    assert open_store("redis://localhost/0", prefix="other").prefix == "other"  # type: ignore[attr-defined]


PLUGIN = textwrap.dedent(
    '''
    """A store of another package: SQLite behind its own URL scheme."""

    from conveyor_core.registry import url_options
    from conveyor_stores import SQLiteStore


    class MyStore(SQLiteStore):
        pass


    def open_mystore(url, **options):
        rest, kwargs = url_options(url, {"poll_interval": float}, options)
        return MyStore(rest.split(":///", 1)[1], **kwargs)
    '''
)


@pytest.fixture
def plugin_path(tmp_path: Path) -> Path:
    """A directory holding an installed distribution that registers ``mystore://``."""
    site = tmp_path / "site"
    (site / "mystore_plugin").mkdir(parents=True)
    (site / "mystore_plugin" / "__init__.py").write_text(PLUGIN, encoding="utf-8")
    info = site / "mystore_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mystore-plugin\nVersion: 1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[conveyor.stores]\nmystore = mystore_plugin:open_mystore\n", encoding="utf-8"
    )
    return site


def _run(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")])
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_registered_store_works_with_open_store_and_the_cli(
    plugin_path: Path, tmp_path: Path
) -> None:
    url = f"mystore:///{tmp_path / 'plugin.db'}?poll_interval=0.02"
    added = _run(
        [
            "-c",
            "import anyio\n"
            "from conveyor_core import Queue, open_store\n"
            "async def main():\n"
            f"    async with open_store({url!r}) as store:\n"
            "        print(type(store).__name__)\n"
            "        await Queue('invoices', store=store).add('bill', {'n': 1})\n"
            "anyio.run(main)\n",
        ],
        plugin_path,
        tmp_path,
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "MyStore"

    status = _run(["-m", "conveyor_core.cli", "status", "--store", url], plugin_path, tmp_path)
    assert status.returncode == 0, status.stderr
    assert "invoices" in status.stdout

    unknown = _run(
        ["-m", "conveyor_core.cli", "status", "--store", "nostore://x"], plugin_path, tmp_path
    )
    assert unknown.returncode != 0
    assert "mystore://" in unknown.stderr  # the registered schemes are listed


def test_the_conformance_command_runs_a_registered_store_by_url(
    plugin_path: Path, tmp_path: Path
) -> None:
    url = f"mystore:///{tmp_path / 'conformance.db'}"
    selection = "test_linear_flow or capabilities or shared or idle_wait"
    result = _run(
        ["-m", "conveyor_core.cli", "conformance", url, "--", "-q", "-k", selection],
        plugin_path,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
    assert " failed" not in result.stdout
