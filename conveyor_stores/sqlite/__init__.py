"""The SQLite store: Conveyor in one file, shared by the processes of one host."""

from __future__ import annotations

from .store import SQLiteStore

__all__ = ["SQLiteStore"]
