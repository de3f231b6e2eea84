"""Telling other processes that a commit woke something: the WAL file's timestamp.

After a commit that made work or events for others, the store sets the modification
time of ``<database>-wal`` to now (:func:`touch_wal`): a metadata change, after the commit
is published, that SQLite itself never makes. A process that waits for other processes'
commits watches that file with Linux inotify for metadata changes (:func:`wal_notifier`),
so its descriptor becomes readable at once and it needs no timer at all.
``inotify_simple`` (the ``sqlite`` extra, Linux only) provides the watch; without it, or
on another system, :func:`wal_notifier` returns ``None`` and the store checks ``PRAGMA
data_version`` on a timer instead.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any


def touch_wal(database: str) -> None:
    """Set the WAL file's modification time to now (nothing if it cannot be done)."""
    with contextlib.suppress(OSError):
        os.utime(database + "-wal")


class WalNotifier:
    """An inotify descriptor that becomes readable when the WAL file's metadata change."""

    def __init__(self, inotify: Any) -> None:
        self._inotify = inotify

    def fileno(self) -> int:
        return int(self._inotify.fileno())

    def drain(self) -> None:
        """Read the pending notifications (their content does not matter)."""
        with contextlib.suppress(OSError):
            self._inotify.read(timeout=0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._inotify.close()


def wal_notifier(database: str) -> WalNotifier | None:
    """A notifier for ``database``'s WAL file, or ``None`` where none can be had."""
    try:
        import inotify_simple  # type: ignore[import-untyped]
    except ImportError:
        return None
    try:
        inotify = inotify_simple.INotify(nonblocking=True)
    except OSError:
        return None
    try:
        inotify.add_watch(database + "-wal", inotify_simple.flags.ATTRIB)
    except OSError:
        inotify.close()
        return None
    return WalNotifier(inotify)
