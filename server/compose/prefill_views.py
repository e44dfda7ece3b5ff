"""The prefill endpoint of email tasks, and an authenticated ping (the benchmark's baseline)."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, current_app, request
from pydantic import Field

from server.accounts.auth import api_user
from server.accounts.service import TOKEN_PREFIX, hash_token
from server.api.errors import not_found
from server.api.operations import Out, operation
from server.cache import Lru
from server.campaigns.spec import StepType
from server.compose.prefill import prefill_for_task, prefill_for_token, token_caller
from server.db import get_read_connection

bp = Blueprint("prefill", __name__, url_prefix="/api")

# The JSON bodies of recent documents, by ETag (a hash of the document's whole content, so an
# entry can never be stale): a repeated document is not encoded again.
BODIES: Lru[bytes] = Lru(1024)


class PrefillCampaign(Out):
    """The campaign that made the task."""

    id: int
    name: str


class PrefillTask(Out):
    """The email task being prefilled."""

    id: int
    type: StepType
    campaign: PrefillCampaign
    day: int
    step: int = Field(description="the step's number within its day")
    due_at: datetime


class Recipient(Out):
    """One address of To, Cc or Bcc."""

    email: str
    name: str = Field(description="display name; empty when the contact has no name")


class Blocked(Out):
    """Why the email cannot be sent (E5): the fields with no value and no default."""

    fields: list[str]


class Thread(Out):
    """Mailbox thread of the previous email, when it was sent through a connected mailbox."""

    gmail_thread_id: str | None
    outlook_conversation_id: str | None


class FollowUp(Out):
    """A follow-up's quoted previous email (E2) and threading headers (E3)."""

    quoted_html: str = Field(description="the previous step's template rendered for the "
                                         "contact, quoted; already appended to html")
    quoted_text: str = Field(description="the same, as '> ' quoted plain text")
    in_reply_to: str | None = Field(description="Message-ID of the previous email, if known")
    references: str | None
    thread: Thread


class Links(Out):
    """Deep links with the plain-text body; null when longer than 2,000 characters."""

    gmail: str | None
    outlook_web: str | None
    mailto: str | None
    truncated: bool = Field(description="true when a link was left out for its length")


class PrefillOut(Out):
    """What a compose window fills in for an email task."""

    task: PrefillTask
    to: list[Recipient]
    cc: list[Recipient]
    bcc: list[Recipient]
    subject: str
    html: str
    text: str
    prompts: list[str] = Field(description="field prompts (E6) to replace before sending")
    blocked: Blocked | None
    follow_up: FollowUp | None
    links: Links
    etag: str = Field(description="the ETag header's value, without its quotes")


class Ping(Out):
    """The caller is authenticated."""

    ok: bool
    user_id: int


def _bearer_hash() -> str | None:
    """The hash of the request's Relay API token, when it sends one that is well formed.

    These two endpoints look the token up inside their own query (DESIGN.md: hot read paths
    do authentication, ownership and the data join in one query). Anything else (a session
    cookie, a malformed or unknown token) goes through ``api_user``, which accepts the cookie
    or answers the usual 401.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(TOKEN_PREFIX):
        return None
    return hash_token(token)


@operation(bp, "/tasks/<int:task_id>/prefill", "GET", response=PrefillOut, auth_in_view=True)
def prefill(task_id: int) -> Response:
    """The prefill document of one of the caller's email tasks.

    Another rep's task is a 404; a call, InMail or custom task is a 409 (it has no email).
    The response carries a strong ``ETag``; a request whose ``If-None-Match`` names it gets
    an empty 304.
    """
    conn = get_read_connection()
    token_hash = _bearer_hash()
    if token_hash is not None:
        doc = prefill_for_token(conn, token_hash, task_id)
        if doc is None:
            api_user()  # an unknown token is a 401; a known one reaches the 404 below
    else:
        doc = prefill_for_task(conn, api_user(), task_id)
    conn.commit()
    if doc is None:
        raise not_found("task")
    etag = doc["etag"]
    if request.if_none_match.contains_weak(etag):
        resp = current_app.response_class(status=304)
    else:
        body = BODIES.get(etag)
        if body is None:
            body = f"{current_app.json.dumps(doc)}\n".encode()
            BODIES.put(etag, body, 0)
        resp = current_app.response_class(body, mimetype="application/json")
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp


@operation(bp, "/ping", "GET", response=Ping, auth_in_view=True)
def ping() -> Ping:
    """Who the caller is: the cheapest authenticated request (the prefill benchmark's baseline).

    It authenticates exactly as the prefill endpoint does (the token looked up in one query,
    the request ended with a commit), so the two compare fairly.
    """
    conn = get_read_connection()
    token_hash = _bearer_hash()
    user_id = token_caller(conn, token_hash) if token_hash is not None else None
    if user_id is None:
        user_id = api_user().id
    conn.commit()
    return Ping(ok=True, user_id=user_id)
