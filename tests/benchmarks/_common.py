"""Helpers shared by the benchmarks (not a test module; pytest ignores tests/benchmarks)."""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from server.config import normalise_database_url  # noqa: E402
from server.db import make_engine  # noqa: E402
from server.migrations import upgrade  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/relay_bench"


def database_url() -> str:
    """The benchmark database (BENCH_DATABASE_URL), created if missing and migrated empty."""
    url = normalise_database_url(os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL))
    if not url.startswith("postgresql"):
        sys.exit("the benchmarks run on PostgreSQL: set BENCH_DATABASE_URL=postgresql://...")
    base, _, name = url.rpartition("/")
    name = name.split("?")[0]
    admin = make_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}) is None:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(url)
    return url


def libpq_url(url: str) -> str:
    """The same URL as plain psycopg understands it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def ms(seconds: float) -> str:
    """Seconds as milliseconds with three significant decimals."""
    return f"{seconds * 1000:9.2f} ms"


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def run_load_sql(engine: Any, sql: str, params: dict[str, Any], sequences: Iterable[str]) -> None:
    """Run a ``;``-separated load script in one transaction, then VACUUM ANALYZE.

    The tables' id sequences are moved past the loaded ids, and VACUUM ANALYZE lets the
    planner see the real sizes.
    """
    with engine.begin() as conn:
        for statement in sql.split(";\n"):
            if statement.strip():
                conn.execute(text(statement), params)
        for table in sequences:
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', 'id'), "
                              f"(SELECT max(id) FROM \"{table}\"))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
