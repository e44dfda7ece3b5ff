"""Benchmark: the outbox dispatcher sending to a local SMTP sink, on PostgreSQL.

One ``Dispatcher.run_once()`` per worker process drains due emails (pacing off, caps far
above the load) through the SMTP transport (``server.mail.providers.smtp.SmtpTransport``,
one SMTP session per email, as it sends in production) to an aiosmtpd sink on 127.0.0.1 that
runs in its own process and counts what it receives. Measured, alternating, in each round:

- **baseline**: the same transport sending the same number of prebuilt messages from one
  process with no database at all (raw SMTP sends/s);
- **1 worker**: one process dispatching every due email (claim, draft, mark sending, send,
  mark sent with its feed event — four transactions per email);
- **4 workers**: four processes started together on the same rows;
- **claiming alone**: ``claim_batch()`` over every due row in batches of 50, nothing sent
  (the per-email cost of claiming, pace bookkeeping included).

Between measurements every row is put back to ``scheduled`` and the pace state cleared.
Not a test: it prints figures and makes no assertion.

    .venv/bin/python tests/benchmarks/bench_dispatch.py [--emails 3000] [--reps 50] [--rounds 2]

BENCH_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1/relay_sending_bench) is
dropped and re-migrated at the start.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

os.environ.setdefault("BENCH_DATABASE_URL",
                      "postgresql+psycopg://postgres@127.0.0.1/relay_sending_bench")

from _common import database_url, median  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402

from server.accounts.models import Org, User  # noqa: E402
from server.app import create_app  # noqa: E402
from server.contacts.models import Contact  # noqa: E402
from server.db import make_engine  # noqa: E402
from server.mail.dispatcher import Dispatcher, DispatchSettings  # noqa: E402
from server.mail.headers import build_message  # noqa: E402
from server.mail.models import OrgSendPolicy, ScheduledSend, SendStatus  # noqa: E402
from server.mail.pacing import Pace  # noqa: E402
from server.mail.providers.smtp import SmtpConfig, SmtpTransport  # noqa: E402
from server.mail.transport import Draft  # noqa: E402

SETTINGS = DispatchSettings(lease=timedelta(seconds=300), margin=timedelta(seconds=30),
                            batch=50, pace=Pace(count=0), daily_cap=10 ** 9)


# -- the SMTP sink --------------------------------------------------------------------------


def _sink(port_out: Any, count: Any, stop: Any) -> None:
    from aiosmtpd.controller import Controller

    class Counter:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            with count.get_lock():
                count.value += 1
            return "250 OK"

    import socket

    with socket.socket() as probe:  # a free port (aiosmtpd's readiness check needs a real one)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Counter(), hostname="127.0.0.1", port=port)
    controller.start()
    port_out.put(port)
    stop.wait()
    controller.stop()


class Sink:
    """aiosmtpd on 127.0.0.1 in its own process; ``count`` is how many emails it accepted."""

    def __init__(self) -> None:
        self.count = mp.Value("l", 0)
        self.stop = mp.Event()
        ports: Any = mp.Queue()
        self.proc = mp.Process(target=_sink, args=(ports, self.count, self.stop), daemon=True)
        self.proc.start()
        self.port = ports.get(timeout=30)

    def close(self) -> None:
        self.stop.set()
        self.proc.join(10)


def transport(port: int) -> SmtpTransport:
    """The production SMTP transport, pointed at the sink (no TLS, no IMAP)."""
    return SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=10),
                         daily_limit=10 ** 9)


class _Resolver:
    def __init__(self, port: int) -> None:
        self.transport = transport(port)

    def transport_for(self, owner_id: int) -> SmtpTransport:
        return self.transport


# -- data -----------------------------------------------------------------------------------


def seed(url: str, emails: int, reps: int) -> None:
    """``reps`` reps in one org and ``emails`` due emails spread over them (bulk inserts)."""
    engine = make_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        org_id = conn.execute(insert(Org).values(name="Bench", created_at=now)
                              .returning(Org.id)).scalar_one()
        conn.execute(insert(OrgSendPolicy).values(org_id=org_id, daily_cap=10 ** 9))
        owners = conn.execute(insert(User).returning(User.id), [
            {"org_id": org_id, "email": f"rep{i}@bench.test", "name": f"Rep {i}", "title": "",
             "timezone": "UTC", "role": "rep", "created_at": now} for i in range(reps)]
        ).scalars().all()
        contacts = conn.execute(insert(Contact).returning(Contact.id, Contact.owner_id), [
            {"org_id": org_id, "owner_id": owners[i % reps], "email": f"p{i}@example.com",
             "first_name": "P", "last_name": str(i), "custom_fields": {}, "created_at": now,
             "updated_at": now} for i in range(emails)]).all()
        conn.execute(insert(ScheduledSend), [
            {"org_id": org_id, "owner_id": owner, "contact_id": cid,
             "due_at": now - timedelta(minutes=1), "to_email": f"p{i}@example.com",
             "subject": f"Hello {i}", "html": f"<p>Hello {i}, a short note.</p>",
             "text": f"Hello {i}, a short note.", "status": SendStatus.SCHEDULED,
             "created_at": now, "updated_at": now}
            for i, (cid, owner) in enumerate(contacts)])
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    engine.dispose()


def reset(url: str) -> None:
    """Every email due again, nothing held, no pace state, no feed events."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "UPDATE scheduled_send SET status = 'scheduled', lease_token = NULL, "
            "lease_expires_at = NULL, attempts = 0, retries = 0, next_attempt_at = NULL, "
            "draft_id = NULL, message_id = NULL, provider_message_id = NULL, thread_id = NULL, "
            "sent_at = NULL, last_error = NULL, reason = NULL"))
        conn.execute(text("DELETE FROM mailbox_pace"))
        conn.execute(text("DELETE FROM feed_event"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE scheduled_send"))
    engine.dispose()


def count_sent(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        n = conn.scalar(text("SELECT count(*) FROM scheduled_send WHERE status = 'sent'"))
    engine.dispose()
    return int(n or 0)


# -- measurements ---------------------------------------------------------------------------


def _worker(url: str, port: int, start: Any, times: Any) -> None:
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    dispatcher = Dispatcher(app.extensions["relay.write_sessionmaker"], _Resolver(port),
                            settings=SETTINGS)
    # Warm the connection pool before the clock starts.
    with app.extensions["relay.write_sessionmaker"]() as s:
        s.execute(text("SELECT 1"))
        s.commit()
    start.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    result = dispatcher.run_once()
    times.put((t0, time.perf_counter(), result.sent, time.process_time() - c0))


def dispatch(url: str, port: int, workers: int) -> tuple[float, int, float]:
    """Wall seconds (first start to last end), emails sent, and the workers' CPU seconds."""
    start = mp.Event()
    times: Any = mp.Queue()
    procs = [mp.Process(target=_worker, args=(url, port, start, times)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # imports and app creation, off the clock
    start.set()
    got = [times.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return (max(e for _, e, _, _ in got) - min(s for s, _, _, _ in got),
            sum(n for _, _, n, _ in got), sum(c for *_, c in got))


def raw_smtp(port: int, emails: int) -> float:
    """Seconds to send ``emails`` prebuilt messages through the transport, no database."""
    t = transport(port)
    now = datetime.now(UTC)
    messages = [build_message(send_id=i + 1, sender="Rep <rep0@bench.test>",
                              to=[f"p{i}@example.com"], subject=f"Hello {i}",
                              html=f"<p>Hello {i}, a short note.</p>",
                              text=f"Hello {i}, a short note.", date=now)
                for i in range(emails)]
    t0 = time.perf_counter()
    for m in messages:
        t.send_draft(Draft(m.message_id), m)
    return time.perf_counter() - t0


def claiming(url: str, port: int) -> tuple[float, int]:
    """Seconds to claim every due row in batches of 50 (nothing sent), and rows claimed."""
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
    dispatcher = Dispatcher(app.extensions["relay.write_sessionmaker"], _Resolver(port),
                            settings=SETTINGS)
    claimed = 0
    t0 = time.perf_counter()
    while True:
        batch = dispatcher.claim_batch()
        if not batch:
            break
        claimed += len(batch)
    seconds = time.perf_counter() - t0
    app.extensions["relay.engine"].dispose()
    return seconds, claimed


def main() -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--emails", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    url = database_url()
    seed(url, args.emails, args.reps)
    sink = Sink()
    rows: dict[str, list[float]] = {"raw": [], "w1": [], "w4": [], "claim": [], "cpu1": []}
    try:
        for r in range(args.rounds):
            before = sink.count.value
            raw = raw_smtp(sink.port, args.emails)
            assert sink.count.value - before == args.emails
            rows["raw"].append(args.emails / raw)
            for workers, key in ((1, "w1"), (4, "w4")):
                reset(url)
                before = sink.count.value
                seconds, sent, cpu = dispatch(url, sink.port, workers)
                if workers == 1:
                    rows["cpu1"].append(cpu / sent * 1000)
                delivered = sink.count.value - before
                assert sent == delivered == args.emails == count_sent(url), (
                    sent, delivered, args.emails)
                rows[key].append(sent / seconds)
            reset(url)
            seconds, claimed = claiming(url, sink.port)
            assert claimed == args.emails
            rows["claim"].append(seconds / claimed * 1000)
            print(f"round {r + 1}: raw SMTP {rows['raw'][-1]:7.0f}/s | 1 worker "
                  f"{rows['w1'][-1]:7.0f}/s ({rows['cpu1'][-1]:.2f} ms CPU/email) | "
                  f"4 workers {rows['w4'][-1]:7.0f}/s | claiming "
                  f"{rows['claim'][-1]:.3f} ms/email", flush=True)
    finally:
        sink.close()
    raw, w1, w4, cl, cpu1 = (median(rows[k]) for k in ("raw", "w1", "w4", "claim", "cpu1"))
    print(f"\n{args.emails} emails, {args.reps} reps, median of {args.rounds} rounds "
          f"(cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    print(f"  baseline, raw SMTP from one process (no database): {raw:7.0f} emails/s")
    print(f"  1 worker  (PostgreSQL + SMTP):                      {w1:7.0f} emails/s "
          f"({w1 / raw:.2f}x baseline; the worker's own CPU: {cpu1:.2f} ms/email)")
    print(f"  4 workers (PostgreSQL + SMTP):                      {w4:7.0f} emails/s "
          f"({w4 / w1:.2f}x one worker)")
    print(f"  claiming alone, batches of {SETTINGS.batch}:                   {cl:7.3f} ms/email")


if __name__ == "__main__":
    main()
