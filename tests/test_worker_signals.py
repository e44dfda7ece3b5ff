"""Stopping ``relay worker``: SIGTERM drains, a second signal exits at once, and a watchdog.

Real ``relay worker`` processes send to the fault tests' HTTP sink on 127.0.0.1, here made
slow: every send is held for a moment (or until the test lets it go), so that the signal
lands in the middle of a pass with a provider call in flight.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from server import worker
from server.cli import main
from server.config import ENV_VARS, load_config, worker_problems
from server.crypto import KeyRing
from server.db import make_engine
from server.mailboxes.lifecycle import Mailbox, Provider
from server.sending.dispatcher import Dispatcher, DispatchSettings
from server.sending.fake import FakeResolver, FakeTransport, ManualClock, SinkServer, _Handler
from server.sending.models import ScheduledSend, SendStatus
from server.sending.providers import MailboxResolver
from server.sending.providers.gmail import GmailTransport
from server.sending.providers.graph import GraphTransport
from server.sending.providers.smtp import SmtpTransport
from tests.conftest import World
from tests.sending.test_dispatcher import plain_sends, rows
from tests.sending.test_dispatcher_faults import seed, start_worker, statuses, worker_env


class _SlowHandler(_Handler):
    """The sink's handler; a send waits ``hold`` seconds (or until ``gate`` is set) first."""

    def do_POST(self) -> None:  # noqa: N802
        """Hold a send, then answer as the sink does."""
        if self.path.endswith("/send"):
            with self.server.lock:  # type: ignore[attr-defined]
                self.server.entered += 1  # type: ignore[attr-defined]
            self.server.gate.wait(self.server.hold)  # type: ignore[attr-defined]
        super().do_POST()


@pytest.fixture
def slow_sink() -> Iterator[SinkServer]:
    """A sink whose sends take ``sink.httpd.hold`` seconds; released when the test ends."""
    sink = SinkServer({})
    httpd: object = sink.httpd
    sink.httpd.RequestHandlerClass = _SlowHandler
    httpd.gate = threading.Event()  # type: ignore[attr-defined]
    httpd.hold = 0.0  # type: ignore[attr-defined]
    httpd.lock = threading.Lock()  # type: ignore[attr-defined]
    httpd.entered = 0  # type: ignore[attr-defined]
    with sink:
        yield sink
        httpd.gate.set()  # type: ignore[attr-defined]


def held_rows(engine: Engine) -> list[tuple]:
    """Rows a worker still holds or left half-way: claimed, sending or under a lease."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(
            "SELECT id, status, lease_token FROM scheduled_send WHERE lease_token IS NOT NULL "
            "OR lease_expires_at IS NOT NULL OR status IN ('claimed', 'sending')"))]


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen[bytes],
             log: Path) -> None:
    """Poll ``check`` until true; fail with the worker's log if it dies or time runs out."""
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, f"worker exited {proc.returncode}: {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s: {log.read_text()[-3000:]}"
        time.sleep(0.05)


def test_sigterm_mid_pass_drains_exits_0_and_a_restart_finishes_at_once(
        database_url: str, tmp_path: Path, slow_sink: SinkServer):
    """SIGTERM while sends are going out: exit 0 within SEND_STOP_SECONDS, nothing held?

    The email in flight is recorded, the claimed emails not started are handed back
    (no lease left on any row), nothing is delivered twice; a worker started right after
    sends the rest before the 120 s lease of a stranded row could have run out.
    """
    engine = make_engine(database_url)
    ids = seed(engine, 60, reps=3)
    slow_sink.httpd.hold = 0.15  # type: ignore[attr-defined]
    env = worker_env(database_url, slow_sink.url, SEND_LEASE_SECONDS="120",
                     SEND_LEASE_MARGIN_SECONDS="10", SEND_BATCH="20", SEND_GROUP="4",
                     SEND_STOP_SECONDS="20")
    log = tmp_path / "first.log"
    first = start_worker(env, log)
    try:
        wait_for(lambda: len(slow_sink.deliveries()) >= 6, 60, "deliveries", first, log)
        first.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        code = first.wait(timeout=40)
        drained_in = time.monotonic() - asked
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert code == 0, log.read_text()[-3000:]
    assert drained_in < 20, drained_in
    assert held_rows(engine) == []
    delivered = slow_sink.deliveries()
    counts = statuses(engine)
    assert set(delivered.values()) == {1}
    assert counts["sent"] == len(delivered) < len(ids)  # stopped mid-way, all recorded
    assert counts["scheduled"] + counts["drafted"] == len(ids) - len(delivered)
    text_log = log.read_text()
    assert "SIGTERM: draining" in text_log and "worker stopped" in text_log

    slow_sink.httpd.hold = 0  # type: ignore[attr-defined]
    log2 = tmp_path / "second.log"
    second = start_worker(env, log2)
    try:
        # Well inside the 120 s lease: a row left under a lease could not be sent in time.
        wait_for(lambda: statuses(engine)["sent"] == len(ids), 90, "complete run", second,
                 log2)
        second.send_signal(signal.SIGTERM)  # idle now: stops at once
        assert second.wait(timeout=20) == 0, log2.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    delivered = slow_sink.deliveries()
    engine.dispose()
    assert sorted(delivered) == ids and set(delivered.values()) == {1}


def stalled_worker(database_url: str, sink: SinkServer, log: Path,
                   **extra: str) -> tuple[subprocess.Popen[bytes], Engine]:
    """A worker whose first send hangs at the sink until the test ends."""
    engine = make_engine(database_url)
    seed(engine, 4, reps=1)
    sink.httpd.hold = 300  # type: ignore[attr-defined]
    env = worker_env(database_url, sink.url, SEND_LEASE_SECONDS="120",
                     SEND_LEASE_MARGIN_SECONDS="60", **extra)
    proc = start_worker(env, log)
    wait_for(lambda: sink.httpd.entered >= 1, 60, "send", proc, log)  # type: ignore[attr-defined]
    return proc, engine


def test_a_second_signal_exits_at_once(database_url: str, tmp_path: Path,
                                       slow_sink: SinkServer):
    """SIGTERM waits for the hung send; does a SIGINT after it end the process at once?"""
    log = tmp_path / "w.log"
    proc, engine = stalled_worker(database_url, slow_sink, log, SEND_STOP_SECONDS="60")
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        assert proc.poll() is None  # still draining: the send in flight is waited for
        proc.send_signal(signal.SIGINT)
        asked = time.monotonic()
        code = proc.wait(timeout=10)
        took = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        engine.dispose()
    assert code == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert took < 5, took
    assert "SIGINT again: exiting at once" in log.read_text()


def test_a_drain_that_outlasts_send_stop_seconds_is_cut_short(database_url: str,
                                                              tmp_path: Path,
                                                              slow_sink: SinkServer):
    """With the send hung past SEND_STOP_SECONDS=2, does the watchdog exit non-zero in time?"""
    log = tmp_path / "w.log"
    proc, engine = stalled_worker(database_url, slow_sink, log, SEND_STOP_SECONDS="2")
    try:
        proc.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        code = proc.wait(timeout=30)
        took = time.monotonic() - asked
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        engine.dispose()
    assert code == 1, log.read_text()[-3000:]
    assert 2 <= took < 15, took
    assert "still draining 2 s after the stop signal" in log.read_text()


def test_relay_worker_refuses_settings_that_cannot_work(database_url: str):
    """A lease margin shorter than the SMTP timeout: does `relay worker` exit 2 and say why?"""
    env = {"DATABASE_URL": database_url, "SEND_LEASE_SECONDS": "60",
           "SEND_LEASE_MARGIN_SECONDS": "25", "SMTP_TIMEOUT_SECONDS": "30",
           "MAIL_TRANSPORT": "outbox"}
    result = CliRunner().invoke(main, ["worker", "--once"], env=env)
    assert result.exit_code == 2, result.output
    assert ("Error: SEND_LEASE_MARGIN_SECONDS (25) cannot cover one provider call: "
            "SMTP_TIMEOUT_SECONDS is 30") in result.output
    assert "relay worker did not start" in result.output


@pytest.mark.parametrize(("settings", "problem"), [
    ({}, None),
    ({"SMTP_TIMEOUT_SECONDS": "30"}, "SMTP_TIMEOUT_SECONDS is 30"),
    ({"GRAPH_TIMEOUT_SECONDS": "45"}, "GRAPH_TIMEOUT_SECONDS is 45"),
    ({"GMAIL_TIMEOUT_SECONDS": "29.5", "SEND_LEASE_MARGIN_SECONDS": "29"},
     "GMAIL_TIMEOUT_SECONDS is 29.5"),
    ({"SEND_LEASE_MARGIN_SECONDS": "120"}, "must be less than SEND_LEASE_SECONDS (120)"),
    ({"SEND_LEASE_MARGIN_SECONDS": "50", "SEND_LEASE_SECONDS": "40"},
     "must be less than SEND_LEASE_SECONDS (40)"),
    ({"SEND_LEASE_MARGIN_SECONDS": "abc"}, "is not a number"),
    ({"SEND_STOP_SECONDS": "0"}, "SEND_STOP_SECONDS (0) must be more than 0"),
    # The test sink's timeout follows the margin, so only the lease rule applies to it.
    ({"MAIL_TRANSPORT": "sink", "SEND_LEASE_MARGIN_SECONDS": "1", "SEND_LEASE_SECONDS": "3"},
     None),
])
def test_worker_settings_rules(settings: dict[str, str], problem: str | None):
    """Which settings make `relay worker` refuse to start, and does the message name them?"""
    config = {**{k: v for k, v in ENV_VARS.items() if v is not None}, **settings}
    problems = worker_problems(config)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


# -- in process: the dispatcher's side of stopping -----------------------------------------


def test_stop_hands_back_the_claimed_rows_not_started(app: Flask, session: Session,
                                                      world: World, now: datetime):
    """Stopped after its first send: are the rest back as before the claim, draft kept?

    The stop is asked before every provider call, so the call in flight finishes and is
    recorded, and nothing more is sent. Claimed rows go back to scheduled and a drafted one
    stays drafted with its draft; none keeps a lease or the claim's attempt.
    """
    ids = plain_sends(session, world.rep, now, 6)
    drafted = session.get(ScheduledSend, ids[-1])
    assert drafted is not None
    drafted.status, drafted.draft_id = SendStatus.DRAFTED, "kept-draft"
    session.commit()
    fake = FakeTransport(now=ManualClock(now).now)
    counted: list[tuple[str, str]] = []
    dispatcher = Dispatcher(app.extensions["relay.write_sessionmaker"], FakeResolver(fake),
                            settings=DispatchSettings(batch=20, group=2),
                            clock=ManualClock(now), draw=lambda: 0.5,
                            stop_requested=lambda: bool(fake.delivered),
                            on_outcome=lambda outcome, kind: counted.append((outcome, kind)))
    result = dispatcher.run_once()
    assert (result.claimed, result.sent, result.returned) == (6, 1, 5)
    assert sorted(counted) == [("returned", "fake")] + [("sent", "fake")]  # its group
    got = {r.id: (r.status, r.lease_token, r.lease_expires_at, r.attempts)
           for r in rows(session)}
    # The first group's second row was drafted before the stop: it keeps its draft.
    assert [got[i][0] for i in ids] == [SendStatus.SENT, SendStatus.DRAFTED] + [
        SendStatus.SCHEDULED] * 3 + [SendStatus.DRAFTED]
    assert {got[i][1:] for i in ids[1:]} == {(None, None, 0)}
    assert rows(session)[-1].draft_id == "kept-draft"
    assert sorted(fake.deliveries()) == ids[:1]


def test_a_tick_asked_to_stop_starts_nothing(app: Flask, session: Session, world: World,
                                             now: datetime, monkeypatch: pytest.MonkeyPatch):
    """With the stop event set, does a pass claim nothing and skip both syncs?"""
    ids = plain_sends(session, world.rep, now, 3)
    app.extensions["relay.resolver"] = FakeResolver(FakeTransport(now=ManualClock(now).now))
    synced: list[str] = []
    monkeypatch.setattr(worker, "_sync", lambda *_a: synced.append("mail"))
    monkeypatch.setattr(worker, "_salesforce", lambda *_a: synced.append("salesforce"))
    stop = threading.Event()
    stop.set()
    result = worker.tick(app, now, stop=stop)
    assert result.dispatch.claimed == 0 and synced == []
    assert {r.status for r in rows(session)} == {SendStatus.SCHEDULED} and len(ids) == 3
    stop.clear()
    assert worker.tick(app, now, stop=stop).dispatch.sent == 3
    assert synced == ["mail", "salesforce"]


# -- settings reach what they configure ----------------------------------------------------


def test_send_group_and_provider_timeouts_are_read_from_the_environment(tmp_path: Path):
    """Do SEND_GROUP and the *_TIMEOUT_SECONDS variables reach the dispatcher and transports?"""
    config = load_config(tmp_path, {"SEND_GROUP": "3", "SMTP_TIMEOUT_SECONDS": "7",
                                     "GRAPH_TIMEOUT_SECONDS": "9",
                                     "GMAIL_TIMEOUT_SECONDS": "11",
                                     "GOOGLE_CLIENT_ID": "gid", "MS_CLIENT_ID": "ms"})
    assert DispatchSettings.from_config(config).group == 3
    ring = KeyRing(keys=(("k1", Fernet.generate_key()),))
    resolver = MailboxResolver(lambda: None, config=config, keyring=ring,
                               instance_path=tmp_path, ms_token_client=object())

    def box(provider: Provider, secret: dict[str, str], **settings: str) -> Mailbox:
        return Mailbox(id=1, org_id=1, owner_id=1, provider=provider, email="a@b.test",
                       settings=settings, secret=ring.encrypt(json.dumps(secret)),
                       daily_limit=100)

    smtp = resolver.build(box(Provider.SMTP, {"password": "pw"}, smtp_host="127.0.0.1"))
    graph = resolver.build(box(Provider.MICROSOFT, {"refresh_token": "r"}))
    gmail = resolver.build(box(Provider.GOOGLE, {"refresh_token": "r"}))
    assert isinstance(smtp, SmtpTransport) and smtp.config.timeout == 7
    assert isinstance(graph, GraphTransport) and graph._timeout == 9
    assert isinstance(gmail, GmailTransport) and gmail.service._http.http.timeout == 11
