"""The Gmail add-on's HTTP endpoints (one path per trigger and action) and its admin page.

Every add-on endpoint first checks the ``Authorization`` ID token against its own URL (401
otherwise), then the granted scopes (``requesting_google_scopes`` for missing ones), then the
``userIdToken`` (401), then maps the Google account to a Relay user (an unknown one gets a
card saying how to get access). Only then does the endpoint's own function run. Token values
from the event never reach a log line or an error response.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app, jsonify, request
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.addins.gmail import cards, client, deployment
from server.addins.gmail.deployment import (
    ENDPOINTS,
    SCOPE_COMPOSE,
    SCOPE_EMAIL,
    SCOPE_EXECUTE,
    SCOPE_METADATA,
    endpoint_url,
    metadata_on,
)
from server.addins.gmail.service import (
    NotFillable,
    compose_choices,
    fill_for_task,
    find_user,
    home_page,
    opened_in_gmail,
    reply_with_task,
    tasks_for_addresses,
)
from server.addins.gmail.tokens import KeysUnavailable, TokenRejected, Verifier
from server.db import get_session, utcnow
from server.tasks.service import Due

log = logging.getLogger(__name__)
bp = Blueprint("gmail", __name__)
STATIC = Path(__file__).resolve().parent / "static"

BASE_SCOPES = (SCOPE_EXECUTE, SCOPE_EMAIL)


def init_app(app: Flask) -> None:
    """Bind the token verifier and the Gmail API chosen by configuration; add the routes."""
    app.extensions["relay.gmail.verifier"] = Verifier.from_config(app.config)
    app.extensions["relay.gmail.api"] = client.from_config(app.config)
    app.register_blueprint(bp)


@dataclass
class AddOnCall:
    """A verified add-on request: the event, the Relay user and the session."""

    event: Mapping[str, Any]
    user: User
    session: Session

    @property
    def params(self) -> Mapping[str, str]:
        """``commonEventObject.parameters`` (the clicked button's parameters)."""
        common = self.event.get("commonEventObject") or {}
        params = common.get("parameters") or {}
        return params if isinstance(params, dict) else {}

    @property
    def gmail(self) -> Mapping[str, Any]:
        """The event's ``gmail`` object."""
        value = self.event.get("gmail") or {}
        return value if isinstance(value, dict) else {}

    def tokens(self) -> client.EventTokens:
        """The user OAuth token and the Gmail access token for this request's message."""
        auth = self.event.get("authorizationEventObject") or {}
        return client.EventTokens(user_oauth_token=str(auth.get("userOAuthToken") or ""),
                                  gmail_access_token=str(self.gmail.get("accessToken") or ""))

    def recipients(self) -> list[str]:
        """The draft's To recipients (only present with ``draftAccess: METADATA``)."""
        for holder in (self.event.get("draftMetadata"), self.gmail.get("draftMetadata"),
                       self.gmail):
            if isinstance(holder, dict) and isinstance(holder.get("toRecipients"), list):
                return [str(r) for r in holder["toRecipients"] if r]
        return []

    def task_id(self) -> int | None:
        """The ``task_id`` parameter as an int, or None."""
        try:
            return int(self.params.get("task_id", ""))
        except ValueError:
            return None


def _urls() -> cards.Urls:
    cfg = current_app.config
    return cards.Urls(public=deployment.public_url(cfg),
                      home_list=endpoint_url(cfg, "home_list"),
                      compose_fill=endpoint_url(cfg, "compose_fill"),
                      message_reply=endpoint_url(cfg, "message_reply"))


#: Seconds Google is asked to wait before calling again when its certificates are unreachable.
RETRY_AFTER_SECONDS = 30


def _unauthorized(reason: str) -> Response:
    """A plain 401: the reason (which check failed, which setting is unset) is only logged."""
    log.warning("gmail add-on %s refused: %s", request.path, reason)
    resp = jsonify({"error": "unauthorized",
                    "message": "the request's Google ID tokens were not accepted"})
    resp.status_code = 401
    return resp


def _keys_unavailable(reason: str) -> Response:
    """A 503 with Retry-After: Google's certificates could not be fetched (logged, not told)."""
    log.error("gmail add-on %s: Google's certificates are unavailable: %s", request.path,
              reason)
    resp = jsonify({"error": "unavailable",
                    "message": "the request cannot be checked right now; try again shortly"})
    resp.status_code = 503
    resp.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return resp


def verified_call(audience: str, scopes: tuple[str, ...], trigger: bool
                  ) -> AddOnCall | Response | tuple[Any, int]:
    """The checks in front of every add-on endpoint, for the endpoint whose URL is ``audience``.

    Returns the verified call, or the answer to send instead: 401 for a bad token, 400 for
    a body that is not an event, ``requesting_google_scopes`` for missing consent, or the
    card for a Google account with no Relay user.
    """
    verifier: Verifier = current_app.extensions["relay.gmail.verifier"]
    try:
        verifier.verify_system(request.headers.get("Authorization"), audience)
    except TokenRejected as exc:
        return _unauthorized(str(exc))
    except KeysUnavailable as exc:
        return _keys_unavailable(str(exc))
    event = request.get_json(silent=True)
    if not isinstance(event, dict):
        return jsonify({"error": "bad_request",
                        "message": "send the add-on event object as JSON"}), 400
    auth = event.get("authorizationEventObject") or {}
    granted = auth.get("authorizedScopes") if isinstance(auth, dict) else None
    if isinstance(granted, list):
        # Only scopes the deployment declares can be asked for (metadata may be off).
        declared = deployment.oauth_scopes(current_app.config)
        missing = [s for s in scopes if s not in granted and s in declared]
        if missing:
            return jsonify(cards.request_scopes(missing))
    user_token = auth.get("userIdToken") if isinstance(auth, dict) else None
    if not user_token:
        return jsonify(cards.request_scopes([SCOPE_EMAIL]))
    try:
        google_user = verifier.verify_user(str(user_token))
    except TokenRejected as exc:
        return _unauthorized(str(exc))
    except KeysUnavailable as exc:
        return _keys_unavailable(str(exc))
    session = get_session()
    user = find_user(session, google_user.email)
    if user is None:
        session.commit()
        shown = cards.unknown_user_card(google_user.email,
                                        deployment.public_url(current_app.config))
        return jsonify(cards.push(shown) if trigger else cards.render_push(shown))
    return AddOnCall(event=event, user=user, session=session)


def addon_endpoint(name: str, *, scopes: tuple[str, ...] = BASE_SCOPES,
                   trigger: bool) -> Callable[[Callable[[AddOnCall], dict[str, Any]]],
                                              Callable[[], Any]]:
    """Register ``POST ENDPOINTS[name]`` with :func:`verified_call` in front of the function.

    ``trigger`` says how cards are answered: a trigger pushes its card, an action answers
    ``renderActions``.
    """

    def decorate(fn: Callable[[AddOnCall], dict[str, Any]]) -> Callable[[], Any]:
        @functools.wraps(fn)
        def view() -> Any:
            call = verified_call(endpoint_url(current_app.config, name), scopes, trigger)
            if not isinstance(call, AddOnCall):
                return call
            answer = fn(call)
            # Reads end in COMMIT (psycopg keeps its prepared statements; DESIGN.md).
            call.session.commit()
            return jsonify(answer)

        bp.add_url_rule(ENDPOINTS[name], endpoint=name, view_func=view, methods=["POST"])
        return view

    return decorate


def _show(card_json: dict[str, Any], trigger: bool) -> dict[str, Any]:
    return cards.push(card_json) if trigger else cards.render_push(card_json)


def _home(call: AddOnCall, *, trigger: bool, update: bool = False) -> dict[str, Any]:
    try:
        due = Due(call.params.get("due", "all"))
    except ValueError:
        due = Due.ALL
    try:
        page = max(1, int(call.params.get("page", "1")))
    except ValueError:
        page = 1
    items, total = home_page(call.session, call.user, due, page, utcnow())
    shown = cards.home_card(items, total=total, due=due.value, page=page,
                            tz=call.user.timezone, urls=_urls())
    if update:
        return cards.render_update(shown)
    return _show(shown, trigger)


@addon_endpoint("home", trigger=True)
def home(call: AddOnCall) -> dict[str, Any]:
    """Homepage trigger: the rep's open email tasks, 20 per card, with a due filter."""
    return _home(call, trigger=True)


@addon_endpoint("home_list", trigger=False)
def home_list(call: AddOnCall) -> dict[str, Any]:
    """Action of the home card's filter and "More" buttons (parameters ``due``, ``page``)."""
    return _home(call, trigger=False, update=True)


@addon_endpoint("universal_tasks", trigger=True)
def universal_tasks(call: AddOnCall) -> dict[str, Any]:
    """Universal action "My email tasks": the home card, from anywhere in Gmail.

    Kept (it reaches the task list from a message or compose card, where the homepage is not
    shown) and answered exactly as the homepage trigger is,
    ``{"action": {"navigations": [{"pushCard": card}]}}``: a universal action is not a card
    button's action, and Google documents no ``renderActions`` answer for it (Apps Script
    answers it with its own ``UniversalActionResponse``, "display add-on cards"; Google's
    HTTP samples answer every trigger with ``action.navigations``).
    """
    return _home(call, trigger=True)


@addon_endpoint("compose", trigger=True)
def compose(call: AddOnCall) -> dict[str, Any]:
    """Compose trigger: a task picker, tasks for the recipients already typed first."""
    recipients = call.recipients() if metadata_on(current_app.config) else []
    matching, others = compose_choices(call.session, call.user, recipients)
    return cards.push(cards.compose_card(matching, others, tz=call.user.timezone,
                                         urls=_urls(), recipients=recipients))


@addon_endpoint("compose_fill", scopes=(*BASE_SCOPES, SCOPE_COMPOSE), trigger=False)
def compose_fill(call: AddOnCall) -> dict[str, Any]:
    """Fill the open draft from a task's prefill and record "opened in Gmail".

    A blocked task (a field with no value) shows which fields and fills nothing. Answering
    twice (Google replays after consent) fills the same and records the open once.
    """
    task_id = call.task_id()
    if task_id is None:
        return cards.render_push(cards.notice_card("No task", "Pick a task to fill."))
    try:
        fill = fill_for_task(call.session, call.user, task_id)
    except NotFillable as exc:
        return cards.render_push(cards.notice_card("Cannot fill this email", str(exc)))
    if fill.blocked:
        return cards.render_push(cards.blocked_card(fill.task_title, fill.blocked))
    opened_in_gmail(call.session, call.user, task_id, utcnow())
    return cards.update_draft(fill.to, fill.subject, fill.html)


_MESSAGE_SCOPES = (*BASE_SCOPES, SCOPE_METADATA)


@addon_endpoint("message", scopes=_MESSAGE_SCOPES, trigger=True)
def message(call: AddOnCall) -> dict[str, Any]:
    """Contextual trigger of an opened message: the open email tasks of its sender."""
    if not metadata_on(current_app.config):
        return cards.push(cards.notice_card(
            "Relay tasks", "Reading the open message needs GMAIL_ADDON_DRAFT_ACCESS=METADATA "
            "(the message metadata scope); ask your Relay admin."))
    api: client.GmailApi = current_app.extensions["relay.gmail.api"]
    message_id = str(call.gmail.get("messageId") or "")
    try:
        opened = api.opened_message(call.tokens(), message_id)
    except client.GmailApiError as exc:
        log.warning("gmail add-on: reading message failed: %s", exc)
        return cards.push(cards.notice_card("Relay tasks",
                                            f"Gmail did not give the message ({exc.status})."))
    items = tasks_for_addresses(call.session, call.user, [opened.sender])
    return cards.push(cards.message_card(opened.sender, items, tz=call.user.timezone,
                                         urls=_urls()))


@addon_endpoint("message_reply", scopes=(*_MESSAGE_SCOPES, SCOPE_COMPOSE), trigger=False)
def message_reply(call: AddOnCall) -> dict[str, Any]:
    """"Reply with this task": a threaded reply draft made through the Gmail API, opened.

    Replays answer the draft the first run made. A blocked task shows its missing fields.
    """
    task_id = call.task_id()
    message_id = str(call.gmail.get("messageId") or "")
    if task_id is None or not message_id:
        return cards.render_push(cards.notice_card("No task", "Open a message and pick a "
                                                   "task."))
    try:
        fill = fill_for_task(call.session, call.user, task_id)
    except NotFillable as exc:
        return cards.render_push(cards.notice_card("Cannot reply with this task", str(exc)))
    if fill.blocked:
        return cards.render_push(cards.blocked_card(fill.task_title, fill.blocked))
    api: client.GmailApi = current_app.extensions["relay.gmail.api"]
    try:
        outcome = reply_with_task(call.session, call.user, api, call.tokens(), fill, task_id,
                                  message_id, utcnow())
    except client.GmailApiError as exc:
        log.warning("gmail add-on: creating the reply draft failed: %s", exc)
        if exc.status == 403:
            return cards.request_scopes([SCOPE_COMPOSE, SCOPE_METADATA][
                :2 if metadata_on(current_app.config) else 1])
        return cards.render_push(cards.notice_card(
            "Draft not created", f"Gmail refused the draft ({exc.status}); try again."))
    if outcome.busy:
        return cards.render_push(cards.notice_card(
            "Draft on its way", "The reply draft is being created; open it from Drafts."))
    return cards.open_created_draft(outcome.draft_id, outcome.thread_id)


# -- deployment file, logo, admin page ------------------------------------------------------


@bp.get("/manifests/gmail-deployment.json")
def deployment_file() -> Any:
    """The add-on's deployment file for this server's configuration (no sign-in needed)."""
    resp = current_app.response_class(deployment.render(current_app.config),
                                      mimetype="application/json")
    resp.headers["Content-Disposition"] = f'inline; filename="{deployment.FILE_NAME}"'
    return resp


@bp.get("/gmail/logo.png")
def logo() -> Any:
    """The add-on's logo (``common.logoUrl`` unless ``GMAIL_ADDON_LOGO_URL`` is set)."""
    resp = current_app.response_class(_logo_bytes(), mimetype="image/png")
    resp.headers["Cache-Control"] = "public, max-age=86400"
    return resp


@functools.cache
def _logo_bytes() -> bytes:
    return (STATIC / "logo.png").read_bytes()


def configuration_status(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each setting the add-on needs: its value (secrets are not shown) and what is wrong."""
    rows = []
    public = deployment.public_url(config)
    rows.append({"name": "PUBLIC_URL", "value": public,
                 "problem": None if public.startswith("https://") else
                 "Google only calls https:// endpoints"})
    for name in ("GMAIL_ADDON_SERVICE_ACCOUNT", "GMAIL_ADDON_CLIENT_ID"):
        value = config.get(name)
        rows.append({"name": name, "value": value or "",
                     "problem": None if value else
                     "unset: every add-on request is refused (401)"})
    try:
        access = deployment.draft_access(config)
        problem = None
    except ValueError as exc:
        access, problem = str(config.get("GMAIL_ADDON_DRAFT_ACCESS")), str(exc)
    rows.append({"name": "GMAIL_ADDON_DRAFT_ACCESS", "value": access, "problem": problem})
    rows.append({"name": "GMAIL_ADDON_CERTS_URL", "value": config.get("GMAIL_ADDON_CERTS_URL"),
                 "problem": None if config.get("GMAIL_ADDON_CERTS_URL") else "unset"})
    api = config.get("GMAIL_API")
    rows.append({"name": "GMAIL_API", "value": api,
                 "problem": "reply drafts are not created in Gmail" if api == "fake" else None})
    return rows


@bp.get("/admin/gmail")
def admin_page() -> Any:
    """Admins: the deployment file, gcloud commands, Marketplace SDK steps, settings status."""
    from server.web.views import page, require_signed_in

    user = require_signed_in()
    if user.role is not Role.ADMIN:
        abort(403)
    cfg = current_app.config
    try:
        text = deployment.render(cfg)
    except ValueError as exc:
        text = f"// cannot build the deployment file: {exc}"
    return page("web/admin/gmail.html", user,
                status=configuration_status(cfg), deployment_json=text,
                deployment_url=deployment.public_url(cfg) + "/manifests/gmail-deployment.json",
                logo_url=deployment.logo_url(cfg),
                endpoints={k: endpoint_url(cfg, k) for k in ENDPOINTS})
