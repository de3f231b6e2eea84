"""The stores that ship with Conveyor, and ``open_store`` to pick one by URL.

Store classes whose driver is an optional extra are imported on first use, so
``import conveyor_stores`` works with only the core installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from conveyor_core.redaction import redact_url
from conveyor_core.store import StoreInterface

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

SUPPORTED_SCHEMES = (
    "memory://",
    "sqlite:///",
    "postgresql://",
    "postgres://",
    "redis://",
    "rediss://",
)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'conveyor_stores' has no attribute {name!r}")
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


def open_store(url: str, **options: Any) -> StoreInterface:
    """A store for ``url``, not yet connected: use ``async with open_store(url) as store``.

    ``memory://``, ``sqlite:///relative.db``, ``sqlite:////absolute.db``,
    ``sqlite:///:memory:``, ``postgresql://…`` (or ``postgres://…``), ``redis://…`` and
    ``rediss://…``. Extra keyword options go to the store's constructor.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(
            f"not a store URL: {redact_url(url)!r}; "
            f"supported schemes: {', '.join(SUPPORTED_SCHEMES)}"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStore(**options)
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.startswith(prefix) or len(url) == len(prefix):
            raise ValueError(
                f"a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db, "
                f"got {redact_url(url)!r}"
            )
        store: StoreInterface = __getattr__("SQLiteStore")(url[len(prefix) :], **options)
        return store
    if scheme in ("postgresql", "postgres"):
        store = __getattr__("PostgresStore")(url, **options)
        return store
    if scheme in ("redis", "rediss"):
        store = __getattr__("RedisStore")(url, **options)
        return store
    raise ValueError(
        f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; "
        f"supported schemes: {', '.join(SUPPORTED_SCHEMES)}"
    )
