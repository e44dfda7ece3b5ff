"""The caller's own API tokens: list them and revoke one (API ``/api/tokens``, page ``/tokens``).

Tokens are never shown again after creation: lists carry the prefix, the name, the scope,
and when each was created, last used and expires.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, abort, flash, redirect, url_for

from server.accounts import service
from server.accounts.auth import api_user
from server.api.errors import not_found
from server.api.operations import Out, operation
from server.db import get_session, utcnow

bp = Blueprint("tokens", __name__, url_prefix="/api/tokens")
pages = Blueprint("token_pages", __name__)


class TokenOut(Out):
    """One of the caller's API tokens (never the token itself)."""

    id: int
    name: str
    prefix: str
    scope: str | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None


class TokenList(Out):
    """The caller's API tokens, newest first."""

    items: list[TokenOut]


class Revoked(Out):
    """The id of the revoked token."""

    revoked: int


@operation(bp, "", "GET", response=TokenList)
def list_() -> TokenList:
    """List the caller's own API tokens (expired ones included; the secret never)."""
    rows = service.list_tokens(get_session(), api_user())
    out = TokenList(items=[TokenOut.model_validate(t) for t in rows])
    get_session().commit()
    return out


@operation(bp, "/<int:token_id>", "DELETE", response=Revoked)
def revoke(token_id: int) -> Revoked:
    """Revoke one of the caller's API tokens; another user's is 404."""
    if not service.revoke_tokens(get_session(), api_user(), token_id=token_id):
        raise not_found("token")
    get_session().commit()
    return Revoked(revoked=token_id)


@pages.get("/tokens")
def tokens_page() -> Any:
    """The signed-in user's API tokens, each with a Revoke button."""
    from server.web.views import page, require_signed_in

    user = require_signed_in()
    rows = service.list_tokens(get_session(), user)
    return page("web/tokens.html", user, tokens=rows, now=utcnow())


@pages.post("/tokens/<int:token_id>/revoke")
def revoke_page(token_id: int) -> Any:
    """Revoke one of the signed-in user's tokens from the page."""
    from server.web.views import require_csrf, require_signed_in

    user = require_signed_in()
    require_csrf()
    if not service.revoke_tokens(get_session(), user, token_id=token_id):
        abort(404)
    get_session().commit()
    flash("Token revoked.")
    return redirect(url_for("token_pages.tokens_page"))
