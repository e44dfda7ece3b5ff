"""The Outlook add-in over HTTP: manifests, the hosted pane files, sign-in, and its API.

- ``/manifests/outlook.xml``, ``/manifests/outlook.json``, ``/manifests/outlook-app.zip``:
  no authentication (the admin center fetches them).
- ``/addin/outlook/...``: the task pane, the event runtime and their assets, with the headers
  Outlook needs to frame them (:func:`addin_headers`).
- ``/addin/outlook/sign-in``: Relay's sign-in inside an Office dialog; it hands a scoped
  add-in token back to the pane with ``messageParent``.
- ``/api/outlook/...``: who the pane is signed in as, linking a Microsoft account, and the
  "sending" report of the OnMessageSend handler.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    send_from_directory,
)
from pydantic import Field

from server.accounts.auth import BEARER_VERIFIERS, api_user, csrf_token
from server.accounts.models import User
from server.accounts.scopes import OUTLOOK
from server.accounts.service import authenticate, create_token
from server.addins import manifests
from server.addins.outlook import entra, service
from server.api.errors import ApiError, not_found
from server.api.operations import Model, Out, operation
from server.db import get_session, utcnow
from server.tasks.tags import task_id_of

bp = Blueprint("outlook", __name__)
api_bp = Blueprint("outlook_api", __name__, url_prefix="/api/outlook")

OFFICE_JS = "https://appsforoffice.microsoft.com"
#: Where Outlook (web, new Outlook, Windows, Mac) frames add-in pages from.
OUTLOOK_FRAME_ANCESTORS = (
    "https://outlook.office.com", "https://outlook.office365.com", "https://outlook.live.com",
    "https://*.outlook.com", "https://*.office.com", "https://*.office365.com",
    "https://*.officeapps.live.com", "https://*.microsoft.com", "https://*.cloud.microsoft",
)
_FILES = re.compile(r"^(?:[\w-]+\.(?:html|js|css)|assets/[\w-]+\.png|vendor/[\w.-]+\.js)$")
_TOKEN_NAME = "Outlook add-in"


def init_app(app: Flask) -> None:
    """Register the blueprints, the add-in pages' headers, CORS, and Entra token checks."""
    app.register_blueprint(bp)
    app.register_blueprint(api_bp)
    app.after_request(_cors)
    if app.config.get("MS_CLIENT_ID"):
        fetch = app.config.get("MS_JWKS_FETCH") or entra.http_fetch_jwks
        app.extensions["relay.entra_keys"] = entra.SigningKeys(app.config["MS_JWKS_URL"], fetch)
        app.extensions.setdefault(BEARER_VERIFIERS, []).append(_entra_user)


# -- headers -------------------------------------------------------------------------------


def content_security_policy(config: Any) -> str:
    """The CSP of the add-in pages: framed only by Outlook, scripts only from here and Office."""
    login = "https://login.microsoftonline.com"
    return "; ".join([
        "default-src 'self'",
        f"script-src 'self' {OFFICE_JS}",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: https:",
        f"connect-src 'self' {login}",
        f"frame-src 'self' {login}",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self' " + " ".join(OUTLOOK_FRAME_ANCESTORS),
    ])


@bp.after_request
def addin_headers(resp: Response) -> Response:
    """Add-in pages may be framed by Outlook (CSP frame-ancestors) and by nothing else."""
    if request.path.startswith("/addin/outlook/"):
        resp.headers["Content-Security-Policy"] = content_security_policy(current_app.config)
        resp.headers.pop("X-Frame-Options", None)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
    return resp


def addin_origin(config: Any) -> str:
    """The origin the add-in's pages are served from (PUBLIC_URL's)."""
    parts = urlsplit(str(config["PUBLIC_URL"]))
    return f"{parts.scheme}://{parts.netloc}"


def _cors(resp: Response) -> Response:
    """CORS for the API, for the add-in's origin only (never ``*``)."""
    if not request.path.startswith("/api/"):
        return resp
    origin = request.headers.get("Origin")
    if origin and origin == addin_origin(current_app.config):
        resp.headers["Access-Control-Allow-Origin"] = origin
        resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, If-None-Match"
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST"
        resp.headers["Access-Control-Max-Age"] = "600"
    resp.vary.add("Origin")
    return resp


# -- manifests -----------------------------------------------------------------------------


def _rendered() -> tuple[manifests.Rendered, dict[str, bytes]]:
    """The manifests of the running configuration (rendered once per process)."""
    cached = current_app.extensions.get("relay.outlook_manifests")
    if cached is None:
        from server.addins.versions import outlook_rendered

        cached = outlook_rendered(current_app._get_current_object())  # type: ignore[attr-defined]
        current_app.extensions["relay.outlook_manifests"] = cached
    return cached


@bp.get("/manifests/outlook.xml")
def manifest_xml() -> Response:
    """The XML add-in manifest for this deployment (no authentication)."""
    rendered, _ = _rendered()
    return Response(rendered.xml, mimetype="application/xml",
                    headers={"Content-Disposition": 'inline; filename="outlook.xml"'})


@bp.get("/manifests/outlook.json")
def manifest_json() -> Response:
    """The unified Microsoft 365 app manifest for this deployment (no authentication)."""
    rendered, _ = _rendered()
    return Response(rendered.json, mimetype="application/json")


@bp.get("/manifests/outlook-app.zip")
def manifest_package() -> Response:
    """The app package (manifest.json and its icons) for the Microsoft 365 admin center."""
    rendered, icons = _rendered()
    return Response(manifests.app_package(rendered, icons), mimetype="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="outlook-app.zip"'})


@bp.get("/.well-known/microsoft-officeaddins-allowed.json")
def allowed_addins() -> Any:
    """The add-in scripts of this origin allowed to make CORS requests (event runtime)."""
    source = manifests.source_from_config(current_app.config)
    return jsonify({"allowed": [source.events_script_url]})


# -- the hosted add-in ---------------------------------------------------------------------


@bp.get("/addin/outlook/config.json")
def pane_config() -> Any:
    """What the task pane needs to know: the Entra app for nested app authentication."""
    cfg = current_app.config
    client_id = cfg.get("MS_CLIENT_ID")
    source = manifests.source_from_config(cfg)
    return jsonify({
        "ms_client_id": client_id or None,
        "ms_scope": f"{source.app_id_uri}/{cfg.get('MS_API_SCOPE') or 'access_as_user'}"
        if client_id else None,
        "msal_script": "/addin/outlook/vendor/msal-browser.min.js" if client_id else None,
    })


@bp.get("/addin/outlook/events.js")
def events_script() -> Response:
    """The event handlers, with this deployment's address (the JS-only runtime has no page)."""
    text = (manifests.ADDIN_DIR / "events.js").read_text(encoding="utf-8")
    text = text.replace("__RELAY_PUBLIC_URL__", addin_origin(current_app.config))
    return Response(text, mimetype="text/javascript")


@bp.get("/addin/outlook/<path:filename>")
def addin_file(filename: str) -> Any:
    """A file of the task pane (HTML, JS, CSS, icons); nothing else of addin/ is served."""
    if not _FILES.match(filename):
        abort(404)
    resp = send_from_directory(manifests.ADDIN_DIR, filename, max_age=300)
    return resp


@bp.route("/addin/outlook/sign-in", methods=["GET", "POST"])
def dialog_sign_in() -> Any:
    """Relay's sign-in in an Office dialog; success hands a scoped add-in token to the pane."""
    from server.accounts import throttle
    from server.accounts.auth import csrf_valid
    from server.web.views import too_many_attempts

    error = None
    if request.method == "POST":
        if not csrf_valid(request.form.get("csrf")):
            abort(400, "the form expired; reload the page")
        wait = throttle.refused()
        if wait is not None:
            return (render_template("addin/outlook_sign_in.html", error=too_many_attempts(wait),
                                    csrf=csrf_token(), email=request.form.get("email", "")),
                    429, {"Retry-After": str(wait)})
        session = get_session()
        user = authenticate(session, request.form.get("email", ""),
                            request.form.get("password", ""))
        if user is None:
            throttle.failed()
        if user is not None:
            token = create_token(session, user, _TOKEN_NAME, scope=OUTLOOK)
            session.commit()
            resp = current_app.make_response(
                render_template("addin/outlook_signed_in.html", token=token, user=user))
            resp.headers["Cache-Control"] = "no-store"
            return resp
        error = "That email and password do not match an account."
    return render_template("addin/outlook_sign_in.html", error=error, csrf=csrf_token(),
                           email=request.form.get("email", "")), (401 if error else 200)


# -- API -----------------------------------------------------------------------------------


class MeOut(Out):
    """Who the add-in is signed in as."""

    id: int
    name: str
    email: str
    microsoft_linked: bool = Field(description="a Microsoft account is linked to this user")


class LinkIn(Model):
    """A Microsoft Entra access token (from nested app authentication) to link."""

    microsoft_token: str = Field(min_length=1, max_length=16384)


class LinkOut(Out):
    """The link of a Microsoft account to the caller."""

    linked: bool
    created: bool


class SendingIn(Model):
    """The OnMessageSend handler's report takes no fields."""


class SendingOut(Out):
    """Whether this report was the task's first."""

    first: bool


class TaggedSendingIn(Model):
    """The send handler's report by the message's ``x-relay-task`` value (a task tag)."""

    tag: str = Field(min_length=1, max_length=40)


class TagOut(Out):
    """The opaque tag the pane stamps as ``x-relay-task`` (never the task's id)."""

    tag: str


def _entra_settings() -> entra.EntraSettings:
    return entra.EntraSettings.from_config(current_app.config)


def _entra_user(token: str) -> tuple[User, str | None] | None:
    """The bearer verifier for Entra tokens (``server.accounts.auth.BEARER_VERIFIERS``)."""
    if not entra.looks_like_jwt(token):
        return None
    now = utcnow()
    try:
        identity = entra.verify(token, _entra_settings(),
                                current_app.extensions["relay.entra_keys"], now)
    except entra.InvalidToken as exc:
        raise ApiError(401, "unauthorized", f"the Microsoft token is not valid: {exc}") from None
    user = service.user_for_identity(get_session(), identity, now)
    if user is None:
        raise ApiError(401, "not_linked", "this Microsoft account is not linked to a Relay "
                       "user yet: sign in to Relay from the add-in once")
    return user, OUTLOOK


@operation(api_bp, "/me", "GET", response=MeOut)
def me() -> MeOut:
    """Who the Outlook add-in is signed in as."""
    from sqlalchemy import select

    from server.addins.outlook.models import MicrosoftIdentity

    user = api_user()
    session = get_session()
    linked = session.scalar(select(MicrosoftIdentity.id)
                            .where(MicrosoftIdentity.user_id == user.id).limit(1)) is not None
    session.commit()
    return MeOut(id=user.id, name=user.name, email=user.email, microsoft_linked=linked)


@operation(api_bp, "/link", "POST", body=LinkIn, response=LinkOut)
def link(body: LinkIn) -> LinkOut:
    """Link the Microsoft account of an Entra token to the caller (signed in to Relay).

    Afterwards that Microsoft account's tokens alone sign the add-in in. The token is checked
    exactly as a bearer token is; one linked to another Relay user is a 409.
    """
    user = api_user()
    if not current_app.config.get("MS_CLIENT_ID"):
        raise ApiError(409, "not_configured", "Microsoft sign-in is not configured "
                       "(MS_CLIENT_ID)")
    now = utcnow()
    try:
        identity = entra.verify(body.microsoft_token, _entra_settings(),
                                current_app.extensions["relay.entra_keys"], now)
    except entra.InvalidToken as exc:
        raise ApiError(422, "invalid_microsoft_token", str(exc)) from None
    created = service.link_identity(get_session(), user, identity, now)
    get_session().commit()
    return LinkOut(linked=True, created=created)


@operation(api_bp, "/tasks/<int:task_id>/sending", "POST", body=SendingIn,
           response=SendingOut)
def sending(task_id: int, body: SendingIn) -> SendingOut:
    """Outlook is sending a message tagged with this email task (the OnMessageSend report).

    Recorded on the task with one Live Feed event; it does not complete the task (the send
    may still fail): mailbox confirmation or *Mark as sent* does.
    """
    try:
        first = service.report_sending(get_session(), api_user(), task_id, utcnow())
    except LookupError:
        raise not_found("task") from None
    get_session().commit()
    return SendingOut(first=first)


@operation(api_bp, "/tasks/<int:task_id>/tag", "POST", response=TagOut)
def task_tag(task_id: int) -> TagOut:
    """The opaque tag of one of the caller's email tasks, made the first time it is asked.

    The pane stamps it as ``x-relay-task``: the header travels with the email to the
    recipient, so it carries a random tag rather than the task's sequential id.
    """
    session = get_session()
    try:
        tag = service.tag_for_own_task(session, api_user(), task_id)
    except LookupError:
        raise not_found("task") from None
    session.commit()
    return TagOut(tag=tag)


@operation(api_bp, "/sending", "POST", body=TaggedSendingIn, response=SendingOut)
def tagged_sending(body: TaggedSendingIn) -> SendingOut:
    """Outlook is sending a message whose ``x-relay-task`` is this tag (see ``sending``)."""
    session = get_session()
    task_id = task_id_of(session, body.tag)
    if task_id is None:
        raise not_found("task")
    try:
        first = service.report_sending(session, api_user(), task_id, utcnow())
    except LookupError:
        raise not_found("task") from None
    session.commit()
    return SendingOut(first=first)
