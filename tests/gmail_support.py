"""Test aids for the Gmail add-on: a local Google, its ID tokens and add-on events.

``LocalGoogle`` holds an RSA key generated for the test session, a self-signed certificate
for it and an HTTP server on 127.0.0.1 that publishes the certificate the way Google
publishes its own (``{kid: PEM certificate}`` with ``Cache-Control: max-age``). Tokens are
signed with google-auth's own signer, so they are verified exactly as Google's would be.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt
from google.auth import jwt as google_jwt

PUBLIC_URL = "https://relay.test"
SERVICE_ACCOUNT = "service-4242@gcp-sa-gsuiteaddons.iam.gserviceaccount.com"
CLIENT_ID = "4242-addon.apps.googleusercontent.com"
KID = "relay-test-key"


def _keypair() -> tuple[bytes, bytes]:
    """A new RSA key (PEM) and a self-signed certificate for it (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay-test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
            .sign(key, hashes.SHA256()))
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return private, cert.public_bytes(serialization.Encoding.PEM)


class LocalGoogle:
    """A certificate endpoint on 127.0.0.1 and a signer whose certificate it publishes."""

    def __init__(self) -> None:
        self.private_pem, self.cert_pem = _keypair()
        self.other_private_pem, _ = _keypair()
        self.hits = 0
        google = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                google.hits += 1
                body = json.dumps({KID: google.cert_pem.decode()}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.certs_url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/v1/certs"

    def close(self) -> None:
        """Stop the server."""
        self.server.shutdown()
        self.server.server_close()

    def token(self, *, signer_pem: bytes | None = None, kid: str = KID,
              **claims: Any) -> str:
        """A signed ID token with Google's issuer and a one-hour lifetime, unless overridden."""
        now = int(time.time())
        payload = {"iss": "https://accounts.google.com", "iat": now, "exp": now + 3600,
                   "email_verified": True, **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        return google_jwt.encode(self._signer(signer_pem or self.private_pem, kid),
                                 payload).decode()

    @functools.cache  # noqa: B019 (one LocalGoogle per test session; loading a key is slow)
    def _signer(self, pem: bytes, kid: str) -> crypt.RSASigner:
        return crypt.RSASigner.from_string(pem, key_id=kid)

    def system_token(self, path: str, **claims: Any) -> str:
        """The add-on system token Google sends to the endpoint at ``path``."""
        claims.setdefault("aud", PUBLIC_URL + path)
        claims.setdefault("email", SERVICE_ACCOUNT)
        claims.setdefault("sub", "1023")
        return self.token(**claims)

    def user_token(self, email: str, **claims: Any) -> str:
        """A user ID token for ``email`` with the add-on's client id as audience."""
        claims.setdefault("aud", CLIENT_ID)
        claims.setdefault("sub", "117")
        return self.token(email=email, **claims)


def gmail_config(database_url: str, certs_url: str, **overrides: Any) -> dict[str, Any]:
    """The test app's configuration for the add-on."""
    cfg = {
        "TESTING": True,
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret",
        "PUBLIC_URL": PUBLIC_URL,
        "GMAIL_ADDON_SERVICE_ACCOUNT": SERVICE_ACCOUNT,
        "GMAIL_ADDON_CLIENT_ID": CLIENT_ID,
        "GMAIL_ADDON_CERTS_URL": certs_url,
        "GMAIL_ADDON_DRAFT_ACCESS": "METADATA",
        "GMAIL_API": "fake",
    }
    cfg.update(overrides)
    return cfg


ALL_SCOPES = [
    "https://www.googleapis.com/auth/gmail.addons.execute",
    "https://www.googleapis.com/auth/gmail.addons.current.action.compose",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/gmail.addons.current.message.metadata",
]


def event(google: LocalGoogle, email: str, *, params: dict[str, str] | None = None,
          gmail: dict[str, Any] | None = None, scopes: list[str] | None = None,
          **extra: Any) -> dict[str, Any]:
    """An add-on event object as Google posts it, for the Gmail user ``email``."""
    body: dict[str, Any] = {
        "commonEventObject": {"hostApp": "GMAIL", "platform": "WEB",
                              "userLocale": "en", "parameters": params or {}},
        "authorizationEventObject": {
            "userOAuthToken": "ya29.user-oauth-token-SECRET-0123456789",
            "userIdToken": google.user_token(email),
            "systemIdToken": google.system_token("/unused"),
            "authorizedScopes": ALL_SCOPES if scopes is None else scopes,
        },
        "gmail": gmail or {},
    }
    body.update(extra)
    return body
