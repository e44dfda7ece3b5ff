"""The one place that builds outbound email: headers, threading, MIME body (pure).

Every email Relay sends — an automatic campaign step or a task the rep scheduled — is built by
:func:`build_message`. It refuses anything that could smuggle a header: CR, LF, NUL and every
other control or line-separator character (U+0085, U+2028, U+2029…) and encoded-word openers
(``=?``) in subjects and display names; addresses are parsed by two independent stdlib parsers
and must both yield exactly the one address given (the CVE-2023-27043 class of ambiguity is
refused, not guessed at); at most :data:`MAX_RECIPIENTS` recipients.

The message carries our own ``Message-ID`` (``<relay.{send id}.{random}@{domain}>``), the key
of reconciliation and sent detection, ``X-Relay-Task`` with the task's opaque tag
(:mod:`server.tasks.tags`, never its sequential id) when the email belongs to a task, and
``In-Reply-To``/``References`` for a follow-up in the same thread (E3).
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses
from functools import lru_cache

from server.sending.transport import OutboundMessage

MAX_RECIPIENTS = 100
MAX_SUBJECT = 998
#: Our own Message-IDs: ``<relay.{send id}.{random}@{domain}>``.
RELAY_MESSAGE_ID = re.compile(r"^<relay\.(\d+)\.([0-9a-f]+)@([^<>@\s]+)>$")
#: A msg-id as it may appear in In-Reply-To / References (RFC 5322 §3.6.4, no CFWS).
MSG_ID = re.compile(r"^<[!-;=?-~]+@[!-;=?-Z^-~\[\]]+>$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                     r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}$")


class _HeaderClasses(HeaderRegistry):
    """The stdlib header registry, making each header's class once instead of on every use.

    ``HeaderRegistry.__getitem__`` builds a new class (``type(...)``) for every header it
    parses or stores — about 30 per built email, a fifth of the build time. The classes it
    builds depend only on the (lower-cased) header name, so they are kept; the header objects
    are exactly those of the stdlib registry.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls

    def map_to_type(self, name: str, cls: type) -> None:
        """Register ``cls`` for ``name`` headers (and forget the class built before)."""
        super().map_to_type(name, cls)
        self._classes.pop(name.lower(), None)


_REGISTRY = _HeaderClasses()
#: ``email.policy.SMTP`` with the caching header registry (the same headers, built faster).
POLICY = SMTP.clone(header_factory=_REGISTRY)


class HeaderError(ValueError):
    """A value that cannot go into an email header; names the field and the rule."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Recipient:
    """A parsed address: its display name (may be empty) and its addr-spec."""

    name: str
    email: str

    def header(self) -> Address:
        """The ``email.headerregistry.Address`` to put in a header (quoted as needed)."""
        local, _, domain = self.email.rpartition("@")
        return Address(display_name=self.name, username=local, domain=domain)


def _forbidden(value: str) -> str | None:
    """Why ``value`` cannot appear in a header, or None when it is safe."""
    for ch in value:
        cat = unicodedata.category(ch)
        if cat in ("Cc", "Zl", "Zp", "Cs") or ch in "\u0085\u2028\u2029\ufeff":
            return f"must not contain the control or line-break character U+{ord(ch):04X}"
    if "=?" in value:
        return "must not contain '=?' (an encoded-word opener)"
    return None


def check_text(field: str, value: str, *, max_len: int = MAX_SUBJECT) -> str:
    """Check a free-text header value (subject, display name); return it or raise HeaderError."""
    if not isinstance(value, str):
        raise HeaderError(field, "must be text")
    problem = _forbidden(value)
    if problem:
        raise HeaderError(field, problem)
    if len(value) > max_len:
        raise HeaderError(field, f"must be at most {max_len} characters")
    return value


def _check_addr_spec(field: str, addr: str) -> None:
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain:
        raise HeaderError(field, f"{addr!r} is not an email address (local@domain)")
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise HeaderError(field, f"{addr!r} has a local part that is not a plain dot-atom")
    if not _DOMAIN.match(domain):
        raise HeaderError(field, f"{addr!r} has a domain that is not a valid host name")


@lru_cache(maxsize=4096)  # pure; a rep's own address is parsed for every email
def parse_address(field: str, value: str) -> Recipient:
    """Parse exactly one address (``pat@x.com`` or ``"Doe, Pat" <pat@x.com>``) strictly.

    Both the modern header parser (``email.headerregistry``) and ``email.utils.getaddresses``
    must find exactly one address, the same one, with no parse defects; otherwise the value
    is refused rather than interpreted.
    """
    if not isinstance(value, str) or not value.strip():
        raise HeaderError(field, "must be an email address")
    problem = _forbidden(value)
    if problem:
        raise HeaderError(field, problem)
    try:
        header = _REGISTRY("To", value)
        legacy = getaddresses([value])
    except (IndexError, ValueError, TypeError) as exc:
        # The stdlib parsers raise on some malformed input instead of recording a defect.
        raise HeaderError(field, f"{value!r} is not a well-formed address") from exc
    if header.defects:
        raise HeaderError(field, f"{value!r} is not a single well-formed address "
                                 f"({type(header.defects[0]).__name__})")
    if any(g.display_name is not None for g in header.groups):
        raise HeaderError(field, f"{value!r} is an address group; give plain addresses")
    if len(header.addresses) != 1:
        raise HeaderError(field, f"{value!r} holds {len(header.addresses)} addresses; "
                                 "give exactly one")
    parsed = header.addresses[0]
    if len(legacy) != 1 or legacy[0][1] != parsed.addr_spec:
        raise HeaderError(field, f"{value!r} is ambiguous (parsers disagree on the address)")
    _check_addr_spec(field, parsed.addr_spec)
    name = parsed.display_name or ""
    check_text(field, name, max_len=256)
    return Recipient(name=name, email=parsed.addr_spec)


def check_message_id(field: str, value: str) -> str:
    """A msg-id ``<left@right>`` with nothing that could end the header; return it."""
    if not isinstance(value, str) or not MSG_ID.match(value) or len(value) > 250:
        raise HeaderError(field, f"{value!r} is not a message id like <left@right>")
    return value


def check_task_tag(value: str) -> str:
    """An opaque task tag (``rt_`` + 24 URL-safe characters) for ``X-Relay-Task``; return it."""
    from server.tasks.tags import TAG

    if not isinstance(value, str) or not TAG.match(value):
        raise HeaderError("task_tag", f"{value!r} is not a task tag")
    return value


def new_message_id(send_id: int, domain: str, nonce: str | None = None) -> str:
    """Our own Message-ID for a send: ``<relay.{send id}.{random}@{domain}>``."""
    if not _DOMAIN.match(domain):
        raise HeaderError("domain", f"{domain!r} is not a valid host name")
    nonce = nonce if nonce is not None else secrets.token_hex(8)
    if not re.fullmatch(r"[0-9a-f]{8,64}", nonce):
        raise HeaderError("nonce", "must be 8 to 64 lowercase hex digits")
    return f"<relay.{int(send_id)}.{nonce}@{domain.lower()}>"


def send_id_of(message_id: str | None) -> int | None:
    """The send id inside one of our own Message-IDs, or None when it is not ours."""
    if not message_id:
        return None
    m = RELAY_MESSAGE_ID.match(message_id.strip())
    return int(m.group(1)) if m else None


def build_message(
    *,
    send_id: int,
    sender: str,
    to: Sequence[str],
    subject: str,
    html: str | None,
    text: str | None,
    date: datetime,
    cc: Sequence[str] = (),
    task_tag: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    thread_id: str | None = None,
    domain: str | None = None,
    nonce: str | None = None,
) -> OutboundMessage:
    """Build the outbound email of send ``send_id`` (pure; ``date`` and ``nonce`` passed in).

    ``sender``, ``to`` and ``cc`` are single addresses each, optionally with a display name.
    A follow-up gives ``in_reply_to`` (the previous email's Message-ID) and ``references``
    (its thread's ids; ``in_reply_to`` is appended when missing) and the provider
    ``thread_id``. ``domain`` (default: the sender's) is the right side of our Message-ID.
    ``task_tag`` (the task's opaque tag, :func:`server.tasks.tags.tag_for_task`) becomes
    ``X-Relay-Task``. Raises :class:`HeaderError` naming the field for anything unsafe or malformed.
    """
    if date.tzinfo is None:
        raise HeaderError("date", "must be timezone-aware")
    from_addr = parse_address("from", sender)
    if isinstance(to, str) or isinstance(cc, str):
        raise HeaderError("to", "give a list of addresses, one per item")
    to_addrs = [parse_address(f"to[{i}]", v) for i, v in enumerate(to)]
    cc_addrs = [parse_address(f"cc[{i}]", v) for i, v in enumerate(cc)]
    if not to_addrs:
        raise HeaderError("to", "needs at least one recipient")
    if len(to_addrs) + len(cc_addrs) > MAX_RECIPIENTS:
        raise HeaderError("to", f"at most {MAX_RECIPIENTS} recipients in all "
                                f"(got {len(to_addrs) + len(cc_addrs)})")
    subject = check_text("subject", subject or "")
    if html is None and text is None:
        raise HeaderError("body", "needs an HTML or a text body")
    if text is None:
        from server.compose.render import html_to_text

        text = html_to_text(html or "")
    refs = [check_message_id(f"references[{i}]", r) for i, r in enumerate(references)]
    if in_reply_to is not None:
        check_message_id("in_reply_to", in_reply_to)
        if in_reply_to not in refs:
            refs.append(in_reply_to)
    if len(refs) > 50:
        # Keep the first and the last ids (RFC 5322 suggests the chain; long chains get cut).
        refs = refs[:1] + refs[-49:]
    message_id = new_message_id(send_id, domain or from_addr.email.rpartition("@")[2], nonce)

    msg = EmailMessage(policy=POLICY)
    msg["From"] = from_addr.header()
    msg["To"] = [r.header() for r in to_addrs]
    if cc_addrs:
        msg["Cc"] = [r.header() for r in cc_addrs]
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id
    if in_reply_to is not None:
        msg["In-Reply-To"] = in_reply_to
    if refs:
        msg["References"] = " ".join(refs)
    if task_tag is not None:
        msg["X-Relay-Task"] = check_task_tag(task_tag)
    msg["X-Relay-Send"] = str(int(send_id))
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    recipients = tuple(r.email for r in (*to_addrs, *cc_addrs))
    return OutboundMessage(send_id=send_id, message_id=message_id, mime=msg,
                           recipients=recipients, thread_id=thread_id)


def build_reply_draft(
    *,
    to: Sequence[str],
    subject: str,
    html: str | None,
    text: str | None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
) -> EmailMessage:
    """A reply to be saved as a draft by a provider that adds From, Date and Message-ID itself.

    The Gmail add-on's "Reply with this task" draft: its subject and threading ids come from
    an incoming email, so every value passes the same checks as :func:`build_message` (one
    address per recipient, no control or line-separator character, no encoded-word opener,
    msg-ids only). An ``in_reply_to`` that is not a msg-id is refused; a ``references`` item
    that is not one is left out (the chain is a hint; Gmail threads by thread id).
    Raises :class:`HeaderError` naming the field.
    """
    if isinstance(to, str):
        raise HeaderError("to", "give a list of addresses, one per item")
    to_addrs = [parse_address(f"to[{i}]", v) for i, v in enumerate(to)]
    if not to_addrs:
        raise HeaderError("to", "needs at least one recipient")
    if len(to_addrs) > MAX_RECIPIENTS:
        raise HeaderError("to", f"at most {MAX_RECIPIENTS} recipients (got {len(to_addrs)})")
    subject = check_text("subject", subject or "")
    if html is None and text is None:
        raise HeaderError("body", "needs an HTML or a text body")
    if text is None:
        from server.compose.render import html_to_text

        text = html_to_text(html or "")
    refs = [r for r in references
            if isinstance(r, str) and MSG_ID.match(r) and len(r) <= 250]
    if in_reply_to:
        check_message_id("in_reply_to", in_reply_to)
        if in_reply_to not in refs:
            refs.append(in_reply_to)
    if len(refs) > 50:
        refs = refs[:1] + refs[-49:]
    msg = EmailMessage(policy=POLICY)
    msg["To"] = [r.header() for r in to_addrs]
    msg["Subject"] = subject
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if refs:
        msg["References"] = " ".join(refs)
    msg.set_content(text or " ")
    if html is not None:
        msg.add_alternative(html or "<p></p>", subtype="html")
    return msg


def message_bytes(message: OutboundMessage) -> bytes:
    """The RFC 5322 bytes of a built message (CRLF line ends), as providers take them."""
    return message.mime.as_bytes(policy=POLICY)
