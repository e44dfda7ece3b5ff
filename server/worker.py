"""``relay worker``: the background loop that makes due work happen.

Each pass starts people whose scheduled start has come (their first task appears or their
first email is scheduled), then runs the outbox dispatcher (:mod:`server.sending.dispatcher`):
due emails are claimed under a lease and sent from each rep's connected mailbox, and sends
whose outcome is unknown are reconciled. Then the connected mailboxes are synced (sent,
reply and bounce detection, :func:`server.mailboxes.sync.sync_mailboxes`), and the Salesforce
sync outbox is drained (:mod:`server.salesforce.sync`).

Any number of ``relay worker`` processes may run against one PostgreSQL database, on any
number of machines: claims use ``FOR UPDATE SKIP LOCKED`` and leases fence every write. On
SQLite run exactly one.

**Stopping** (:func:`drain_on_signals`): the first SIGTERM or SIGINT sets the stop event; the
dispatcher finishes the provider call in flight, records it and hands back the rows it claimed
but did not start; the mailbox and Salesforce syncs are skipped; the loop ends and the process
exits 0. If that takes longer than ``SEND_STOP_SECONDS`` a watchdog ends the process (exit 1);
a second signal ends it at once (exit 128 + the signal number).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import Flask

from server.campaigns.progress import start_due_enrollments
from server.db import session_scope, use_worker_sessions, utcnow
from server.mailboxes.sync import sync_mailboxes
from server.sending.dispatcher import (
    Dispatcher,
    DispatchResult,
    DispatchSettings,
    SystemClock,
    env_crash_hook,
)
from server.sending.transport import TransportResolver

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
    connected mailbox (``server.sending.providers.MailboxResolver``): a rep without a usable
    one has no transport and their emails wait, except that ``MAIL_TRANSPORT=outbox`` (the
    development default) writes them to the local outbox folder.
    """
    resolver = app.extensions.get("relay.resolver")
    if resolver is None:
        if app.config.get("MAIL_TRANSPORT") == "sink":
            from server.sending.fake import SinkResolver

            url = app.config.get("MAIL_SINK_URL") or ""
            if not url:
                raise RuntimeError("MAIL_TRANSPORT=sink needs MAIL_SINK_URL=http://127.0.0.1:…")
            timeout = max(float(app.config.get("SEND_LEASE_MARGIN_SECONDS") or 30) / 2, 0.1)
            log.warning("MAIL_TRANSPORT=sink: every email goes to the test sink at %s and is "
                        "NOT delivered (tests and benchmarks only)", url)
            resolver = SinkResolver(url, timeout=timeout)
        else:
            from server.sending.providers import MailboxResolver

            # The same resolver (and transport cache) as the mailbox sync's.
            resolver = app.extensions.get("relay.mailbox_resolver")
            if resolver is None:
                resolver = app.extensions["relay.mailbox_resolver"] = MailboxResolver(app)
        app.extensions["relay.resolver"] = resolver
    return resolver


def dispatcher_for(app: Flask, now: datetime | None = None,
                   stop: threading.Event | None = None) -> Dispatcher:
    """A dispatcher on the app's database, resolver and ``SEND_*`` settings.

    With ``now`` it runs at that fixed moment (tests); otherwise on the wall clock. With
    ``stop``, the dispatcher ends its pass once the event is set (see the module docstring).
    Every outcome is counted in ``relay_sends_total`` (:mod:`server.metrics`). The test-only
    crash hook (``RELAY_CRASH_AT``) is read from the environment once per app.
    """
    from server.metrics import count_send

    crash = app.extensions.get("relay.crash_hook")
    if crash is None:
        crash = app.extensions["relay.crash_hook"] = env_crash_hook()
    clock: Any = _FixedClock(now) if now is not None else SystemClock()
    return Dispatcher(app.extensions["relay.write_sessionmaker"], resolver_for(app),
                      settings=DispatchSettings.from_config(app.config), clock=clock,
                      crash=crash, stop_requested=stop.is_set if stop is not None else None,
                      on_outcome=count_send)


#: The outcomes a pass summary counts, in the order logged.
_OUTCOMES = ("claimed", "sent", "failed", "retried", "uncertain", "rescheduled",
             "needs_attention", "deferred", "waiting", "lost", "returned", "swept")


def tick(app: Flask, now: datetime | None = None, *, batch: int = 500,
         stop: threading.Event | None = None) -> TickResult:
    """Do all work due at ``now`` (default: the current moment) and return what was done.

    Work is taken in batches of ``batch``, each committed on its own so that locks are short;
    the pass goes on until a batch comes back short, so one pass leaves nothing due behind.
    Running it again at the same moment does nothing (each person is started once, each
    email sent at most once). Once ``stop`` is set, nothing new is started: the dispatcher
    finishes what is in flight and the mailbox and Salesforce syncs are skipped.
    """
    moment = now or utcnow()
    stopping = stop.is_set if stop is not None else (lambda: False)
    result = TickResult()
    while not stopping():
        with session_scope(app) as session:
            started = start_due_enrollments(session, moment, limit=batch)
        result.started += started
        if started < batch:
            break
    if result.started:
        log.info("started %d people whose campaign start had come", result.started)
    if stopping():
        return result
    result.dispatch = _dispatch(app, now, moment, stop)
    if stopping():
        log.info("stopping: mailbox and Salesforce syncs skipped")
        return result
    _sync(app, moment)
    result.salesforce = _salesforce(app, moment)
    return result


def _dispatch(app: Flask, now: datetime | None, moment: datetime,
              stop: threading.Event | None) -> DispatchResult:
    """One dispatcher pass between its ``pass start`` and ``pass end`` log lines.

    Both are INFO when there is work (emails due, or anything claimed or swept), DEBUG for
    an idle pass, so an idle worker does not fill the log every ``WORKER_POLL_SECONDS``.
    """
    from server.metrics import due_count

    began = time.monotonic()
    session = app.extensions["relay.sessionmaker"]()
    try:
        due, oldest = due_count(session, moment)
    finally:
        session.close()
    late = (moment - oldest).total_seconds() if oldest is not None else 0.0
    level = logging.INFO if due else logging.DEBUG
    log.log(level, "pass start due=%d oldest_due_late=%.1fs", due, late)
    d = dispatcher_for(app, now, stop).run_once()
    if d.claimed or d.swept:
        level = logging.INFO
    counts = " ".join(f"{name}={getattr(d, name)}" for name in _OUTCOMES)
    log.log(level, "pass end %s duration=%.3fs", counts, time.monotonic() - began)
    return d


def _sync(app: Flask, now: datetime) -> None:
    """Sent, reply and bounce detection for connected mailboxes (server.mailboxes.sync)."""
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
    """Run ticks every ``WORKER_POLL_SECONDS`` until ``stop`` is set (or once).

    A pass under way when ``stop`` is set drains (see :func:`tick`) before this returns.
    """
    stop = stop or threading.Event()
    use_worker_sessions(app)  # lock_timeout, idle-in-transaction timeout, keepalives
    interval = float(app.config["WORKER_POLL_SECONDS"])
    log.info("worker running against %s, every %.1f s", _safe_url(app), interval)
    while not stop.is_set():
        try:
            tick(app, stop=stop)
        except Exception:
            # The loop must survive a bad pass (a database restart, say); the failure is
            # logged with its traceback and the next pass retries it.
            log.exception("worker pass failed; retrying in %.1f s", interval)
        if once:
            break
        stop.wait(interval)
    if stop.is_set():
        log.info("worker stopped")


#: Exit status of a worker whose drain outlasted ``SEND_STOP_SECONDS``.
EXIT_DRAIN_TIMEOUT = 1


@contextlib.contextmanager
def drain_on_signals(stop: threading.Event, limit: float, *,
                     exit: Callable[[int], None] = os._exit) -> Iterator[None]:  # noqa: A002
    """While inside, SIGTERM and SIGINT drain the worker instead of killing it.

    The first signal sets ``stop`` and starts a watchdog: if the block has not ended
    ``limit`` seconds later the process exits with :data:`EXIT_DRAIN_TIMEOUT`. A second
    signal exits at once with 128 + its number. Main thread only.

    Python runs signal handlers in the main thread only between bytecodes — not while it
    waits on a socket or holds a lock — so the handlers here do nothing themselves: the
    signal number reaches a watcher thread through ``signal.set_wakeup_fd`` (written by the
    C-level handler the moment the signal arrives), and that thread sets the event, runs the
    watchdog and exits on the second signal, whatever the main thread is doing.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    watched = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda _sig, _frame: None) for sig in watched}
    old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=_watch, args=(read_fd, stop, limit, exit, watched),
                               name="relay-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(write_fd)  # the watcher reads end-of-file and returns
        watcher.join(timeout=5)
        os.close(read_fd)


def _watch(read_fd: int, stop: threading.Event, limit: float,
           exit: Callable[[int], None], watched: tuple[int, ...]) -> None:  # noqa: A002
    """The watcher thread of :func:`drain_on_signals`."""
    deadline: float | None = None
    while True:
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        ready, _, _ = select.select([read_fd], [], [], wait)
        if not ready:
            log.error("still draining %.0f s after the stop signal (SEND_STOP_SECONDS): "
                      "exiting now; rows still claimed return when their lease runs out",
                      limit)
            exit(EXIT_DRAIN_TIMEOUT)
            return
        data = os.read(read_fd, 64)
        if not data:
            return
        for number in data:
            if number not in watched:
                continue
            name = signal.Signals(number).name
            if deadline is not None:
                log.warning("%s again: exiting at once; rows still claimed return when "
                            "their lease runs out", name)
                exit(128 + number)
                return
            log.info("%s: draining — finishing the send in flight, handing back claimed "
                     "emails not started, then exiting (at most %.0f s)", name, limit)
            deadline = time.monotonic() + limit
            stop.set()


def _safe_url(app: Flask) -> str:
    from sqlalchemy.engine import make_url

    return make_url(app.config["DATABASE_URL"]).render_as_string(hide_password=True)
