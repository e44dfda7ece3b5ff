"""The one place that verifies the Google ID tokens of Gmail add-on requests.

Every request Google sends to an HTTP add-on endpoint carries two ID tokens:

* the ``Authorization: Bearer`` header holds a *system* ID token (``SYSTEM_ID_TOKEN`` in the
  deployment file) minted for the add-on's own service account: its audience must be the
  exact URL of the endpoint that was called and its ``email`` the configured service
  account, with ``email_verified``;
* ``authorizationEventObject.userIdToken`` in the body identifies the Gmail user: its
  audience is the add-on's OAuth client id, its verified ``email`` maps to a Relay user.

Both are RS256 tokens signed by Google, checked with google-auth against Google's published
certificates. The certificates are fetched through :class:`CachingRequest`, which keeps each
answer for as long as its ``Cache-Control: max-age`` allows, so a request verifies two tokens
without any network round trip. Everything fails closed: an unset setting, an unreachable
certificate endpoint (:class:`KeysUnavailable`) or any mismatch (:class:`TokenRejected`)
refuses the call. Token values never appear
in the exceptions raised here (they may be logged).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.auth import exceptions as google_exceptions
from google.auth.transport import Request as TransportRequest
from google.auth.transport import Response as TransportResponse
from google.oauth2 import id_token

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
_MAX_AGE = re.compile(r"max-age=(\d+)")
#: How long certificates are kept when Google's answer names no max-age.
DEFAULT_CERTS_SECONDS = 300.0
#: Accepted clock difference between Google and this server, in seconds.
CLOCK_SKEW_SECONDS = 10


class TokenRejected(Exception):
    """A token, or the configuration needed to check it, is missing or wrong (answered 401).

    The message says which check failed and never contains the token itself.
    """


class KeysUnavailable(Exception):
    """Google's certificates could not be fetched: no token can be checked (answered 503).

    Not the caller's fault, and over once Google answers again: Google retries the call.
    """


@dataclass(frozen=True)
class _Cached:
    status: int
    headers: Mapping[str, str]
    data: bytes
    expires: float


class _CachedResponse(TransportResponse):
    """A stored answer, as google-auth's transport interface wants it."""

    def __init__(self, entry: _Cached) -> None:
        self._entry = entry

    @property
    def status(self) -> int:
        """The HTTP status."""
        return self._entry.status

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers."""
        return self._entry.headers

    @property
    def data(self) -> bytes:
        """The response body."""
        return self._entry.data


class CachingRequest(TransportRequest):
    """A google-auth transport that keeps successful GET answers until their max-age ends.

    It wraps another transport (google-auth's ``requests`` transport by default). Only
    200 answers to GET are kept; one lock makes concurrent first requests fetch once.
    """

    def __init__(self, inner: TransportRequest | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if inner is None:
            import google.auth.transport.requests

            inner = google.auth.transport.requests.Request()
        self._inner = inner
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None,
                 **kwargs: Any) -> TransportResponse:
        """Answer from the cache when fresh, else ask the inner transport (and keep a 200)."""
        if method != "GET":
            return self._inner(url, method=method, body=body, headers=headers,
                               timeout=timeout, **kwargs)
        entry = self._cache.get(url)
        if entry is not None and entry.expires > self._clock():
            return _CachedResponse(entry)
        with self._lock:
            entry = self._cache.get(url)
            if entry is not None and entry.expires > self._clock():
                return _CachedResponse(entry)
            response = self._inner(url, method="GET", headers=headers,
                                   timeout=timeout or 10, **kwargs)
            self.fetches += 1
            if response.status != 200:
                return response
            hdrs = {k.lower(): v for k, v in dict(response.headers).items()}
            match = _MAX_AGE.search(hdrs.get("cache-control", ""))
            seconds = float(match.group(1)) if match else DEFAULT_CERTS_SECONDS
            entry = _Cached(response.status, hdrs, bytes(response.data),
                            self._clock() + seconds)
            self._cache[url] = entry
            return _CachedResponse(entry)

    def clear(self) -> None:
        """Forget every stored answer."""
        with self._lock:
            self._cache.clear()


@dataclass(frozen=True)
class GoogleUser:
    """The Gmail user of a request, from a verified ``userIdToken``."""

    email: str
    subject: str


class Verifier:
    """Checks the two ID tokens of an add-on request against the configuration."""

    def __init__(self, *, service_account: str | None, client_id: str | None,
                 certs_url: str | None, request: TransportRequest | None = None) -> None:
        self.service_account = (service_account or "").strip()
        self.client_id = (client_id or "").strip()
        self.certs_url = (certs_url or "").strip()
        self.request = request if request is not None else CachingRequest()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Verifier:
        """The verifier of an app's configuration (``GMAIL_ADDON_*``)."""
        return cls(service_account=config.get("GMAIL_ADDON_SERVICE_ACCOUNT"),
                   client_id=config.get("GMAIL_ADDON_CLIENT_ID"),
                   certs_url=config.get("GMAIL_ADDON_CERTS_URL"))

    def missing_settings(self) -> list[str]:
        """The settings that are unset; while any is, every request is refused."""
        names = {"GMAIL_ADDON_SERVICE_ACCOUNT": self.service_account,
                 "GMAIL_ADDON_CLIENT_ID": self.client_id,
                 "GMAIL_ADDON_CERTS_URL": self.certs_url}
        return [name for name, value in names.items() if not value]

    def _decode(self, token: str, audience: str, what: str) -> dict[str, Any]:
        """The claims of a Google-signed token for ``audience``; TokenRejected otherwise."""
        if not audience:
            raise TokenRejected(f"{what}: no audience is configured")
        if not self.certs_url:
            raise TokenRejected(f"{what}: GMAIL_ADDON_CERTS_URL is not set")
        try:
            claims = id_token.verify_token(token, self.request, audience=audience,
                                           certs_url=self.certs_url,
                                           clock_skew_in_seconds=CLOCK_SKEW_SECONDS)
        except google_exceptions.TransportError as exc:
            # The certificates could not be fetched (no answer, or not a 200).
            raise KeysUnavailable(f"{what}: {redact(_short(exc))}") from None
        except (ValueError, google_exceptions.GoogleAuthError) as exc:
            # google-auth's messages name the failed check (expired, wrong audience, bad
            # signature...); they contain claims and times, never the token.
            raise TokenRejected(f"{what}: {type(exc).__name__}: {redact(_short(exc))}"
                                ) from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise TokenRejected(f"{what}: not issued by Google")
        if claims.get("email_verified") is not True:
            raise TokenRejected(f"{what}: the email is not verified")
        return dict(claims)

    def verify_system(self, authorization: str | None, endpoint_url: str) -> dict[str, Any]:
        """Check the request's ``Authorization`` header for the endpoint at ``endpoint_url``."""
        if not self.service_account:
            raise TokenRejected("GMAIL_ADDON_SERVICE_ACCOUNT is not set")
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenRejected("send Authorization: Bearer <Google ID token>")
        claims = self._decode(token, endpoint_url, "Authorization")
        if str(claims.get("email", "")).lower() != self.service_account.lower():
            raise TokenRejected("Authorization: the token is not the add-on's service account")
        return claims

    def verify_user(self, user_id_token: str | None) -> GoogleUser:
        """The Gmail user named by ``authorizationEventObject.userIdToken``."""
        if not self.client_id:
            raise TokenRejected("GMAIL_ADDON_CLIENT_ID is not set")
        if not user_id_token:
            raise TokenRejected("userIdToken: missing")
        claims = self._decode(user_id_token, self.client_id, "userIdToken")
        email = str(claims.get("email") or "").strip()
        if not email:
            raise TokenRejected("userIdToken: no email claim")
        return GoogleUser(email=email, subject=str(claims.get("sub") or ""))


_QUOTED = re.compile(r"b?'[^']*'")
_TOKENISH = re.compile(r"[A-Za-z0-9_\-]{20,}(?:\.[A-Za-z0-9_\-]*)*")


def redact(text: str) -> str:
    """``text`` with anything that looks like a token (20+ base64url characters) replaced."""
    return _TOKENISH.sub("[redacted]", _QUOTED.sub("[redacted]", text))


def _short(exc: Exception) -> str:
    """The first line of an exception's message, cut to 200 characters."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
