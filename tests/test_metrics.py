"""``GET /metrics`` and ``relay status``: the queue as the database shows it, for operators."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from server import worker
from server.accounts.models import User
from server.cli import main
from server.mailboxes.lifecycle import Mailbox, MailboxStatus, Provider
from server.salesforce.models import SyncItem, SyncKind, SyncStatus
from server.sending.fake import FakeResolver, FakeTransport, ManualClock
from server.sending.models import OrgSendPolicy, ScheduledSend, SendStatus
from tests.conftest import World, make_contact

ROOT = Path(__file__).resolve().parents[1]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels (parsed by prometheus_client)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def send(session: Session, owner: User, status: SendStatus, due_at: datetime, n: int) -> None:
    contact = make_contact(session, owner, f"m{n}@example.com")
    session.add(ScheduledSend(org_id=owner.org_id, owner_id=owner.id, contact_id=contact.id,
                              due_at=due_at, to_email=contact.email, subject="Hi", text="Hi",
                              status=status))


def mailbox(session: Session, owner: User, status: MailboxStatus,
            paused_until: datetime | None = None) -> None:
    session.add(Mailbox(org_id=owner.org_id, owner_id=owner.id, provider=Provider.SMTP,
                        status=status, email=owner.email, daily_limit=500,
                        paused_until=paused_until))


@pytest.fixture
def filled(session: Session, world: World, now: datetime,
           monkeypatch: pytest.MonkeyPatch) -> World:
    """A known queue at ``now`` (the clock the figures are read at is frozen there)."""
    monkeypatch.setattr("server.metrics.utcnow", lambda: now)
    ago = [now - timedelta(minutes=m) for m in (1, 10, 30, 90)]
    plan = [(SendStatus.SCHEDULED, ago[0]), (SendStatus.SCHEDULED, ago[1]),
            (SendStatus.SCHEDULED, now + timedelta(hours=2)),  # not due yet
            (SendStatus.DRAFTED, ago[2]),  # the oldest due unsent email: 30 min late
            (SendStatus.SENT, ago[3]), (SendStatus.SENT, ago[3]), (SendStatus.SENT, ago[3]),
            (SendStatus.FAILED, ago[3]), (SendStatus.NEEDS_ATTENTION, ago[3])]
    for n, (status, due) in enumerate(plan):
        send(session, world.rep, status, due, n)
    mailbox(session, world.rep, MailboxStatus.CONNECTED)
    mailbox(session, world.rep2, MailboxStatus.CONNECTED, paused_until=now + timedelta(hours=1))
    mailbox(session, world.admin, MailboxStatus.NEEDS_REAUTH)
    mailbox(session, world.outsider, MailboxStatus.CONNECTED,
            paused_until=now - timedelta(hours=1))  # a pause that is over
    for n, status in enumerate([SyncStatus.PENDING, SyncStatus.PENDING, SyncStatus.DONE,
                                SyncStatus.FAILED]):
        session.add(SyncItem(org_id=world.org.id, kind=SyncKind.TASK, status=status,
                             external_key=f"k{n}", due_at=now))
    session.commit()
    return world


def test_metrics_show_the_queue_the_database_holds(client: FlaskClient, filled: World):
    """Do the queue gauges show each state's count, the due count and the oldest due age?"""
    resp = client.get("/metrics", headers=filled.auth(filled.admin))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.content_type.startswith("text/plain")
    got = samples(resp.get_data(as_text=True))
    emails = {labels[0][1]: v for (name, labels), v in got.items()
              if name == "relay_outbox_emails"}
    assert emails == {"scheduled": 3, "claimed": 0, "drafted": 1, "sending": 0, "sent": 3,
                      "uncertain": 0, "failed": 1, "needs_attention": 1, "cancelled": 0,
                      "resent": 0}
    assert got[("relay_outbox_due_emails", ())] == 3
    assert got[("relay_outbox_oldest_due_age_seconds", ())] == 30 * 60
    boxes = {labels[0][1]: v for (name, labels), v in got.items() if name == "relay_mailboxes"}
    assert boxes == {"connected": 2, "paused": 1, "needs_reauth": 1, "disconnected": 0}
    sync = {labels[0][1]: v for (name, labels), v in got.items()
            if name == "relay_salesforce_sync_items"}
    assert sync == {"pending": 2, "claimed": 0, "done": 1, "unmatched": 0, "failed": 1,
                    "skipped": 0}


def test_oldest_due_age_is_zero_when_nothing_is_due(client: FlaskClient, world: World,
                                                     session: Session, now: datetime,
                                                     monkeypatch: pytest.MonkeyPatch):
    """With only sent and future emails, is the oldest due age 0 and the due count 0?"""
    monkeypatch.setattr("server.metrics.utcnow", lambda: now)
    send(session, world.rep, SendStatus.SENT, now - timedelta(days=3), 1)
    send(session, world.rep, SendStatus.SCHEDULED, now + timedelta(minutes=5), 2)
    session.commit()
    got = samples(client.get("/metrics", headers=world.auth(world.admin)).get_data(as_text=True))
    assert got[("relay_outbox_due_emails", ())] == 0
    assert got[("relay_outbox_oldest_due_age_seconds", ())] == 0


def test_sends_are_counted_by_outcome_and_provider(app: Flask, client: FlaskClient,
                                                   session: Session, world: World,
                                                   now: datetime):
    """Does a worker pass add each email it sent to relay_sends_total{outcome, provider}?"""
    session.add(OrgSendPolicy(org_id=world.org.id, daily_cap=1000))
    for n in range(3):
        send(session, world.rep, SendStatus.SCHEDULED, now - timedelta(minutes=1), n)
    session.commit()
    fake = FakeTransport(now=ManualClock(now).now, script={"send": ["permanent"]})
    app.extensions["relay.resolver"] = FakeResolver(fake)

    def counted() -> dict[str, float]:
        got = samples(client.get("/metrics", headers=world.auth(world.admin))
                      .get_data(as_text=True))
        return {labels: v for (name, labels), v in got.items() if name == "relay_sends_total"}

    before = counted()
    result = worker.dispatcher_for(app, now).run_once()
    assert (result.sent, result.failed) == (2, 1)
    after = counted()
    sent = (("outcome", "sent"), ("provider", "fake"))
    failed = (("outcome", "failed"), ("provider", "fake"))
    assert after[sent] - before.get(sent, 0) == 2
    assert after[failed] - before.get(failed, 0) == 1


def test_metrics_are_for_admins_or_the_metrics_token(app: Flask, client: FlaskClient,
                                                      world: World):
    """Who may scrape: no one anonymous, not a rep; an admin (token or session) or the secret."""
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=world.auth(world.rep)).status_code == 403
    assert client.get("/metrics", headers=world.auth(world.admin)).status_code == 200
    # Without METRICS_TOKEN configured, no bearer secret opens it.
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"}
                      ).status_code == 401
    app.config["METRICS_TOKEN"] = "s3cret-scrape"
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrape"}
                      ).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret-scrapX"}
                      ).status_code == 401
    # A signed-in browser session (bound to the user's session generation, as sign-in makes).
    with client.session_transaction() as s:
        s.update(user_id=world.rep.id, gen=world.rep.session_generation or 0)
    assert client.get("/metrics").status_code == 403
    with client.session_transaction() as s:
        s.update(user_id=world.admin.id, gen=world.admin.session_generation or 0)
    assert client.get("/metrics").status_code == 200


def test_counters_add_up_across_processes_in_multiprocess_mode(database_url: str,
                                                               tmp_path: Path):
    """With PROMETHEUS_MULTIPROC_DIR, does a scrape count what other processes counted?"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT),
           "DATABASE_URL": database_url}
    count = ("from server.metrics import count_send\n"
             "for _ in range({n}): count_send('sent', 'smtp')\n"
             "count_send('uncertain', 'graph')\n")
    workers = [subprocess.Popen([sys.executable, "-c", count.format(n=n)], env=env)
               for n in (2, 3)]  # two worker processes, side by side
    assert [w.wait(timeout=60) for w in workers] == [0, 0]
    scrape = ("from server.app import create_app\n"
              "from server.metrics import exposition\n"
              "app = create_app()\n"
              "print(exposition(app.extensions['relay.sessionmaker'])[0].decode())\n")
    out = subprocess.run([sys.executable, "-c", scrape], env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    got = samples(out)
    assert got[("relay_sends_total", (("outcome", "sent"), ("provider", "smtp")))] == 5
    assert got[("relay_sends_total", (("outcome", "uncertain"), ("provider", "graph")))] == 2
    assert ("relay_outbox_due_emails", ()) in got  # the database gauges are there too


def test_relay_status_prints_the_queue_figures(app: Flask, filled: World,
                                               monkeypatch: pytest.MonkeyPatch):
    """Does `relay status` print the same figures as /metrics, as a plain table?"""
    monkeypatch.setattr("server.cli._app", lambda: app)
    result = CliRunner().invoke(main, ["status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "at 2026-11-24T10:00:00+00:00"
    table: dict[tuple[str, str], str] = {}
    assert re.split(r"\s{2,}", lines[1]) == ["queue", "state", "count"]
    for line in lines[3:]:
        queue, state, count = re.split(r"\s{2,}", line.strip())
        table[(queue, state)] = count
    assert table[("emails", "scheduled")] == "3"
    assert table[("emails", "sent")] == "3"
    assert table[("emails", "due now (unsent)")] == "3"
    assert table[("emails", "oldest due, seconds late")] == "1800"
    assert table[("mailboxes", "paused")] == "1"
    assert table[("mailboxes", "connected")] == "2"
    assert table[("salesforce sync", "pending")] == "2"
