"""The stores that ship with Conveyor, and ``open_store`` to pick one by URL.

Store classes whose driver is an optional extra are imported on first use, so
``import conveyor_stores`` works with only the core installed. ``open_store`` is the
core's (:func:`conveyor_core.registry.open_store`); these stores register their URL
schemes with it as ``conveyor.stores`` entry points (see :mod:`.urls`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from conveyor_core.registry import open_store

from .memory import MemoryStore

if TYPE_CHECKING:
    from .postgres import PostgresStore
    from .redis import RedisStore
    from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "PostgresStore", "RedisStore", "SQLiteStore", "open_store"]

_LAZY = {
    "SQLiteStore": (".sqlite", "sqlite", "sqlite3"),
    "PostgresStore": (".postgres", "postgres", "asyncpg"),
    "RedisStore": (".redis", "redis", "redis"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'conveyor_stores' has no attribute {name!r}")
    return load_store_class(name)


def load_store_class(name: str) -> Any:
    """The store class ``name``, imported on first use; a missing driver is an
    ``ImportError`` naming the extra that installs it."""
    module_name, extra, driver = _LAZY[name]
    try:
        module = importlib.import_module(module_name, __name__)
    except ModuleNotFoundError as exc:
        if exc.name == driver:
            raise ImportError(
                f"{name} needs the {driver!r} package: pip install 'conveyor-queue[{extra}]'"
            ) from exc
        raise
    value = getattr(module, name)
    globals()[name] = value
    return value
