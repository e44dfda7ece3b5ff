"""Benchmark: launch 10,000 contacts into a 10-step campaign on PostgreSQL.

Times ``server.campaigns.launch.launch`` plus the commit (10,000 enrollments, 100,000
enrollment_step rows, 10,000 first-step queue rows and 20,000 feed events), next to a raw
psycopg ``COPY`` of 100,000 enrollment_step rows of the same shape, measured in the same run
(alternating, one of each per round). Not a test: it prints figures and makes no assertion.

    .venv/bin/python tests/benchmarks/bench_launch.py [--rounds 5] [--contacts 10000]
        [--first call|email]

BENCH_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1/relay_bench) is dropped
and re-migrated at the start.
"""

from __future__ import annotations

import argparse
import time as clock
from datetime import UTC, datetime, time, timedelta

import psycopg
from _common import database_url, libpq_url, median, ms
from sqlalchemy import insert, text
from sqlalchemy.orm import Session, sessionmaker

from server.accounts.models import Org, User
from server.accounts.service import create_user
from server.campaigns.launch import launch
from server.campaigns.models import Campaign
from server.campaigns.service import StepInput, create_campaign
from server.campaigns.spec import SendOption, StepType
from server.compose.models import Template
from server.contacts.models import Contact
from server.db import make_engine

STEPS = 10


def build_world(session: Session, n_contacts: int) -> tuple[int, list[int], list[int]]:
    """An org, a rep, two templates and ``n_contacts`` contacts; returns their ids."""
    org = Org(name="Bench org")
    session.add(org)
    session.flush()
    rep = create_user(session, org=org, email="rep@bench.test", name="Rep", timezone="UTC")
    templates = []
    for name in ("Intro", "Follow-up"):
        t = Template(org_id=org.id, created_by_id=rep.id, name=name,
                     subject="Hello {{first_name}}", body_html="<p>Hi</p>")
        session.add(t)
        templates.append(t)
    session.flush()
    session.execute(insert(Contact), [
        dict(org_id=org.id, owner_id=rep.id, email=f"person{i}@example.com",
             first_name=f"First{i}", last_name=f"Last{i}", company=f"Company {i % 97}")
        for i in range(n_contacts)])
    session.commit()
    ids = list(session.scalars(text("SELECT id FROM contact ORDER BY id")))
    return rep.id, [t.id for t in templates], ids


def steps_for(first: str, templates: list[int]) -> list[StepInput]:
    """A 10-step campaign over 8 days using every kind of step."""
    if first == "email":
        head = StepInput(day=1, type=StepType.EMAIL, send_option=SendOption.AT_TIME,
                         send_time=time(9, 30), template_id=templates[0])
    else:
        head = StepInput(day=1, type=StepType.CALL, title="Intro call")
    return [
        head,
        StepInput(day=1, type=StepType.INMAIL),
        StepInput(day=2, type=StepType.EMAIL, send_option=SendOption.AT_TIME,
                  send_time=time(10, 0), template_id=templates[0]),
        StepInput(day=3, type=StepType.EMAIL, send_option=SendOption.SAME_AS_PREVIOUS,
                  template_id=templates[1], follow_up=True),
        StepInput(day=3, type=StepType.CALL),
        StepInput(day=4, type=StepType.EMAIL, send_option=SendOption.TASK,
                  template_id=templates[1]),
        StepInput(day=5, type=StepType.CUSTOM, title="Research"),
        StepInput(day=6, type=StepType.EMAIL, send_option=SendOption.AT_TIME,
                  send_time=time(8, 0), template_id=templates[0]),
        StepInput(day=7, type=StepType.CALL),
        StepInput(day=8, type=StepType.EMAIL, send_option=SendOption.SAME_AS_PREVIOUS,
                  template_id=templates[1]),
    ]


def time_launch(factory: sessionmaker[Session], rep_id: int, steps: list[StepInput],
                contacts: list[int], round_no: int, now: datetime) -> tuple[float, int]:
    """Create a fresh campaign, then time launch() + commit; returns (seconds, campaign id)."""
    with factory() as session:
        rep = session.get(User, rep_id)
        assert rep is not None
        campaign = create_campaign(session, rep, name=f"Bench {round_no}",
                                   settings={"timezone": "Europe/Paris"}, steps=steps)
        session.commit()
        campaign_id = campaign.id
    with factory() as session:
        rep = session.get(User, rep_id)
        campaign = session.get(Campaign, campaign_id)
        assert rep is not None and campaign is not None
        _ = campaign.steps
        t0 = clock.perf_counter()
        result = launch(session, rep, campaign, contacts, now=now)
        session.commit()
        elapsed = clock.perf_counter() - t0
    assert len(result.enrolled) == len(contacts), "every contact should be enrolled"
    return elapsed, campaign_id


def time_copy(dsn: str, campaign_id: int) -> tuple[float, int]:
    """COPY 10 enrollment_step rows per enrollment of ``campaign_id`` (positions 10..19), commit.

    Same columns, types and foreign keys as the rows launch() writes; removed afterwards.
    """
    with psycopg.connect(dsn) as conn:
        enrollments = [r[0] for r in conn.execute(
            "SELECT id FROM enrollment WHERE campaign_id = %s ORDER BY id", (campaign_id,))]
        conn.commit()
        base = datetime(2030, 1, 7, 9, 0, tzinfo=UTC)
        planned = [base + timedelta(days=i) for i in range(STEPS)]
        t0 = clock.perf_counter()
        with conn.cursor() as cur, cur.copy(
                "COPY enrollment_step (enrollment_id, position, status, planned_at) "
                "FROM STDIN") as copy:
            for e in enrollments:
                for i in range(STEPS):
                    copy.write_row((e, STEPS + i, "pending", planned[i]))
        conn.commit()
        elapsed = clock.perf_counter() - t0
        rows = len(enrollments) * STEPS
        conn.execute("DELETE FROM enrollment_step WHERE position >= %s AND enrollment_id IN "
                     "(SELECT id FROM enrollment WHERE campaign_id = %s)", (STEPS, campaign_id))
        conn.commit()
    return elapsed, rows


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--first", choices=("call", "email"), default="call",
                        help="first step: a call (tasks) or an at_time email (outbox rows)")
    parser.add_argument("--salesforce", action="store_true",
                        help="the org has a Salesforce connection that syncs reminder tasks, "
                             "so every first-step task is queued in salesforce_sync")
    args = parser.parse_args()

    url = database_url()
    enqueue_times: list[float] = []
    engine = make_engine(url)
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory() as session:
        rep_id, templates, contacts = build_world(session, args.contacts)
        if args.salesforce:
            from server.campaigns import launch as launch_module
            from server.salesforce.models import ConnectionStatus, SalesforceConnection

            # Time the enqueue (one INSERT … SELECT) inside each launch, to show its share.
            real_enqueue = launch_module.salesforce.tasks_created

            def timed_enqueue(*a, **kw):
                t0 = clock.perf_counter()
                try:
                    return real_enqueue(*a, **kw)
                finally:
                    enqueue_times.append(clock.perf_counter() - t0)

            launch_module.salesforce = type("SalesforceTimed", (), {
                "tasks_created": staticmethod(timed_enqueue)})

            rep = session.get(User, rep_id)
            assert rep is not None
            session.add(SalesforceConnection(org_id=rep.org_id, sync_reminders=True,
                                             status=ConnectionStatus.CONNECTED))
            session.commit()
    steps = steps_for(args.first, templates)
    now = datetime.now(UTC)
    dsn = libpq_url(url)

    # Warm-up (imports, connection pool, statement caches, first-touch of the tables).
    time_launch(factory, rep_id, steps, contacts[:200], 0, now)

    enqueue_times.clear()  # the warm-up's
    launches, copies = [], []
    for r in range(1, args.rounds + 1):
        t_launch, campaign_id = time_launch(factory, rep_id, steps, contacts, r, now)
        t_copy, rows = time_copy(dsn, campaign_id)
        launches.append(t_launch)
        copies.append(t_copy)
        print(f"round {r}: launch {ms(t_launch)}   COPY {rows:,} rows {ms(t_copy)}   "
              f"ratio {t_launch / t_copy:5.2f}x", flush=True)

    with engine.connect() as conn:
        counts = conn.execute(text(
            "SELECT (SELECT count(*) FROM enrollment), (SELECT count(*) FROM enrollment_step), "
            "(SELECT count(*) FROM task), (SELECT count(*) FROM scheduled_send), "
            "(SELECT count(*) FROM feed_event), (SELECT count(*) FROM salesforce_sync)")).one()
    engine.dispose()
    n = args.contacts
    print()
    print(f"launch of {n:,} contacts x {STEPS} steps ({n * STEPS:,} enrollment_step rows), "
          f"first step {args.first}, {args.rounds} rounds")
    print(f"  launch() + commit, median: {ms(median(launches))}   "
          f"(min {ms(min(launches))}, max {ms(max(launches))})")
    print(f"  raw COPY baseline, median: {ms(median(copies))}   "
          f"(min {ms(min(copies))}, max {ms(max(copies))})")
    print(f"  ratio launch / COPY (medians): {median(launches) / median(copies):.2f}x")
    if enqueue_times:
        print(f"  of which salesforce_sync enqueue (INSERT … SELECT of {n:,} items), median: "
              f"{ms(median(enqueue_times))}  ({median(enqueue_times) / median(launches):.0%} "
              "of the launch median)")
    print(f"  target: launch < 2000 ms -> {'met' if median(launches) < 2 else 'NOT met'}")
    print(f"  rows in the database: enrollment {counts[0]:,}, enrollment_step {counts[1]:,}, "
          f"task {counts[2]:,}, scheduled_send {counts[3]:,}, feed_event {counts[4]:,}, "
          f"salesforce_sync {counts[5]:,}")


if __name__ == "__main__":
    main()
