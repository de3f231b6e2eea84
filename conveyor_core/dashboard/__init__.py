"""The web dashboard: an ASGI app showing queues, jobs and flows, with operator actions.

``create_app(store)`` returns a Starlette application to serve with any ASGI server or to
mount in FastAPI or Starlette; ``conveyor dashboard`` serves one with uvicorn. It needs
the ``dashboard`` extra (``pip install 'conveyor-queue[dashboard]'``).
"""

from __future__ import annotations

from .app import Auth, create_app

__all__ = ["Auth", "create_app"]
