"""``open_store`` picks a store by URL and names the supported schemes on a bad one."""

from __future__ import annotations

import pytest

from conveyor_stores import MemoryStore, SQLiteStore, open_store


def test_memory_url_gives_a_memory_store() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)


def test_sqlite_urls_give_relative_and_absolute_paths() -> None:
    relative = open_store("sqlite:///data/app.db")
    absolute = open_store("sqlite:////var/lib/app.db")
    assert isinstance(relative, SQLiteStore) and relative.path == "data/app.db"
    assert isinstance(absolute, SQLiteStore) and absolute.path == "/var/lib/app.db"


@pytest.mark.parametrize("url", ["bogus://x", "mysql://root@localhost/db", "http://example"])
def test_unknown_scheme_names_the_supported_ones(url: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(url)
    message = str(info.value)
    assert "unknown store URL scheme" in message
    for scheme in ("memory://", "sqlite://", "postgresql://", "redis://"):
        assert scheme in message


@pytest.mark.parametrize("url", ["", "conveyor.db", "sqlite://relative.db", "sqlite:///"])
def test_malformed_url_is_a_clear_error(url: str) -> None:
    with pytest.raises(ValueError, match=r"sqlite|URL"):
        open_store(url)


@pytest.mark.anyio
async def test_memory_store_from_url_works_as_a_context_manager() -> None:
    from conveyor_core import Queue

    async with open_store("memory://") as store:
        job = await Queue("q", store=store).add("hello", {"x": 1})
        assert (await store.get_counts("q"))[job.state] == 1
