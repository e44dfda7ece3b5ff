"""Connecting Google and Microsoft mailboxes: OAuth authorization code with PKCE and ``state``.

:func:`start_oauth` makes a random ``state`` (stored hashed, with the PKCE verifier or msal's
flow encrypted, for 10 minutes) and returns the provider's consent URL; the provider redirects
the rep's browser to ``/mailbox/oauth/<provider>/callback?code=&state=``, where
:func:`finish_oauth` looks the state up (once: it is deleted), exchanges the code and connects
the rep's mailbox with the encrypted refresh token.

The callback completes only for the Relay user who started: :func:`finish_oauth` is given the
user signed in to Relay in the browser that comes back (``caller_id``) and refuses, before the
code is redeemed, when it is not the state's owner (or nobody is signed in). The state is spent
either way, so a consent URL sent to a colleague can neither connect the colleague's mailbox
to the starter's account nor be replayed afterwards.

Google goes through google-auth-oauthlib's ``Flow`` (``access_type=offline``,
``prompt=consent`` so a refresh token is always issued, S256 code challenge); Microsoft through
msal's ``initiate_auth_code_flow`` / ``acquire_token_by_auth_code_flow`` (which add PKCE and a
nonce themselves). Both are behind the small :class:`OAuthProvider` protocol so tests can point
them at local stand-ins.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from server.crypto import KeyRing
from server.mailboxes.lifecycle import Mailbox, MailboxError, OAuthState, Provider, connect

STATE_TTL = timedelta(minutes=10)
GOOGLE_AUTH_URI = "https://accounts.google.com/o/oauth2/auth"


@dataclass(frozen=True)
class Grant:
    """What a finished consent gives: the account and its refresh token."""

    email: str
    display_name: str
    refresh_token: str
    settings: dict[str, Any]


class OAuthProvider(Protocol):
    """One provider's authorization-code flow."""

    def start(self, state: str, redirect_uri: str) -> tuple[str, dict[str, Any]]:
        """The consent URL, and what must be kept secret until the callback."""
        ...

    def finish(self, params: Mapping[str, str], kept: dict[str, Any],
               redirect_uri: str) -> Grant:
        """Exchange the callback's code for tokens; raise MailboxError when refused."""
        ...


class GoogleOAuth:
    """Google's flow through google-auth-oauthlib (``GOOGLE_CLIENT_ID``/``SECRET``)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        if not config.get("GOOGLE_CLIENT_ID") or not config.get("GOOGLE_CLIENT_SECRET"):
            raise MailboxError("Google is not configured: set GOOGLE_CLIENT_ID and "
                               "GOOGLE_CLIENT_SECRET", "provider")
        from server.sending.providers.gmail import GMAIL_SCOPES, GOOGLE_TOKEN_URI

        self._client_config = {"web": {
            "client_id": config["GOOGLE_CLIENT_ID"],
            "client_secret": config["GOOGLE_CLIENT_SECRET"],
            "auth_uri": config.get("GOOGLE_AUTH_URI") or GOOGLE_AUTH_URI,
            "token_uri": config.get("GOOGLE_TOKEN_URI") or GOOGLE_TOKEN_URI,
        }}
        self._scopes = ["openid", "https://www.googleapis.com/auth/userinfo.email",
                        *GMAIL_SCOPES]

    def _flow(self, state: str, redirect_uri: str, verifier: str) -> Any:
        from google_auth_oauthlib.flow import Flow

        return Flow.from_client_config(self._client_config, scopes=self._scopes, state=state,
                                       redirect_uri=redirect_uri, code_verifier=verifier,
                                       autogenerate_code_verifier=False)

    def start(self, state: str, redirect_uri: str) -> tuple[str, dict[str, Any]]:
        """The Google consent URL (offline access, consent prompt, S256 PKCE challenge)."""
        verifier = secrets.token_urlsafe(64)
        url, _ = self._flow(state, redirect_uri, verifier).authorization_url(
            access_type="offline", prompt="consent", include_granted_scopes="true")
        return url, {"code_verifier": verifier}

    def finish(self, params: Mapping[str, str], kept: dict[str, Any],
               redirect_uri: str) -> Grant:
        """Exchange the code (with the PKCE verifier) and read the account from the id token."""
        from google.auth import jwt
        from oauthlib.oauth2.rfc6749.errors import OAuth2Error

        flow = self._flow(params.get("state", ""), redirect_uri, kept["code_verifier"])
        try:
            token = flow.fetch_token(code=params["code"])
        except OAuth2Error as exc:
            raise MailboxError(f"Google refused the authorization: {exc.error}") from None
        except Warning as exc:
            # oauthlib raises "Scope has changed" when Google grants other scopes than asked
            # (include_granted_scopes adds earlier grants; a rep may untick some): the token
            # is on the exception, and the Gmail scopes are checked below.
            token = getattr(exc, "token", None)
            if token is None:
                raise
        refresh = token.get("refresh_token")
        if not refresh:
            raise MailboxError("Google issued no refresh token; remove Relay's access in the "
                               "Google account settings and connect again")
        scope = token.get("scope") or []
        granted = set(scope.split() if isinstance(scope, str) else scope)
        missing = {s for s in self._scopes if "gmail" in s} - granted if granted else set()
        if missing:
            raise MailboxError("Gmail access was not granted: " + ", ".join(sorted(missing)))
        claims = jwt.decode(token["id_token"], verify=False) if token.get("id_token") else {}
        email = claims.get("email")
        if not email:
            raise MailboxError("Google did not tell which account was connected")
        return Grant(email=email, display_name=claims.get("name", ""), refresh_token=refresh,
                     settings={})


class MicrosoftOAuth:
    """Microsoft's flow through msal (``MS_CLIENT_ID``/``SECRET``; ``MS_TENANTS`` allow-list)."""

    def __init__(self, config: Mapping[str, Any], http_client: Any = None) -> None:
        if not config.get("MS_CLIENT_ID") or not config.get("MS_CLIENT_SECRET"):
            raise MailboxError("Microsoft is not configured: set MS_CLIENT_ID and "
                               "MS_CLIENT_SECRET", "provider")
        from server.sending.providers.graph import GRAPH_SCOPES, ms_client

        self._app = ms_client(config, http_client)
        self._scopes = list(GRAPH_SCOPES)
        tenants = str(config.get("MS_TENANTS") or "").replace(" ", "")
        self._tenants = {t for t in tenants.split(",") if t}

    def start(self, state: str, redirect_uri: str) -> tuple[str, dict[str, Any]]:
        """The consent URL of msal's auth code flow (PKCE, nonce); the flow is kept."""
        # form_post: the code comes back in a POST body, not in a URL that browsers keep in
        # their history and send in Referer headers (RFC 9700 §4.3.1).
        flow = self._app.initiate_auth_code_flow(self._scopes, redirect_uri=redirect_uri,
                                                 state=state, response_mode="form_post")
        return flow["auth_uri"], {"flow": flow}

    def finish(self, params: Mapping[str, str], kept: dict[str, Any],
               redirect_uri: str) -> Grant:
        """Redeem the code through msal; check the tenant against ``MS_TENANTS``."""
        result = self._app.acquire_token_by_auth_code_flow(kept["flow"], dict(params))
        if "error" in result or "refresh_token" not in result:
            raise MailboxError("Microsoft refused the authorization: "
                               f"{result.get('error', 'no refresh token')}")
        claims = result.get("id_token_claims") or {}
        if self._tenants and claims.get("tid") not in self._tenants:
            raise MailboxError("this Microsoft 365 organisation is not allowed (MS_TENANTS)")
        email = claims.get("email") or claims.get("preferred_username")
        if not email:
            raise MailboxError("Microsoft did not tell which account was connected")
        return Grant(email=email, display_name=claims.get("name", ""),
                     refresh_token=result["refresh_token"],
                     settings={"tenant": claims.get("tid")} if claims.get("tid") else {})


def _hash(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


def start_oauth(session: Session, *, owner_id: int, provider: Provider, flow: OAuthProvider,
                keyring: KeyRing, redirect_uri: str, now: datetime) -> str:
    """Begin connecting: store the hashed state and the encrypted verifier; the consent URL."""
    session.execute(delete(OAuthState).where(OAuthState.expires_at < now))
    state = secrets.token_urlsafe(32)
    url, kept = flow.start(state, redirect_uri)
    session.add(OAuthState(state_hash=_hash(state), owner_id=owner_id, provider=provider,
                           secret=keyring.encrypt(json.dumps(kept)), created_at=now,
                           expires_at=now + STATE_TTL))
    session.flush()
    return url


def pending_state(session: Session, state: str, now: datetime) -> OAuthState | None:
    """The unexpired started connection of a callback's ``state``, or None."""
    row = session.scalar(select(OAuthState).where(OAuthState.state_hash == _hash(state)))
    if row is None or row.expires_at <= now:
        return None
    return row


def finish_oauth(session: Session, *, state: str, params: Mapping[str, str],
                 flow: OAuthProvider, keyring: KeyRing, redirect_uri: str, org_id: int,
                 caller_id: int | None, now: datetime) -> Mailbox:
    """Complete a connection from the callback: the state is used once, then deleted.

    ``caller_id`` is the Relay user signed in to the browser completing the callback; anyone
    but the user who started (nobody included) is refused before the code is redeemed.
    """
    row = pending_state(session, state, now)
    if row is None:
        raise MailboxError("this connection link expired or was already used; start again",
                           "state")
    kept = json.loads(keyring.decrypt(row.secret))
    owner_id, provider = row.owner_id, Provider(row.provider)
    session.delete(row)
    session.flush()
    if caller_id is None or caller_id != owner_id:
        raise MailboxError("this connection was started by another Relay user, or you are not "
                           "signed in to Relay in this browser: sign in and start again",
                           "state")
    if params.get("error"):
        raise MailboxError(f"the provider answered: {params['error']}")
    grant = flow.finish(params, kept, redirect_uri)
    return connect(session, org_id=org_id, owner_id=owner_id, provider=provider,
                   email=grant.email, display_name=grant.display_name, settings=grant.settings,
                   secret={"refresh_token": grant.refresh_token}, keyring=keyring, now=now)
