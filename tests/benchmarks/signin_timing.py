"""How long a failed sign-in takes for a known and for an unknown email (median of N).

    .venv/bin/python tests/benchmarks/signin_timing.py [N]

An unknown email must cost the same as a known one, or the answer's timing tells which
emails have accounts (README, Security).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from server import db
from server.accounts.service import authenticate, create_user, get_or_create_org
from server.app import create_app
from server.migrations import upgrade


def main(n: int = 20) -> None:
    """Print the median milliseconds of both failures."""
    path = Path(tempfile.mkdtemp()) / "timing.sqlite3"
    url = f"sqlite:///{path}"
    upgrade(url)
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": "timing"})
    session = app.extensions["relay.sessionmaker"]()
    org = get_or_create_org(session, "Timing")
    create_user(session, org=org, email="known@timing.test", name="K", password="right-pw")
    session.commit()
    authenticate(session, "warm@timing.test", "x")  # first-call costs out of the way
    results = {}
    for label, email in (("known email, wrong password", "known@timing.test"),
                         ("unknown email", "unknown@timing.test")):
        runs = []
        for _ in range(n):
            start = time.perf_counter()
            authenticate(session, email, "wrong-pw")
            runs.append((time.perf_counter() - start) * 1000)
        results[label] = statistics.median(runs)
        print(f"{label:28s} median {results[label]:7.1f} ms  (n={n})")
    session.close()
    db.dispose(app)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
