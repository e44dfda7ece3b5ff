"""The admin page ``/admin/salesforce``: connect (OAuth with PKCE, or JWT), status, settings."""

from __future__ import annotations

import logging
import secrets as pysecrets
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, request, session, url_for

from server.accounts.models import Role, User
from server.crypto import app_keyring
from server.db import get_session, utcnow
from server.errors import Invalid
from server.salesforce import auth, service
from server.salesforce.client import http_session
from server.salesforce.mapping import TEMPLATE_FIELDS, preview_activity, render_subject
from server.salesforce.models import DEFAULT_SUBJECT_TEMPLATE, AuthKind
from server.web.views import page, require_csrf, require_signed_in

bp = Blueprint("salesforce_admin", __name__, url_prefix="/admin/salesforce")
log = logging.getLogger("relay.salesforce")

_OAUTH_KEY = "salesforce_oauth"


def _admin() -> User:
    user = require_signed_in()
    if user.role is not Role.ADMIN:
        abort(403, "only an admin can manage the Salesforce connection")
    return user


def _redirect_uri() -> str:
    return f"{str(current_app.config['PUBLIC_URL']).rstrip('/')}/admin/salesforce/callback"


@bp.get("")
def admin_page() -> Any:
    """Connection status, the activity settings with a preview, and what did not sync."""
    user = _admin()
    view = service.overview(get_session(), user.org_id)
    template = view.conn.subject_template if view.conn else DEFAULT_SUBJECT_TEMPLATE
    draft = request.args.get("template")
    preview_of = draft if draft is not None else template
    try:
        preview = render_subject(preview_of, preview_activity())
    except Exception:  # a half-typed template still shows the page
        preview = ""
    return page("web/admin_salesforce.html", user, view=view, template=preview_of,
                preview=preview, fields=TEMPLATE_FIELDS,
                oauth_ready=bool(current_app.config.get("SALESFORCE_CLIENT_ID")
                                 and current_app.config.get("SALESFORCE_CLIENT_SECRET")),
                jwt_ready=bool(current_app.config.get("SALESFORCE_CLIENT_ID")
                               and current_app.config.get("SALESFORCE_JWT_KEY_FILE")))


@bp.post("/settings")
def save_settings() -> Any:
    """Save the settings form (a bad template re-shows the page with its errors)."""
    require_csrf()
    user = _admin()
    try:
        service.save_settings(get_session(), user.org_id,
                              sync_reminders=request.form.get("sync_reminders") == "on",
                              subject_template=request.form.get("subject_template", ""),
                              external_id_field=request.form.get("external_id_field") or None,
                              clear_external_id=not request.form.get("external_id_field"))
    except Invalid as exc:
        get_session().rollback()
        for err in exc.errors:
            flash(f"{err.field}: {err.message}")
        return redirect(url_for("salesforce_admin.admin_page"))
    get_session().commit()
    flash("Settings saved.")
    return redirect(url_for("salesforce_admin.admin_page"))


@bp.get("/connect")
def connect() -> Any:
    """Start the OAuth web-server flow with PKCE: send the admin to Salesforce."""
    user = _admin()
    cfg = current_app.config
    if not (cfg.get("SALESFORCE_CLIENT_ID") and cfg.get("SALESFORCE_CLIENT_SECRET")):
        abort(400, "set SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET first")
    verifier, challenge = auth.pkce_pair()
    state = pysecrets.token_urlsafe(24)
    session[_OAUTH_KEY] = {"state": state, "verifier": verifier, "org_id": user.org_id}
    return redirect(auth.authorize_url(str(cfg["SALESFORCE_LOGIN_URL"]),
                                       str(cfg["SALESFORCE_CLIENT_ID"]), _redirect_uri(),
                                       state, challenge))


@bp.get("/callback")
def callback() -> Any:
    """Finish the OAuth flow: check the state, trade the code (with the verifier) for tokens."""
    user = _admin()
    pending = session.pop(_OAUTH_KEY, None)
    if (pending is None or pending.get("org_id") != user.org_id
            or not pysecrets.compare_digest(str(pending.get("state")),
                                            request.args.get("state", ""))):
        abort(400, "the Salesforce sign-in expired or did not start here; connect again")
    if request.args.get("error"):
        why = request.args.get("error_description") or request.args["error"]
        flash(f"Salesforce did not connect: {why}")
        return redirect(url_for("salesforce_admin.admin_page"))
    cfg = current_app.config
    try:
        tokens = auth.exchange_code(http_session(cfg.get("SALESFORCE_CA_BUNDLE")),
                                    str(cfg["SALESFORCE_LOGIN_URL"]),
                                    str(cfg["SALESFORCE_CLIENT_ID"]),
                                    str(cfg["SALESFORCE_CLIENT_SECRET"]),
                                    request.args.get("code", ""), pending["verifier"],
                                    _redirect_uri())
    except auth.TokenError as exc:
        flash(f"Salesforce did not connect: {exc}")
        return redirect(url_for("salesforce_admin.admin_page"))
    service.finish_connect(get_session(), cfg, app_keyring(current_app), user.org_id, tokens,
                           kind=AuthKind.OAUTH, username=user.email, now=utcnow())
    get_session().commit()
    flash("Salesforce connected.")
    return redirect(url_for("salesforce_admin.admin_page"))


@bp.post("/jwt")
def connect_jwt() -> Any:
    """Connect as an integration user with the JWT bearer flow (no browser round trip)."""
    require_csrf()
    user = _admin()
    username = request.form.get("username", "").strip()
    if not username:
        flash("username: give the integration user's Salesforce username")
        return redirect(url_for("salesforce_admin.admin_page"))
    cfg = current_app.config
    try:
        tokens = auth.jwt_bearer(http_session(cfg.get("SALESFORCE_CA_BUNDLE")),
                                 str(cfg["SALESFORCE_LOGIN_URL"]),
                                 str(cfg["SALESFORCE_CLIENT_ID"]), username,
                                 service.jwt_private_key(cfg), utcnow(),
                                 cfg.get("SALESFORCE_JWT_AUDIENCE"))
    except auth.TokenError as exc:
        flash(f"Salesforce did not connect: {exc}")
        return redirect(url_for("salesforce_admin.admin_page"))
    service.finish_connect(get_session(), cfg, app_keyring(current_app), user.org_id, tokens,
                           kind=AuthKind.JWT, username=username, now=utcnow())
    get_session().commit()
    flash(f"Salesforce connected as {username}.")
    return redirect(url_for("salesforce_admin.admin_page"))


@bp.post("/disconnect")
def disconnect() -> Any:
    """Forget the tokens (queued items wait for the next connection)."""
    require_csrf()
    user = _admin()
    service.disconnect(get_session(), user.org_id, utcnow())
    get_session().commit()
    flash("Salesforce disconnected.")
    return redirect(url_for("salesforce_admin.admin_page"))


@bp.post("/retry")
def retry() -> Any:
    """Queue unmatched and failed items again."""
    require_csrf()
    user = _admin()
    n = service.retry_problems(get_session(), user.org_id, utcnow())
    get_session().commit()
    flash(f"{n} item{'s' if n != 1 else ''} queued again.")
    return redirect(url_for("salesforce_admin.admin_page"))
