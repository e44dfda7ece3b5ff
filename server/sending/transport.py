"""The small protocol every mail provider is reached through (Gmail API, Graph, SMTP, files).

The dispatcher speaks only this protocol; each provider module implements it and ships an
in-package fake for tests. The send protocol it supports is *draft, then send*:

1. ``create_draft`` stores the fully built message at the provider and returns its id; the
   dispatcher commits that id before going on (the message's Message-ID was committed even
   before, so a draft whose id was never recorded can be found again by it).
2. The dispatcher marks the row ``sending`` and commits.
3. ``send_draft`` sends it. A refusal after which the provider cannot have taken the email
   raises ``TransientError`` (retried from the same draft) or ``PermanentError``; only when
   the request may have been acted on and its answer was lost (timeout, dropped connection
   after an SMTP server got the end of the data, a 5xx whose draft is gone) does it raise
   ``OutcomeUnknown``: the row becomes ``uncertain`` and nothing is retried before
   ``reconcile`` has said whether the message left: the draft still existing means it did
   not; otherwise the sent mail is searched for our own ``Message-ID``.

Errors are typed so the dispatcher decides without parsing provider messages: a
``TransientError`` is retried (after ``retry_after`` when the provider said so), a
``DailyLimitError`` pauses the mailbox, ``ReauthRequired`` marks the connection
``needs_reauth``, a ``PermanentError`` ends the send ``failed`` with its reason, and an
``OutcomeUnknown`` makes it ``uncertain``.

Optional, when a provider has them (the dispatcher looks them up with ``getattr``):
``delete_drafts(message_id) -> int`` removes drafts carrying a Message-ID (an earlier
attempt's, before drafting again); ``after_sent(message)`` runs once ``sent`` is recorded
(SMTP files the IMAP Sent copy and drops the IMAP draft); ``checks_sent`` (default True) says
whether ``reconcile`` can look in a Sent folder at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol


@dataclass(frozen=True)
class OutboundMessage:
    """One email ready to leave: the MIME built by the header builder, plus threading hints.

    ``message_id`` is our own ``Message-ID`` (``<relay.{send id}.{random}@{domain}>``), the key
    for reconciliation and sent detection. ``thread_id`` is the provider's thread or
    conversation to send a follow-up in (Gmail ``threadId``; for Graph the id of the message
    to ``createReply`` to), when known.
    """

    send_id: int
    message_id: str
    mime: EmailMessage
    recipients: tuple[str, ...]
    thread_id: str | None = None


@dataclass(frozen=True)
class Draft:
    """A draft stored at the provider."""

    id: str
    thread_id: str | None = None


@dataclass(frozen=True)
class Sent:
    """A message the provider accepted; ``sent_at`` is the provider's time when it gives one."""

    provider_id: str
    thread_id: str | None = None
    sent_at: datetime | None = None


class Outcome(enum.StrEnum):
    """What reconciliation found out about an ``uncertain`` send."""

    SENT = "sent"
    NOT_SENT = "not_sent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Reconciled:
    """The answer of ``reconcile``: the outcome, and the sent message when it was found."""

    outcome: Outcome
    sent: Sent | None = None


class TransportError(Exception):
    """Base of every provider error the dispatcher handles."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(TransportError):
    """Worth retrying, the request provably not acted on (429, 4xx, 5xx with the draft kept)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class DailyLimitError(TransportError):
    """The mailbox reached its provider's daily sending limit: pause it (Gmail: 24 h)."""


class ReauthRequired(TransportError):
    """The provider refused our credentials (``invalid_grant``): the rep must reconnect."""


class PermanentError(TransportError):
    """Will never succeed as is (bad recipient, message rejected): the send ends ``failed``."""


class OutcomeUnknown(TransportError):
    """The request may have been acted on but no answer came back: reconcile before retrying."""


class Transport(Protocol):
    """A connected mailbox, able to draft, send and find its own sent messages."""

    kind: str
    daily_limit: int

    def create_draft(self, message: OutboundMessage) -> Draft:
        """Store ``message`` as a draft at the provider and return it."""
        ...

    def send_draft(self, draft: Draft, message: OutboundMessage) -> Sent:
        """Send a stored draft; raise a ``TransportError`` subclass on failure."""
        ...

    def reconcile(self, message: OutboundMessage, draft: Draft | None) -> Reconciled:
        """Tell whether ``message`` left: draft still there → not sent; found in Sent → sent."""
        ...


class TransportResolver(Protocol):
    """Finds the transport of a rep's connected mailbox (None when none is connected)."""

    def transport_for(self, owner_id: int) -> Transport | None:
        """The rep's mailbox transport, or None when the rep has not connected one."""
        ...
