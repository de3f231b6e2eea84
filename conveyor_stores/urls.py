"""The URL factories of the shipped stores, registered as ``conveyor.stores`` entry points.

Each takes the URL (options in its query) and keyword options, and returns a store that
is not connected yet. Store classes are imported only here, on first use, so a missing
driver is an ``ImportError`` that names the extra to install.
"""

from __future__ import annotations

from typing import Any

from conveyor_core.registry import parse_bool, url_options
from conveyor_core.store import StoreInterface

__all__ = ["open_memory", "open_postgres", "open_redis", "open_sqlite"]

_POSTGRES_DRIVER_PARAMETERS = frozenset(
    {
        "application_name",
        "database",
        "dbname",
        "gsslib",
        "host",
        "krbsrvname",
        "passfile",
        "password",
        "port",
        "service",
        "ssl_max_protocol_version",
        "ssl_min_protocol_version",
        "sslcert",
        "sslcrl",
        "sslkey",
        "sslmode",
        "sslnegotiation",
        "sslpassword",
        "sslrootcert",
        "target_session_attrs",
        "user",
    }
)
"""Query parameters of a PostgreSQL URL that the driver itself reads (libpq's names)."""


def open_memory(url: str, /, **options: Any) -> StoreInterface:
    """``memory://``: a fresh :class:`~conveyor_stores.MemoryStore`; it takes no options."""
    from . import MemoryStore

    _, kwargs = url_options(url, {}, options)
    if kwargs:
        raise ValueError(f"MemoryStore takes no options, got {', '.join(sorted(kwargs))}")
    return MemoryStore()


def open_sqlite(url: str, /, **options: Any) -> StoreInterface:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:``.

    Options: ``poll_interval``, ``change_interval``, ``busy_timeout``, ``events_retention``,
    ``events_min_age`` (see :class:`~conveyor_stores.SQLiteStore`).
    """
    from . import load_store_class as lazy

    path_part, _, _ = url.partition("?")
    prefix = "sqlite:///"
    if not path_part.lower().startswith(prefix) or len(path_part) == len(prefix):
        raise ValueError(
            "a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db, "
            f"got {url!r}"
        )
    _, kwargs = url_options(
        url,
        {
            "poll_interval": float,
            "change_interval": float,
            "busy_timeout": float,
            "events_retention": int,
            "events_min_age": float,
        },
        options,
    )
    store: StoreInterface = lazy("SQLiteStore")(path_part[len(prefix) :], **kwargs)
    return store


def open_postgres(url: str, /, **options: Any) -> StoreInterface:
    """``postgresql://user@host/db`` (or ``postgres://``).

    Options: ``schema``, ``min_size``, ``max_size``, ``listen_dsn``,
    ``durable_worker_commits``; libpq parameters the driver reads (``sslmode``,
    ``application_name``, …) stay in the connection URL.
    """
    from . import load_store_class as lazy

    dsn, kwargs = url_options(
        url,
        {
            "schema": str,
            "min_size": int,
            "max_size": int,
            "listen_dsn": str,
            "durable_worker_commits": parse_bool,
        },
        options,
        passthrough=_POSTGRES_DRIVER_PARAMETERS,
    )
    store: StoreInterface = lazy("PostgresStore")(dsn, **kwargs)
    return store


def open_redis(url: str, /, **options: Any) -> StoreInterface:
    """``redis://host:6379/0`` or ``rediss://…`` (TLS).

    Options: ``prefix``, ``stream_max_len``, ``client_name``, ``command_timeout``,
    ``loading_timeout``, ``socket_connect_timeout``; ``db``, ``ssl_cert_reqs``
    and ``ssl_ca_certs`` stay in the connection URL.
    """
    from . import load_store_class as lazy

    connection_url, kwargs = url_options(
        url,
        {
            "prefix": str,
            "stream_max_len": int,
            "client_name": str,
            "command_timeout": float,
            "loading_timeout": float,
            "socket_connect_timeout": float,
        },
        options,
        passthrough=frozenset({"db", "ssl_cert_reqs", "ssl_ca_certs"}),
    )
    store: StoreInterface = lazy("RedisStore")(connection_url, **kwargs)
    return store
