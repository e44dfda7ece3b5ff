"""Benchmark: ``GET /api/tasks/{id}/prefill`` under gunicorn, next to ``GET /api/ping``.

Builds 1,000,000 email tasks in PostgreSQL with ``generate_series`` (200 reps x 500 contacts x
10 email steps; every second step a follow-up of the one before, so the measured documents
quote a previous email), starts gunicorn (1 worker, gthread, 4 threads) pinned to core 0 with
``taskset``, and drives it with ``wrk -t1 -c16`` pinned to core 1, alternating runs of the bare
authenticated ``GET /api/ping`` (same auth function, same commit) and of the prefill endpoint
over the measured rep's open follow-up tasks. Prints requests per second, p50 and p99 of each
run, and the prefill/ping ratio of the medians. Not a test: it prints figures and makes no
assertion.

    .venv/bin/python tests/benchmarks/bench_prefill.py [--rounds 3] [--duration 10]
        [--tasks 100] [--no-cache] [--reuse]

``--no-cache`` turns the in-process document cache off (every request renders its document);
``--tasks`` is how many of the rep's tasks the requests cycle through; ``--reuse`` keeps the
data of the previous run instead of loading it again.

BENCH_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1/relay_bench_prefill; the
name must start with ``relay_bench_p``) is dropped and re-migrated at the start.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time as clock
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("BENCH_DATABASE_URL",
                      "postgresql+psycopg://postgres@127.0.0.1/relay_bench_prefill")

from _common import ROOT, database_url, run_load_sql  # noqa: E402
from sqlalchemy import text  # noqa: E402

from server.accounts.models import User  # noqa: E402
from server.accounts.service import create_token  # noqa: E402
from server.app import create_app  # noqa: E402
from server.config import normalise_database_url  # noqa: E402
from server.db import dispose  # noqa: E402
from server.migrations import upgrade  # noqa: E402

CONTACTS_PER_REP = 500
STEPS = 10
REP_TZ = "Europe/Paris"

# Enrollment e (one per contact) belongs to rep (e-1)/500+1; each of its 10 steps has an email
# task. Step p uses template 1 + p % 2; odd steps are follow-ups of the step before. Step 0 is
# done (sent, with a Message-ID), step 1 is the open task the rep is working on, the later
# ones are pending; their task rows are there for the table's size (marked cancelled).
LOAD_SQL = """
SET LOCAL session_replication_role = replica;  -- bulk load of consistent rows: skip FK checks
INSERT INTO org (id, name, created_at) VALUES (1, 'Bench org', now());
INSERT INTO "user" (id, org_id, email, name, title, timezone, role, created_at)
SELECT g, 1, 'rep' || g || '@bench.test', 'Rep ' || g, 'Account Executive', :tz, 'rep', now()
FROM generate_series(1, :reps) g;
INSERT INTO template (id, org_id, created_by_id, name, subject, body_html, created_at,
                      updated_at)
VALUES (1, 1, 1, 'Intro', 'A question for {{company}}',
        '<p>Hi {{first_name | default: "there"}},</p>'
        '<p>I noticed {{company}} is growing its {{title}} team. Teams like yours use us to '
        'cut the time spent on outreach by half, without losing the personal touch.</p>'
        '<p>Would a 20-minute call next week be useful?</p><p>Best,<br>{{my_name}}<br>'
        '{{my_title}}</p>', now(), now()),
       (2, 1, 1, 'Bump', '',
        '<p>Hi {{first_name}}, just bringing this back to the top of your inbox.</p>'
        '<p>{{my_name}}</p>', now(), now());
INSERT INTO campaign (id, org_id, owner_id, name, timezone, skip_weekends, late_task_policy,
                      on_reply, on_bounce, status, created_at, updated_at)
SELECT g, 1, g, 'Campaign ' || g, 'UTC', false, 'slide', 'end', 'remove', 'active', now(), now()
FROM generate_series(1, :reps) g;
INSERT INTO campaign_step (id, campaign_id, position, day, type, send_option, follow_up,
                           template_id, title, notes, priority)
SELECT (c - 1) * :steps + p + 1, c, p, p + 1, 'email', 'task', p % 2 = 1, 1 + p % 2, '', '',
       'normal'
FROM generate_series(1, :reps) c, generate_series(0, :steps - 1) p;
INSERT INTO contact (id, org_id, owner_id, email, first_name, last_name, title, company,
                     custom_fields, created_at, updated_at)
SELECT g, 1, (g - 1) / :per_rep + 1, 'person' || g || '@example.com', 'First' || g,
       'Last' || g, 'Head of Sales', 'Company ' || g % 97, '{"industry": "retail"}', now(),
       now()
FROM generate_series(1, :reps * :per_rep) g;
INSERT INTO enrollment (id, org_id, campaign_id, contact_id, owner_id, start_at, status,
                        created_at)
SELECT g, 1, (g - 1) / :per_rep + 1, g, (g - 1) / :per_rep + 1, now() - interval '3 days',
       'active', now()
FROM generate_series(1, :reps * :per_rep) g;
INSERT INTO enrollment_step (id, enrollment_id, position, status, planned_at, done_at)
SELECT (e - 1) * :steps + p + 1, e, p,
       CASE WHEN p = 0 THEN 'done' WHEN p = 1 THEN 'active' ELSE 'pending' END,
       now() - interval '3 days' + p * interval '1 day',
       CASE WHEN p = 0 THEN now() - interval '2 days' END
FROM generate_series(1, :reps * :per_rep) e, generate_series(0, :steps - 1) p;
INSERT INTO task (id, org_id, owner_id, campaign_id, enrollment_id, enrollment_step_id,
                  contact_id, type, status, title, notes, priority, day, step_in_day, due_at,
                  completed_at, sent_at, message_id, via, created_at)
SELECT (e - 1) * :steps + p + 1, 1, (e - 1) / :per_rep + 1, (e - 1) / :per_rep + 1, e,
       (e - 1) * :steps + p + 1, e, 'email',
       CASE WHEN p = 0 THEN 'done' WHEN p = 1 THEN 'open' ELSE 'cancelled' END,
       'Email First' || e || ' Last' || e, '', 'normal', p + 1, 1,
       now() - interval '3 days' + p * interval '1 day',
       CASE WHEN p = 0 THEN now() - interval '2 days' END,
       CASE WHEN p = 0 THEN now() - interval '2 days' END,
       CASE WHEN p = 0 THEN '<' || e || '.bench@relay.test>' END,
       CASE WHEN p = 0 THEN 'web' END,
       now()
FROM generate_series(1, :reps * :per_rep) e, generate_series(0, :steps - 1) p;
"""

SEQUENCES = ("org", "user", "template", "campaign", "campaign_step", "contact", "enrollment",
             "enrollment_step", "task")

LUA = """
local paths = {%(paths)s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i %% #paths) + 1], {["Authorization"] = "Bearer %(token)s"})
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%%d duration_us=%%d p50_us=%%d p99_us=%%d errors=%%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""

# Gunicorn settings file: the benchmark's server, optionally without the document cache.
GUNICORN_CONF = """
def post_fork(server, worker):
    if %(no_cache)r:
        from server.compose import prefill
        prefill.DOCUMENTS.size = 0
        from server.compose import prefill_views
        prefill_views.BODIES.size = 0
"""


def load(engine: Any, reps: int) -> None:
    """Fill the database (about a minute for 1,000,000 tasks), then VACUUM ANALYZE it."""
    run_load_sql(engine, LOAD_SQL.replace(":reps", str(int(reps)))
                 .replace(":per_rep", str(CONTACTS_PER_REP)).replace(":steps", str(STEPS)),
                 {"tz": REP_TZ}, SEQUENCES)


def free_port() -> int:
    """A TCP port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, token: str, timeout: float = 30.0) -> None:
    """Wait until the server answers an authenticated ping."""
    deadline = clock.monotonic() + timeout
    req = urllib.request.Request(url + "/api/ping", headers={"Authorization": f"Bearer {token}"})
    while True:
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if clock.monotonic() > deadline:
                raise
        clock.sleep(0.2)


def run_wrk(url: str, script: Path, duration: int) -> dict[str, float]:
    """One ``wrk -t1 -c16`` run pinned to core 1; its RESULT line as numbers."""
    cmd = ["taskset", "-c", "1", "wrk", "-t1", "-c16", f"-d{duration}s", "-s", str(script),
           url]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    match = re.search(r"RESULT (.*)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no RESULT line:\n{out}")
    fields = dict(kv.split("=") for kv in match.group(1).split())
    result = {k: float(v) for k, v in fields.items()}
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def main() -> None:
    """Build the data, start gunicorn, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the data a previous run loaded (skip the minute of loading)")
    args = parser.parse_args()
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed: apt-get install -y {tool}")
    name = os.environ["BENCH_DATABASE_URL"].rsplit("/", 1)[-1].split("?")[0]
    if not name.startswith("relay_bench_p"):
        sys.exit("BENCH_DATABASE_URL must name a throwaway database called relay_bench_p*")

    if args.reuse:  # the loaded rows stay; newer migrations are applied
        url = normalise_database_url(os.environ["BENCH_DATABASE_URL"])
        upgrade(url)
    else:
        url = database_url()
    app = create_app({"TESTING": True, "DATABASE_URL": url, "SECRET_KEY": "bench"})
    engine = app.extensions["relay.engine"]
    t0 = clock.perf_counter()
    if not args.reuse:
        load(engine, args.reps)
    with app.extensions["relay.sessionmaker"]() as session:
        rep = session.get(User, 1)
        assert rep is not None
        token = create_token(session, rep, "bench")
        session.commit()
        total = session.scalar(text("SELECT count(*) FROM task"))
        task_ids = list(session.scalars(text(
            "SELECT id FROM task WHERE owner_id = 1 AND status = 'open' ORDER BY id "
            "LIMIT :n"), {"n": args.tasks}))
    dispose(app)
    print(f"{'reused' if args.reuse else 'loaded'} {total:,} tasks in "
          f"{clock.perf_counter() - t0:.1f} s; "
          f"requests cycle through {len(task_ids)} open follow-up tasks of rep 1")

    work = Path(tempfile.mkdtemp(prefix="bench_prefill_"))
    ping_lua, prefill_lua = work / "ping.lua", work / "prefill.lua"
    ping_lua.write_text(LUA % {"paths": '"/api/ping"', "token": token})
    prefill_lua.write_text(LUA % {"paths": ", ".join(f'"/api/tasks/{i}/prefill"'
                                                     for i in task_ids), "token": token})
    conf = work / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF % {"no_cache": args.no_cache})
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, DATABASE_URL=url, SECRET_KEY="bench", RELAY_ENV="development",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")])))
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--workers", "1",
                "--worker-class", "gthread", "--threads", "4", "--bind", f"127.0.0.1:{port}",
                "--log-level", "warning", "server.app:create_app()"]
    server = subprocess.Popen(["taskset", "-c", "0", *gunicorn], cwd=ROOT, env=env)
    try:
        wait_ready(base, token)
        with urllib.request.urlopen(urllib.request.Request(
                f"{base}/api/tasks/{task_ids[0]}/prefill",
                headers={"Authorization": f"Bearer {token}"})) as resp:
            sample = resp.read()
        print(f"prefill document: {len(sample):,} bytes")
        print("warm-up: 3 s of each")
        run_wrk(base, ping_lua, 3)
        run_wrk(base, prefill_lua, 3)
        runs: dict[str, list[dict[str, float]]] = {"ping": [], "prefill": []}
        for n in range(args.rounds):
            for label, script in (("ping", ping_lua), ("prefill", prefill_lua)):
                r = run_wrk(base, script, args.duration)
                runs[label].append(r)
                print(f"  round {n + 1} {label:8s} {r['rps']:8.1f} req/s   "
                      f"p50 {r['p50_us'] / 1000:6.2f} ms   p99 {r['p99_us'] / 1000:6.2f} ms   "
                      f"errors {int(r['errors'])}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[label])

    ratio = med("prefill", "rps") / med("ping", "rps")
    p99 = max(r["p99_us"] for r in runs["prefill"]) / 1000
    print()
    print(f"gunicorn 1 worker gthread 4 threads on core 0; wrk -t1 -c16 -d{args.duration}s on "
          f"core 1; {args.rounds} alternating rounds; document cache "
          f"{'OFF' if args.no_cache else 'on'}")
    print(f"  GET /api/ping            median {med('ping', 'rps'):8.1f} req/s   "
          f"p99 {med('ping', 'p99_us') / 1000:6.2f} ms")
    print(f"  GET /api/tasks/N/prefill median {med('prefill', 'rps'):8.1f} req/s   "
          f"p99 {med('prefill', 'p99_us') / 1000:6.2f} ms (worst run {p99:.2f} ms)")
    print(f"  ratio prefill/ping {ratio:.2f}  (target >= 0.70: "
          f"{'met' if ratio >= 0.7 else 'NOT met'}; p99 < 25 ms: "
          f"{'met' if p99 < 25 else 'NOT met'})")


if __name__ == "__main__":
    main()
