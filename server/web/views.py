"""Web pages: sign-in, sign-out and the rep's start page."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, redirect, render_template, request, session, url_for

from server.accounts.auth import web_user
from server.accounts.service import authenticate
from server.db import get_session, utcnow
from server.tasks.service import Due, TaskFilter, list_tasks

bp = Blueprint("web", __name__)


@bp.app_template_filter("localtime")
def localtime(value: datetime, tz: str) -> str:
    """Format a UTC moment in a time zone, e.g. ``Tue 24 Nov 09:30``."""
    return value.astimezone(ZoneInfo(tz)).strftime("%a %d %b %H:%M")


def _csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


@bp.get("/")
def home() -> Any:
    """The signed-in rep's start page: today's and overdue tasks; else the sign-in page."""
    user = web_user()
    if user is None:
        return redirect(url_for("web.sign_in"))
    db = get_session()
    now = utcnow()
    overdue, n_overdue = list_tasks(db, user, TaskFilter(due=Due.OVERDUE, per_page=20), now)
    today, n_today = list_tasks(db, user, TaskFilter(due=Due.TODAY, per_page=50), now)
    db.commit()
    return render_template("web/home.html", user=user, overdue=overdue, n_overdue=n_overdue,
                           today=today, n_today=n_today, csrf=_csrf_token())


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> Any:
    """Sign in with email and password."""
    error = None
    if request.method == "POST":
        if request.form.get("csrf") != session.get("csrf"):
            abort(400, "the form expired; reload the page")
        user = authenticate(get_session(), request.form.get("email", ""),
                            request.form.get("password", ""))
        if user is not None:
            session.clear()
            session["user_id"] = user.id
            return redirect(url_for("web.home"))
        error = "That email and password do not match an account."
    return render_template("web/sign_in.html", error=error, csrf=_csrf_token(),
                           email=request.form.get("email", "")), (401 if error else 200)


@bp.post("/sign-out")
def sign_out() -> Any:
    """Sign out."""
    if request.form.get("csrf") != session.get("csrf"):
        abort(400, "the form expired; reload the page")
    session.clear()
    return redirect(url_for("web.sign_in"))
