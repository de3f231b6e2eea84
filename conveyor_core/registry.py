"""Finding a store by URL: stores register their URL schemes as entry points.

A distribution that ships a store declares, in its ``pyproject.toml``::

    [project.entry-points."conveyor.stores"]
    mystore = "mypackage.store:open_mystore"

where ``open_mystore(url, **options)`` returns a store that is not connected yet.
:func:`open_store` (and so every ``conveyor`` command and the dashboard) then accepts
``mystore://…`` URLs. The stores that ship with Conveyor register themselves the same
way, so the core never imports them.

Store options travel in the URL's query (``sqlite:///app.db?poll_interval=0.05``);
:func:`url_options` is the one place that parses and checks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

from .redaction import redact_url
from .store import StoreInterface

__all__ = [
    "ENTRY_POINT_GROUP",
    "StoreFactory",
    "open_store",
    "parse_bool",
    "registered_schemes",
    "url_options",
]

ENTRY_POINT_GROUP = "conveyor.stores"
"""The entry-point group in which stores register their URL schemes."""


class StoreFactory(Protocol):
    """What a ``conveyor.stores`` entry point names: URL (and options) in, store out."""

    def __call__(self, url: str, /, **options: Any) -> StoreInterface: ...


def registered_schemes() -> dict[str, EntryPoint]:
    """Every registered URL scheme (lower case) and the entry point of its factory."""
    return {ep.name.lower(): ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _scheme_list(schemes: Mapping[str, EntryPoint]) -> str:
    return ", ".join(f"{name}://" for name in sorted(schemes)) or "none are installed"


def open_store(url: str, **options: Any) -> StoreInterface:
    """A store for ``url``, not yet connected: ``async with open_store(url) as store``.

    The scheme picks the store among those registered in the ``conveyor.stores``
    entry-point group: with Conveyor alone, ``memory://``, ``sqlite:///relative.db``,
    ``sqlite:////absolute.db``, ``postgresql://…`` (or ``postgres://…``), ``redis://…``
    and ``rediss://…``. Store options go in the URL's query or as keyword ``options``
    (not both for the same option); an unknown option is a ``ValueError`` naming it, as
    is an unknown scheme (naming the registered ones). A store whose driver is not
    installed raises ``ImportError`` naming the extra to install.
    """
    if not isinstance(url, str) or "://" not in url:
        schemes = registered_schemes()
        raise ValueError(
            f"not a store URL: {redact_url(url)!r}; registered schemes: {_scheme_list(schemes)}"
        )
    scheme = urlsplit(url).scheme.lower()
    schemes = registered_schemes()
    entry = schemes.get(scheme)
    if entry is None:
        raise ValueError(
            f"unknown store URL scheme {scheme!r} in {redact_url(url)!r}; "
            f"registered schemes: {_scheme_list(schemes)}"
        )
    factory: StoreFactory = entry.load()
    return factory(url, **options)


def parse_bool(text: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``) as a bool."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def url_options(
    url: str,
    accepted: Mapping[str, Callable[[str], Any]],
    given: Mapping[str, Any],
    *,
    passthrough: frozenset[str] = frozenset(),
) -> tuple[str, dict[str, Any]]:
    """Split a store URL into the URL without its option parameters, and the options.

    ``accepted`` maps each option a store takes from the query to the function that
    converts its text (``float``, ``int``, :func:`parse_bool`, ``str``…). Keyword
    ``given`` options join them; an option given both ways is an error. Query parameters
    named in ``passthrough`` stay in the returned URL (for the driver); any other
    parameter is a ``ValueError`` naming it and the accepted ones. Conversion errors
    name the parameter too. No message shows the URL's password.
    """
    base, _, query = url.partition("?")
    scheme = urlsplit(url).scheme
    options: dict[str, Any] = {}
    kept: list[tuple[str, str]] = []
    unknown: list[str] = []
    for name, text in parse_qsl(query, keep_blank_values=True):
        if name in passthrough:
            kept.append((name, text))
            continue
        convert = accepted.get(name)
        if convert is None:
            unknown.append(name)
            continue
        if name in options:
            raise ValueError(f"store URL option {name!r} is given twice")
        try:
            options[name] = convert(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"store URL option {name}={text!r} is invalid: {exc}") from None
    if unknown:
        known = sorted({*accepted, *passthrough})
        raise ValueError(
            f"unknown store URL option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(name) for name in unknown)} for {scheme}://; "
            f"accepted: {', '.join(known) or 'none'}"
        )
    for name, value in given.items():
        if name in options:
            raise ValueError(f"store option {name!r} is given both in the URL and as an argument")
        options[name] = value
    return (f"{base}?{urlencode(kept)}" if kept else base), options
