"""Getting Salesforce access tokens: OAuth web-server flow with PKCE, JWT bearer, refresh.

Token requests go to ``{SALESFORCE_LOGIN_URL}/services/oauth2/token``; the response carries
``access_token``, ``instance_url``, ``id`` (the identity URL), ``issued_at`` and ``signature``
(web-server flow), and ``refresh_token`` when the connected app grants it. Token values are
never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jwt
import requests

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPES = "api refresh_token"


class TokenError(Exception):
    """Salesforce refused to give a token (``invalid_grant`` and the like) or was unreachable."""

    def __init__(self, error: str, description: str = "", *, transient: bool = False) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.transient = transient


@dataclass(frozen=True)
class Tokens:
    """A token response (secrets inside: never log or return this)."""

    access_token: str
    instance_url: str
    identity_url: str | None
    refresh_token: str | None

    def __repr__(self) -> str:
        return f"Tokens(instance_url={self.instance_url!r}, access_token=***)"


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(login_url: str, client_id: str, redirect_uri: str, state: str,
                  challenge: str) -> str:
    """Where an admin is sent to approve Relay (authorization-code flow with PKCE)."""
    query = urlencode({"response_type": "code", "client_id": client_id,
                       "redirect_uri": redirect_uri, "scope": SCOPES, "state": state,
                       "code_challenge": challenge, "code_challenge_method": "S256",
                       "prompt": "login consent"})
    return f"{login_url.rstrip('/')}/services/oauth2/authorize?{query}"


def signature_valid(client_secret: str, identity_url: str, issued_at: str,
                    signature: str) -> bool:
    """Check a token response's ``signature``: HMAC-SHA256 of ``id + issued_at`` (base64)."""
    mac = hmac.new(client_secret.encode(), (identity_url + issued_at).encode(), hashlib.sha256)
    return hmac.compare_digest(base64.b64encode(mac.digest()).decode(), signature)


def jwt_assertion(client_id: str, username: str, audience: str, private_key_pem: str,
                  now: datetime) -> str:
    """A signed JWT bearer assertion (RS256, valid three minutes) for ``username``."""
    claims = {"iss": client_id, "sub": username, "aud": audience.rstrip("/"),
              "exp": int((now + timedelta(minutes=3)).timestamp())}
    return jwt.encode(claims, private_key_pem, algorithm="RS256")


def _token_request(http: requests.Session, login_url: str, data: dict[str, str],
                   client_secret: str | None = None) -> Tokens:
    url = f"{login_url.rstrip('/')}/services/oauth2/token"
    try:
        resp = http.post(url, data=data, headers={"Accept": "application/json"})
    except requests.RequestException as exc:
        raise TokenError("unreachable", type(exc).__name__, transient=True) from None
    try:
        body: dict[str, Any] = resp.json()
    except ValueError:
        body = {}
    if resp.status_code >= 500:
        raise TokenError("unavailable", f"HTTP {resp.status_code}", transient=True)
    if resp.status_code != 200 or "access_token" not in body:
        raise TokenError(str(body.get("error", f"HTTP {resp.status_code}")),
                         str(body.get("error_description", "")))
    if (client_secret and body.get("signature") and body.get("issued_at")
            and not signature_valid(client_secret, body.get("id", ""), body["issued_at"],
                                    body["signature"])):
        raise TokenError("invalid_signature", "the token response's signature does not match")
    return Tokens(access_token=body["access_token"], instance_url=body["instance_url"],
                  identity_url=body.get("id"), refresh_token=body.get("refresh_token"))


def exchange_code(http: requests.Session, login_url: str, client_id: str, client_secret: str,
                  code: str, verifier: str, redirect_uri: str) -> Tokens:
    """Trade an authorization code (and the PKCE verifier) for tokens."""
    return _token_request(http, login_url, {
        "grant_type": "authorization_code", "code": code, "client_id": client_id,
        "client_secret": client_secret, "redirect_uri": redirect_uri,
        "code_verifier": verifier}, client_secret)


def refresh(http: requests.Session, login_url: str, client_id: str, client_secret: str,
            refresh_token: str) -> Tokens:
    """A new access token from a refresh token."""
    return _token_request(http, login_url, {
        "grant_type": "refresh_token", "refresh_token": refresh_token,
        "client_id": client_id, "client_secret": client_secret}, client_secret)


def jwt_bearer(http: requests.Session, login_url: str, client_id: str, username: str,
               private_key_pem: str, now: datetime, audience: str | None = None) -> Tokens:
    """An access token for an integration user by the JWT bearer flow (no refresh token).

    ``audience`` defaults to the login URL (``https://login.salesforce.com``, or
    ``https://test.salesforce.com`` for a sandbox).
    """
    assertion = jwt_assertion(client_id, username, audience or login_url, private_key_pem, now)
    return _token_request(http, login_url, {"grant_type": JWT_GRANT, "assertion": assertion})
