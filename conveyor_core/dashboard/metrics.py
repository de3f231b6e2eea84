"""Prometheus exposition of the queues' state, for the dashboard's ``/metrics``."""

from __future__ import annotations

from ..metrics import CONTENT_TYPE
from ..metrics import render_store_metrics as render_metrics

__all__ = ["CONTENT_TYPE", "render_metrics"]
