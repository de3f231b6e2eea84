"""The conformance suite against ``MemoryStore``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor_core.conformance import StoreConformance, run
from conveyor_stores import MemoryStore


class TestMemoryStore(StoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[MemoryStore]:
        async with MemoryStore() as store:
            yield store


def test_run_checks_a_store_factory_given_by_path() -> None:
    """``run`` (behind ``conveyor conformance``) passes a good store, fails a broken one."""
    selection = ["-q", "-k", "test_linear_flow or test_the_store_refuses_a_wrong_lock_token"]
    assert run("conveyor_stores:MemoryStore", pytest_args=selection) == 0
    assert run("broken_stores:IgnoresLockTokens", pytest_args=selection) == 1
    with pytest.raises(ValueError, match="module:callable"):
        run("conveyor_stores.MemoryStore")
