"""The Redis store: every transition is one Lua script call. See ``docs/redis.md``."""

from __future__ import annotations

from .store import RedisStore, queue_key_base

__all__ = ["RedisStore", "queue_key_base"]
