"""Benchmark: ``GET /api/tasks?due=today`` for a rep with 500 open tasks among 1,000,000 tasks.

Builds the data on PostgreSQL with ``generate_series`` (200 reps x 500 contacts x 10 steps =
1,000,000 task rows; every rep, the measured one included, has 500 open tasks, about 100 of
them due today in the rep's time zone), then times requests through the Flask test client
with a real Bearer token: the median over many requests after a warm-up, next to two
baselines measured in the same run, alternating with it: ``GET /healthz`` through the same
client (app, request and session overhead, one trivial query) and the list query alone,
run over plain psycopg. Prints the ``EXPLAIN (ANALYZE, BUFFERS)`` plan of the list query.
Not a test: it prints figures and makes no assertion.

    .venv/bin/python tests/benchmarks/bench_tasks.py [--requests 200] [--reps 200]

BENCH_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1/relay_bench) is dropped
and re-migrated at the start.
"""

from __future__ import annotations

import argparse
import time as clock
from typing import Any

import psycopg
from _common import database_url, libpq_url, median, ms, run_load_sql
from sqlalchemy import event, text

from server.accounts.models import User
from server.accounts.service import create_token
from server.app import create_app

CONTACTS_PER_REP = 500
STEPS = 10
REP_TZ = "Europe/Paris"

# The measured rep is user 1. Enrollment e (one per contact) belongs to rep (e-1)/500+1 and
# has 10 steps, each with a task: step 0 is open, due between two days ago and two days
# ahead (one in five today, in the rep's time zone); the other nine are done or skipped.
LOAD_SQL = """
SET LOCAL session_replication_role = replica;  -- bulk load of consistent rows: skip FK checks
INSERT INTO org (id, name, created_at) VALUES (1, 'Bench org', now());
INSERT INTO "user" (id, org_id, email, name, title, timezone, role, created_at)
SELECT g, 1, 'rep' || g || '@bench.test', 'Rep ' || g, '', :tz, 'rep', now()
FROM generate_series(1, :reps) g;
INSERT INTO campaign (id, org_id, owner_id, name, timezone, skip_weekends, late_task_policy,
                      on_reply, on_bounce, status, created_at, updated_at)
SELECT g, 1, g, 'Campaign ' || g, 'UTC', false, 'slide', 'end', 'remove', 'active', now(), now()
FROM generate_series(1, :reps) g;
INSERT INTO campaign_step (id, campaign_id, position, day, type, follow_up, title, notes,
                           priority)
SELECT (c - 1) * :steps + p + 1, c, p, p + 1, 'call', false, '', '', 'normal'
FROM generate_series(1, :reps) c, generate_series(0, :steps - 1) p;
INSERT INTO contact (id, org_id, owner_id, email, first_name, last_name, title, company,
                     custom_fields, created_at, updated_at)
SELECT g, 1, (g - 1) / :per_rep + 1, 'person' || g || '@example.com', 'First' || g,
       'Last' || g, '', 'Company ' || g % 97, '{}', now(), now()
FROM generate_series(1, :reps * :per_rep) g;
INSERT INTO enrollment (id, org_id, campaign_id, contact_id, owner_id, start_at, status,
                        created_at)
SELECT g, 1, (g - 1) / :per_rep + 1, g, (g - 1) / :per_rep + 1, now() - interval '3 days',
       'active', now()
FROM generate_series(1, :reps * :per_rep) g;
INSERT INTO enrollment_step (id, enrollment_id, position, status, planned_at, done_at)
SELECT (e - 1) * :steps + p + 1, e, p,
       CASE WHEN p = 0 THEN 'active' ELSE 'done' END,
       now() - interval '3 days' + p * interval '1 day',
       CASE WHEN p = 0 THEN NULL ELSE now() - interval '1 day' END
FROM generate_series(1, :reps * :per_rep) e, generate_series(0, :steps - 1) p;
INSERT INTO task (id, org_id, owner_id, campaign_id, enrollment_id, enrollment_step_id,
                  contact_id, type, status, title, notes, priority, day, step_in_day, due_at,
                  completed_at, via, created_at)
SELECT (e - 1) * :steps + p + 1, 1, (e - 1) / :per_rep + 1, (e - 1) / :per_rep + 1, e,
       (e - 1) * :steps + p + 1, e, 'call',
       CASE WHEN p = 0 THEN 'open' WHEN p % 3 = 0 THEN 'skipped' ELSE 'done' END,
       'Call First' || e || ' Last' || e, '', 'normal', p + 1, 1,
       CASE WHEN p = 0
            THEN (date_trunc('day', now() AT TIME ZONE :tz) AT TIME ZONE :tz)
                 + (e % 5 - 2) * interval '1 day' + (e % 97) * interval '10 minutes'
            ELSE now() - (p + 10) * interval '1 day' END,
       CASE WHEN p = 0 THEN NULL ELSE now() - p * interval '1 day' END,
       CASE WHEN p = 0 THEN NULL ELSE 'web' END,
       now()
FROM generate_series(1, :reps * :per_rep) e, generate_series(0, :steps - 1) p;
"""

SEQUENCES = ("org", "user", "campaign", "campaign_step", "contact", "enrollment",
             "enrollment_step", "task")


def load(engine: Any, reps: int) -> None:
    """Fill the database (about a minute for 1,000,000 tasks), then VACUUM ANALYZE it."""
    run_load_sql(engine, LOAD_SQL.replace(":reps", str(int(reps)))
                 .replace(":per_rep", str(CONTACTS_PER_REP)).replace(":steps", str(STEPS)),
                 {"tz": REP_TZ}, SEQUENCES)


def main() -> None:
    """Build the data, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()

    url = database_url()
    app = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "bench"})
    engine = app.extensions["relay.engine"]
    t0 = clock.perf_counter()
    load(engine, args.reps)
    factory = app.extensions["relay.sessionmaker"]
    with factory() as session:
        rep = session.get(User, 1)
        assert rep is not None
        token = create_token(session, rep, "bench")
        session.commit()
        counts = session.execute(text(
            "SELECT count(*), count(*) FILTER (WHERE owner_id = 1 AND status = 'open') "
            "FROM task")).one()
    print(f"loaded {counts[0]:,} tasks ({counts[1]} open for the measured rep, "
          f"{args.reps} reps) in {clock.perf_counter() - t0:.1f} s")

    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    path = "/api/tasks?due=today"

    # Capture the list query the endpoint runs, to EXPLAIN it and run it alone.
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    first = client.get(path, headers=headers)
    event.remove(engine, "before_cursor_execute", capture)
    assert first.status_code == 200, first.get_data(as_text=True)
    body = first.get_json()
    list_sql, list_params = next((s, p) for s, p in captured
                                 if "FROM task JOIN campaign" in s and "LIMIT" in s)
    print(f"GET {path}: {body['total']} tasks due today, {len(body['items'])} on the page; "
          f"{len(captured)} SQL statements per request")

    raw = psycopg.connect(libpq_url(url), autocommit=True)

    def raw_query() -> None:
        raw.execute(list_sql, list_params).fetchall()

    def get(p: str, h: dict[str, str] | None = None) -> None:
        r = client.get(p, headers=h)
        assert r.status_code == 200

    for _ in range(args.warmup):
        get(path, headers)
        get("/healthz")
        raw_query()
    tasks, health, sql = [], [], []
    for _ in range(args.requests):
        for fn, out in ((lambda: get(path, headers), tasks), (lambda: get("/healthz"), health),
                        (raw_query, sql)):
            start = clock.perf_counter()
            fn()
            out.append(clock.perf_counter() - start)

    plan = [r[0] for r in raw.execute("EXPLAIN (ANALYZE, BUFFERS) " + list_sql, list_params)]
    raw.close()
    engine.dispose()

    print()
    print("EXPLAIN (ANALYZE, BUFFERS) of the list query:")
    for line in plan:
        print("  " + line)
    print()
    print(f"{args.requests} requests each, after {args.warmup} warm-up rounds, alternating:")
    print(f"  GET {path} (Bearer token), median: {ms(median(tasks))}   "
          f"(p90 {ms(sorted(tasks)[int(len(tasks) * 0.9)])})")
    print(f"  baseline GET /healthz, median:            {ms(median(health))}   "
          f"ratio {median(tasks) / median(health):.2f}x")
    print(f"  baseline list query alone (psycopg), median: {ms(median(sql))}   "
          f"ratio {median(tasks) / median(sql):.2f}x")
    print(f"  uses an index: {'yes' if any('Index' in line for line in plan) else 'NO'}")
    print(f"  target: median < 10 ms -> {'met' if median(tasks) < 0.010 else 'NOT met'}")


if __name__ == "__main__":
    main()
