"""At connect, ``RedisStore`` warns once per server when the server's settings can lose
jobs: nothing kept on disk, or keys evicted when memory is full."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from private_redis import private_redis

from conveyor_core import Queue, StoreConfigurationWarning
from conveyor_stores.redis import RedisStore

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


def _configuration_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, StoreConfigurationWarning)]


async def _connect(url: str) -> list[str]:
    """Connect and disconnect a store; the configuration warnings it issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with RedisStore(url, prefix="settings") as store:
            await Queue("q", store=store).add("job", {})
    return _configuration_warnings(caught)


async def test_a_server_that_keeps_nothing_and_evicts_is_warned_about_once(
    tmp_path: Path,
) -> None:
    with private_redis(tmp_path, "--maxmemory-policy", "allkeys-lru") as server:
        first = await _connect(server.url)
        assert len(first) == 1
        assert "keeps nothing on disk" in first[0] and "appendonly yes" in first[0]
        assert "allkeys-lru" in first[0] and "noeviction" in first[0]
        assert f"127.0.0.1:{server.port}" in first[0]
        # Once per server and process, whichever database the URL names.
        assert await _connect(server.url) == []
        assert await _connect(server.url.replace("/0", "/1")) == []


async def test_a_server_without_persistence_alone_is_warned_about(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--maxmemory-policy", "noeviction") as server:
        (message,) = await _connect(server.url)
        assert "keeps nothing on disk" in message and "maxmemory-policy" not in message


async def test_a_durable_non_evicting_server_is_not_warned_about(tmp_path: Path) -> None:
    with private_redis(
        tmp_path, "--appendonly", "yes", "--maxmemory-policy", "noeviction"
    ) as server:
        assert await _connect(server.url) == []


async def test_a_server_with_config_disabled_is_used_without_the_check(tmp_path: Path) -> None:
    with private_redis(tmp_path, "--rename-command", "CONFIG", "") as server:
        assert await _connect(server.url) == []
