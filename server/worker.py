"""``relay worker``: the background loop that makes due work happen.

Each pass starts people whose scheduled start has come (their first task appears or their
first email is scheduled), then runs the outbox dispatcher (:mod:`server.mail.dispatcher`):
due emails are claimed under a lease and sent from each rep's connected mailbox, and sends
whose outcome is unknown are reconciled. Then the connected mailboxes are synced (sent,
reply and bounce detection, :func:`server.mail.sync.sync_mailboxes`), and the Salesforce
sync outbox is drained (:mod:`server.salesforce.sync`).

Any number of ``relay worker`` processes may run against one PostgreSQL database, on any
number of machines: claims use ``FOR UPDATE SKIP LOCKED`` and leases fence every write. On
SQLite run exactly one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask

from server.campaigns.progress import start_due_enrollments
from server.db import session_scope, use_worker_sessions, utcnow
from server.mail.dispatcher import (
    Dispatcher,
    DispatchResult,
    DispatchSettings,
    SystemClock,
    env_crash_hook,
)
from server.mail.sync import sync_mailboxes
from server.mail.transport import TransportResolver

log = logging.getLogger("relay.worker")


@dataclass
class TickResult:
    """What one pass of the worker did."""

    started: int = 0
    dispatch: DispatchResult = field(default_factory=DispatchResult)
    salesforce: Any = None  # server.salesforce.sync.SyncResult


class _FixedClock:
    """The moment a pass was asked to run at (``tick(app, now=...)``)."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        """Always the same moment."""
        return self.moment


def resolver_for(app: Flask) -> TransportResolver:
    """The transport resolver the worker sends through, built once per app.

    ``MAIL_TRANSPORT=sink`` sends every rep's email to the test sink at ``MAIL_SINK_URL``
    (fault-injection tests and benchmarks; said loudly in the log). Otherwise each rep's
    connected mailbox (``server.mail.providers.MailboxResolver``): a rep without a usable
    one has no transport and their emails wait, except that ``MAIL_TRANSPORT=outbox`` (the
    development default) writes them to the local outbox folder.
    """
    resolver = app.extensions.get("relay.resolver")
    if resolver is None:
        if app.config.get("MAIL_TRANSPORT") == "sink":
            from server.mail.fake import SinkResolver

            url = app.config.get("MAIL_SINK_URL") or ""
            if not url:
                raise RuntimeError("MAIL_TRANSPORT=sink needs MAIL_SINK_URL=http://127.0.0.1:…")
            timeout = max(float(app.config.get("SEND_LEASE_MARGIN_SECONDS") or 30) / 2, 0.1)
            log.warning("MAIL_TRANSPORT=sink: every email goes to the test sink at %s and is "
                        "NOT delivered (tests and benchmarks only)", url)
            resolver = SinkResolver(url, timeout=timeout)
        else:
            from server.mail.providers import MailboxResolver

            # The same resolver (and transport cache) as the mailbox sync's.
            resolver = app.extensions.get("relay.mailbox_resolver")
            if resolver is None:
                resolver = app.extensions["relay.mailbox_resolver"] = MailboxResolver(app)
        app.extensions["relay.resolver"] = resolver
    return resolver


def dispatcher_for(app: Flask, now: datetime | None = None) -> Dispatcher:
    """A dispatcher on the app's database, resolver and ``SEND_*`` settings.

    With ``now`` it runs at that fixed moment (tests); otherwise on the wall clock. The
    test-only crash hook (``RELAY_CRASH_AT``) is read from the environment once per app.
    """
    crash = app.extensions.get("relay.crash_hook")
    if crash is None:
        crash = app.extensions["relay.crash_hook"] = env_crash_hook()
    clock: Any = _FixedClock(now) if now is not None else SystemClock()
    return Dispatcher(app.extensions["relay.write_sessionmaker"], resolver_for(app),
                      settings=DispatchSettings.from_config(app.config), clock=clock,
                      crash=crash)


def tick(app: Flask, now: datetime | None = None, *, batch: int = 500) -> TickResult:
    """Do all work due at ``now`` (default: the current moment) and return what was done.

    Work is taken in batches of ``batch``, each committed on its own so that locks are short;
    the pass goes on until a batch comes back short, so one pass leaves nothing due behind.
    Running it again at the same moment does nothing (each person is started once, each
    email sent at most once).
    """
    moment = now or utcnow()
    result = TickResult()
    while True:
        with session_scope(app) as session:
            started = start_due_enrollments(session, moment, limit=batch)
        result.started += started
        if started < batch:
            break
    if result.started:
        log.info("started %d people whose campaign start had come", result.started)
    result.dispatch = dispatcher_for(app, now).run_once()
    d = result.dispatch
    if d.claimed or d.swept:
        log.info("dispatch: %d claimed, %d sent, %d failed, %d retried, %d uncertain, "
                 "%d rescheduled, %d need attention, %d deferred, %d lost leases, %d swept",
                 d.claimed, d.sent, d.failed, d.retried, d.uncertain, d.rescheduled,
                 d.needs_attention, d.deferred, d.lost, d.swept)
    _sync(app, moment)
    result.salesforce = _salesforce(app, moment)
    return result


def _sync(app: Flask, now: datetime) -> None:
    """Sent, reply and bounce detection for connected mailboxes (server.mail.sync)."""
    result = sync_mailboxes(app, now)
    if result.errors:
        log.warning("mailbox sync: %d errors: %s", len(result.errors), result.errors[:5])


def _salesforce(app: Flask, now: datetime) -> Any:
    """Write queued activities to Salesforce and read completions back."""
    from server.salesforce import sync

    done = sync.run(app, now)
    if done.claimed or done.completed_back:
        log.info("salesforce: %d claimed, %d synced, %d retried later, %d unmatched, "
                 "%d failed, %d completed from Salesforce", done.claimed, done.done,
                 done.retried, done.unmatched, done.failed, done.completed_back)
    return done


def run(app: Flask, stop: threading.Event | None = None, *, once: bool = False) -> None:
    """Run ticks every ``WORKER_POLL_SECONDS`` until ``stop`` is set (or once)."""
    stop = stop or threading.Event()
    use_worker_sessions(app)  # lock_timeout, idle-in-transaction timeout, keepalives
    interval = float(app.config["WORKER_POLL_SECONDS"])
    log.info("worker running against %s, every %.1f s", _safe_url(app), interval)
    while not stop.is_set():
        try:
            tick(app)
        except Exception:
            # The loop must survive a bad pass (a database restart, say); the failure is
            # logged with its traceback and the next pass retries it.
            log.exception("worker pass failed; retrying in %.1f s", interval)
        if once:
            return
        stop.wait(interval)


def _safe_url(app: Flask) -> str:
    from sqlalchemy.engine import make_url

    return make_url(app.config["DATABASE_URL"]).render_as_string(hide_password=True)
