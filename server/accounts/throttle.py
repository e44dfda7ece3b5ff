"""Sign-in throttling: failed passwords are counted per account and per client address.

Both sign-in forms (the web page and the Outlook add-in's dialog) ask :func:`refused` before
checking a password and call :func:`failed` after a wrong one; successful sign-ins are not
counted. Once either allowance is spent (``SIGNIN_LIMIT_PER_ACCOUNT``, default 10 failures per
15 minutes, and ``SIGNIN_LIMIT_PER_ADDRESS``, default 50) the form answers 429 with
``Retry-After`` — even for the right password — until the moving window frees a slot.

Counting is Flask-Limiter's (its ``limits`` moving-window strategy); its storage comes from
``RATELIMIT_STORAGE_URI``: ``memory://`` (default: one process, for development and tests) or
``redis://host:6379/0``, which every web node shares. The client address is
``request.remote_addr``: behind a proxy, have the WSGI server or ``ProxyFix`` set it.
"""

from __future__ import annotations

import math
import time

from flask import Flask, current_app, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse

DEFAULT_STORAGE = "memory://"
DEFAULT_PER_ACCOUNT = "10 per 15 minutes"
DEFAULT_PER_ADDRESS = "50 per 15 minutes"
_EXT = "relay.signin_limiter"


def _client_address() -> str:
    return request.remote_addr or "unknown"


def init_app(app: Flask) -> Limiter:
    """Give ``app`` its limiter (storage from ``RATELIMIT_STORAGE_URI``)."""
    app.config.setdefault("RATELIMIT_STORAGE_URI", DEFAULT_STORAGE)
    limiter = Limiter(_client_address, app=app, strategy="moving-window",
                      storage_uri=app.config["RATELIMIT_STORAGE_URI"],
                      key_prefix=str(app.config.get("RATELIMIT_KEY_PREFIX") or "relay"),
                      default_limits=[], headers_enabled=False)
    app.extensions[_EXT] = limiter
    return limiter


def _limits() -> list[tuple[RateLimitItem, str, str]]:
    cfg = current_app.config
    email = request.form.get("email", "").strip().lower()
    return [
        (parse(str(cfg.get("SIGNIN_LIMIT_PER_ACCOUNT") or DEFAULT_PER_ACCOUNT)), "account",
         email),
        (parse(str(cfg.get("SIGNIN_LIMIT_PER_ADDRESS") or DEFAULT_PER_ADDRESS)), "address",
         _client_address()),
    ]


def _prefixed(*parts: str) -> tuple[str, ...]:
    return (str(current_app.config.get("RATELIMIT_KEY_PREFIX") or "relay"), "signin", *parts)


def refused() -> int | None:
    """Seconds until this sign-in may be tried again, or None when it may be tried now."""
    strategy = current_app.extensions[_EXT].limiter
    wait = 0.0
    for item, kind, value in _limits():
        keys = _prefixed(kind, value)
        if not strategy.test(item, *keys):
            reset, _ = strategy.get_window_stats(item, *keys)
            wait = max(wait, reset - time.time(), 1.0)
    return math.ceil(wait) if wait else None


def failed() -> None:
    """Count a wrong password against the account and the client address."""
    strategy = current_app.extensions[_EXT].limiter
    for item, kind, value in _limits():
        strategy.hit(item, *_prefixed(kind, value))
