"""``relay worker``: the background loop that makes due work happen.

It starts people whose scheduled start has come, which makes their first task appear or
schedules their first email, and drains the Salesforce sync outbox (issue 7). The email
dispatcher joins this loop later.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import Flask

from server.campaigns.progress import start_due_enrollments
from server.db import session_scope, utcnow

log = logging.getLogger("relay.worker")


@dataclass
class TickResult:
    """What one pass of the worker did."""

    started: int = 0
    salesforce: Any = None  # server.salesforce.sync.SyncResult (issue 7)


def tick(app: Flask, now: datetime | None = None, *, batch: int = 500) -> TickResult:
    """Do all work due at ``now`` (default: the current moment) and return what was done.

    Work is taken in batches of ``batch``, each committed on its own so that locks are short;
    the pass goes on until a batch comes back short, so one pass leaves nothing due behind.
    Running it again at the same moment does nothing (each person is started once).
    """
    now = now or utcnow()
    result = TickResult()
    while True:
        with session_scope(app) as session:
            started = start_due_enrollments(session, now, limit=batch)
        result.started += started
        if started < batch:
            break
    if result.started:
        log.info("started %d people whose campaign start had come", result.started)
    result.salesforce = _salesforce(app, now)
    return result


def _salesforce(app: Flask, now: datetime) -> Any:
    """Write queued activities to Salesforce and read completions back (issue 7)."""
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
