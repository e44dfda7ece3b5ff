"""The Alembic revisions build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import server.models  # noqa: F401  (every model registered on Base.metadata)
from server.db import Base, make_engine
from server.migrations import alembic_config


def test_migrated_database_matches_the_models(database_url: str):
    """Does autogenerate find nothing to add, drop or alter after every revision ran?"""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_every_revision_descends_from_the_initial_schema(database_url: str):
    """Is there one base revision, and does every head reach it?"""
    script = ScriptDirectory.from_config(alembic_config(database_url))
    assert script.get_bases() == ["0001"]
    for head in script.get_heads():
        chain = [rev.revision for rev in script.walk_revisions("base", head)]
        assert chain[-1] == "0001"
