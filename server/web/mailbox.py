"""The mailbox page: see the connection, connect Google / Microsoft / SMTP / the local outbox."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, flash, redirect, request, url_for

from server.db import get_session, utcnow
from server.mailboxes import connect as connections
from server.mailboxes import hosts, oauth
from server.mailboxes import lifecycle as mbx
from server.mailboxes.lifecycle import MailboxError, Provider
from server.mailboxes.views import app_keyring, oauth_flow, redirect_uri
from server.web.views import page, require_csrf, require_signed_in

bp = Blueprint("mailbox_pages", __name__)


@bp.get("/mailbox")
def mailbox() -> Any:
    """The rep's mailbox connection (no secret is ever shown) and the ways to connect one."""
    user = require_signed_in()
    mb = mbx.get_mailbox(get_session(), user.id)
    view = mbx.mailbox_view(mb) if mb is not None else None
    cfg = current_app.config
    get_session().commit()
    return page("web/mailbox.html", user, mailbox=view,
                google=bool(cfg.get("GOOGLE_CLIENT_ID") and cfg.get("GOOGLE_CLIENT_SECRET")),
                microsoft=bool(cfg.get("MS_CLIENT_ID") and cfg.get("MS_CLIENT_SECRET")),
                error=None, form={})


@bp.post("/mailbox/connect/<provider>")
def connect_oauth(provider: str) -> Any:
    """Start connecting Google or Microsoft: off to the provider's consent page."""
    user = require_signed_in()
    require_csrf()
    if provider not in (Provider.GOOGLE.value, Provider.MICROSOFT.value):
        return redirect(url_for("mailbox_pages.mailbox"))
    prov = Provider(provider)
    try:
        url = oauth.start_oauth(get_session(), owner_id=user.id, provider=prov,
                                flow=oauth_flow(prov), keyring=app_keyring(),
                                redirect_uri=redirect_uri(prov), now=utcnow())
    except MailboxError as err:
        flash(f"Could not start: {err.message}")
        return redirect(url_for("mailbox_pages.mailbox"))
    get_session().commit()
    return redirect(url)


@bp.post("/mailbox/smtp")
def connect_smtp() -> Any:
    """Connect an SMTP (+ IMAP) mailbox from the form (the login is tried first)."""
    user = require_signed_in()
    require_csrf()
    form = request.form
    settings: dict[str, Any] = {k: form.get(k, "").strip() for k in connections.SMTP_SETTINGS}
    try:
        for key in ("smtp_port", "imap_port"):
            if settings.get(key):
                settings[key] = int(settings[key])
        connections.connect_smtp(get_session(), user, email=form.get("email", ""),
                                 display_name=form.get("display_name", "").strip(),
                                 settings=settings, password=form.get("password") or None,
                                 keyring=app_keyring() if form.get("password") else None,
                                 now=utcnow(), allow=hosts.allowlist(current_app.config))
    except (MailboxError, ValueError) as err:
        get_session().rollback()
        message = (f"{err.field}: {err.message}" if isinstance(err, MailboxError)
                   else "ports must be numbers")
        view = mbx.get_mailbox(get_session(), user.id)
        shown = {k: v for k, v in form.items() if k != "password"}
        return page("web/mailbox.html", user, 422,
                    mailbox=mbx.mailbox_view(view) if view else None, google=False,
                    microsoft=False, error=message, form=shown)
    get_session().commit()
    flash("Mailbox connected.")
    return redirect(url_for("mailbox_pages.mailbox"))


@bp.post("/mailbox/outbox")
def connect_outbox() -> Any:
    """Use the local outbox folder: emails are written to files, not delivered."""
    user = require_signed_in()
    require_csrf()
    connections.connect_outbox(get_session(), user, utcnow())
    get_session().commit()
    flash("Using the local outbox: emails are written to files and not delivered.")
    return redirect(url_for("mailbox_pages.mailbox"))


@bp.post("/mailbox/disconnect")
def disconnect() -> Any:
    """Disconnect the mailbox and forget its token or password."""
    user = require_signed_in()
    require_csrf()
    if mbx.disconnect(get_session(), user.id, utcnow()):
        flash("Mailbox disconnected.")
    get_session().commit()
    return redirect(url_for("mailbox_pages.mailbox"))
