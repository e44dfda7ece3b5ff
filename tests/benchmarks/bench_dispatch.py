"""Benchmark: the outbox dispatcher sending to a local SMTP sink, on PostgreSQL.

One ``Dispatcher.run_once()`` per worker process drains due emails (pacing off, caps far
above the load) through the SMTP transport (``server.sending.providers.smtp.SmtpTransport``,
which keeps one SMTP connection for up to 100 emails, as it sends in production) to an
aiosmtpd sink on 127.0.0.1 that runs in its own process and counts what it receives.
Measured, alternating, in each round:

- **baseline**: the same transport sending the same number of prebuilt messages from one
  process with no database at all (raw SMTP sends/s); also, for reference, the same with a
  new SMTP connection for every email (``session_messages=1``, the transport before);
- **1 worker**: one process dispatching every due email (claim, draft, mark sending, send,
  mark sent with its feed event — four transactions per email);
- **4 workers**: four processes started together on the same rows;
- **claiming alone**: ``claim_batch()`` over every due row in batches of 50, nothing sent
  (the per-email cost of claiming, pace bookkeeping included).

Between measurements every row is put back to ``scheduled`` and the pace state cleared.
For the worker runs the CPU time is also read from ``/proc`` (Linux): the workers' own
(``time.process_time``), the sink process's, PostgreSQL's (every ``postgres`` process plus the
postmaster's reaped children, so backends that exited count too — on a shared server this
includes other databases' work), and the whole machine's busy time against cores × wall time.
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
from server.sending.dispatcher import Dispatcher, DispatchSettings  # noqa: E402
from server.sending.headers import build_message  # noqa: E402
from server.sending.models import OrgSendPolicy, ScheduledSend, SendStatus  # noqa: E402
from server.sending.pacing import Pace  # noqa: E402
from server.sending.providers.smtp import SmtpConfig, SmtpTransport  # noqa: E402
from server.sending.transport import Draft  # noqa: E402

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


def transport(port: int, session_messages: int = 100) -> SmtpTransport:
    """The production SMTP transport, pointed at the sink (no TLS, no IMAP)."""
    return SmtpTransport(SmtpConfig(host="127.0.0.1", port=port, security="none", timeout=10,
                                    session_messages=session_messages),
                         daily_limit=10 ** 9)


# -- CPU accounting (Linux /proc) ------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (and of its reaped children), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK


def _postgres_cpu() -> float:
    """CPU seconds of every postgres process, plus the postmaster's reaped backends."""
    total = 0.0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        if "(postgres)" not in stat:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parent_is_postgres = False
        try:
            with open(f"/proc/{fields[1]}/comm") as fh:
                parent_is_postgres = fh.read().strip() == "postgres"
        except OSError:
            pass
        total += _proc_cpu(int(name), children=not parent_is_postgres)
    return total


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all cores; /proc/stat)."""
    with open("/proc/stat") as fh:
        cpu = [int(v) for v in fh.readline().split()[1:]]
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
    return (sum(cpu[:8]) - idle) / _TICK


def cpu_snapshot(sink_pid: int) -> tuple[float, float, float]:
    """(machine busy, PostgreSQL, sink) CPU seconds so far."""
    try:
        return _machine_busy(), _postgres_cpu(), _proc_cpu(sink_pid)
    except OSError:  # not Linux
        return 0.0, 0.0, 0.0


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


def dispatch(url: str, port: int, workers: int, sink_pid: int
             ) -> tuple[float, int, float, tuple[float, float, float, float]]:
    """Run ``workers`` processes on the due emails; what they did and what it cost.

    Returns the wall seconds (first start to last end), the emails sent, the workers' CPU
    seconds, and (wall, machine busy, PostgreSQL, sink) seconds read around the window.
    """
    start = mp.Event()
    times: Any = mp.Queue()
    procs = [mp.Process(target=_worker, args=(url, port, start, times)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(2.0)  # imports and app creation, off the clock
    t0 = time.perf_counter()
    busy0, pg0, sink0 = cpu_snapshot(sink_pid)
    start.set()
    got = [times.get(timeout=600) for _ in procs]
    busy1, pg1, sink1 = cpu_snapshot(sink_pid)
    window = (time.perf_counter() - t0, busy1 - busy0, pg1 - pg0, sink1 - sink0)
    for p in procs:
        p.join()
    return (max(e for _, e, _, _ in got) - min(s for s, _, _, _ in got),
            sum(n for _, _, n, _ in got), sum(c for *_, c in got), window)


def raw_smtp(port: int, emails: int, session_messages: int = 100) -> float:
    """Seconds to send ``emails`` prebuilt messages through the transport, no database."""
    t = transport(port, session_messages)
    now = datetime.now(UTC)
    messages = [build_message(send_id=i + 1, sender="Rep <rep0@bench.test>",
                              to=[f"p{i}@example.com"], subject=f"Hello {i}",
                              html=f"<p>Hello {i}, a short note.</p>",
                              text=f"Hello {i}, a short note.", date=now)
                for i in range(emails)]
    t0 = time.perf_counter()
    for m in messages:
        t.send_draft(Draft(m.message_id), m)
    seconds = time.perf_counter() - t0
    t.close()
    return seconds


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
    rows: dict[str, list[float]] = {k: [] for k in (
        "raw", "raw1", "w1", "w4", "claim", "cpu1", "cpu4", "pg1", "pg4", "sink1", "sink4",
        "busy1", "busy4")}
    try:
        for r in range(args.rounds):
            before = sink.count.value
            raw = raw_smtp(sink.port, args.emails)
            raw1 = raw_smtp(sink.port, args.emails, session_messages=1)
            assert sink.count.value - before == 2 * args.emails
            rows["raw"].append(args.emails / raw)
            rows["raw1"].append(args.emails / raw1)
            for workers in (1, 4):
                reset(url)
                before = sink.count.value
                seconds, sent, cpu, (wall, busy, pg, sunk) = dispatch(
                    url, sink.port, workers, sink.proc.pid or 0)
                delivered = sink.count.value - before
                assert sent == delivered == args.emails == count_sent(url), (
                    sent, delivered, args.emails)
                rows[f"w{workers}"].append(sent / seconds)
                rows[f"cpu{workers}"].append(cpu / sent * 1000)
                rows[f"pg{workers}"].append(pg / sent * 1000)
                rows[f"sink{workers}"].append(sunk / sent * 1000)
                rows[f"busy{workers}"].append(busy / (wall * (os.cpu_count() or 1)))
            reset(url)
            seconds, claimed = claiming(url, sink.port)
            assert claimed == args.emails
            rows["claim"].append(seconds / claimed * 1000)
            print(f"round {r + 1}: raw SMTP {rows['raw'][-1]:5.0f}/s (new connection per "
                  f"email {rows['raw1'][-1]:4.0f}/s) | 1 worker {rows['w1'][-1]:4.0f}/s | "
                  f"4 workers {rows['w4'][-1]:4.0f}/s | claiming {rows['claim'][-1]:.3f} "
                  f"ms/email", flush=True)
            for w in (1, 4):
                print(f"    {w} worker(s), CPU ms per email: workers {rows[f'cpu{w}'][-1]:.2f}, "
                      f"PostgreSQL {rows[f'pg{w}'][-1]:.2f}, sink {rows[f'sink{w}'][-1]:.2f}; "
                      f"machine busy {rows[f'busy{w}'][-1]:.0%} of its cores", flush=True)
    finally:
        sink.close()
    m = {k: median(v) for k, v in rows.items()}
    print(f"\n{args.emails} emails, {args.reps} reps, median of {args.rounds} rounds "
          f"(cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})")
    print(f"  baseline, raw SMTP from one process (no database): {m['raw']:7.0f} emails/s "
          f"(a new connection per email: {m['raw1']:.0f}/s)")
    print(f"  1 worker  (PostgreSQL + SMTP):                      {m['w1']:7.0f} emails/s "
          f"({m['w1'] / m['raw']:.2f}x baseline)")
    print(f"  4 workers (PostgreSQL + SMTP):                      {m['w4']:7.0f} emails/s "
          f"({m['w4'] / m['w1']:.2f}x one worker)")
    print(f"  claiming alone, batches of {SETTINGS.batch}:                   "
          f"{m['claim']:7.3f} ms/email")
    for w in (1, 4):
        total = m[f"cpu{w}"] + m[f"pg{w}"] + m[f"sink{w}"]
        print(f"  CPU per email, {w} worker(s): workers {m[f'cpu{w}']:.2f} ms + PostgreSQL "
              f"{m[f'pg{w}']:.2f} ms + sink {m[f'sink{w}']:.2f} ms = {total:.2f} ms "
              f"(at most {(os.cpu_count() or 1) / total * 1000:.0f} emails/s on "
              f"{os.cpu_count()} idle cores); machine busy {m[f'busy{w}']:.0%}")


if __name__ == "__main__":
    main()
