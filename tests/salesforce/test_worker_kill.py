"""A ``relay worker`` SIGKILLed mid-batch and restarted creates no duplicate Task (PostgreSQL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.campaigns.launch import launch
from server.campaigns.models import Campaign
from server.campaigns.spec import StepType
from server.db import session_scope, utcnow
from server.salesforce.fake import Failure, FakeSalesforce
from server.salesforce.models import SyncItem, SyncStatus
from tests.conftest import PG_URL, make_campaign, make_contact, make_org, make_user, task_step
from tests.salesforce.conftest import KEY_1, connect

WORKER = """
import sys
from server.app import create_app
from server.worker import run
app = create_app({"DATABASE_URL": sys.argv[1], "SECRET_KEY": "test-secret",
                  "SALESFORCE_LOGIN_URL": sys.argv[2], "SALESFORCE_CA_BUNDLE": sys.argv[3],
                  "SALESFORCE_CLIENT_ID": "fake-client", "SALESFORCE_CLIENT_SECRET": "fake-secret",
                  "ENCRYPTION_KEYS": sys.argv[4], "WORKER_POLL_SECONDS": 0.2,
                  "SALESFORCE_LEASE_SECONDS": 3})
run(app)
"""


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _worker(app: Flask, fake: FakeSalesforce, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, app.config["DATABASE_URL"], fake.url,
             str(fake.cert_path), KEY_1], stdout=out, stderr=out,
            env={**os.environ, "RELAY_ENV": "development"})


@pytest.mark.skipif(not PG_URL, reason="several worker processes need PostgreSQL")
def test_worker_killed_mid_batch_then_restarted_creates_each_task_once(
        sf_app: Flask, session: Session, fake_sf: FakeSalesforce, tmp_path: Path):
    """Killed mid-batch and restarted: is each Salesforce Task created exactly once?

    The first worker is SIGKILLed while Salesforce holds the answer to its third create (the
    Task exists, its Id is not stored); the second takes over once the leases run out.
    """
    now = utcnow()
    org = make_org(session)
    rep = make_user(session, org, "rep@a.test")
    contacts = [make_contact(session, rep, f"p{i}@x.test") for i in range(6)]
    campaign = make_campaign(session, rep, [task_step(1, StepType.CALL, "Call")])
    session.commit()
    for c in contacts:
        fake_sf.add("Contact", Email=c.email, LastName="P")
    connect(sf_app, fake_sf, org.id, now)
    with session_scope(sf_app) as s:
        launch(s, s.get(User, rep.id), s.get(Campaign, campaign.id), [c.id for c in contacts],
               now=now)
    # Two creates answer; the third is created in Salesforce, then its answer is held.
    fake_sf.fail("create", Failure(ok=True), Failure(ok=True), Failure(hold=60))

    log = tmp_path / "worker.log"
    first = _worker(sf_app, fake_sf, log)
    try:
        _wait(lambda: len(fake_sf.tasks()) == 3, 60, "three Tasks created by the first worker")
        time.sleep(0.3)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    session.commit()
    states = [i.status for i in session.scalars(select(SyncItem).order_by(SyncItem.id))]
    assert states.count(SyncStatus.DONE) == 2
    assert states.count(SyncStatus.CLAIMED) == 4  # the dead worker's lease still holds them

    second = _worker(sf_app, fake_sf, log)
    try:
        def all_done() -> bool:
            session.commit()
            return {i.status for i in session.scalars(select(SyncItem))} == {SyncStatus.DONE}

        _wait(all_done, 60, "the restarted worker to finish after the lease ran out")
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(10)
    tasks = fake_sf.tasks()
    assert len(tasks) == 6, log.read_text()
    assert len({t["CallObject"] for t in tasks}) == 6
    session.expire_all()
    stored = {i.sf_id for i in session.scalars(select(SyncItem))}
    assert stored == {t["Id"] for t in tasks}
