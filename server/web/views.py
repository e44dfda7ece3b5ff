"""Web pages: the blueprint, sign-in and sign-out.

The Command Center and the compose window live in ``command_center`` and ``compose`` and
register their routes on this blueprint.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, redirect, render_template, request, session, url_for

from server.accounts import throttle
from server.accounts.auth import CSRF_HEADER, csrf_token, csrf_valid, sign_in_session, web_user
from server.accounts.models import User
from server.accounts.service import authenticate, end_sessions
from server.db import get_session

bp = Blueprint("web", __name__, static_folder="static", static_url_path="/web-static")


@bp.app_template_filter("localtime")
def localtime(value: datetime, tz: str) -> str:
    """Format a UTC moment in a time zone, e.g. ``Tue 24 Nov 09:30``."""
    return value.astimezone(ZoneInfo(tz)).strftime("%a %d %b %H:%M")


def require_csrf() -> None:
    """Refuse a post (form field or ``X-CSRF-Token`` header) without the page's token (400)."""
    if not csrf_valid(request.form.get("csrf") or request.headers.get(CSRF_HEADER)):
        abort(400, "the form expired; reload the page")


def page(template_name: str, user: User | None, status: int = 200, /, **context: Any) -> Any:
    """Render a page with what every page needs (the user and the CSRF token)."""
    return render_template(template_name, user=user, csrf=csrf_token(), **context), status


def signed_in() -> User | None:
    """The signed-in rep (None: the caller redirects to the sign-in page)."""
    return web_user()


def require_signed_in() -> User:
    """The signed-in rep; anyone else is sent to the sign-in page."""
    user = web_user()
    if user is None:
        abort(redirect(url_for("web.sign_in")))
    return user


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """Sign in with email and password."""
    error = None
    wait = None
    if request.method == "POST":
        require_csrf()
        wait = throttle.refused()
        if wait is not None:
            error = too_many_attempts(wait)
        else:
            user = authenticate(get_session(), request.form.get("email", ""),
                                request.form.get("password", ""))
            if user is not None:
                sign_in_session(user)
                return redirect(url_for("web.home"))
            throttle.failed()
            error = "That email and password do not match an account."
    page_ = render_template("web/sign_in.html", error=error, csrf=csrf_token(),
                            email=request.form.get("email", ""))
    if wait is not None:
        return page_, 429, {"Retry-After": str(wait)}
    return page_, (401 if error else 200)


def too_many_attempts(wait: int) -> str:
    """The sentence a throttled sign-in form shows."""
    minutes = max(1, math.ceil(wait / 60))
    return (f"Too many failed sign-ins. Try again in {minutes} minute"
            f"{'s' if minutes > 1 else ''}.")


@bp.post("/sign-out")
def sign_out() -> Any:
    """Sign out: every session of the user ends server-side (copied cookies stop working)."""
    require_csrf()
    user = web_user()
    if user is not None:
        end_sessions(user)
        get_session().commit()
    session.clear()
    return redirect(url_for("web.sign_in"))


# The page modules add their routes to ``bp``; importing them here wires them up.
from server.web import command_center, compose  # noqa: E402, F401
