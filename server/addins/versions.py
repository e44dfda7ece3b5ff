"""The add-in manifests' version counter: it only goes up, once per change of what is rendered.

Microsoft asks for a higher version on every manifest change (the admin center and the
clients pick up an update only when it grows). The last part of the manifests' version is a
counter kept in ``addin_manifest_build`` with the hash of the content it was given for: when
the rendered content (configuration, templates, icons) hashes differently, the counter goes
up by one. It starts at :data:`FIRST_BUILD`, above every number the former hash-derived
versions could take (0-65535), so a deployment that had one still goes up.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from flask import Flask
from sqlalchemy import String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from server.db import Base, make_engine, session_scope, utcnow

#: The first counter value (the former versions' last part was at most 65535).
FIRST_BUILD = 65536
#: A version part has at most 5 digits (Microsoft's <Version> reference and the XSD).
MAX_BUILD = 99999


class ManifestBuild(Base):
    """The last rendered content hash of one add-in's manifests and the counter given to it."""

    __tablename__ = "addin_manifest_build"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    build: Mapped[int]
    updated_at: Mapped[datetime]


def next_build(session: Session, name: str, digest: str, now: datetime) -> int:
    """The counter for content ``digest`` of add-in ``name``: the stored one, or one more.

    The row is locked (PostgreSQL) while it is compared and bumped, so two web nodes that
    render a change at once bump it once. The caller commits.
    """
    for _ in range(2):
        stmt = select(ManifestBuild).where(ManifestBuild.name == name)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        row = session.scalar(stmt)
        if row is None:
            try:
                with session.begin_nested():
                    session.add(ManifestBuild(name=name, content_hash=digest,
                                              build=FIRST_BUILD, updated_at=now))
            except IntegrityError:
                continue  # another node stored it first: read theirs
            return FIRST_BUILD
        if row.content_hash != digest:
            if row.build >= MAX_BUILD:
                raise RuntimeError(f"the {name} manifest version counter is at {MAX_BUILD}: "
                                   "raise OUTLOOK_ADDIN_VERSION's minor part")
            row.build += 1
            row.content_hash = digest
            row.updated_at = now
            session.flush()
        return row.build
    raise RuntimeError(f"could not store the {name} manifest version")


def outlook_build(session: Session, source: Any, icons: Mapping[str, bytes],
                  now: datetime) -> int:
    """The Outlook manifests' counter for what ``source`` and ``icons`` render."""
    from server.addins import manifests

    return next_build(session, "outlook", manifests.content_hash(source, icons), now)


def outlook_rendered(app: Flask) -> tuple[Any, dict[str, bytes]]:
    """The Outlook manifests of ``app``'s configuration with their stored version, and icons."""
    from server.addins import manifests

    icons = manifests.icon_bytes()
    source = manifests.source_from_config(app.config)
    with session_scope(app) as session:
        build = outlook_build(session, source, icons, utcnow())
    return manifests.render(source, icons, build=build), icons


def export_files(config: Mapping[str, Any]) -> dict[str, bytes]:
    """The Outlook deployment files, versioned by the counter in ``DATABASE_URL``'s database.

    The ``outlook`` entry of ``server.addins.exporters`` (``relay manifests export``).
    """
    from server.addins import manifests

    engine = make_engine(str(config["DATABASE_URL"]))
    try:
        writes = sessionmaker(engine.execution_options(sqlite_begin="BEGIN IMMEDIATE"))
        icons = manifests.icon_bytes()
        source = manifests.source_from_config(config)
        with writes() as session:
            build = outlook_build(session, source, icons, utcnow())
            session.commit()
        return manifests.files(manifests.render(source, icons, build=build), icons)
    finally:
        engine.dispose()
