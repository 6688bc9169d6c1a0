"""Storage: SQLAlchemy tables, Alembic migrations, SQLite by default, PostgreSQL by URL."""

from fleet_server.db.engine import Database, migrate, normalize_url

__all__ = ["Database", "migrate", "normalize_url"]
