"""Typed payloads: a handler annotated ``job: Job[Order]`` gets ``job.data`` as an ``Order``.

Data and results are stored as JSON whatever their Python type; a pydantic model (or any
type pydantic can validate: dataclasses, ``TypedDict``, ``list[int]``…) is only a view of
that JSON. The worker validates a job's data into the type its handler asks for before
the handler runs: data that does not fit fails the job at once, naming the field, since
no retry can make stored data fit.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import UnrecoverableError

__all__ = ["DataValidationError", "data_type_of", "describe_validation_error", "validate"]


class DataValidationError(UnrecoverableError, ValueError):
    """A job's data does not fit the type its handler declares; the job fails at once."""


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: ``field.path: message``."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(the value itself)"
        problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


@functools.lru_cache(maxsize=256)
def _adapter(kind: Any) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def validate(kind: Any, value: Any, *, what: str) -> Any:
    """``value`` (decoded JSON) validated into ``kind``; ``DataValidationError`` naming
    ``what`` and every failing field if it does not fit."""
    try:
        return _adapter(kind).validate_python(value)
    except ValidationError as exc:
        name = getattr(kind, "__name__", str(kind))
        raise DataValidationError(
            f"{what} does not fit {name}: {describe_validation_error(exc)}"
        ) from None


def data_type_of(handler: Callable[..., Any]) -> Any:
    """The ``T`` of a handler whose first parameter is annotated ``Job[T]``, or ``None``.

    A plain ``Job``, ``Job[Any]`` or no annotation means untyped data. An annotation that
    names ``Job[...]`` but cannot be resolved (a class defined where the annotation
    cannot see it) is a ``TypeError`` naming it, rather than silently untyped data.
    """
    from .job import Job

    target: Any = handler
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        call = getattr(target, "__call__", None)  # noqa: B004 - callable objects
        if call is None:
            return None
        target = call
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    if not parameters:
        return None
    first = parameters[0]
    if first.annotation is inspect.Parameter.empty:
        return None
    try:
        hints = typing.get_type_hints(target)
    except Exception as exc:
        text = first.annotation if isinstance(first.annotation, str) else ""
        if text.replace(" ", "").startswith(("Job[", "conveyor_core.Job[")):
            raise TypeError(
                f"cannot resolve the annotation {text!r} of handler "
                f"{getattr(handler, '__qualname__', handler)!r}: {exc}"
            ) from None
        return None
    annotation = hints.get(first.name)
    if typing.get_origin(annotation) is not Job:
        return None
    (kind,) = typing.get_args(annotation)
    return None if kind is Any else kind
