"""JSON text in and out: the only way data, results, progress and logs reach a store.

Values must round-trip: JSON types only (``dict`` with ``str`` keys, ``list``/``tuple``,
``str``, ``int``, ``float`` except NaN and infinities, ``bool``, ``None``), and pydantic
models, stored as their JSON form (``model_dump(mode="json")``). Anything else
raises :class:`~conveyor_core.errors.PayloadError` naming what was being encoded and the
offending Python type, before anything is written. Never pickle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from .errors import PayloadError

__all__ = ["dumps", "loads"]

_SCALARS = (str, int, float, bool, type(None))


class _NotJSON(TypeError):
    def __init__(self, value: object) -> None:
        super().__init__(type(value).__name__)
        self.type_name = type(value).__name__


def _refuse(value: object) -> Any:
    if isinstance(value, BaseModel):  # a typed payload: stored as its JSON form
        return value.model_dump(mode="json")
    raise _NotJSON(value)


_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    allow_nan=False,
    separators=(",", ":"),
    default=_refuse,
)
_DECODER = json.JSONDecoder()


_NO_BAD_KEY = object()


def _first_bad_key(value: Any) -> object:
    """A dict key somewhere in ``value`` that is not a ``str``, else ``_NO_BAD_KEY``.

    ``json`` silently turns ``int``, ``float``, ``bool`` and ``None`` keys into strings,
    which would not round-trip; this walk (explicit stack, no recursion) catches them.
    Only called after encoding succeeded, so ``value`` has no cycles.
    """
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return key
                if not isinstance(child, _SCALARS):
                    push(child)
        elif isinstance(item, list | tuple):
            for child in item:
                if not isinstance(child, _SCALARS):
                    push(child)
    return _NO_BAD_KEY


def dumps(value: Any, *, what: str | Callable[[], str]) -> str:
    """Compact JSON text of ``value``; ``what`` names it in the error (e.g. "data of job
    'fetch' in queue 'reports'"), or is a function that makes that name when needed."""
    try:
        return _dumps(value)
    except PayloadError as exc:
        name = what if isinstance(what, str) else what()
        raise PayloadError(f"{name} {exc}") from None


def _dumps(value: Any) -> str:
    try:
        text = _ENCODER.encode(value)
    except _NotJSON as exc:
        raise PayloadError(
            f"is not JSON: a value of type {exc.type_name} cannot be serialised"
        ) from None
    except RecursionError:
        raise PayloadError("is nested too deeply to be stored as JSON") from None
    except ValueError as exc:
        # NaN/infinity (allow_nan=False) or a circular reference.
        raise PayloadError(f"is not JSON: {exc}") from None
    except TypeError as exc:  # e.g. a dict key of an unsupported type
        raise PayloadError(f"is not JSON: {exc}") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadError(
                "is not JSON: it holds a lone surrogate, which is not Unicode text"
            ) from None
    if isinstance(value, _SCALARS):
        return text
    bad = _first_bad_key(value)
    if bad is not _NO_BAD_KEY:
        raise PayloadError(
            f"is not JSON: dict keys must be str, got a key of type {type(bad).__name__} ({bad!r})"
        )
    return text


def loads(text: str) -> Any:
    """The value of JSON text written by :func:`dumps` (or by any store)."""
    return _DECODER.decode(text)
