"""Configuration from environment variables (the README has the table)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Variables read from the environment, with their development defaults (None = unset).
ENV_VARS: dict[str, str | None] = {
    "PUBLIC_URL": "http://127.0.0.1:5000",
    "DATABASE_URL": None,
    # The session settings of `relay worker` on PostgreSQL (server.db.WORKER_DB_SETTINGS).
    "DB_LOCK_TIMEOUT_SECONDS": "5",
    "DB_IDLE_IN_TRANSACTION_SECONDS": "60",
    "DB_KEEPALIVES_IDLE_SECONDS": "30",
    "DB_KEEPALIVES_INTERVAL_SECONDS": "10",
    "DB_KEEPALIVES_COUNT": "3",
    "SECRET_KEY": None,
    "ENCRYPTION_KEYS": None,
    "GOOGLE_CLIENT_ID": None,
    "GOOGLE_CLIENT_SECRET": None,
    "GMAIL_ADDON_SERVICE_ACCOUNT": None,
    "GMAIL_ADDON_CLIENT_ID": None,
    "GMAIL_ADDON_NAME": "Relay",
    "GMAIL_ADDON_LOGO_URL": None,
    "GMAIL_ADDON_DRAFT_ACCESS": "METADATA",
    "GMAIL_ADDON_CERTS_URL": "https://www.googleapis.com/oauth2/v1/certs",
    "GMAIL_API": "google",
    "MS_CLIENT_ID": None,
    "MS_CLIENT_SECRET": None,
    "MS_TENANTS": None,
    "MS_JWKS_URL": "https://login.microsoftonline.com/common/discovery/v2.0/keys",
    "MS_API_SCOPE": "access_as_user",
    "OUTLOOK_ADDIN_ID": None,
    "OUTLOOK_ADDIN_VERSION": "1.0",
    "OUTLOOK_DISPLAY_NAME": "Relay",
    "OUTLOOK_PROVIDER": "Relay",
    "OUTLOOK_SUPPORT_URL": None,
    "SALESFORCE_CLIENT_ID": None,
    "SALESFORCE_CLIENT_SECRET": None,
    "SALESFORCE_LOGIN_URL": "https://login.salesforce.com",
    "SALESFORCE_JWT_KEY_FILE": None,
    "SALESFORCE_JWT_AUDIENCE": None,
    "SALESFORCE_CA_BUNDLE": None,
    "SALESFORCE_API_VERSION": "59.0",
    "SALESFORCE_POLL_SECONDS": "60",
    "MAIL_TRANSPORT": "outbox",
    "RELAY_ENV": "development",
    "FEED_STREAM_SECONDS": "25",
    "WORKER_POLL_SECONDS": "5",
    # The outbox dispatcher (server/sending/dispatcher.py; the README's Sending table).
    "SEND_LEASE_SECONDS": "120",
    "SEND_LEASE_MARGIN_SECONDS": "30",
    "SEND_BATCH": "50",
    "SEND_GROUP": "10",
    "SEND_PACE_COUNT": "25",
    "SEND_PACE_SECONDS": "45",
    "SEND_DAILY_CAP": "1000",
    "SEND_MAX_RETRIES": "8",
    "SEND_BACKOFF_BASE_SECONDS": "30",
    "SEND_BACKOFF_CAP_SECONDS": "3600",
    "SEND_STOP_SECONDS": "30",
    "MAIL_SINK_URL": None,
    # Provider call timeouts (seconds): each must fit in SEND_LEASE_MARGIN_SECONDS.
    "SMTP_TIMEOUT_SECONDS": "20",
    "GRAPH_TIMEOUT_SECONDS": "20",
    "GMAIL_TIMEOUT_SECONDS": "20",
    # GET /metrics: a bearer secret a Prometheus server may use instead of an admin's token.
    "METRICS_TOKEN": None,
    # Mailbox connections and sync (server/mailboxes/; the README's Mailboxes section).
    "MAIL_OUTBOX_DIR": None,
    "MAIL_SYNC_SECONDS": "60",
    "GOOGLE_AUTH_URI": None,
    "GOOGLE_TOKEN_URI": None,
    "MS_AUTHORITY": None,
    "GRAPH_BASE_URL": None,
    # Sign-in throttling and sessions (server/accounts/; the README's Security section).
    "RATELIMIT_STORAGE_URI": "memory://",
    "SIGNIN_LIMIT_PER_ACCOUNT": "10 per 15 minutes",
    "SIGNIN_LIMIT_PER_ADDRESS": "50 per 15 minutes",
    "API_TOKEN_DAYS": "90",
    "MAIL_HOST_ALLOWLIST": None,
    # The largest request body accepted (bytes); larger ones are a 413 before being read.
    "MAX_CONTENT_LENGTH": str(2 * 1024 * 1024),
}


def load_config(instance_path: Path, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Build the app configuration from ``environ`` (default ``os.environ``).

    Development gets a SQLite file under ``instance/`` and a random per-process secret;
    production (``RELAY_ENV=production``) refuses to start without ``SECRET_KEY`` and
    ``DATABASE_URL``.
    """
    env = os.environ if environ is None else environ
    cfg: dict[str, Any] = {name: env.get(name, default) for name, default in ENV_VARS.items()}
    if not cfg["DATABASE_URL"]:
        cfg["DATABASE_URL"] = f"sqlite:///{instance_path / 'relay.sqlite3'}"
    cfg["DATABASE_URL"] = normalise_database_url(cfg["DATABASE_URL"])
    production = cfg["RELAY_ENV"] == "production"
    if production:
        missing = [n for n in ("SECRET_KEY", "DATABASE_URL") if not env.get(n)]
        if missing:
            raise RuntimeError(
                f"RELAY_ENV=production needs {', '.join(missing)}: set them in the environment"
            )
    if not cfg["SECRET_KEY"]:
        cfg["SECRET_KEY"] = os.urandom(32).hex()
    # The sign-in cookie is never sent on cross-site subrequests, and only over https when
    # Relay is served over https.
    cfg["SESSION_COOKIE_SAMESITE"] = "Lax"
    cfg["SESSION_COOKIE_HTTPONLY"] = True
    cfg["SESSION_COOKIE_SECURE"] = str(cfg["PUBLIC_URL"]).startswith("https://")
    cfg["FEED_STREAM_SECONDS"] = float(cfg["FEED_STREAM_SECONDS"])
    cfg["WORKER_POLL_SECONDS"] = float(cfg["WORKER_POLL_SECONDS"])
    cfg["SALESFORCE_POLL_SECONDS"] = float(cfg["SALESFORCE_POLL_SECONDS"])
    cfg["MAIL_SYNC_SECONDS"] = float(cfg["MAIL_SYNC_SECONDS"])
    cfg["MAX_CONTENT_LENGTH"] = int(cfg["MAX_CONTENT_LENGTH"])
    return cfg


#: The provider timeouts the lease margin must cover, by transport kind.
PROVIDER_TIMEOUTS = {"smtp": "SMTP_TIMEOUT_SECONDS", "graph": "GRAPH_TIMEOUT_SECONDS",
                     "gmail": "GMAIL_TIMEOUT_SECONDS"}


def _seconds(config: Mapping[str, Any], name: str) -> float:
    """A number of seconds from the configuration (its ``ENV_VARS`` default when unset)."""
    value = config.get(name)
    if value in (None, ""):
        value = ENV_VARS[name]
    return float(value)  # type: ignore[arg-type]


def worker_problems(config: Mapping[str, Any]) -> list[str]:
    """Why ``relay worker`` must not start with ``config`` (an empty list: it may).

    A provider call starts only while ``SEND_LEASE_MARGIN_SECONDS`` of its lease remain, so
    the margin must be longer than the longest provider timeout (else a call that times out
    ends after the lease, when another worker may already hold the row), and shorter than
    the lease itself (else no call ever starts). With ``MAIL_TRANSPORT=sink`` (tests) no
    provider is called and the sink's timeout is derived from the margin, so only the second
    rule applies. Each problem says what to change.
    """
    problems: list[str] = []
    try:
        lease = _seconds(config, "SEND_LEASE_SECONDS")
        margin = _seconds(config, "SEND_LEASE_MARGIN_SECONDS")
        timeouts = {name: _seconds(config, name) for name in PROVIDER_TIMEOUTS.values()}
        stop = _seconds(config, "SEND_STOP_SECONDS")
    except (TypeError, ValueError) as exc:
        return [f"a SEND_* or *_TIMEOUT_SECONDS setting is not a number: {exc}"]
    if margin >= lease:
        problems.append(
            f"SEND_LEASE_MARGIN_SECONDS ({margin:g}) must be less than SEND_LEASE_SECONDS "
            f"({lease:g}): no provider call could ever start. Lower the margin or lengthen "
            f"the lease.")
    if config.get("MAIL_TRANSPORT") == "sink":
        timeouts = {}
    for name, timeout in timeouts.items():
        if timeout <= 0:
            problems.append(f"{name} ({timeout:g}) must be more than 0.")
        elif margin <= timeout:
            problems.append(
                f"SEND_LEASE_MARGIN_SECONDS ({margin:g}) cannot cover one provider call: "
                f"{name} is {timeout:g}. Raise the margin above {timeout:g} (and the lease "
                f"with it) or lower {name}.")
    if stop <= 0:
        problems.append(f"SEND_STOP_SECONDS ({stop:g}) must be more than 0.")
    return problems


def normalise_database_url(url: str) -> str:
    """Make ``postgresql://`` and ``postgres://`` URLs use the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
