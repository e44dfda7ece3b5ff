"""SMTP (+ optional IMAP) mailboxes, for self-hosting.

The draft of an SMTP send is the built message itself (kept by the caller, and APPENDed to the
IMAP Drafts folder when IMAP is configured). Sending walks the SMTP dialogue step by step so
that a failure is classified by *where* it happened. Everything up to the last byte of the
message body — connection refused, a refusal of the greeting, ``MAIL FROM``, ``RCPT TO`` or
``DATA``, a connection lost while the body was on its way — and any *answer* to the end of the
data means the server's decision is known: 4xx is a ``TransientError`` (retried), 5xx a
``PermanentError``. Only a connection lost (or a timeout) after the whole body, its final
``.`` included, was handed over and before the server answered means nobody knows
(``OutcomeUnknown``). Filing the sent copy in the IMAP Sent folder and removing the IMAP draft
happen in :meth:`SmtpTransport.after_sent`, which the dispatcher calls once ``sent`` is
recorded (so a worker dying there never leaves a delivered email unrecorded).
Reconciliation searches the IMAP Sent folder for our ``Message-ID``; without IMAP there is no
way to look, so the outcome stays ``UNKNOWN`` (the dispatcher leaves it for a person).

**One SMTP session for many emails.** The transport keeps its authenticated connection open
after an email the server accepted (``250`` to ``DATA``) and sends the next one over it, for at
most ``session_messages`` emails, ``session_seconds`` of age and ``session_idle_seconds`` of
idleness. A connection is never used again after anything went wrong on it: any error closes
it (an unknown outcome closes it without even a ``QUIT``). A kept connection the server has
closed in the meantime fails at ``MAIL FROM`` — before any message could have been taken — and
only then is the email sent once more over a fresh connection (a timeout there is a
``TransientError``: one call never spends two timeouts of the lease).

**One IMAP connection for many emails.** Inside :func:`imap_scope` (the dispatcher opens one
around each group of emails, the mailbox sync around each mailbox's pass) every IMAP use of a
mailbox on that thread — the draft's ``APPEND``, filing in Sent and dropping the draft after
the send, the Sent-folder lookups of reconciliation, the sync's reads — shares one logged-in
connection, opened at the first use and logged out when the scope ends. Each use selects its
folder afresh (one round trip, so it sees what was appended since); a connection that failed
in any way is never used again, and one left idle past ``session_idle_seconds`` is checked
with ``NOOP`` first. Outside a scope each use opens and closes its own connection.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import smtplib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from server.db import utcnow
from server.mailboxes.lifecycle import SMTP_DEFAULT_LIMIT
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
    TransportError,
)

log = logging.getLogger(__name__)

#: Server answers that mean "this mailbox has sent its quota for the day" (Gmail's
#: ``550 5.4.5 Daily user sending limit exceeded``, Exchange's ``5.2.2 … submission quota``).
_DAILY = re.compile(r"5\.4\.5|daily (user )?sending (quota|limit)|submission quota|"
                    r"sending limit exceeded", re.I)


@dataclass(frozen=True)
class SmtpConfig:
    """Where and how to reach the SMTP server (and IMAP, when configured)."""

    host: str
    port: int = 587
    security: str = "starttls"  # "starttls", "ssl" or "none"
    username: str | None = None
    password: str | None = None
    #: Seconds any one socket operation may wait (``SMTP_TIMEOUT_SECONDS``); it must fit in
    #: the dispatcher's lease margin (``relay worker`` checks at start).
    timeout: float = 20.0
    imap_host: str | None = None
    imap_port: int = 993
    imap_security: str = "ssl"  # "ssl", "starttls" or "none"
    sent_folder: str = "Sent"
    drafts_folder: str = "Drafts"
    #: Whether to APPEND a copy to the Sent folder after sending (servers like Gmail's
    #: file sent mail themselves; most others do not).
    save_sent: bool = True
    #: How many emails one SMTP connection carries before it is closed (1: a new connection
    #: for every email), and how old and how idle it may be to carry another.
    session_messages: int = 100
    session_seconds: float = 300.0
    session_idle_seconds: float = 30.0

    def __repr__(self) -> str:
        # The password never appears in a repr (and so in no log line or traceback).
        return (f"SmtpConfig(host={self.host!r}, port={self.port}, security={self.security!r},"
                f" username={self.username!r}, imap_host={self.imap_host!r})")


def _code_error(code: int, text: str, what: str) -> Exception:
    """The transport error for an SMTP reply code the server gave to ``what``."""
    reason = f"SMTP {what}: {code} {text}".strip()
    if _DAILY.search(text):
        return DailyLimitError(reason)
    if code in (530, 534, 535):
        return ReauthRequired(reason)
    if 400 <= code < 500:
        return TransientError(reason)
    return PermanentError(reason)


def _text(resp: Any) -> str:
    return resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)


def _terminated(payload: bytes) -> bytes:
    """The message body as it goes after ``DATA``: dot-stuffed, ending in ``CRLF.CRLF``."""
    data = re.sub(rb"(?m)^\.", b"..", payload)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


class _Stale(Exception):
    """A kept connection turned out closed at ``MAIL FROM``: nothing was sent over it."""


@dataclass
class _HeldImap:
    """A logged-in IMAP connection an :func:`imap_scope` keeps for one transport."""

    conn: imaplib.IMAP4
    used: float


@dataclass
class _ImapScope:
    """The IMAP connections kept for the current scope, by transport."""

    held: dict[SmtpTransport, _HeldImap] = field(default_factory=dict)


_scopes = threading.local()


def _current_scope() -> _ImapScope | None:
    return getattr(_scopes, "current", None)


@contextlib.contextmanager
def imap_scope() -> Iterator[None]:
    """Within this block, each SMTP mailbox's IMAP work on this thread uses one connection.

    The connection of a mailbox is opened at its first IMAP use inside the block and logged
    out when the block ends (also on an error). A nested scope joins the outer one.
    """
    if _current_scope() is not None:
        yield
        return
    scope = _scopes.current = _ImapScope()
    try:
        yield
    finally:
        _scopes.current = None
        for held in scope.held.values():
            _logout(held.conn)


def _logout(imap: imaplib.IMAP4) -> None:
    """Log out politely when the connection still works; else just close the socket."""
    try:
        imap.logout()
    except Exception:  # noqa: BLE001 - a dead connection: nothing more to say to it
        with contextlib.suppress(Exception):
            imap.shutdown()


@dataclass
class _Session:
    """An open SMTP connection kept for the next email, with its age and use."""

    smtp: smtplib.SMTP
    opened: float
    used: float
    messages: int = 0


class SmtpTransport:
    """A mailbox reached over SMTP, with IMAP for drafts, reconciliation and detection."""

    kind = "smtp"

    def __init__(self, config: SmtpConfig, daily_limit: int = SMTP_DEFAULT_LIMIT, *,
                 smtp_factory: Callable[..., smtplib.SMTP] | None = None,
                 imap_factory: Callable[..., imaplib.IMAP4] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.config = config
        self.daily_limit = daily_limit
        self._smtp_factory = smtp_factory
        self._imap_factory = imap_factory
        self._clock = clock
        #: The time source of the session limits (tests move it).
        self.monotonic: Callable[[], float] = time.monotonic
        self._session: _Session | None = None
        self._lock = threading.Lock()
        #: How many SMTP connections this transport opened (tests and the benchmark read it).
        self.connections_opened = 0
        #: How many IMAP connections it opened (logged in or not).
        self.imap_connections_opened = 0

    # -- SMTP ---------------------------------------------------------------------------

    def _connect(self) -> smtplib.SMTP:
        """An authenticated SMTP connection; errors mean nothing was sent."""
        cfg = self.config
        smtp_holder: list[smtplib.SMTP] = []
        try:
            return self._login(cfg, smtp_holder)
        except BaseException:
            for made in smtp_holder:
                made.close()
            raise

    def _login(self, cfg: SmtpConfig, holder: list[smtplib.SMTP]) -> smtplib.SMTP:
        try:
            if self._smtp_factory is not None:
                smtp = self._smtp_factory(cfg.host, cfg.port, timeout=cfg.timeout)
            elif cfg.security == "ssl":
                smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout,
                                        context=ssl.create_default_context())
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            holder.append(smtp)
            self.connections_opened += 1
            smtp.ehlo()
            if cfg.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            raise ReauthRequired(f"SMTP login refused: {exc.smtp_code} "
                                 f"{_text(exc.smtp_error)}") from None
        except smtplib.SMTPResponseException as exc:
            raise _code_error(exc.smtp_code, _text(exc.smtp_error), "connect") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentError(f"SMTP server: {exc}") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientError(f"SMTP connect to {cfg.host}:{cfg.port} failed: {exc}"
                                 ) from None
        return smtp

    def verify(self) -> None:
        """Connect and log in once (used when the rep connects the mailbox)."""
        smtp = self._connect()
        with contextlib.suppress(OSError):
            smtp.quit()

    def create_draft(self, message: OutboundMessage) -> Draft:
        """The draft is the message: APPEND it to IMAP Drafts when IMAP is configured."""
        if self.config.imap_host:
            try:
                with self.imap() as (imap, _):
                    imap.append(self._folder(self.config.drafts_folder), r"(\Draft)", None,
                                message_bytes(message))
            except (OSError, imaplib.IMAP4.error) as exc:
                # Drafts are a convenience on SMTP mailboxes; sending does not depend on one.
                log.warning("SMTP mailbox %s: could not APPEND the draft of send %s: %s",
                            self.config.username, message.send_id, exc)
        return Draft(id=message.message_id)

    def send_draft(self, draft: Draft, message: OutboundMessage) -> Sent:
        """Send the message over SMTP; classify every failure by the phase it happened in.

        The email goes over the kept connection when there is a usable one (see the module
        docstring); if that connection was closed by the server before it answered
        ``MAIL FROM``, the email is sent over a new connection instead.
        """
        if not message.recipients:
            raise PermanentError("the message has no recipients")
        sender = message.mime["From"].addresses[0].addr_spec
        payload = message_bytes(message)
        with self._lock:
            session = self._take()
            reused = session is not None
            if session is None:
                session = self._open()
            try:
                refused = self._transaction(session.smtp, sender, message, payload, reused)
            except _Stale:
                self._discard(session.smtp, polite=False)
                session = self._open()
                refused = self._transaction(session.smtp, sender, message, payload, False)
            self._keep(session)
        if refused:
            log.warning("send %s: recipients refused: %s", message.send_id, sorted(refused))
        return Sent(provider_id=message.message_id, sent_at=self._clock())

    @property
    def checks_sent(self) -> bool:
        """Whether reconciliation can look for a sent email (only with an IMAP Sent folder)."""
        return bool(self.config.imap_host)

    def after_sent(self, message: OutboundMessage) -> None:
        """After a recorded send: file a copy in IMAP Sent and drop the IMAP draft (best effort)."""
        if self.config.imap_host:
            self._file_sent(message)

    def delete_drafts(self, message_id: str) -> int:
        """Remove every IMAP draft carrying ``message_id`` (an earlier attempt's); how many."""
        if not self.config.imap_host:
            return 0
        try:
            # The group's connection inside an imap_scope (one login per group).
            with self.imap(self.config.drafts_folder, readonly=False) as (imap, ok):
                if not ok:
                    return 0
                uids = self._search_message_id(imap, message_id)
                for uid in uids:
                    imap.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
                if uids:
                    imap.expunge()
                return len(uids)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise TransientError(f"IMAP: could not look for earlier drafts: {exc}") from None

    def close(self) -> None:
        """Close the kept SMTP connection, if any (``QUIT``)."""
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            self._discard(session.smtp, polite=True)

    def __del__(self) -> None:
        # A dropped transport (a reconnected mailbox, the end of a test) closes its socket.
        session = getattr(self, "_session", None)
        if session is not None:
            session.smtp.close()

    def _take(self) -> _Session | None:
        """The kept connection if it may carry one more email (else it is closed)."""
        session, self._session = self._session, None
        if session is None:
            return None
        cfg, now = self.config, self.monotonic()
        if (session.messages >= cfg.session_messages
                or now - session.opened >= cfg.session_seconds
                or now - session.used >= cfg.session_idle_seconds):
            # No QUIT: the server may be long gone, and waiting for its answer would spend
            # the lease of the email about to be sent. No transaction is open on it.
            self._discard(session.smtp, polite=False)
            return None
        return session

    def _open(self) -> _Session:
        now = self.monotonic()
        return _Session(self._connect(), opened=now, used=now)

    def _keep(self, session: _Session) -> None:
        """After an accepted email: keep the connection for the next one, within the limits."""
        session.messages += 1
        session.used = self.monotonic()
        if session.messages >= self.config.session_messages:
            self._discard(session.smtp, polite=True)
        else:
            self._session = session

    @staticmethod
    def _discard(smtp: smtplib.SMTP, *, polite: bool) -> None:
        """Close a connection: with ``QUIT`` when its state is known, else just the socket."""
        if polite:
            try:
                smtp.quit()
                return
            except (OSError, smtplib.SMTPException):
                pass
        smtp.close()

    def _transaction(self, smtp: smtplib.SMTP, sender: str, message: OutboundMessage,
                     payload: bytes, reused: bool) -> dict[str, tuple[int, str]]:
        """One mail transaction (MAIL, RCPT, DATA); the refused recipients when it was taken.

        Raises ``_Stale`` only when ``reused`` and the connection was found closed before
        the server answered ``MAIL FROM``. Any other failure closes the connection (without
        ``QUIT`` when the outcome is unknown) and raises the transport error. The phases:
        ``mail``, ``rcpt``, ``data`` (the ``DATA`` command), ``body`` (the message on its way,
        its final ``.`` not yet handed over: the server cannot have taken it) and ``reply``
        (all of it handed over, the answer awaited: the only unknown phase).
        """
        phase = "mail"
        try:
            code, resp = smtp.mail(sender)
            if code != 250:
                if reused and code == 421:  # "closing the connection": nothing was taken
                    raise _Stale
                raise _code_error(code, _text(resp), "MAIL FROM")
            phase = "rcpt"
            refused: dict[str, tuple[int, str]] = {}
            for rcpt in message.recipients:
                code, resp = smtp.rcpt(rcpt)
                if code not in (250, 251):
                    refused[rcpt] = (code, _text(resp))
            if len(refused) == len(message.recipients):
                code, text = next(iter(refused.values()))
                raise _code_error(code, text, f"RCPT TO refused for {', '.join(refused)}")
            phase = "data"
            code, resp = smtp.docmd("DATA")
            if code != 354:
                raise _code_error(code, _text(resp), "DATA")
            phase = "body"
            smtp.send(_terminated(payload))
            phase = "reply"
            code, resp = smtp.getreply()
            if code != 250:
                raise _code_error(code, _text(resp), "end of data")
        except _Stale:
            raise
        except smtplib.SMTPResponseException as exc:
            # (Checked first: SMTP exceptions are OSErrors too.) The server answered, so
            # nothing is unknown, but the connection is not used again.
            self._discard(smtp, polite=True)
            raise _code_error(exc.smtp_code, _text(exc.smtp_error), phase.upper()) from None
        except OSError as exc:
            # Disconnects and timeouts: before the end of the data nothing was taken; after
            # it (the answer awaited), nobody knows.
            self._discard(smtp, polite=False)
            if phase == "reply":
                raise OutcomeUnknown(f"SMTP connection lost after the end of the data, "
                                     f"before the server's answer: {exc}") from None
            # (smtplib turns a read timeout into SMTPServerDisconnected; the cause stays.)
            timed_out = isinstance(exc, TimeoutError) or isinstance(exc.__context__,
                                                                    TimeoutError)
            if reused and phase == "mail" and not timed_out:
                # Closed while kept (not a silent server: that waits for the backoff, so one
                # call never spends two timeouts of the lease).
                raise _Stale from None
            where = "before DATA" if phase in ("mail", "rcpt") else (
                "at DATA" if phase == "data" else "while the message was on its way")
            raise TransientError(f"SMTP connection lost {where} (the server cannot have "
                                 f"taken the email): {exc}") from None
        except BaseException as exc:
            # The server's refusal (a TransportError above: it answered, so QUIT is fine), or
            # anything unexpected (state unknown: just close). Never used again either way.
            self._discard(smtp, polite=isinstance(exc, TransportError))
            raise
        return refused

    # -- IMAP ---------------------------------------------------------------------------

    def _imap(self) -> imaplib.IMAP4:
        """A new, logged-in IMAP connection."""
        cfg = self.config
        assert cfg.imap_host
        self.imap_connections_opened += 1
        if self._imap_factory is not None:
            imap = self._imap_factory(cfg.imap_host, cfg.imap_port)
        elif cfg.imap_security == "ssl":
            imap = imaplib.IMAP4_SSL(cfg.imap_host, cfg.imap_port, timeout=cfg.timeout,
                                     ssl_context=ssl.create_default_context())
        else:
            imap = imaplib.IMAP4(cfg.imap_host, cfg.imap_port, timeout=cfg.timeout)
            if cfg.imap_security == "starttls":
                imap.starttls(ssl_context=ssl.create_default_context())
        try:
            imap.login(cfg.username or "", cfg.password or "")
        except imaplib.IMAP4.error as exc:
            imap.shutdown()
            raise ReauthRequired(f"IMAP login refused: {exc}") from None
        except BaseException:
            imap.shutdown()
            raise
        return imap

    @contextlib.contextmanager
    def imap(self, folder: str | None = None, *, readonly: bool = True
             ) -> Iterator[tuple[imaplib.IMAP4, bool]]:
        """A logged-in IMAP connection, with ``folder`` (a plain name) selected when given.

        Yields the connection and whether the folder could be selected. Inside
        :func:`imap_scope` it is this mailbox's one connection of the scope (see the module
        docstring); outside, a connection of its own, logged out afterwards. Raises
        ``ReauthRequired`` when the login is refused, and the connection's own errors
        (``OSError``, ``imaplib.IMAP4.error``) as they come.
        """
        scope = _current_scope()
        if scope is None:
            with self._imap() as imap:
                ok = folder is None or self._select(imap, folder, readonly)
                yield imap, ok
            return
        held = self._held(scope)
        try:
            ok = folder is None or self._select(held.conn, folder, readonly)
            yield held.conn, ok
        except BaseException:
            # Whatever went wrong, the connection's state is unknown: never used again.
            if scope.held.get(self) is held:
                del scope.held[self]
            with contextlib.suppress(Exception):
                held.conn.shutdown()
            raise
        held.used = self.monotonic()

    def _held(self, scope: _ImapScope) -> _HeldImap:
        """The scope's connection of this mailbox: opened now, or kept (checked when idle)."""
        held = scope.held.get(self)
        if held is not None and (self.monotonic() - held.used
                                 >= self.config.session_idle_seconds):
            try:
                typ, _ = held.conn.noop()
                alive = typ == "OK"
            except (OSError, imaplib.IMAP4.error):
                alive = False
            if not alive:
                del scope.held[self]
                with contextlib.suppress(Exception):
                    held.conn.shutdown()
                held = None
        if held is None:
            held = scope.held[self] = _HeldImap(self._imap(), used=self.monotonic())
        return held

    def _select(self, imap: imaplib.IMAP4, folder: str, readonly: bool) -> bool:
        typ, _ = imap.select(self._folder(folder), readonly=readonly)
        return typ == "OK"

    @staticmethod
    def _folder(name: str) -> str:
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def _file_sent(self, message: OutboundMessage) -> None:
        """After sending: copy to Sent (unless the server does) and drop the IMAP draft."""
        try:
            with imap_scope():  # one connection for both steps (or the caller's)
                self._file_and_drop_draft(message)
        except (OSError, imaplib.IMAP4.error, ReauthRequired) as exc:
            log.warning("send %s left, but filing it over IMAP failed: %s", message.send_id, exc)

    def _file_and_drop_draft(self, message: OutboundMessage) -> None:
        if self.config.save_sent:
            with self.imap() as (imap, _):
                imap.append(self._folder(self.config.sent_folder), r"(\Seen)", None,
                            message_bytes(message))
        with self.imap(self.config.drafts_folder, readonly=False) as (imap, ok):
            if ok:
                uids = self._search_message_id(imap, message.message_id)
                for uid in uids:
                    imap.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
                if uids:
                    imap.expunge()

    @staticmethod
    def _search_message_id(imap: imaplib.IMAP4, message_id: str) -> list[str]:
        typ, data = imap.uid("SEARCH", None, "HEADER", "Message-ID",
                             '"' + message_id.replace('"', "") + '"')
        if typ != "OK" or not data or not data[0]:
            return []
        raw = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
        return raw.split()

    def reconcile(self, message: OutboundMessage, draft: Draft | None) -> Reconciled:
        """Found in IMAP Sent by Message-ID → sent (its draft removed); otherwise unknown.

        SMTP proves no negative: without IMAP there is nowhere to look.
        """
        if not self.config.imap_host:
            return Reconciled(Outcome.UNKNOWN)
        try:
            with self.imap(self.config.sent_folder) as (imap, ok):
                if not ok:
                    return Reconciled(Outcome.UNKNOWN)
                uids = self._search_message_id(imap, message.message_id)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise TransientError(f"IMAP search failed: {exc}") from None
        if uids:
            # It left: its draft (if the filing after the send never happened) goes.
            with contextlib.suppress(TransportError):
                self.delete_drafts(message.message_id)
            return Reconciled(Outcome.SENT, Sent(provider_id=f"imap:{uids[0]}"))
        return Reconciled(Outcome.UNKNOWN)


def config_from_settings(settings: dict[str, Any], password: str | None, *,
                         timeout: float = SmtpConfig.timeout) -> SmtpConfig:
    """Build the SmtpConfig of a stored mailbox (settings plus its decrypted password)."""
    return SmtpConfig(
        timeout=timeout,
        host=settings["smtp_host"], port=int(settings.get("smtp_port", 587)),
        security=settings.get("smtp_security", "starttls"),
        username=settings.get("smtp_username"), password=password,
        imap_host=settings.get("imap_host"), imap_port=int(settings.get("imap_port", 993)),
        imap_security=settings.get("imap_security", "ssl"),
        sent_folder=settings.get("imap_sent_folder", "Sent"),
        drafts_folder=settings.get("imap_drafts_folder", "Drafts"),
        save_sent=bool(settings.get("imap_save_sent", True)),
    )
