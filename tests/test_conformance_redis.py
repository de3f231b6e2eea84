"""The conformance suite against ``RedisStore``, with a second store object on the same
prefix so events and worker races cross store objects as they cross processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from conveyor_core.conformance import StoreConformance
from conveyor_stores.redis import RedisStore


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key of the test's prefix."""
    async with redis.asyncio.Redis.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])


class TestRedisStoreConformance(StoreConformance):
    @pytest.fixture
    async def store(self, redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
        async with RedisStore(redis_url, prefix=redis_prefix) as store:
            try:
                yield store
            finally:
                await delete_prefix(redis_url, redis_prefix)

    @pytest.fixture
    async def second_store(
        self, store: RedisStore, redis_url: str, redis_prefix: str
    ) -> AsyncIterator[RedisStore]:
        async with RedisStore(redis_url, prefix=redis_prefix) as second:
            yield second
