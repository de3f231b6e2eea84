"""The ``conveyor`` command line: ``demo``, ``worker``, ``status``, ``flow``, ``conformance``."""

from __future__ import annotations

from .app import cli, main

__all__ = ["cli", "main"]
