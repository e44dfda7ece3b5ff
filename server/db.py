"""Database engine, session and the declarative base (bound in the app factory)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g
from sqlalchemy import JSON, Connection, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current moment as a timezone-aware UTC datetime (the one clock helper)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        """Refuse naive datetimes and store UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        """Attach UTC to values SQLite returns naive."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    """Declarative base of every Relay table."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets foreign keys, WAL and a busy timeout."""
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"timeout": 30, "check_same_thread": False})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # pysqlite's own transaction handling is replaced by the explicit BEGIN below.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writing sessions BEGIN IMMEDIATE: they take the write lock up front, so concurrent
            # writers (web threads, the worker) queue on the busy timeout instead of failing
            # with "database is locked" when a read transaction upgrades to a write.
            conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))

        return engine
    # No pre-ping: it is a round trip on every checkout (~0.3 ms, a quarter of a prefill
    # request). After a database restart a stale pooled connection fails once, is discarded
    # with the rest of the pool, and the worker loop retries its pass; connections are also
    # recycled every 30 minutes.
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_recycle", 1800)
    return create_engine(url, **kwargs)


#: The database session settings of ``relay worker`` processes on PostgreSQL (the
#: README's Configuration table), with their defaults. A worker never waits on another's
#: rows (those statements skip locked rows), and these bound whatever else might: a lock
#: wait gives up after ``DB_LOCK_TIMEOUT_SECONDS``; a session left idle inside a
#: transaction (a worker stopped or frozen mid-transaction) is ended by the server after
#: ``DB_IDLE_IN_TRANSACTION_SECONDS``, releasing its locks (keep it well under
#: ``SEND_LEASE_SECONDS``); and TCP keepalives find a connection whose peer is gone (a
#: network partition) within idle + interval × count seconds, on both ends.
WORKER_DB_SETTINGS: dict[str, float] = {
    "DB_LOCK_TIMEOUT_SECONDS": 5,
    "DB_IDLE_IN_TRANSACTION_SECONDS": 60,
    "DB_KEEPALIVES_IDLE_SECONDS": 30,
    "DB_KEEPALIVES_INTERVAL_SECONDS": 10,
    "DB_KEEPALIVES_COUNT": 3,
}


def worker_connect_args(config: Mapping[str, Any], url: str = "") -> dict[str, Any]:
    """The libpq connection arguments of a worker's PostgreSQL sessions (``WORKER_DB_SETTINGS``).

    ``lock_timeout`` and ``idle_in_transaction_session_timeout`` are sent as startup
    ``options`` (no extra round trip; any ``options`` already in ``url`` are kept); the
    keepalives are libpq's ``keepalives*`` parameters for the worker's end and the server's
    ``tcp_keepalives_*`` for the other. A value of 0 turns a timeout off.
    """
    def get(name: str) -> float:
        value = config.get(name)
        number = WORKER_DB_SETTINGS[name] if value in (None, "") else float(value)
        if number < 0:
            raise ValueError(f"{name} must be 0 or more, not {value!r}")
        return number

    def ms(name: str) -> int:
        return round(get(name) * 1000)

    idle = max(round(get("DB_KEEPALIVES_IDLE_SECONDS")), 1)
    interval = max(round(get("DB_KEEPALIVES_INTERVAL_SECONDS")), 1)
    count = max(round(get("DB_KEEPALIVES_COUNT")), 1)
    # The server probes its end too, so it ends the session of a worker that is gone.
    options = (f"-c lock_timeout={ms('DB_LOCK_TIMEOUT_SECONDS')} "
               f"-c idle_in_transaction_session_timeout={ms('DB_IDLE_IN_TRANSACTION_SECONDS')} "
               f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
               f"-c tcp_keepalives_count={count}")
    given = make_url(url).query.get("options") if url else None
    if given:
        options = f"{given if isinstance(given, str) else ' '.join(given)} {options}"
    return {"options": options, "keepalives": 1, "keepalives_idle": idle,
            "keepalives_interval": interval, "keepalives_count": count}


def use_worker_sessions(app: Flask) -> None:
    """Rebind ``app``'s engines with the worker session settings (``relay worker`` does this).

    On PostgreSQL every connection of the worker then has ``lock_timeout``,
    ``idle_in_transaction_session_timeout`` and TCP keepalives (``worker_connect_args``);
    SQLite is left as it is. The web app's own connections keep the server's defaults.
    """
    url = app.config["DATABASE_URL"]
    if not url.startswith("postgresql"):
        return
    args = worker_connect_args(app.config, url)
    raw = app.config.get("DB_IDLE_IN_TRANSACTION_SECONDS")
    idle = float(WORKER_DB_SETTINGS["DB_IDLE_IN_TRANSACTION_SECONDS"] if raw in (None, "")
                 else raw)
    lease = float(app.config.get("SEND_LEASE_SECONDS") or 120)
    if not 0 < idle < lease:
        logging.getLogger("relay.worker").warning(
            "DB_IDLE_IN_TRANSACTION_SECONDS=%g: a worker stopped inside a transaction keeps "
            "its rows locked for longer than a send lease (SEND_LEASE_SECONDS=%g); keep it "
            "well under the lease", idle, lease)
    dispose(app)
    _bind(app, make_engine(url, connect_args=args),
          make_engine(url, connect_args=args, isolation_level="AUTOCOMMIT",
                      pool_reset_on_return=None))


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a lock wait that gave up (``lock_timeout``, ``NOWAIT``, SQLite busy)."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    return getattr(orig, "sqlstate", None) == "55P03" or "database is locked" in str(orig)


def _bind(app: Flask, engine: Engine, read_engine: Engine) -> None:
    app.extensions["relay.engine"] = engine
    app.extensions["relay.sessionmaker"] = sessionmaker(engine, expire_on_commit=False)
    writer = engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")
    app.extensions["relay.write_sessionmaker"] = sessionmaker(writer, expire_on_commit=False)
    app.extensions["relay.read_engine"] = read_engine


def init_app(app: Flask) -> None:
    """Bind an engine and a session factory to ``app``; close the session per app context."""
    engine = make_engine(app.config["DATABASE_URL"])
    # Hot read paths on PostgreSQL use a plain connection from a second, small pool whose
    # connections stay in autocommit: no BEGIN and no COMMIT round trip (three round trips
    # become one), no ORM session to set up, no isolation switching on checkout and nothing
    # to roll back on return, so psycopg keeps its prepared statements. Under READ COMMITTED
    # every statement has its own snapshot anyway, so a read-only request sees nothing
    # different. SQLite keeps its explicit BEGIN and the one engine.
    _bind(app, engine,
          engine if engine.dialect.name == "sqlite"
          else make_engine(app.config["DATABASE_URL"], isolation_level="AUTOCOMMIT",
                           pool_reset_on_return=None))

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()
        conn = g.pop("db_read_connection", None)
        if conn is not None:
            conn.close()


def dispose(app: Flask) -> None:
    """Close every pooled connection of ``app``'s engines (tests, CLI commands, shutdown)."""
    app.extensions["relay.engine"].dispose()
    app.extensions["relay.read_engine"].dispose()


def get_session() -> Session:
    """The session of the current app context (one per request or CLI command)."""
    from flask import current_app, has_request_context, request

    if "db_session" not in g:
        writes = not has_request_context() or request.method not in ("GET", "HEAD", "OPTIONS")
        key = "relay.write_sessionmaker" if writes else "relay.sessionmaker"
        g.db_session = current_app.extensions[key]()
    return g.db_session


def get_read_connection() -> Connection:
    """A connection for the current request's hot read path (autocommit on PostgreSQL).

    Each statement commits on its own there (one round trip a query), so only views that
    write nothing, or whose single writes stand alone, may use it; they call ``commit()``
    before answering, which SQLite needs and PostgreSQL treats as a no-op. It is closed with
    the app context.
    """
    from flask import current_app

    conn: Connection | None = g.get("db_read_connection")
    if conn is None:
        conn = g.db_read_connection = current_app.extensions["relay.read_engine"].connect()
    return conn


@contextmanager
def session_scope(app: Flask) -> Iterator[Session]:
    """A standalone session for workers and CLI commands: commit on success, roll back on error."""
    session: Session = app.extensions["relay.write_sessionmaker"]()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def enum_column(enum_cls: type[Any], length: int = 24) -> Any:
    """A portable column type that stores a ``StrEnum`` by its value."""
    from sqlalchemy import Enum

    return Enum(
        enum_cls,
        values_callable=lambda e: [m.value for m in e],
        native_enum=False,
        validate_strings=True,
        length=length,
    )
