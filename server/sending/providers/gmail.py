"""Gmail API mailboxes (google-api-python-client, credentials from google-auth).

Drafts are ``users.drafts.create`` with the raw RFC 5322 bytes (base64url) and, for a
follow-up, the ``threadId`` of the earlier email — Gmail threads a message only when the
thread id is given *and* the headers (``In-Reply-To``/``References``, subject) agree, which the
header builder guarantees. Sending is ``users.drafts.send``. Reconciliation: the draft still
exists → not sent; otherwise ``users.messages.list`` with ``q=rfc822msgid:<our id>`` in SENT.
The mailbox sync reads ``users.history.list`` from a stored ``startHistoryId``.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httplib2
from google.auth.exceptions import RefreshError, TransportError
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from server.db import utcnow
from server.mailboxes.lifecycle import GMAIL_WORKSPACE_LIMIT
from server.sending.headers import message_bytes
from server.sending.transport import (
    DailyLimitError,
    Draft,
    OutboundMessage,
    Outcome,
    OutcomeUnknown,
    PermanentError,
    ReauthRequired,
    Reconciled,
    Sent,
    TransientError,
)
from server.sending.transport import (
    TransportError as RelayTransportError,
)

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
#: What Relay asks Google for: send, read (sent detection, reply and bounce detection,
#: reconciliation) and compose (drafts).
GMAIL_SCOPES = (
    "https://www.googleapis.com/auth/gmail.send",
    "https://www.googleapis.com/auth/gmail.compose",
    "https://www.googleapis.com/auth/gmail.readonly",
)
_RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "backendError",
                           "internalError"})
_DAILY_REASONS = frozenset({"dailyLimitExceeded", "dailyLimitExceededUnreg",
                            "sendingLimitExceeded"})


def google_credentials(refresh_token: str, config: Mapping[str, Any],
                       token_uri: str | None = None) -> Any:
    """google-auth user credentials that refresh themselves from the stored refresh token."""
    from google.oauth2.credentials import Credentials

    return Credentials(
        token=None, refresh_token=refresh_token,
        token_uri=token_uri or config.get("GOOGLE_TOKEN_URI") or GOOGLE_TOKEN_URI,
        client_id=config.get("GOOGLE_CLIENT_ID"), client_secret=config.get("GOOGLE_CLIENT_SECRET"),
        scopes=list(GMAIL_SCOPES),
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def _details(exc: HttpError) -> tuple[int, set[str], str]:
    """HTTP status, error reasons and message of a Gmail API error."""
    status = int(getattr(exc.resp, "status", 0) or 0)
    reasons: set[str] = set()
    message = ""
    try:
        body = json.loads(exc.content.decode("utf-8") if isinstance(exc.content, bytes)
                          else exc.content)
        err = body.get("error", {})
        if isinstance(err, dict):
            message = str(err.get("message", ""))
            reasons = {str(e.get("reason")) for e in err.get("errors", []) if e.get("reason")}
            for d in err.get("details", []) or []:
                if isinstance(d, dict) and d.get("reason"):
                    reasons.add(str(d["reason"]))
        elif isinstance(err, str):
            reasons = {err}
            message = str(body.get("error_description", ""))
    except (ValueError, AttributeError):
        message = str(exc)
    return status, reasons, message


def _retry_after(exc: HttpError) -> float | None:
    value = exc.resp.get("retry-after") if exc.resp is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(exc: BaseException, *, sending: bool) -> RelayTransportError:
    """The Relay transport error of a Gmail failure; ``sending`` when it was drafts.send.

    A 5xx, a timeout or a dropped connection during ``drafts.send`` may have sent the email:
    that is ``OutcomeUnknown``; anywhere else it is retried.
    """
    if isinstance(exc, RelayTransportError):
        return exc
    if isinstance(exc, RefreshError):
        text = str(exc)
        if "invalid_grant" in text or "invalid_client" in text or "unauthorized" in text:
            return ReauthRequired(f"Google refused the refresh token: {text[:300]}")
        return TransientError(f"Google token refresh failed: {text[:300]}")
    if isinstance(exc, HttpError):
        status, reasons, message = _details(exc)
        reason = f"Gmail {status} {','.join(sorted(reasons)) or ''}: {message}".strip()
        lowered = message.lower()
        if reasons & _DAILY_REASONS or "sending limit" in lowered or "daily limit" in lowered:
            return DailyLimitError(reason)
        if status == 429 or reasons & _RATE_REASONS and status < 500:
            return TransientError(reason, retry_after=_retry_after(exc))
        if status >= 500:
            if sending:
                return OutcomeUnknown(reason)
            return TransientError(reason, retry_after=_retry_after(exc))
        if status == 401 or reasons & {"invalid_grant", "insufficientPermissions"}:
            # A revoked grant, or scopes the rep took back: only reconnecting fixes it.
            return ReauthRequired(reason)
        return PermanentError(reason)
    if isinstance(exc, (TimeoutError, socket.timeout, ConnectionError, OSError,
                        httplib2.HttpLib2Error, TransportError)):
        if sending:
            return OutcomeUnknown(f"Gmail: no answer to drafts.send: {exc}")
        return TransientError(f"Gmail: request failed: {exc}")
    raise exc


@dataclass(frozen=True)
class HistoryPage:
    """Messages added to the mailbox since a history id, and the id to continue from."""

    message_ids: list[str]
    history_id: str


class GmailTransport:
    """A Gmail mailbox through the Gmail API (``service`` is a built ``gmail`` v1 resource)."""

    kind = "gmail"

    def __init__(self, service: Any, daily_limit: int = GMAIL_WORKSPACE_LIMIT,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.service = service
        self.daily_limit = daily_limit
        self._clock = clock

    @classmethod
    def from_credentials(cls, credentials: Any, *, daily_limit: int = GMAIL_WORKSPACE_LIMIT,
                         http: Callable[[Any], Any] | None = None,
                         clock: Callable[[], datetime] = utcnow,
                         timeout: float = 20.0) -> GmailTransport:
        """Build the Gmail service from the bundled (static) discovery document.

        ``timeout`` (``GMAIL_TIMEOUT_SECONDS``) bounds each socket operation; without it
        google-api-python-client would wait 60 s, more than the dispatcher's lease margin.
        """
        if http is not None:
            service = build("gmail", "v1", http=http(credentials), static_discovery=True)
        else:
            from google_auth_httplib2 import AuthorizedHttp

            authorized = AuthorizedHttp(credentials, http=httplib2.Http(timeout=timeout))
            service = build("gmail", "v1", http=authorized, static_discovery=True,
                            cache_discovery=False)
        return cls(service, daily_limit=daily_limit, clock=clock)

    def _call(self, request: Any, *, sending: bool = False) -> Any:
        try:
            return request.execute(num_retries=0)
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none swallowed
            raise classify(exc, sending=sending) from exc

    def create_draft(self, message: OutboundMessage) -> Draft:
        """``users.drafts.create`` with the raw message (and the thread of a follow-up)."""
        body: dict[str, Any] = {"message": {"raw": _b64url(message_bytes(message))}}
        if message.thread_id:
            body["message"]["threadId"] = message.thread_id
        resp = self._call(self.service.users().drafts().create(userId="me", body=body))
        return Draft(id=resp["id"], thread_id=(resp.get("message") or {}).get("threadId"))

    def send_draft(self, draft: Draft, message: OutboundMessage) -> Sent:
        """``users.drafts.send``; a 404 means the draft is gone (maybe sent): reconcile.

        A 5xx answer may come after the email left, so the draft is looked up at once: still
        there, the send provably did not happen (``TransientError``, retried); gone or not
        known, ``OutcomeUnknown``. A 429 is refused before anything happens (retried).
        """
        try:
            resp = self._call(self.service.users().drafts().send(userId="me",
                                                                 body={"id": draft.id}),
                              sending=True)
        except PermanentError as exc:
            if exc.reason.startswith("Gmail 404"):
                raise OutcomeUnknown(f"the draft {draft.id} is gone: {exc.reason}") from exc
            raise
        except OutcomeUnknown as exc:
            if exc.reason.startswith("Gmail 5") and self._draft_exists(draft):
                raise TransientError(f"{exc.reason} (the draft is still there: not sent)",
                                     retry_after=_retry_after(exc.__cause__)
                                     if isinstance(exc.__cause__, HttpError) else None
                                     ) from exc
            raise
        return Sent(provider_id=resp["id"], thread_id=resp.get("threadId"),
                    sent_at=self._clock())

    def _draft_exists(self, draft: Draft) -> bool:
        """Whether the draft is still there (False when that cannot be told either)."""
        try:
            self._call(self.service.users().drafts().get(userId="me", id=draft.id,
                                                         format="minimal"))
        except Exception:  # noqa: BLE001 - any failure to look means "cannot tell"
            return False
        return True

    def delete_drafts(self, message_id: str) -> int:
        """Delete every draft carrying ``message_id`` (``rfc822msgid:``); how many there were."""
        resp = self._call(self.service.users().drafts().list(
            userId="me", q=f"rfc822msgid:{message_id}", includeSpamTrash=True))
        found = [d["id"] for d in resp.get("drafts") or [] if d.get("id")]
        for draft_id in found:
            try:
                self._call(self.service.users().drafts().delete(userId="me", id=draft_id))
            except PermanentError as exc:
                if not exc.reason.startswith("Gmail 404"):  # already gone: fine
                    raise
        return len(found)

    def find_sent(self, message_id: str) -> Sent | None:
        """Our message in SENT, found by its Message-ID (``rfc822msgid:``), or None."""
        resp = self._call(self.service.users().messages().list(
            userId="me", q=f"rfc822msgid:{message_id}", labelIds=["SENT"],
            includeSpamTrash=True))
        found = resp.get("messages") or []
        if not found:
            return None
        return Sent(provider_id=found[0]["id"], thread_id=found[0].get("threadId"))

    def reconcile(self, message: OutboundMessage, draft: Draft | None) -> Reconciled:
        """Draft still there → not sent; in SENT → sent; a vanished draft not in SENT → unknown.

        Gmail's search index can lag a fresh send by a little, so a draft that is gone but
        not yet findable stays ``UNKNOWN`` (ask again later) rather than ``NOT_SENT``.
        """
        if draft is not None:
            try:
                self._call(self.service.users().drafts().get(userId="me", id=draft.id,
                                                             format="minimal"))
                return Reconciled(Outcome.NOT_SENT)
            except PermanentError as exc:
                if not exc.reason.startswith("Gmail 404"):
                    raise
        sent = self.find_sent(message.message_id)
        if sent is not None:
            return Reconciled(Outcome.SENT, sent)
        return Reconciled(Outcome.UNKNOWN if draft is not None else Outcome.NOT_SENT)

    # -- sync -------------------------------------------------------------------------

    def profile_history_id(self) -> str:
        """The mailbox's current history id (where a new sync starts)."""
        return str(self._call(self.service.users().getProfile(userId="me"))["historyId"])

    def history(self, start_history_id: str) -> Iterator[HistoryPage]:
        """Pages of ``users.history.list`` (messageAdded) from ``start_history_id``.

        A 404 means the id is too old (Gmail keeps about a week): the caller restarts from
        :meth:`profile_history_id`.
        """
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = dict(userId="me", startHistoryId=start_history_id,
                                          historyTypes=["messageAdded"], maxResults=500)
            if token:
                kwargs["pageToken"] = token
            resp = self._call(self.service.users().history().list(**kwargs))
            ids = [added["message"]["id"] for h in resp.get("history", [])
                   for added in h.get("messagesAdded", [])]
            yield HistoryPage(message_ids=ids, history_id=str(resp.get("historyId",
                                                                       start_history_id)))
            token = resp.get("nextPageToken")
            if not token:
                return

    def raw_message(self, message_id: str) -> tuple[bytes, dict[str, Any]]:
        """A message's RFC 5322 bytes and its Gmail metadata (threadId, labelIds, internalDate)."""
        resp = self._call(self.service.users().messages().get(userId="me", id=message_id,
                                                              format="raw"))
        raw = base64.urlsafe_b64decode(resp["raw"] + "=" * (-len(resp["raw"]) % 4))
        return raw, {k: resp.get(k) for k in ("id", "threadId", "labelIds", "internalDate")}
