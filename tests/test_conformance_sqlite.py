"""The conformance suite against ``SQLiteStore``.

``second_store`` opens another ``SQLiteStore`` on the same file, so events and racing
workers cross store objects the way they cross processes sharing one SQLite file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor_core.conformance import StoreConformance
from conveyor_stores.sqlite import SQLiteStore


class TestSQLiteStore(StoreConformance):
    @pytest.fixture
    async def store(self, sqlite_path: str) -> AsyncIterator[SQLiteStore]:
        async with SQLiteStore(sqlite_path) as store:
            yield store

    @pytest.fixture
    async def second_store(self, sqlite_path: str) -> AsyncIterator[SQLiteStore]:
        async with SQLiteStore(sqlite_path) as store:
            yield store
