"""No worker waits on another: a worker stopped inside any of its transactions (SIGSTOP).

Real ``relay worker`` processes send to the HTTP sink (:class:`server.sending.fake.SinkServer`,
each request taking a few milliseconds like a provider). Worker A is stopped with SIGSTOP
inside one of its transactions (``RELAY_STOP_AT``), holding that transaction's row locks;
workers B and C must then send at no less than 80% of the rate the two reach without A.
The baseline runs at the same time: two more workers on a twin schema of the same database,
where nothing is stopped, so a machine that gets busier or quieter during the test weighs
on both alike. PostgreSQL only.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, text
from sqlalchemy.engine import Engine, make_url

from server.accounts.models import Org, User
from server.contacts.models import Contact
from server.db import make_engine, utcnow
from server.migrations import upgrade
from server.sending.fake import SinkServer
from server.sending.models import OrgSendPolicy, ScheduledSend, SendStatus
from tests.sending.test_dispatcher_faults import needs_pg, start_worker, stopped, worker_env

#: Where A is stopped: inside the lease sweep, a claim, the draft-id write, the "sending"
#: transaction (which holds pace rows) and the "sent" transaction.
STOP_POINTS = ("in_sweep_tx", "in_claim", "in_draft_tx", "in_sending_tx", "in_sent_tx")
REPS = 20
SENDS = 800  # per run; A can hold the pace rows of at most one group's reps (10)
WARMUP = 30  # deliveries of B and C before the measured window starts
MEASURED = 250  # deliveries of B and C in the measured window
TWIN = "stall_twin"  # the baseline's schema
EXPIRED = 20  # expired claimed and sending rows seeded for A's sweep to stop in


def seed_world(engine: Engine) -> list[tuple[int, int, str]]:
    """An org with ``REPS`` reps and ``SENDS`` contacts spread over them (id, owner, email)."""
    now = utcnow()
    with engine.begin() as conn:
        org_id = conn.execute(insert(Org).values(name="Stall", created_at=now)
                              .returning(Org.id)).scalar_one()
        conn.execute(insert(OrgSendPolicy).values(org_id=org_id, daily_cap=1_000_000))
        reps = [conn.execute(insert(User).values(
            org_id=org_id, email=f"rep{i}@stall.test", name=f"Rep {i}", title="",
            timezone="UTC", role="rep", created_at=now).returning(User.id)).scalar_one()
            for i in range(REPS)]
        contacts = conn.execute(insert(Contact).returning(Contact.id, Contact.owner_id,
                                                          Contact.email), [
            {"org_id": org_id, "owner_id": reps[i % REPS], "email": f"s{i}@example.com",
             "first_name": "S", "last_name": str(i), "custom_fields": {},
             "created_at": now, "updated_at": now} for i in range(SENDS)]).all()
    return [(c.id, c.owner_id, c.email) for c in contacts]


def add_sends(engine: Engine, contacts: list[tuple[int, int, str]], *,
              expired: int = 0) -> None:
    """One due email per contact (a fresh run), and ``expired`` more to sweep.

    Those are left ``claimed`` and ``sending`` by a worker whose lease ran out.
    """
    now = utcnow()
    with engine.begin() as conn:
        org_id = conn.execute(text("SELECT id FROM org WHERE name = 'Stall'")).scalar_one()
        rows = [{"org_id": org_id, "owner_id": owner, "contact_id": cid, "due_at": now,
                 "to_email": email, "subject": f"Hello {cid}", "html": f"<p>Hello {cid}</p>",
                 "text": f"Hello {cid}", "status": SendStatus.SCHEDULED, "created_at": now,
                 "updated_at": now, "lease_token": None, "lease_expires_at": None,
                 "attempts": 0} for cid, owner, email in contacts]
        for i in range(expired):
            cid, owner, email = contacts[i]
            rows.append({**rows[i], "status": (SendStatus.CLAIMED, SendStatus.SENDING)[i % 2],
                         "lease_token": f"gone{i}", "attempts": 1,
                         "lease_expires_at": now - timedelta(seconds=60)})
        conn.execute(insert(ScheduledSend), rows)


def clear(engine: Engine, sink: SinkServer) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM feed_event"))
        conn.execute(text("DELETE FROM scheduled_send"))
        conn.execute(text("DELETE FROM mailbox_pace"))
    with sink.state.lock:
        sink.state.drafts.clear()
        sink.state.delivered.clear()
        sink.state.requests.clear()


def stop(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def deliveries_of(sink: SinkServer, pids: set[int]) -> list[float]:
    """When these workers delivered each of their emails so far, in order."""
    with sink.state.lock:
        return sorted(at for _s, _m, at, pid in sink.state.delivered if pid in pids)


def duplicated(sink: SinkServer, pids: set[int]) -> list[int]:
    """Send ids these workers (one database) delivered more than once."""
    with sink.state.lock:
        counts = Counter(send for send, _m, _at, pid in sink.state.delivered if pid in pids)
    return [send for send, n in counts.items() if n > 1]


@pytest.fixture
def twin_url(database_url: str) -> Iterator[str]:
    """The same database seen through a schema of its own (the baseline's), migrated."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {TWIN} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {TWIN}"))
    url = make_url(database_url).update_query_dict(
        {"options": f"-c search_path={TWIN}"}).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {TWIN} CASCADE"))
    engine.dispose()


@needs_pg
def test_a_worker_stopped_inside_each_transaction_does_not_slow_the_other_two(
        database_url: str, twin_url: str, tmp_path: Path):
    """With A stopped inside each of its transactions, do B and C keep ≥ 80% of their rate?

    For each stop point: A is started alone and stops (SIGSTOP) inside that transaction,
    holding its row locks, with leases of 3 s that run out meanwhile. Then B and C start on
    its database and, at the same moment, B' and C' on a twin schema where nothing is
    stopped: the baseline, under the same load. B and C's rate over their measured window
    is compared with what B' and C' delivered in the same seconds. Nothing is delivered
    twice.
    """
    engine, twin = make_engine(database_url), make_engine(twin_url)
    contacts, twin_contacts = seed_world(engine), seed_world(twin)
    ratios: dict[str, float] = {}
    figures: dict[str, tuple[float, float]] = {}
    duplicates: list[int] = []
    with SinkServer({}, delay=0.004) as sink:
        env = worker_env(database_url, sink.url, DB_IDLE_IN_TRANSACTION_SECONDS="600",
                         WORKER_POLL_SECONDS="0.1")
        twin_env = {**env, "DATABASE_URL": twin_url}
        for point in STOP_POINTS:
            clear(engine, sink)
            clear(twin, sink)
            add_sends(engine, contacts, expired=EXPIRED if point == "in_sweep_tx" else 0)
            add_sends(twin, twin_contacts)
            procs: list[subprocess.Popen[bytes]] = []
            try:
                a = start_worker({**env, "RELAY_STOP_AT": point}, tmp_path / f"a-{point}.log")
                procs.append(a)
                deadline = time.monotonic() + 90
                while not stopped(a.pid):
                    assert a.poll() is None and time.monotonic() < deadline, (
                        point, (tmp_path / f"a-{point}.log").read_text()[-3000:])
                    time.sleep(0.05)
                procs += [start_worker(env, tmp_path / f"b-{point}.log"),
                          start_worker(twin_env, tmp_path / f"b2-{point}.log"),
                          start_worker(env, tmp_path / f"c-{point}.log"),
                          start_worker(twin_env, tmp_path / f"c2-{point}.log")]
                pair = {procs[1].pid, procs[3].pid}
                twins = {procs[2].pid, procs[4].pid}
                began = time.monotonic()
                while (len(deliveries_of(sink, pair)) <= WARMUP + MEASURED
                       and time.monotonic() - began < 180):
                    time.sleep(0.1)
                assert stopped(a.pid)  # it held its locks all along
                ends = time.time()
            finally:
                stop(*procs)
            duplicates += duplicated(sink, {a.pid} | pair) + duplicated(sink, twins)
            mine = deliveries_of(sink, pair)
            start = mine[WARMUP] if len(mine) > WARMUP else ends - 180
            end = mine[WARMUP + MEASURED] if len(mine) > WARMUP + MEASURED else ends
            done = len([t for t in mine if start < t <= end])
            base = len([t for t in deliveries_of(sink, twins) if start < t <= end])
            figures[point] = (round(done / (end - start), 1), round(base / (end - start), 1))
            ratios[point] = round(done / max(base, 1), 2)
    engine.dispose()
    twin.dispose()
    report = {"rates (A stopped, twin baseline) per second": figures, "ratios": ratios}
    print(report)
    assert duplicates == []
    assert all(r >= 0.8 for r in ratios.values()), report
