"""Who is calling: API bearer tokens on /api, the session cookie on web pages."""

from __future__ import annotations

from flask import g, request, session

from server.accounts.models import User
from server.accounts.service import user_for_token
from server.api.errors import ApiError
from server.db import get_session


def api_user() -> User:
    """The user behind the request's ``Authorization: Bearer`` token, or a 401."""
    user: User | None = g.get("api_user")
    if user is not None:
        return user
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token> "
                       "(create one with `relay token create --email you@example.com`)")
    user = user_for_token(get_session(), token.strip())
    if user is None:
        raise ApiError(401, "unauthorized", "the API token is not valid")
    g.api_user = user
    return user


def web_user() -> User | None:
    """The signed-in user of a web page, or None."""
    user_id = session.get("user_id")
    if user_id is None:
        return None
    return get_session().get(User, user_id)
