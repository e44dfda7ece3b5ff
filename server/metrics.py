"""What an operator watches: queue figures, ``GET /metrics`` and ``relay status``.

The queue figures (sends by state, how late the oldest due email is, mailboxes by state, the
Salesforce sync queue) are read from the database when asked — by a Prometheus scrape through
:class:`QueueCollector`, or by ``relay status`` — so they are right whichever process answers.

The one thing counted in memory is what the dispatcher did: ``relay_sends_total`` by outcome
and provider, incremented through :func:`count_send` (the dispatcher's ``on_outcome`` hook).
A counter lives in the process that increments it: with ``PROMETHEUS_MULTIPROC_DIR`` set (to
the same empty folder for the web processes and the ``relay worker`` processes of a machine)
prometheus_client's multiprocess mode adds up every process's files at scrape time; without
it a scrape only shows what the answering process counted.

``/metrics`` is never public: an admin's session or API token, or ``Authorization: Bearer
<METRICS_TOKEN>``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, request
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from server.accounts.models import Role
from server.api.errors import ApiError
from server.db import utcnow
from server.mailboxes.lifecycle import Mailbox, MailboxStatus
from server.salesforce.models import SyncItem, SyncStatus
from server.sending.models import ScheduledSend, SendStatus

bp = Blueprint("metrics", __name__)

#: States of an email that has not left yet: a due one in any of them is waiting.
UNSENT = (SendStatus.SCHEDULED, SendStatus.CLAIMED, SendStatus.DRAFTED, SendStatus.SENDING,
          SendStatus.UNCERTAIN)
#: Mailbox states as shown: ``paused`` is a connected mailbox inside a daily-limit pause.
MAILBOX_STATES = ("connected", "paused", "needs_reauth", "disconnected")


@dataclass
class QueueFigures:
    """The queue as the database shows it at ``at``."""

    at: datetime
    sends: dict[str, int] = field(default_factory=dict)
    #: Unsent emails whose due moment has passed, and how late the oldest one is (seconds).
    due: int = 0
    oldest_due_age: float = 0.0
    mailboxes: dict[str, int] = field(default_factory=dict)
    salesforce: dict[str, int] = field(default_factory=dict)


def due_count(session: Session, now: datetime) -> tuple[int, datetime | None]:
    """How many unsent emails are due at ``now``, and the due moment of the oldest."""
    found = session.execute(
        select(func.count(), func.min(ScheduledSend.due_at))
        .where(ScheduledSend.status.in_(UNSENT), ScheduledSend.due_at <= now)).one()
    return int(found[0]), found[1]


def queue_figures(session: Session, now: datetime) -> QueueFigures:
    """Every queue figure at ``now`` (every state listed, 0 when empty)."""
    figures = QueueFigures(at=now)
    figures.sends = {s.value: 0 for s in SendStatus}
    for status, n in session.execute(select(ScheduledSend.status, func.count())
                                     .group_by(ScheduledSend.status)):
        figures.sends[SendStatus(status).value] = int(n)
    figures.due, oldest = due_count(session, now)
    if oldest is not None:
        figures.oldest_due_age = max((now - oldest).total_seconds(), 0.0)
    figures.mailboxes = dict.fromkeys(MAILBOX_STATES, 0)
    paused = and_(Mailbox.status == MailboxStatus.CONNECTED, Mailbox.paused_until.is_not(None),
                  Mailbox.paused_until > now)
    for status, is_paused, n in session.execute(
            select(Mailbox.status, paused, func.count()).group_by(Mailbox.status, paused)):
        key = "paused" if is_paused else MailboxStatus(status).value
        figures.mailboxes[key] += int(n)
    figures.salesforce = {s.value: 0 for s in SyncStatus}
    for status, n in session.execute(select(SyncItem.status, func.count())
                                     .group_by(SyncItem.status)):
        figures.salesforce[SyncStatus(status).value] = int(n)
    return figures


def status_table(figures: QueueFigures) -> str:
    """``relay status``: the queue figures as a plain table."""
    rows: list[tuple[str, str, str]] = [
        ("emails", state, str(n)) for state, n in figures.sends.items()]
    rows += [("emails", "due now (unsent)", str(figures.due)),
             ("emails", "oldest due, seconds late", f"{figures.oldest_due_age:.0f}")]
    rows += [("mailboxes", state, str(n)) for state, n in figures.mailboxes.items()]
    rows += [("salesforce sync", state, str(n)) for state, n in figures.salesforce.items()]
    head = ("queue", "state", "count")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join([f"at {figures.at.isoformat(timespec='seconds')}", *lines])


# -- Prometheus -----------------------------------------------------------------------------


class QueueCollector:
    """A prometheus_client collector that reads the queue figures at each scrape."""

    def __init__(self, sessions: sessionmaker[Session],
                 clock: Callable[[], datetime] | None = None) -> None:
        self.sessions = sessions
        self.clock = clock

    def describe(self) -> list[Any]:
        """Nothing up front: the figures are only read when collected."""
        return []

    def collect(self) -> Iterator[Any]:
        """The gauges of :func:`queue_figures` (one read transaction)."""
        from prometheus_client.core import GaugeMetricFamily

        session = self.sessions()
        try:
            figures = queue_figures(session, self.clock() if self.clock else utcnow())
        finally:
            session.rollback()
            session.close()
        sends = GaugeMetricFamily("relay_outbox_emails", "Scheduled emails by state.",
                                  labels=["state"])
        for state, n in figures.sends.items():
            sends.add_metric([state], n)
        yield sends
        yield GaugeMetricFamily("relay_outbox_due_emails",
                                "Unsent emails whose due moment has passed.", value=figures.due)
        yield GaugeMetricFamily("relay_outbox_oldest_due_age_seconds",
                                "How late the oldest unsent due email is (0: none due).",
                                value=figures.oldest_due_age)
        boxes = GaugeMetricFamily("relay_mailboxes", "Connected mailboxes by state.",
                                  labels=["state"])
        for state, n in figures.mailboxes.items():
            boxes.add_metric([state], n)
        yield boxes
        sync = GaugeMetricFamily("relay_salesforce_sync_items",
                                 "Salesforce sync queue items by state.", labels=["state"])
        for state, n in figures.salesforce.items():
            sync.add_metric([state], n)
        yield sync


_SENDS: dict[str, Any] = {}


def sends_counter() -> Any:
    """``relay_sends_total{outcome, provider}`` (created on first use, in no registry)."""
    counter = _SENDS.get("counter")
    if counter is None:
        from prometheus_client import Counter

        counter = _SENDS["counter"] = Counter(
            "relay_sends", "Emails the dispatcher processed, by outcome and provider.",
            ["outcome", "provider"], registry=None)
    return counter


def count_send(outcome: str, provider: str) -> None:
    """The dispatcher's ``on_outcome`` hook: one more row with this outcome and provider."""
    sends_counter().labels(outcome=outcome, provider=provider).inc()


def multiprocess_dir() -> str | None:
    """The prometheus_client multiprocess folder, when that mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def exposition(sessions: sessionmaker[Session],
               clock: Callable[[], datetime] | None = None) -> tuple[bytes, str]:
    """The text exposition of every Relay metric, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(sends_counter())
    registry.register(QueueCollector(sessions, clock))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def _authorize() -> None:
    """Let through ``METRICS_TOKEN`` or an admin; 401 without credentials, 403 for others."""
    secret = current_app.config.get("METRICS_TOKEN")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if secret and scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), str(secret).encode()):
        return
    from server.accounts.auth import api_user

    user = api_user()
    if user.role is not Role.ADMIN:
        raise ApiError(403, "forbidden", "metrics are for admins (or the METRICS_TOKEN)")


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of the queue and send counters (admins or METRICS_TOKEN)."""
    _authorize()
    body, content_type = exposition(current_app.extensions["relay.sessionmaker"])
    return Response(body, content_type=content_type)
