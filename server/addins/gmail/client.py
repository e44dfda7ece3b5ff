"""The Gmail API as the add-on uses it, behind a small protocol with a real and a fake side.

The add-on never holds a mailbox connection of its own: each call uses the two tokens Google
put in the event (``authorizationEventObject.userOAuthToken`` as the bearer, and
``gmail.accessToken`` in ``X-Goog-Gmail-Access-Token``), which give access to the one
message that is open, for the length of the request. ``apis`` is the registry by name
(``GMAIL_API`` chooses): ``google`` (google-api-python-client with its static discovery
document) or ``fake`` (in memory, for development and benchmarks; it says so in the log).
"""

from __future__ import annotations

import base64
import functools
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import formataddr
from typing import Any, Protocol

log = logging.getLogger(__name__)

ACCESS_TOKEN_HEADER = "X-Goog-Gmail-Access-Token"
METADATA_HEADERS = ("From", "Subject", "Message-ID", "References")


@dataclass(frozen=True)
class EventTokens:
    """The per-request tokens of an add-on event. ``repr`` never shows them."""

    user_oauth_token: str = field(repr=False)
    gmail_access_token: str = field(repr=False)


@dataclass(frozen=True)
class OpenedMessage:
    """What the add-on reads of the open message: its thread and reply headers."""

    id: str
    thread_id: str
    sender: str
    sender_name: str
    subject: str
    message_id: str
    references: str


@dataclass(frozen=True)
class CreatedDraft:
    """A draft made through the Gmail API."""

    draft_id: str
    message_id: str
    thread_id: str


@dataclass(frozen=True)
class ReplyDraft:
    """The reply to write: recipients, subject, bodies and the threading headers."""

    to: Sequence[tuple[str, str]]
    subject: str
    html: str
    text: str
    in_reply_to: str
    references: str
    thread_id: str


class GmailApiError(Exception):
    """Gmail refused or could not be reached; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"Gmail API error {status}: {reason}")
        self.status = status
        self.reason = reason


class GmailApi(Protocol):
    """What the add-on needs from Gmail."""

    def opened_message(self, tokens: EventTokens, message_id: str) -> OpenedMessage:
        """The open message's sender, subject and threading headers."""
        ...

    def create_reply_draft(self, tokens: EventTokens, reply: ReplyDraft) -> CreatedDraft:
        """Create ``reply`` as a draft in its thread."""
        ...


def reply_mime(reply: ReplyDraft) -> bytes:
    """The reply as MIME (text and HTML alternatives, In-Reply-To and References).

    Built by :func:`server.sending.headers.build_reply_draft`, the header builder every email
    goes through: the subject and threading ids come from an incoming email, so anything
    that could add or bend a header is refused there (:class:`HeaderError`, a ValueError).
    """
    from server.sending.headers import POLICY, build_reply_draft

    msg = build_reply_draft(
        to=[formataddr((name, email)) for email, name in reply.to], subject=reply.subject,
        html=reply.html or "<p></p>", text=reply.text or " ", in_reply_to=reply.in_reply_to,
        references=reply.references.split())
    return msg.as_bytes(policy=POLICY)


def _headers(payload: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for h in payload.get("headers", []) or []:
        name = str(h.get("name", "")).lower()
        if name and name not in out:
            out[name] = str(h.get("value", ""))
    return out


def parse_opened(message: Mapping[str, Any]) -> OpenedMessage:
    """An :class:`OpenedMessage` from a ``users.messages.get(format=metadata)`` answer."""
    from email.utils import parseaddr

    hdrs = _headers(message.get("payload") or {})
    name, sender = parseaddr(hdrs.get("from", ""))
    return OpenedMessage(id=str(message.get("id", "")),
                         thread_id=str(message.get("threadId", "")),
                         sender=sender, sender_name=name, subject=hdrs.get("subject", ""),
                         message_id=hdrs.get("message-id", ""),
                         references=hdrs.get("references", ""))


@functools.cache
def _gmail_service() -> Any:
    """The Gmail API resource built once from the static discovery document (no network)."""
    import httplib2
    from googleapiclient.discovery import build

    return build("gmail", "v1", static_discovery=True, http=httplib2.Http(timeout=10))


def _default_http() -> Any:
    import httplib2

    return httplib2.Http(timeout=10)


class GoogleGmailApi:
    """The Gmail API through google-api-python-client.

    ``service`` is a built ``gmail v1`` resource and ``http_factory`` makes the HTTP object
    each call runs on (tests pass ``HttpMockSequence``); both default to the real thing.
    """

    def __init__(self, service: Any = None,
                 http_factory: Callable[[], Any] | None = None) -> None:
        self._service = service
        self._http_factory = http_factory or _default_http

    @property
    def service(self) -> Any:
        """The Gmail resource (built on first use)."""
        if self._service is None:
            self._service = _gmail_service()
        return self._service

    def _execute(self, request: Any, tokens: EventTokens) -> Any:
        from googleapiclient.errors import HttpError

        request.headers["Authorization"] = f"Bearer {tokens.user_oauth_token}"
        request.headers[ACCESS_TOKEN_HEADER] = tokens.gmail_access_token
        try:
            return request.execute(http=self._http_factory())
        except HttpError as exc:
            raise GmailApiError(int(exc.resp.status), str(exc.reason or "")) from None
        except OSError as exc:
            raise GmailApiError(0, type(exc).__name__) from None

    def opened_message(self, tokens: EventTokens, message_id: str) -> OpenedMessage:
        """``users.messages.get(format=metadata)`` of the open message."""
        request = self.service.users().messages().get(
            userId="me", id=message_id, format="metadata",
            metadataHeaders=list(METADATA_HEADERS))
        return parse_opened(self._execute(request, tokens))

    def create_reply_draft(self, tokens: EventTokens, reply: ReplyDraft) -> CreatedDraft:
        """``users.drafts.create`` with the raw MIME in the message's thread."""
        raw = base64.urlsafe_b64encode(reply_mime(reply)).decode("ascii")
        request = self.service.users().drafts().create(
            userId="me", body={"message": {"raw": raw, "threadId": reply.thread_id}})
        answer = self._execute(request, tokens)
        message = answer.get("message") or {}
        return CreatedDraft(draft_id=str(answer.get("id", "")),
                            message_id=str(message.get("id", "")),
                            thread_id=str(message.get("threadId") or reply.thread_id))


class FakeGmailApi:
    """An in-memory Gmail: messages are put in by hand, drafts are kept in a list."""

    def __init__(self) -> None:
        self.messages: dict[str, OpenedMessage] = {}
        self.drafts: list[tuple[ReplyDraft, CreatedDraft]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def opened_message(self, tokens: EventTokens, message_id: str) -> OpenedMessage:
        """The stored message, or a 404 like Gmail's."""
        try:
            return self.messages[message_id]
        except KeyError:
            raise GmailApiError(404, "notFound") from None

    def create_reply_draft(self, tokens: EventTokens, reply: ReplyDraft) -> CreatedDraft:
        """Keep the draft and answer ids for it."""
        with self._lock:
            n = next(self._ids)
            draft = CreatedDraft(draft_id=f"r-fake-{n}", message_id=f"fake-msg-{n}",
                                 thread_id=reply.thread_id)
            self.drafts.append((reply, draft))
        return draft


def from_config(config: Mapping[str, Any]) -> GmailApi:
    """The Gmail API chosen by ``GMAIL_API`` (``google`` or ``fake``)."""
    name = str(config.get("GMAIL_API") or "google")
    if name == "fake":
        if config.get("RELAY_ENV") == "production":
            log.warning("GMAIL_API=fake in production: add-on drafts are NOT created in Gmail")
        else:
            log.info("GMAIL_API=fake: add-on drafts are kept in memory, not created in Gmail")
        return FakeGmailApi()
    if name == "google":
        return GoogleGmailApi()
    raise ValueError(f"GMAIL_API must be google or fake, not {name!r}")
