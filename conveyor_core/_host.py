"""Leaving the task group an async context manager runs its background tasks in."""

from __future__ import annotations

import logging

from anyio.abc import TaskGroup

logger = logging.getLogger("conveyor")


async def leave_host(host: TaskGroup, exc: BaseException | None, owner: str) -> bool | None:
    """Exit ``host``, entered by ``owner.__aenter__`` around the body of ``async with``.

    The body's own exception comes out as itself, never wrapped in an exception group:
    ``except KeyError`` around ``async with worker:`` catches a ``KeyError`` raised in
    the block. A failure of the owner's background tasks comes out as itself too (it
    cancels the body, which then ends with that failure); if the body failed as well,
    the body's exception wins and carries a note naming the background failure.
    Call it after the owner has stopped its tasks (or cancelled them) for a body that
    ended normally or with an ``Exception``; a ``BaseException`` (cancellation,
    ``KeyboardInterrupt``) is handed to the task group as it is.
    """
    body_failed = isinstance(exc, Exception)
    try:
        if exc is None or body_failed:
            await host.__aexit__(None, None, None)
            return None
        return await host.__aexit__(type(exc), exc, exc.__traceback__)
    except BaseExceptionGroup as group:
        errors = group.exceptions
        if body_failed:
            assert exc is not None
            logger.error("%s stopped with an error", owner, exc_info=group)
            exc.add_note(f"{owner} also stopped with an error: {errors[0]!r}")
            return None
        if len(errors) == 1:
            raise errors[0] from None
        raise
