"""The ``conveyor`` command line: ``demo``, ``worker``, the operating commands of
:mod:`.operate` (``queues``, ``status``, ``jobs``, ``job``, ``queue``, ``add``, ``flow``) and
``conformance``."""

from __future__ import annotations

from . import operate as _operate  # noqa: F401  (registers the operating commands)
from .app import cli, main

__all__ = ["cli", "main"]
