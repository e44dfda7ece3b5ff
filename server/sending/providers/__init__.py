"""Mail providers: one transport per kind, and the resolver that finds a rep's.

``TRANSPORTS`` is the registry by provider name (``gmail``, ``graph``, ``smtp``, ``outbox``);
:class:`MailboxResolver` turns a rep's ``mailbox`` row into a ready transport (decrypting its
secret, wiring the OAuth token refresh) for the dispatcher and the mailbox sync.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from server.crypto import KeyRing, keyring_from_config
from server.db import utcnow
from server.mailboxes.lifecycle import (
    Mailbox,
    MailboxStatus,
    MailboxView,
    Provider,
    get_mailbox,
    mailbox_view,
    read_secret,
)
from server.sending.providers.local import LocalOutboxTransport
from server.sending.providers.smtp import SmtpTransport, config_from_settings
from server.sending.transport import Transport

log = logging.getLogger(__name__)

#: Transport classes by provider name (the real implementations; tests inject their wires).
TRANSPORTS: dict[str, str] = {
    "gmail": "server.sending.providers.gmail:GmailTransport",
    "graph": "server.sending.providers.graph:GraphTransport",
    "smtp": "server.sending.providers.smtp:SmtpTransport",
    "outbox": "server.sending.providers.local:LocalOutboxTransport",
}


def outbox_root(config: Mapping[str, Any], instance_path: str | Path, owner_id: int) -> Path:
    """The local outbox folder of a rep: ``MAIL_OUTBOX_DIR`` (default ``instance/outbox``)."""
    base = config.get("MAIL_OUTBOX_DIR") or Path(instance_path) / "outbox"
    return Path(base) / f"user-{int(owner_id)}"


class MailboxResolver:
    """Finds the transport of a rep's connected mailbox (``TransportResolver``).

    ``MailboxResolver(app)`` takes everything from a Flask app (its session factory,
    configuration, instance folder and key ring); ``MailboxResolver(session_factory,
    config=..., keyring=..., instance_path=...)`` works without one (worker processes, tests).

    Optional collaborators, for tests and special wiring:

    - ``gmail_http``: a callable ``(credentials) -> httplib2.Http``-like object used to build
      the Gmail service (tests pass ``HttpMockSequence``);
    - ``google_token_uri``: where Google refresh tokens are exchanged (``GOOGLE_TOKEN_URI``);
    - ``graph_session``: a ``requests.Session`` for Graph calls; ``graph_base_url``
      (``GRAPH_BASE_URL``, default ``https://graph.microsoft.com/v1.0``);
    - ``ms_token_client``: an object with ``access_token(refresh_token) -> (token, new
      refresh token or None)`` (default: msal ``ConfidentialClientApplication``).
    - ``clock``: the time source handed to transports.

    :meth:`transport_for` returns None when the rep has no usable mailbox: none connected (and
    ``MAIL_TRANSPORT`` is not ``outbox``), disconnected, or ``needs_reauth``. A daily-limit
    pause does *not* hide the transport; read it with :meth:`mailbox_for` (``paused_until``).
    With ``MAIL_TRANSPORT=outbox`` (the development default) a rep without a mailbox sends
    into the local outbox folder, and a WARNING says so once per rep and process.
    """

    def __init__(self, app_or_session_factory: Any, *, config: Mapping[str, Any] | None = None,
                 keyring: KeyRing | None = None, instance_path: str | Path | None = None,
                 gmail_http: Callable[[Any], Any] | None = None,
                 google_token_uri: str | None = None,
                 graph_session: Any = None, graph_base_url: str | None = None,
                 ms_token_client: Any = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        if isinstance(app_or_session_factory, sessionmaker) or callable(
                app_or_session_factory) and not hasattr(app_or_session_factory, "extensions"):
            self._sessions = app_or_session_factory
            self._write_sessions = app_or_session_factory
            self.config: Mapping[str, Any] = config or {}
            self.instance_path = Path(instance_path or "instance")
        else:
            app = app_or_session_factory
            self._sessions = app.extensions["relay.sessionmaker"]
            self._write_sessions = app.extensions["relay.write_sessionmaker"]
            self.config = config or app.config
            self.instance_path = Path(instance_path or app.instance_path)
        self._keyring = keyring
        self._gmail_http = gmail_http
        self._google_token_uri = google_token_uri or self.config.get("GOOGLE_TOKEN_URI")
        self._graph_session = graph_session
        self._graph_base_url = graph_base_url or self.config.get("GRAPH_BASE_URL")
        self._ms_token_client = ms_token_client
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[tuple[Any, ...], Transport]] = {}
        self._warned: set[int] = set()

    @property
    def keyring(self) -> KeyRing:
        """The key ring secrets are decrypted with (built from the configuration once)."""
        if self._keyring is None:
            self._keyring = keyring_from_config(dict(self.config), self.instance_path)
        return self._keyring

    def _load(self, owner_id: int) -> Mailbox | None:
        session: Session = self._sessions()
        try:
            mb = get_mailbox(session, owner_id)
            if mb is not None:
                session.expunge(mb)
            session.commit()
            return mb
        finally:
            session.close()

    def mailbox_for(self, owner_id: int) -> MailboxView | None:
        """The masked view of the rep's mailbox row (state, pause, limit), or None."""
        mb = self._load(owner_id)
        return mailbox_view(mb) if mb is not None else None

    def transport_for(self, owner_id: int) -> Transport | None:
        """The rep's mailbox transport, or None when the rep has no usable mailbox."""
        mb = self._load(owner_id)
        if mb is None:
            if str(self.config.get("MAIL_TRANSPORT") or "outbox") == "outbox":
                return self._default_outbox(owner_id)
            return None
        if mb.status is not MailboxStatus.CONNECTED:
            return None
        # A reconnect (new credentials) changes connected_at; a rotated refresh token stored
        # by the transport itself, a re-encryption or a pause keep the built transport.
        key = (mb.id, mb.provider, mb.connected_at)
        with self._lock:
            cached = self._cache.get(owner_id)
            if cached is not None and cached[0] == key:
                return cached[1]
        transport = self.build(mb)
        with self._lock:
            self._cache[owner_id] = (key, transport)
        return transport

    def _default_outbox(self, owner_id: int) -> Transport:
        root = outbox_root(self.config, self.instance_path, owner_id)
        if owner_id not in self._warned:
            self._warned.add(owner_id)
            log.warning("MAIL_TRANSPORT=outbox: email of user %s is written to the local "
                        "outbox folder %s and NOT delivered; connect a mailbox to send for "
                        "real", owner_id, root)
        return LocalOutboxTransport(root, clock=self._clock)

    def build(self, mb: Mailbox) -> Transport:
        """A transport for one mailbox row (its secret decrypted here, never stored)."""
        provider = Provider(mb.provider)
        settings = mb.settings or {}
        if provider is Provider.OUTBOX:
            root = settings.get("outbox_path") or outbox_root(self.config, self.instance_path,
                                                               mb.owner_id)
            if mb.owner_id not in self._warned:
                self._warned.add(mb.owner_id)
                log.warning("mailbox %s is the local outbox %s: nothing is delivered",
                            mb.id, root)
            return LocalOutboxTransport(root, daily_limit=mb.daily_limit, clock=self._clock)
        secret = read_secret(mb, self.keyring)
        if provider is Provider.SMTP:
            from server.mailboxes import hosts  # the connected address is checked (SSRF)

            cfg = config_from_settings(settings, secret.get("password"),
                                       timeout=self._timeout("SMTP"))
            allow = hosts.allowlist(self.config)
            return SmtpTransport(cfg, daily_limit=mb.daily_limit, clock=self._clock,
                                 smtp_factory=hosts.smtp_factory(cfg.security, allow),
                                 imap_factory=hosts.imap_factory(cfg.imap_security, allow,
                                                                 cfg.timeout))
        if provider is Provider.GOOGLE:
            from server.sending.providers.gmail import GmailTransport, google_credentials

            creds = google_credentials(secret["refresh_token"], self.config,
                                       token_uri=self._google_token_uri)
            return GmailTransport.from_credentials(creds, daily_limit=mb.daily_limit,
                                                   http=self._gmail_http, clock=self._clock,
                                                   timeout=self._timeout("GMAIL"))
        from server.sending.providers.graph import GraphTransport, MsalTokens

        tokens = MsalTokens(secret["refresh_token"], self.config,
                            client=self._ms_token_client,
                            on_new_refresh_token=lambda new: self._store_refresh(mb.id, new))
        return GraphTransport(tokens.access_token, base_url=self._graph_base_url,
                              session=self._graph_session, daily_limit=mb.daily_limit,
                              timeout=self._timeout("GRAPH"), clock=self._clock)

    def _timeout(self, provider: str) -> float:
        """``<PROVIDER>_TIMEOUT_SECONDS`` from the configuration (default 20 s)."""
        value = self.config.get(f"{provider}_TIMEOUT_SECONDS")
        return 20.0 if value in (None, "") else float(value)

    def _store_refresh(self, mailbox_id: int, refresh_token: str) -> None:
        """Keep a rotated refresh token (Microsoft may issue a new one on each refresh).

        Best effort, in its own short write transaction: the token refresh happens in the
        middle of a provider call, and failing to store the new token must not fail the send
        (the previous refresh token stays usable until it expires; the next refresh tries
        again).
        """
        session: Session = self._write_sessions()
        try:
            mb = session.get(Mailbox, mailbox_id)
            if mb is not None and mb.secret is not None:
                secret = read_secret(mb, self.keyring)
                secret["refresh_token"] = refresh_token
                mb.secret = self.keyring.encrypt(json.dumps(secret))
                session.commit()
        except SQLAlchemyError as exc:
            session.rollback()
            log.warning("mailbox %s: could not store the rotated refresh token: %s",
                        mailbox_id, type(exc).__name__)
        finally:
            session.close()
