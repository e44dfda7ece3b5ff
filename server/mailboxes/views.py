"""Mailbox connection endpoints: read, connect (Google, Microsoft, SMTP, local outbox), disconnect.

The API (``/api/mailbox``, Bearer token) starts every connection; Google and Microsoft then
send the rep's browser back to ``/mailbox/oauth/<provider>/callback``, which finishes it and
redirects to the web app. Secrets are accepted (SMTP password) but never returned: responses
carry :class:`MailboxOut`, built from the masked view.

Binding the callback to the user who started. The start (API token or the mailbox page)
returns the consent URL and sets no cookie; the callback then requires that the browser
coming back carries a Relay session for the *same* user who started (the ``state`` row names
its owner). Anything else — another rep signed in, or no Relay session at all — answers 400,
spends the state and stores nothing, for Google and Microsoft alike. We chose the session
check over a separate one-time nonce cookie because every legitimate completion already
happens in the rep's own browser where they use Relay, it needs no extra page before consent,
and the session cookie is ``HttpOnly`` and ``SameSite=Lax`` (sent on Google's top-level GET
redirect). Microsoft's ``response_mode=form_post`` arrives as a cross-site POST, on which
browsers do not send a ``SameSite=Lax`` cookie: such a POST without a session is answered with
a small page that posts the same fields back to the callback from Relay's own origin
(same-site, so the cookie comes along), and the check is made then. A consent URL forwarded
to a colleague therefore cannot connect the colleague's mailbox to the starter's account.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from pydantic import Field, SecretStr

from server.accounts.auth import api_user, web_user
from server.accounts.models import User
from server.api.errors import ApiError, FieldError, invalid
from server.api.operations import Model, OneLine, Out, operation
from server.crypto import KeyRing, keyring_from_config
from server.db import get_session, utcnow
from server.mailboxes import connect as connections
from server.mailboxes import hosts, oauth
from server.mailboxes import lifecycle as mbx
from server.mailboxes.lifecycle import MailboxError, MailboxStatus, Provider

bp = Blueprint("mailbox", __name__, url_prefix="/api/mailbox")
callback_bp = Blueprint("mailbox_oauth", __name__)


class MailboxOut(Out):
    """The rep's mailbox connection; secrets are never included."""

    connected: bool
    provider: Provider | None = None
    status: MailboxStatus | None = None
    email: str | None = None
    display_name: str | None = None
    daily_limit: int | None = None
    paused_until: datetime | None = None
    pause_reason: str | None = None
    last_error: str | None = None
    connected_at: datetime | None = None
    has_secret: bool = Field(False, description="a token or password is stored (never shown)")
    settings: dict[str, Any] = Field(default_factory=dict)


class SmtpIn(Model):
    """An SMTP (+ optional IMAP) mailbox. The password is stored encrypted, never shown."""

    email: str = Field(max_length=320)
    display_name: OneLine = Field("", max_length=200)
    smtp_host: str = Field(min_length=1, max_length=253)
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    smtp_username: str | None = Field(None, max_length=320)
    password: SecretStr | None = None
    imap_host: str | None = Field(None, max_length=253)
    imap_port: int = Field(993, ge=1, le=65535)
    imap_security: Literal["ssl", "starttls", "none"] = "ssl"
    imap_sent_folder: str = Field("Sent", max_length=200)
    imap_drafts_folder: str = Field("Drafts", max_length=200)
    daily_limit: int | None = Field(None, ge=1, le=100000)
    verify: bool = Field(True, description="log in to the SMTP server before saving")


class OutboxIn(Model):
    """The local outbox folder (development): nothing is delivered."""


class OAuthStartOut(Out):
    """Where to send the rep's browser to give consent."""

    authorization_url: str


class DisconnectOut(Out):
    """Whether this request disconnected a mailbox."""

    changed: bool
    mailbox: MailboxOut


def app_keyring() -> KeyRing:
    """The app's key ring for secrets at rest (built once per app)."""
    ext = current_app.extensions
    if "relay.keyring" not in ext:
        ext["relay.keyring"] = keyring_from_config(dict(current_app.config),
                                                   current_app.instance_path)
    return ext["relay.keyring"]


def oauth_flow(provider: Provider) -> oauth.OAuthProvider:
    """The OAuth flow of a provider (``relay.oauth_providers`` overrides it, for tests)."""
    override = current_app.extensions.get("relay.oauth_providers", {})
    if provider in override:
        return override[provider]
    if provider is Provider.GOOGLE:
        return oauth.GoogleOAuth(current_app.config)
    return oauth.MicrosoftOAuth(current_app.config)


def redirect_uri(provider: Provider) -> str:
    """The callback URL registered with the provider (built from ``PUBLIC_URL``)."""
    base = str(current_app.config["PUBLIC_URL"]).rstrip("/")
    return f"{base}/mailbox/oauth/{provider.value}/callback"


def mailbox_out(mb: mbx.Mailbox | None) -> MailboxOut:
    """Serialise a mailbox (masked)."""
    if mb is None:
        return MailboxOut(connected=False)
    view = mbx.mailbox_view(mb)
    return MailboxOut(connected=view.status is MailboxStatus.CONNECTED,
                      **{k: getattr(view, k) for k in (
                          "provider", "status", "email", "display_name", "daily_limit",
                          "paused_until", "pause_reason", "last_error", "connected_at",
                          "has_secret", "settings")})


def _raise(err: MailboxError) -> ApiError:
    return invalid([FieldError(err.field or "mailbox", err.message)])


@operation(bp, "", "GET", response=MailboxOut)
def read() -> MailboxOut:
    """The caller's mailbox connection (no secrets)."""
    out = mailbox_out(mbx.get_mailbox(get_session(), api_user().id))
    get_session().commit()
    return out


@operation(bp, "/smtp", "POST", body=SmtpIn, response=MailboxOut, status=201)
def connect_smtp(body: SmtpIn) -> MailboxOut:
    """Connect an SMTP (+ IMAP) mailbox; with ``verify`` the login is tried first."""
    user: User = api_user()
    password = body.password.get_secret_value() if body.password else None
    try:
        mb = connections.connect_smtp(
            get_session(), user, email=body.email, display_name=body.display_name,
            settings=body.model_dump(include=set(connections.SMTP_SETTINGS)),
            password=password, keyring=app_keyring() if password else None, now=utcnow(),
            daily_limit=body.daily_limit,
            verify=connections.verify_smtp if body.verify else None,
            allow=hosts.allowlist(current_app.config))
    except MailboxError as err:
        raise _raise(err) from None
    get_session().commit()
    return mailbox_out(mb)


@operation(bp, "/outbox", "POST", body=OutboxIn, response=MailboxOut, status=201)
def connect_outbox(body: OutboxIn) -> MailboxOut:
    """Use the local outbox folder (development): emails are written to files, not sent."""
    mb = connections.connect_outbox(get_session(), api_user(), utcnow())
    get_session().commit()
    return mailbox_out(mb)


@operation(bp, "/oauth/<provider>/start", "POST", response=OAuthStartOut)
def oauth_start(provider: str) -> OAuthStartOut:
    """Start connecting Google or Microsoft: returns the consent URL to open in the browser."""
    user: User = api_user()
    if provider not in (Provider.GOOGLE.value, Provider.MICROSOFT.value):
        raise invalid([FieldError("provider", "must be google or microsoft")])
    prov = Provider(provider)
    try:
        url = oauth.start_oauth(get_session(), owner_id=user.id, provider=prov,
                                flow=oauth_flow(prov), keyring=app_keyring(),
                                redirect_uri=redirect_uri(prov), now=utcnow())
    except MailboxError as err:
        raise _raise(err) from None
    get_session().commit()
    return OAuthStartOut(authorization_url=url)


@operation(bp, "/disconnect", "POST", response=DisconnectOut)
def disconnect() -> DisconnectOut:
    """Disconnect the caller's mailbox: its token or password is forgotten."""
    user: User = api_user()
    changed = mbx.disconnect(get_session(), user.id, utcnow())
    get_session().commit()
    return DisconnectOut(changed=changed, mailbox=mailbox_out(mbx.get_mailbox(get_session(),
                                                                               user.id)))


@callback_bp.route("/mailbox/oauth/<provider>/callback", methods=["GET", "POST"])
def oauth_callback(provider: str) -> Any:
    """The provider's redirect after consent: finish the connection, back to the web app."""
    if provider not in (Provider.GOOGLE.value, Provider.MICROSOFT.value):
        return "unknown provider", 404
    prov = Provider(provider)
    # Google answers with a GET, Microsoft (response_mode=form_post) with a form POST; the
    # one-time ``state`` names the rep who started, and the browser coming back must be
    # signed in to Relay as that rep (module doc).
    params = {k: v for k, v in request.values.items()
              if k in ("code", "state", "error", "session_state", "client_info", "scope")}
    state = params.get("state", "")
    session = get_session()
    caller = web_user()
    if caller is None and request.method == "POST" and not request.form.get("relay_resumed"):
        # A cross-site form_post carries no SameSite=Lax cookie: post it again from our origin.
        return render_template("web/oauth_resume.html", fields=params,
                               action=url_for("mailbox_oauth.oauth_callback", provider=provider))
    pending = oauth.pending_state(session, state, utcnow()) if state else None
    if pending is None or pending.provider is not prov:
        return ("This connection link expired or was already used. Start again from Relay.",
                400)
    owner = session.get(User, pending.owner_id)
    assert owner is not None
    try:
        oauth.finish_oauth(session, state=state, params=params, flow=oauth_flow(prov),
                           keyring=app_keyring(), redirect_uri=redirect_uri(prov),
                           org_id=owner.org_id, caller_id=caller.id if caller else None,
                           now=utcnow())
    except MailboxError as err:
        session.commit()  # the state is spent either way
        return (f"Could not connect the mailbox: {err.message}", 400)
    session.commit()
    flash("Mailbox connected.")
    return redirect(url_for("mailbox_pages.mailbox"))
