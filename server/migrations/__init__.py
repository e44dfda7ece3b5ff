"""Alembic migrations, run with ``relay db upgrade`` (and by the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

HERE = Path(__file__).parent


def alembic_config(database_url: str) -> Config:
    """An Alembic configuration pointing at this folder and ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "heads") -> None:
    """Bring the database at ``database_url`` up to ``revision`` (default: every head).

    Each feature area adds its own revision on top of the initial schema, so there can be
    several heads; ``heads`` applies them all.
    """
    command.upgrade(alembic_config(database_url), revision)
