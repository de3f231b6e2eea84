"""Plumbing shared by the commands: the store URL, opening it, imports, user errors."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, TypeVar

import anyio
import click

from ..errors import ConveyorError
from ..redaction import redact_text, redact_url
from ..registry import open_store
from ..store import StoreInterface
from .render import safe_text

DEFAULT_STORE_URL = "sqlite:///conveyor.db"
STORE_URL_ENV = "CONVEYOR_STORE_URL"
STORE_CLOSE_SECONDS = 5.0
"""The longest a command waits for its store to close (a frozen server never answers)."""

T = TypeVar("T")


class UserError(click.ClickException):
    """An error the user can fix; shown as one line, without a traceback.

    Its message may quote stored text, so control characters in it are escaped.
    """

    def format_message(self) -> str:
        return safe_text(self.message).plain


def store_url(option: str | None) -> str:
    """``--store``, else ``$CONVEYOR_STORE_URL``, else the embedded SQLite default."""
    return option or os.environ.get(STORE_URL_ENV) or DEFAULT_STORE_URL


def redact(url: str) -> str:
    """The URL with its password masked, fit for messages."""
    return redact_url(url)


def describe(exc: BaseException) -> str:
    """A one-line description of an exception."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[StoreInterface]:
    """Open the store named by ``url``; any failure to do so becomes a ``UserError``."""
    try:
        store = open_store(url)
    except ValueError as exc:
        raise UserError(
            f"invalid store URL {redact(url)!r}: {redact_text(describe(exc), url)}"
        ) from None
    except ImportError as exc:
        raise UserError(
            f"store {redact(url)!r} needs a driver that is not installed "
            f"({redact_text(describe(exc), url)}); "
            "install the matching extra, e.g. pip install 'conveyor-queue[all]'"
        ) from None
    try:
        await store.connect()
    except Exception as exc:
        with anyio.CancelScope(shield=True):
            with suppress(Exception):
                await store.close()
        what = describe(exc)
        if not isinstance(exc, ConveyorError):
            what = f"{type(exc).__name__}: {what}"
        raise UserError(f"cannot open store {redact(url)}: {redact_text(what, url)}") from None
    try:
        yield store
    finally:
        with anyio.CancelScope(shield=True) as closing:
            closing.deadline = anyio.current_time() + STORE_CLOSE_SECONDS
            await store.close()
        if closing.cancelled_caught:
            click.echo(
                f"the store did not close within {STORE_CLOSE_SECONDS:g} seconds; "
                "exiting without waiting for it",
                err=True,
            )


def import_object(path: str, what: str, *, callable_only: bool = True) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted); errors are one-liners.

    The current directory is importable, as it is for ``python -m``. With
    ``callable_only`` (the default) the attribute must be callable.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise UserError(f"{what} must look like module:attribute, got {path!r}")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UserError(
            f"cannot import {what} module {module_name!r}: {_import_problem(exc, module_name)}"
        ) from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UserError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if callable_only and not callable(target):
        raise UserError(f"{what} {path!r} is not callable")
    return target


def import_handlers(path: str, queues: Sequence[str]) -> dict[str, Callable[..., Any]]:
    """The handler of each queue from ``module:handler`` (one handler for every queue) or
    ``module:registry`` (a mapping of queue names to handlers); errors are one-liners."""
    target = import_object(path, "handler", callable_only=False)
    if callable(target):
        return dict.fromkeys(queues, target)
    if not isinstance(target, Mapping):
        raise UserError(
            f"handler {path!r} is neither callable nor a mapping of queue names to handlers"
        )
    handlers: dict[str, Callable[..., Any]] = {}
    for queue in queues:
        handler = target.get(queue)
        if handler is None:
            known = ", ".join(repr(name) for name in sorted(map(str, target))) or "none"
            raise UserError(
                f"registry {path!r} has no handler for queue {queue!r} (it has {known})"
            )
        if not callable(handler):
            raise UserError(f"registry {path!r} maps queue {queue!r} to something not callable")
        handlers[queue] = handler
    return handlers


def _import_problem(exc: Exception, module_name: str) -> str:
    """One line saying why importing ``module_name`` failed: where, and what."""
    if isinstance(exc, SyntaxError):
        return f"{exc.filename}, line {exc.lineno}: {type(exc).__name__}: {exc.msg}"
    if (
        isinstance(exc, ImportError)
        and exc.name is not None
        and (module_name == exc.name or module_name.startswith(f"{exc.name}."))
    ):
        return describe(exc)  # the module itself (or its package) does not exist
    frames = traceback.extract_tb(exc.__traceback__)
    user_frames = [f for f in frames if not f.filename.startswith("<frozen ")]
    where = f"{user_frames[-1].filename}, line {user_frames[-1].lineno}: " if user_frames else ""
    return f"{where}{type(exc).__name__}: {describe(exc)}"


def _user_error(exc: BaseException) -> click.ClickException | None:
    """The user-facing error inside ``exc`` (looking into exception groups), if any."""
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, ConveyorError):
        return UserError(describe(exc))
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine function on asyncio; user errors become one-line click errors."""
    try:
        return anyio.run(main)
    except BaseException as exc:
        found = _user_error(exc)
        if found is None:
            raise
        raise found from None
