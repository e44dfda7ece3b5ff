"""How long other writers wait while a large CSV import runs on SQLite (one write lock).

    .venv/bin/python tests/benchmarks/bench_import_lock.py [ROWS] [--batched-only]

Imports ROWS (default 200,000) contacts through ``contacts.service.import_csv`` while another
thread makes one small write (a user's name) every 20 ms and times each. Run twice in the same
process: in one transaction (the baseline, ``IMPORT_BATCH`` = ROWS) and in batches of
``IMPORT_BATCH``. Prints the import's duration and the other writer's longest and p99 waits.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import delete, update  # noqa: E402

from server.accounts.models import Org, Role, User  # noqa: E402
from server.accounts.service import create_user  # noqa: E402
from server.app import create_app  # noqa: E402
from server.contacts import service  # noqa: E402
from server.contacts.models import Contact  # noqa: E402
from server.migrations import upgrade  # noqa: E402


def _run(app: object, owner_id: int, writer_id: int, csv_text: str, batch: int
         ) -> tuple[float, list[float], int]:
    # Both sides write as the app's POST requests and CLI commands do (BEGIN IMMEDIATE).
    maker = app.extensions["relay.write_sessionmaker"]  # type: ignore[attr-defined]
    service.IMPORT_BATCH = batch
    waits: list[float] = []
    done = threading.Event()

    def writer() -> None:
        s = maker()
        n = 0
        while not done.is_set():
            n += 1
            t0 = time.perf_counter()
            s.execute(update(User).where(User.id == writer_id).values(name=f"W{n}"))
            s.commit()
            waits.append(time.perf_counter() - t0)
            time.sleep(0.02)
        s.close()

    s = maker()
    s.execute(delete(Contact))
    s.commit()
    owner = s.get(User, owner_id)
    thread = threading.Thread(target=writer)
    thread.start()
    t0 = time.perf_counter()
    report = service.import_csv(s, owner, csv_text)
    s.commit()
    took = time.perf_counter() - t0
    done.set()
    thread.join()
    s.close()
    return took, waits, report.created


def main() -> None:
    """Measure both ways and print the figures."""
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    only_batched = "--batched-only" in sys.argv
    batched = service.IMPORT_BATCH
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.sqlite3"
        upgrade(url)
        app = create_app({"DATABASE_URL": url, "SECRET_KEY": "bench"})
        with app.app_context():
            s = app.extensions["relay.sessionmaker"]()
            org = Org(name="Bench")
            s.add(org)
            s.flush()
            owner = create_user(s, org=org, email="owner@bench.test", name="Owner",
                                role=Role.REP, timezone="UTC", password=None)
            other = create_user(s, org=org, email="other@bench.test", name="Other",
                                role=Role.REP, timezone="UTC", password=None)
            s.commit()
            ids = owner.id, other.id
            s.close()
            csv_text = "email,first_name,last_name,company\n" + "".join(
                f"person{i}@example.com,P{i},Doe,Initech\n" for i in range(rows))
            print(f"{rows} rows, {len(csv_text) / 1e6:.1f} MB, SQLite (WAL)")
            runs = [("one transaction", rows), (f"batches of {batched}", batched)]
            for label, batch in runs[1:] if only_batched else runs:
                took, waits, created = _run(app, *ids, csv_text, batch)
                worst = max(range(len(waits)), key=waits.__getitem__) if waits else -1
                print(f"  (longest wait is write #{worst + 1})")
                waits.sort()
                p99 = waits[int(len(waits) * 0.99) - 1] if waits else 0.0
                print(f"{label:>20}: import {took:6.1f} s ({created} created); other writer: "
                      f"{len(waits)} writes, longest wait {waits[-1] * 1000:8.1f} ms, "
                      f"p99 {p99 * 1000:7.1f} ms")
        app.extensions["relay.engine"].dispose()


if __name__ == "__main__":
    main()
