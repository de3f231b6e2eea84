"""The PostgreSQL store: ``PostgresStore(dsn, schema="conveyor")``."""

from .store import BoundPostgresStore, PostgresStore, migrate

__all__ = ["BoundPostgresStore", "PostgresStore", "migrate"]
