"""Connecting the SMTP and local-outbox mailboxes (shared by the API and the web pages).

Google and Microsoft connect through OAuth (:mod:`server.mailboxes.oauth`); these two need no
redirect: the SMTP login is tried once before anything is stored (``verify``), and the local
outbox says loudly that nothing will be delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from server.accounts.models import User
from server.crypto import KeyRing
from server.mailboxes import hosts
from server.mailboxes.lifecycle import Mailbox, MailboxError, Provider, connect
from server.sending.headers import HeaderError, parse_address
from server.sending.transport import TransportError

log = logging.getLogger(__name__)

#: The non-secret settings an SMTP connection keeps.
SMTP_SETTINGS = ("smtp_host", "smtp_port", "smtp_security", "smtp_username", "imap_host",
                 "imap_port", "imap_security", "imap_sent_folder", "imap_drafts_folder")


def verify_smtp(settings: dict[str, Any], password: str | None,
                allow: frozenset[str] = frozenset()) -> None:
    """Log in to the SMTP server once; MailboxError (field ``smtp_host``) when refused.

    The socket's peer is checked again (:mod:`server.mailboxes.hosts`), and the message never
    carries what the remote server answered (it could be any internal service).
    """
    from server.sending.providers.smtp import SmtpTransport, config_from_settings
    from server.sending.transport import ReauthRequired

    cfg = config_from_settings(settings, password)
    try:
        SmtpTransport(cfg, smtp_factory=hosts.smtp_factory(cfg.security, allow)).verify()
    except ReauthRequired:
        raise MailboxError("the SMTP server refused this username and password",
                           "smtp_host") from None
    except TransportError:
        raise MailboxError(f"could not connect and log in to an SMTP server at "
                           f"{cfg.host}:{cfg.port}", "smtp_host") from None


def connect_smtp(session: Session, user: User, *, email: str, display_name: str,
                 settings: dict[str, Any], password: str | None, keyring: KeyRing | None,
                 now: datetime, daily_limit: int | None = None,
                 verify: Callable[..., None] | None = verify_smtp,
                 allow: frozenset[str] = frozenset()) -> Mailbox:
    """Connect the rep's SMTP (+ IMAP) mailbox; the password is stored encrypted.

    The SMTP and IMAP hosts must be public or in ``allow`` (``MAIL_HOST_ALLOWLIST``).
    """
    try:
        addr = parse_address("email", email)
    except HeaderError as err:
        raise MailboxError(err.message, "email") from None
    kept = {k: settings[k] for k in SMTP_SETTINGS if settings.get(k) not in (None, "")}
    if "smtp_host" not in kept:
        raise MailboxError("is required", "smtp_host")
    hosts.check_settings(kept, allow)
    if verify is not None:
        verify(kept, password, allow)
    return connect(session, org_id=user.org_id, owner_id=user.id, provider=Provider.SMTP,
                   email=addr.email, display_name=display_name or addr.name, settings=kept,
                   secret={"password": password} if password else None,
                   keyring=keyring if password else None, now=now, daily_limit=daily_limit)


def connect_outbox(session: Session, user: User, now: datetime) -> Mailbox:
    """Use the local outbox folder: emails are written to files and NOT delivered."""
    mb = connect(session, org_id=user.org_id, owner_id=user.id, provider=Provider.OUTBOX,
                 email=user.email, display_name=user.name, settings={}, secret=None,
                 keyring=None, now=now)
    log.warning("user %s connected the local outbox: their email is written to files and "
                "NOT delivered", user.id)
    return mb
