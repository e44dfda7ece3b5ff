"""Claiming outbox rows under a lease, and writes fenced by the lease token.

Every outbox (scheduled sends, Salesforce sync items) works the same way: a worker *claims* a
batch of ready rows, which stamps each with a fresh random ``lease_token`` and a
``lease_expires_at``; from then on every write the worker makes about a row goes through
:func:`fenced_update`, which only changes the row while it still carries that token and the
lease has not run out. A worker that stalled (a long GC pause, SIGSTOP, a lost network) and
lost its lease therefore changes nothing when it wakes up, and its caller learns so before it
calls any provider.

Claiming is one ``UPDATE … WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED) RETURNING``
statement: on PostgreSQL concurrent workers skip each other's locked rows and never claim the
same row twice; expired leases are swept the same way (:func:`sweep`), so a worker stalled
inside a transaction (SIGSTOP, a frozen VM, a network partition) never makes another wait on
the rows it holds. On SQLite the writing session's ``BEGIN IMMEDIATE`` serialises claims (the
``FOR UPDATE`` clause is not emitted there) and one worker process is the supported setup.
Time is always passed in.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, String, case, literal, select, tuple_, update
from sqlalchemy.orm import Mapped, Session, mapped_column


class Leased:
    """Columns every leased outbox row carries (mix into a mapped class)."""

    lease_token: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


@dataclass(frozen=True)
class Claim:
    """One claimed row: its id and the token that fences every later write about it."""

    id: int
    token: str
    expires_at: datetime


def new_token() -> str:
    """A fresh, unguessable lease token (unique per claim)."""
    return secrets.token_hex(16)


def claim(session: Session, model: type[Any], *, ready: ColumnElement[bool],
          order_by: Any, now: datetime, lease: timedelta, limit: int,
          values: Mapping[str, Any]) -> list[Claim]:
    """Claim up to ``limit`` rows of ``model`` matching ``ready``, oldest ``order_by`` first.

    Each claimed row gets ``values`` (typically its new status), a new lease token, a lease
    until ``now + lease`` and one more attempt. Rows locked by a concurrent claim are skipped
    (PostgreSQL), so two workers never hold the same row. The caller commits.
    """
    if limit <= 0:
        return []
    token = new_token()
    expires = now + lease
    candidates = (
        select(model.id).where(ready).order_by(order_by).limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = session.execute(
        update(model)
        .where(model.id.in_(candidates.scalar_subquery()))
        .values(lease_token=token, lease_expires_at=expires, attempts=model.attempts + 1,
                **values)
        .returning(model.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    return [Claim(id=row_id, token=token, expires_at=expires) for row_id in sorted(rows)]


def fenced_update(session: Session, model: type[Any], held: Claim, *, now: datetime,
                  values: Mapping[str, Any], extend: timedelta | None = None) -> bool:
    """Write ``values`` to the claimed row only while ``held`` is still its live lease.

    Returns False, writing nothing, when another worker has re-claimed the row (the token
    differs) or the lease ran out at ``now``. ``extend`` renews the lease to ``now + extend``
    in the same statement. The caller commits, and must stop work on the row when this
    returns False.
    """
    extra: dict[str, Any] = dict(values)
    if extend is not None:
        extra["lease_expires_at"] = now + extend
    changed = session.execute(
        update(model)
        .where(model.id == held.id, model.lease_token == held.token,
               model.lease_expires_at > now)
        .values(**extra)
        .execution_options(synchronize_session=False)
    ).rowcount
    return changed == 1


def fenced_update_many(session: Session, model: type[Any],
                       items: Sequence[tuple[Claim, Mapping[str, Any]]], *, now: datetime,
                       extend: timedelta | None = None) -> set[int]:
    """:func:`fenced_update` for many rows in one statement; returns the ids written.

    Each item is a held claim and the values for its row. Every row is fenced exactly as by
    :func:`fenced_update` — its id *and* its own lease token must match and its lease must
    still run at ``now`` — and only the rows that pass are changed (``RETURNING`` names them).
    Values shared by every item are set as they are; values that differ are chosen per row by
    ``CASE id WHEN …`` (a column missing from an item keeps that row's value). ``extend``
    renews every written lease to ``now + extend``. The caller commits.
    """
    if not items:
        return set()
    keys = list(dict.fromkeys(k for _, values in items for k in values))
    shared: dict[str, Any] = {}
    varying: dict[str, Any] = {}
    for key in keys:
        col = getattr(model, key)
        present = [values[key] for _, values in items if key in values]
        first = present[0]
        if len(present) == len(items) and all(
                v is first or (type(v) is type(first) and v == first) for v in present):
            shared[key] = first
            continue
        whens = {held.id: literal(values[key], col.type)
                 for held, values in items if key in values}
        varying[key] = case(whens, value=model.id,
                            else_=col if len(whens) < len(items) else None)
    if extend is not None:
        shared["lease_expires_at"] = now + extend
    written = session.execute(
        update(model)
        # ``id IN (…)`` alone lets the planner go by the primary key; the row-value IN then
        # requires each row's own token.
        .where(model.id.in_([h.id for h, _ in items]),
               tuple_(model.id, model.lease_token).in_([(h.id, h.token) for h, _ in items]),
               model.lease_expires_at > now)
        .values(**shared, **varying)
        .returning(model.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    return set(written)


def release(session: Session, model: type[Any], held: Claim, *, now: datetime,
            values: Mapping[str, Any]) -> bool:
    """Finish with a row: write ``values`` and clear its lease, if the lease is still ours."""
    return fenced_update(session, model, held, now=now,
                         values={**values, "lease_token": None, "lease_expires_at": None})


def sweep(session: Session, model: type[Any], *, where: ColumnElement[bool], now: datetime,
          values: Mapping[str, Any]) -> int:
    """Write ``values`` to every row matching ``where`` whose lease ran out; the count.

    ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED)``: a row another transaction
    holds locked (a worker still writing it, or one stopped in the middle of its transaction)
    is skipped, never waited for; a later sweep takes it once it is free. The lease token and
    expiry are cleared. The caller commits.
    """
    candidates = (select(model.id).where(where, expired(model, now))
                  .with_for_update(skip_locked=True))
    return int(session.execute(
        update(model)
        .where(model.id.in_(candidates.scalar_subquery()), where, expired(model, now))
        .values(lease_token=None, lease_expires_at=None, **values)
        .execution_options(synchronize_session=False)
    ).rowcount)


def expired(model: type[Any], now: datetime) -> ColumnElement[bool]:
    """The condition "this row's lease has run out at ``now``" (for sweeps and re-claims)."""
    return model.lease_expires_at.is_not(None) & (model.lease_expires_at <= now)
