"""Microsoft Entra access tokens (from the add-in's nested app authentication), checked.

The one place that verifies an Entra token: RS256 signature by a key of the Entra signing key
set (JWKS, fetched over HTTP and cached), issuer of the token's own tenant
(``https://login.microsoftonline.com/{tid}/v2.0``), audience (Relay's Entra app), the
delegated scope in ``scp``, expiry and not-before against a ``now`` passed in, and an optional
tenant allow-list. The user is ``tid`` + ``oid``.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

#: Fetches a JWKS document (the real one does HTTP; tests serve one on 127.0.0.1).
JwksFetcher = Callable[[str], dict[str, Any]]


class InvalidToken(Exception):
    """The token was refused; the message says which check failed (never the token)."""


@dataclass(frozen=True)
class EntraIdentity:
    """Who a valid token is for."""

    tid: str
    oid: str
    username: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class EntraSettings:
    """What a token must say to be accepted."""

    audiences: tuple[str, ...]
    scope: str
    tenants: frozenset[str] | None = None
    leeway: timedelta = timedelta(minutes=1)

    @classmethod
    def from_config(cls, config: Any) -> EntraSettings:
        """Settings from MS_CLIENT_ID, MS_API_SCOPE, MS_TENANTS and PUBLIC_URL."""
        from server.addins.manifests import source_from_config

        client_id = str(config["MS_CLIENT_ID"])
        tenants = {t.strip().lower() for t in str(config.get("MS_TENANTS") or "").split(",")
                   if t.strip()}
        return cls(audiences=(client_id, source_from_config(config).app_id_uri),
                   scope=str(config.get("MS_API_SCOPE") or "access_as_user"),
                   tenants=frozenset(tenants) or None)


def http_fetch_jwks(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET a JWKS document."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (configured URL)
        data: dict[str, Any] = json.loads(resp.read())
    return data


class SigningKeys:
    """The Entra signing keys, cached; refetched when stale or when a token names a new key.

    A key id that is still unknown right after a refetch does not cause another fetch for
    ``min_refresh``, so forged key ids cannot make Relay hammer the JWKS endpoint.
    """

    def __init__(self, url: str, fetch: JwksFetcher = http_fetch_jwks, *,
                 ttl: timedelta = timedelta(hours=12),
                 min_refresh: timedelta = timedelta(minutes=5)) -> None:
        self.url = url
        self._fetch = fetch
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: datetime | None = None
        self._lock = threading.Lock()
        self.fetches = 0

    def _refresh(self, now: datetime) -> None:
        try:
            doc = self._fetch(self.url)
        except (OSError, ValueError) as exc:
            raise InvalidToken(f"the signing keys could not be fetched ({exc})") from None
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in doc.get("keys", []):
            if jwk.get("kty") != "RSA" or not jwk.get("kid"):
                continue
            try:
                keys[str(jwk["kid"])] = jwt.PyJWK.from_dict(jwk, algorithm="RS256")
            except jwt.PyJWTError:
                continue
        self._keys = keys
        self._fetched_at = now
        self.fetches += 1

    def key(self, kid: str, now: datetime) -> jwt.PyJWK:
        """The public key ``kid`` (InvalidToken when the key set does not have it)."""
        with self._lock:
            age = None if self._fetched_at is None else now - self._fetched_at
            if age is None or age > self._ttl or (kid not in self._keys
                                                  and age > self._min_refresh):
                self._refresh(now)
            found = self._keys.get(kid)
        if found is None:
            raise InvalidToken("the token is signed by an unknown key")
        return found


def looks_like_jwt(token: str) -> bool:
    """True for a three-part compact JWS (an Entra token; Relay's own tokens are not)."""
    return token.count(".") == 2 and token.startswith("ey")


def verify(token: str, settings: EntraSettings, keys: SigningKeys,
           now: datetime) -> EntraIdentity:
    """Check an Entra access token (see the module doc); InvalidToken says why it is refused."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("the token is not a JWT") from None
    if header.get("alg") != "RS256":
        raise InvalidToken(f"the token's algorithm {header.get('alg')!r} is not RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken("the token names no signing key")
    key = keys.key(kid, now)
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key=key.key, algorithms=["RS256"], audience=list(settings.audiences),
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "require": ["exp", "iss", "aud", "tid", "oid"]})
    except jwt.InvalidAudienceError:
        raise InvalidToken("the token is for another audience") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("the token's signature is not valid") from None
    except jwt.PyJWTError as exc:
        raise InvalidToken(f"the token is not valid ({exc})") from None
    tid = str(claims["tid"]).lower()
    if not _GUID.match(tid):
        raise InvalidToken("the token's tenant is not a GUID")
    if claims["iss"] != f"https://login.microsoftonline.com/{tid}/v2.0":
        raise InvalidToken("the token's issuer is not its tenant's v2.0 issuer")
    if settings.tenants is not None and tid not in settings.tenants:
        raise InvalidToken("the token's tenant is not allowed (MS_TENANTS)")
    stamp = now.timestamp()
    leeway = settings.leeway.total_seconds()
    if not isinstance(claims["exp"], int | float) or stamp > claims["exp"] + leeway:
        raise InvalidToken("the token has expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf - leeway > stamp:
        raise InvalidToken("the token is not valid yet")
    scopes = frozenset(str(claims.get("scp", "")).split())
    if settings.scope not in scopes:
        raise InvalidToken(f"the token lacks the scope {settings.scope!r}")
    username = str(claims.get("preferred_username") or claims.get("upn") or "")
    return EntraIdentity(tid=tid, oid=str(claims["oid"]).lower(), username=username,
                         scopes=scopes)

