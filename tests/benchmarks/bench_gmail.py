"""Benchmark: server time of every Gmail add-on endpoint with 1,000,000 tasks in PostgreSQL.

Loads the same 1,000,000 email tasks as ``bench_prefill.py`` (200 reps x 500 contacts x 10
email steps; each rep has 500 open email tasks, the rest done or cancelled), starts a local
certificate endpoint on 127.0.0.1 with a key generated for the run (``tests/gmail_support``),
and configures the app with it and the in-memory Gmail API (``GMAIL_API=fake``: no network).

Each request is a full POST through the Flask test client with a freshly verified system
ID token in ``Authorization`` and a ``userIdToken`` in the event (both RS256, checked by
google-auth against the cached certificates: the certificate endpoint is fetched once per
run), so the time measured is everything the server does for the request. The baseline is
a bare authenticated ping: the same checks (``views.verified_call``: system token, scopes,
user token, Relay user lookup), then a commit and an empty JSON answer. Rounds alternate the
baseline and every endpoint. Prints p50 / p99 / max per endpoint and the p50 ratio to the
baseline. Not a test: it prints figures and makes no assertion.

    .venv/bin/python tests/benchmarks/bench_gmail.py [--rounds 3] [--requests 200]

BENCH_DATABASE_URL (default postgresql+psycopg://postgres@127.0.0.1/relay_gmail_bench; the
name must start with ``relay_gmail_bench``) is dropped and re-migrated at the start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time as clock
from collections.abc import Callable
from typing import Any

os.environ.setdefault("BENCH_DATABASE_URL",
                      "postgresql+psycopg://postgres@127.0.0.1/relay_gmail_bench")

from _common import database_url  # noqa: E402
from bench_prefill import load  # noqa: E402
from flask import jsonify  # noqa: E402
from sqlalchemy import text  # noqa: E402

from server.addins.gmail.client import FakeGmailApi, OpenedMessage  # noqa: E402
from server.addins.gmail.deployment import ENDPOINTS  # noqa: E402
from server.addins.gmail.views import BASE_SCOPES, AddOnCall, verified_call  # noqa: E402
from server.app import create_app  # noqa: E402
from tests.gmail_support import LocalGoogle, event, gmail_config  # noqa: E402

PING = "/gmail/bench-ping"


def add_ping(app: Any) -> None:
    """The baseline route: the add-on's checks, a commit, ``{}``."""

    def ping() -> Any:
        call = verified_call(app.config["PUBLIC_URL"] + PING, BASE_SCOPES, True)
        if not isinstance(call, AddOnCall):
            return call
        call.session.commit()
        return jsonify({})

    app.add_url_rule(PING, endpoint="bench_ping", view_func=ping, methods=["POST"])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def main() -> None:
    """Build the data, measure every endpoint next to the baseline, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--reps", type=int, default=200)
    args = parser.parse_args()
    name = os.environ["BENCH_DATABASE_URL"].rsplit("/", 1)[-1].split("?")[0]
    if not name.startswith("relay_gmail_bench"):
        sys.exit("BENCH_DATABASE_URL must name a throwaway database called relay_gmail_bench*")

    url = database_url()
    google = LocalGoogle()
    app = create_app(gmail_config(url, google.certs_url))
    app.config["TESTING"] = False
    add_ping(app)
    engine = app.extensions["relay.engine"]
    t0 = clock.perf_counter()
    load(engine, args.reps)
    with engine.connect() as conn:
        total = conn.scalar(text("SELECT count(*) FROM task"))
        rep = conn.execute(text('SELECT id, email FROM "user" WHERE id = 1')).one()
        task_ids = list(conn.scalars(text(
            "SELECT id FROM task WHERE owner_id = 1 AND status = 'open' ORDER BY id "
            "LIMIT 100")))
        contact_of = dict(conn.execute(text(
            "SELECT t.id, c.email FROM task t JOIN contact c ON c.id = t.contact_id "
            "WHERE t.id = ANY(:ids)"), {"ids": task_ids}).all())
    print(f"loaded {total:,} tasks in {clock.perf_counter() - t0:.1f} s; rep 1 has "
          f"{len(task_ids)}+ open email tasks used below")

    api: FakeGmailApi = app.extensions["relay.gmail.api"]
    # Tokens are minted outside the timed part (signing is Google's cost, not ours);
    # verifying them is inside it on every request.
    user_token = google.user_token(rep.email)
    system = {path: google.system_token(path) for path in [*ENDPOINTS.values(), PING]}
    counter = {"n": 0}

    def body(**kwargs: Any) -> dict[str, Any]:
        ev = event(google, rep.email, **kwargs)
        ev["authorizationEventObject"]["userIdToken"] = user_token
        return ev

    def next_task() -> int:
        counter["n"] += 1
        return task_ids[counter["n"] % len(task_ids)]

    def message_event() -> dict[str, Any]:
        task_id = next_task()
        mid = f"msg-{counter['n']}"
        api.messages[mid] = OpenedMessage(id=mid, thread_id=mid, sender=contact_of[task_id],
                                          sender_name="", subject="Our call",
                                          message_id=f"<{mid}@mail.test>", references="")
        return body(gmail={"messageId": mid, "threadId": mid, "accessToken": "gat"},
                    params={"task_id": str(task_id)})

    cases: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
        "baseline ping": (PING, lambda: body()),
        "home": (ENDPOINTS["home"], lambda: body()),
        "home/list page 25": (ENDPOINTS["home_list"],
                              lambda: body(params={"due": "all", "page": "25"})),
        "home/list today": (ENDPOINTS["home_list"],
                            lambda: body(params={"due": "today", "page": "1"})),
        "universal/tasks": (ENDPOINTS["universal_tasks"], lambda: body()),
        "compose": (ENDPOINTS["compose"], lambda: body(draftMetadata={
            "toRecipients": [contact_of[next_task()]]})),
        "compose/fill": (ENDPOINTS["compose_fill"],
                         lambda: body(params={"task_id": str(next_task())})),
        "message": (ENDPOINTS["message"], message_event),
        "message/reply (new draft)": (ENDPOINTS["message_reply"], message_event),
    }
    client = app.test_client()

    def run(label: str, n: int) -> list[float]:
        path, make = cases[label]
        token = {"Authorization": f"Bearer {system[path]}"}
        times = []
        for _ in range(n):
            payload = make()
            start = clock.perf_counter()
            resp = client.post(path, json=payload, headers=token)
            times.append(clock.perf_counter() - start)
            if resp.status_code != 200 or "requesting_google_scopes" in resp.get_json():
                raise RuntimeError(f"{label}: {resp.status_code} {resp.get_data()[:300]!r}")
        return times

    for label in cases:
        run(label, 20)  # warm-up: connections, prepared statements, compiled templates
    results: dict[str, list[float]] = {label: [] for label in cases}
    for n in range(args.rounds):
        for label in cases:
            results[label] += run(label, args.requests)
        print(f"  round {n + 1} done")
    engine.dispose()
    google.close()

    base = statistics.median(results["baseline ping"])
    print()
    print(f"{args.rounds} alternating rounds x {args.requests} requests per endpoint, "
          f"Flask test client in-process, PostgreSQL, {total:,} tasks")
    print(f"certificate endpoint fetched {google.hits} time(s); verifier fetches "
          f"{app.extensions['relay.gmail.verifier'].request.fetches}")
    print(f"  {'endpoint':28s} {'p50':>9s} {'p99':>9s} {'max':>9s}  p50/baseline")
    worst = 0.0
    for label, times in results.items():
        p50, p99 = statistics.median(times), percentile(times, 99)
        if label != "baseline ping":
            worst = max(worst, p99)
        print(f"  {label:28s} {p50 * 1000:7.2f}ms {p99 * 1000:7.2f}ms "
              f"{max(times) * 1000:7.2f}ms  {p50 / base:5.2f}x")
    print(f"  worst endpoint p99 {worst * 1000:.2f} ms (target < 100 ms: "
          f"{'met' if worst < 0.1 else 'NOT met'})")


if __name__ == "__main__":
    main()
