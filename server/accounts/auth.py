"""Who is calling: API bearer tokens on /api, the session cookie on web pages.

The web session may also call the JSON API (the Live Feed's EventSource cannot send an
``Authorization`` header): for safe methods the cookie is enough; for anything that changes
state the request must also carry the session's CSRF token in ``X-CSRF-Token``, which a
cross-site page cannot read and therefore cannot forge.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable

from flask import current_app, g, request, session

from server.accounts.models import User
from server.accounts.scopes import allows
from server.accounts.service import TOKEN_PREFIX, user_and_scope_for_token
from server.api.errors import ApiError
from server.db import get_session

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
#: ``app.extensions`` key of the other bearer-token verifiers (e.g. Microsoft Entra tokens):
#: callables ``(token) -> (user, scope) | None`` tried for tokens that are not Relay's own.
BEARER_VERIFIERS = "relay.bearer_verifiers"
BearerVerifier = Callable[[str], "tuple[User, str | None] | None"]


def csrf_token() -> str:
    """The signed-in (or signing-in) browser's CSRF token, created on first use."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return str(token)


def csrf_valid(value: str | None) -> bool:
    """True when ``value`` is this session's CSRF token (compared in constant time)."""
    expected = session.get("csrf")
    if not expected or not value:
        return False
    return hmac.compare_digest(str(expected).encode(), value.encode())


def api_user() -> User:
    """The user behind the request: a Bearer token, or the web session (see the module doc).

    No credentials is a 401; a session cookie on an unsafe method without the matching
    ``X-CSRF-Token`` header is a 403.
    """
    user: User | None = g.get("api_user")
    if user is not None:
        return user
    header = request.headers.get("Authorization", "")
    if not header:
        user = _session_user()
        if user is not None:
            g.api_user = user
            return user
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token> "
                       "(create one with `relay token create --email you@example.com`)")
    token = token.strip()
    found = user_and_scope_for_token(get_session(), token)
    if found is None and not token.startswith(TOKEN_PREFIX):
        for verify in current_app.extensions.get(BEARER_VERIFIERS, ()):
            found = verify(token)
            if found is not None:
                break
    if found is None:
        raise ApiError(401, "unauthorized", "the API token is not valid")
    user, scope = found
    if not allows(scope, request.endpoint):
        raise ApiError(403, "forbidden", f"this token is limited to the {scope} add-in's "
                       "endpoints")
    g.api_user = user
    return user


def _session_user() -> User | None:
    """The signed-in web user, if the request may act as them (CSRF rule above)."""
    if session.get("user_id") is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_valid(request.headers.get(CSRF_HEADER)):
        raise ApiError(403, "csrf_failed", f"a signed-in browser must send the page's "
                       f"{CSRF_HEADER} header with {request.method} requests")
    return web_user()


def sign_in_session(user: User) -> None:
    """Start a fresh web session for ``user`` (bound to their current session generation)."""
    session.clear()
    session["user_id"] = user.id
    session["gen"] = user.session_generation or 0


def web_user() -> User | None:
    """The signed-in user of a web page, or None.

    The cookie must carry the user's current session generation: sign-out bumps it, so a
    cookie copied before sign-out no longer signs anyone in.
    """
    user_id = session.get("user_id")
    if user_id is None:
        return None
    user = get_session().get(User, user_id)
    if user is None or session.get("gen") != (user.session_generation or 0):
        return None
    return user
