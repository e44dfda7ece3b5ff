"""Signing the add-in in: Entra tokens against a local JWKS, and Relay's scoped add-in tokens."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import time_machine
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import ApiToken
from server.addins.outlook import entra
from server.addins.outlook.models import MicrosoftIdentity
from server.app import create_app
from tests.conftest import World

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
TENANT = "9188040d-6c67-4c5b-b112-36a304b66dad"
OTHER_TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
OID = "00000000-0000-0000-66f3-3332eca7ea81"
PUBLIC_URL = "https://relay.example.com"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Two RSA keys: ``good`` is published in the JWKS, ``rogue`` is not."""
    return {"good": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "rogue": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


class _Jwks:
    """A JWKS endpoint on 127.0.0.1 standing in for login.microsoftonline.com."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.hits = 0
        jwks = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.hits += 1
                body = json.dumps(jwks.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/common/discovery/v2.0/keys"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def jwks(keys: dict[str, Any]) -> Iterator[_Jwks]:
    """The local JWKS server publishing the ``good`` key as kid ``k1``."""
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["good"].public_key()))
    server = _Jwks({"keys": [{**jwk, "kid": "k1", "use": "sig"}]})
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def ms_app(database_url: str, jwks: _Jwks) -> Iterator[Flask]:
    """The app with Microsoft sign-in configured (MS_CLIENT_ID) against the local JWKS."""
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "SECRET_KEY": "test",
                      "PUBLIC_URL": PUBLIC_URL, "MS_CLIENT_ID": CLIENT_ID,
                      "MS_JWKS_URL": jwks.url})
    yield app
    app.extensions["relay.engine"].dispose()


@pytest.fixture
def ms_client(ms_app: Flask) -> FlaskClient:
    """A client of the Microsoft-configured app."""
    return ms_app.test_client()


def claims(**overrides: Any) -> dict[str, Any]:
    """The claims of a valid v2.0 access token for Relay's API, changed by ``overrides``."""
    now = int(datetime.now(UTC).timestamp())
    base = {"aud": CLIENT_ID, "iss": f"https://login.microsoftonline.com/{TENANT}/v2.0",
            "tid": TENANT, "oid": OID, "scp": "access_as_user", "iat": now - 60,
            "nbf": now - 60, "exp": now + 3600, "preferred_username": "rep@a.test",
            "ver": "2.0"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(keys: dict[str, Any], key: str = "good", kid: str = "k1", **overrides: Any) -> str:
    """A token signed RS256 with one of the keys."""
    return jwt.encode(claims(**overrides), keys[key], algorithm="RS256", headers={"kid": kid})


def link(session: Session, world: World) -> None:
    """Link the test Microsoft identity to rep@a.test."""
    session.add(MicrosoftIdentity(tid=TENANT, oid=OID, user_id=world.rep.id,
                                  username="rep@a.test"))
    session.commit()


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_a_valid_entra_token_of_a_linked_account_is_that_relay_user(
        ms_client: FlaskClient, session: Session, world: World, keys: dict[str, Any]):
    """Does a valid token (tid + oid linked) sign the add-in in as the right Relay user?"""
    link(session, world)
    resp = ms_client.get("/api/outlook/me", headers=bearer(token(keys)))
    assert resp.status_code == 200, resp.json
    assert resp.json["id"] == world.rep.id and resp.json["email"] == "rep@a.test"
    assert resp.json["microsoft_linked"] is True
    assert ms_client.get("/api/tasks", headers=bearer(token(keys))).status_code == 200
    # The audience may also be the API's application ID URI.
    uri = f"api://relay.example.com/{CLIENT_ID}"
    assert ms_client.get("/api/outlook/me",
                         headers=bearer(token(keys, aud=uri))).json["id"] == world.rep.id


#: The moment the time-dependent token cases are made and checked at.
FIXED = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

BAD = {
    "wrong audience": ({"aud": "22222222-2222-2222-2222-222222222222"}, "another audience"),
    "issuer of another tenant": (
        {"iss": f"https://login.microsoftonline.com/{OTHER_TENANT}/v2.0"}, "issuer"),
    "v1 issuer": ({"iss": f"https://sts.windows.net/{TENANT}/"}, "issuer"),
    "expired": ({"exp": int(FIXED.timestamp()) - 120}, "expired"),
    "not valid yet": ({"nbf": int(FIXED.timestamp()) + 600}, "not valid yet"),
    "missing scope": ({"scp": "User.Read Mail.Send"}, "lacks the scope"),
    "no scope claim": ({"scp": None}, "lacks the scope"),
    "no oid": ({"oid": None}, "oid"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_entra_token_is_a_401(ms_client: FlaskClient, session: Session, world: World,
                                    keys: dict[str, Any], case: str):
    """Is a token with a wrong audience, issuer, time or scope refused with a reason?

    Made and checked at the fixed moment ``FIXED`` (however long the run takes).
    """
    link(session, world)
    overrides, reason = BAD[case]
    with time_machine.travel(FIXED, tick=False):
        resp = ms_client.get("/api/outlook/me", headers=bearer(token(keys, **overrides)))
    assert resp.status_code == 401, resp.json
    assert reason in resp.json["message"]


def test_unsigned_forged_and_unknown_key_tokens_are_401(ms_client: FlaskClient, session: Session,
                                                        world: World, keys: dict[str, Any]):
    """Are alg none, HS256 with the public key, a foreign key and an unknown kid refused?"""
    link(session, world)
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "k1"})
    from cryptography.hazmat.primitives import serialization

    public_pem = keys["good"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    forged_hs = _hs256(claims(), public_pem)
    cases = {
        unsigned: "algorithm 'none'",
        forged_hs: "algorithm 'HS256'",
        token(keys, key="rogue"): "signature",
        token(keys, key="rogue", kid="k2"): "unknown key",
        "eyJhbGciOiJSUzI1NiJ9.e30.c2ln": "names no signing key",
    }
    for value, reason in cases.items():
        resp = ms_client.get("/api/outlook/me", headers=bearer(value))
        assert resp.status_code == 401, (reason, resp.json)
        assert reason in resp.json["message"], resp.json


def _hs256(payload: dict[str, Any], secret: bytes) -> str:
    """An HS256 token keyed with the RSA public key (the algorithm-confusion forgery).

    PyJWT refuses to sign with a PEM as an HMAC key, so it is assembled by hand.
    """
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def test_a_tenant_outside_the_allow_list_is_a_401(database_url: str, jwks: _Jwks,
                                                  session: Session, world: World,
                                                  keys: dict[str, Any]):
    """With MS_TENANTS set, is another tenant's valid token refused and a listed one let in?"""
    link(session, world)
    app = create_app({"TESTING": True, "DATABASE_URL": database_url, "SECRET_KEY": "test",
                      "PUBLIC_URL": PUBLIC_URL, "MS_CLIENT_ID": CLIENT_ID,
                      "MS_JWKS_URL": jwks.url, "MS_TENANTS": f"{OTHER_TENANT}"})
    try:
        resp = app.test_client().get("/api/outlook/me", headers=bearer(token(keys)))
        assert resp.status_code == 401 and "not allowed" in resp.json["message"]
        app.config["MS_TENANTS"] = f"{OTHER_TENANT}, {TENANT.upper()}"
        assert app.test_client().get("/api/outlook/me",
                                     headers=bearer(token(keys))).status_code == 200
    finally:
        app.extensions["relay.engine"].dispose()


def test_a_valid_token_of_an_unlinked_account_asks_for_a_relay_sign_in(
        ms_client: FlaskClient, world: World, keys: dict[str, Any]):
    """Is a valid but unlinked Microsoft account a 401 that says how to link it?"""
    resp = ms_client.get("/api/outlook/me", headers=bearer(token(keys)))
    assert resp.status_code == 401
    assert resp.json["error"] == "not_linked"


def test_the_signing_keys_are_cached(ms_client: FlaskClient, session: Session, world: World,
                                     keys: dict[str, Any], jwks: _Jwks):
    """Are the Entra keys fetched once for many requests, even with unknown key ids?"""
    link(session, world)
    for _ in range(5):
        assert ms_client.get("/api/outlook/me", headers=bearer(token(keys))).status_code == 200
    for _ in range(3):
        ms_client.get("/api/outlook/me", headers=bearer(token(keys, key="rogue", kid="kX")))
    assert jwks.hits == 1


def test_keys_are_refetched_when_stale_or_rotated(keys: dict[str, Any], jwks: _Jwks):
    """Does a new key id after the minimum interval, or an old cache, trigger one refetch?"""
    cache = entra.SigningKeys(jwks.url, ttl=timedelta(hours=1), min_refresh=timedelta(minutes=5))
    t0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    cache.key("k1", t0)
    with pytest.raises(entra.InvalidToken):
        cache.key("k2", t0 + timedelta(minutes=1))
    assert jwks.hits == 1
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys["rogue"].public_key()))
    jwks.doc = {"keys": [*jwks.doc["keys"], {**jwk, "kid": "k2"}]}
    assert cache.key("k2", t0 + timedelta(minutes=6)) is not None
    assert jwks.hits == 2
    cache.key("k1", t0 + timedelta(hours=2))
    assert jwks.hits == 3


def test_expiry_uses_the_time_passed_in(keys: dict[str, Any], jwks: _Jwks):
    """Is expiry judged against ``now`` with a minute of leeway?"""
    settings = entra.EntraSettings(audiences=(CLIENT_ID,), scope="access_as_user")
    cache = entra.SigningKeys(jwks.url)
    exp = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    value = token(keys, exp=int(exp.timestamp()), nbf=int(exp.timestamp()) - 3600)
    ok = entra.verify(value, settings, cache, exp + timedelta(seconds=59))
    assert (ok.tid, ok.oid, ok.username) == (TENANT, OID, "rep@a.test")
    with pytest.raises(entra.InvalidToken, match="expired"):
        entra.verify(value, settings, cache, exp + timedelta(seconds=61))


def _dialog_sign_in(client: FlaskClient, email: str, password: str) -> Any:
    page = client.get("/addin/outlook/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    return client.post("/addin/outlook/sign-in",
                       data={"csrf": csrf, "email": email, "password": password})


def test_the_dialog_sign_in_hands_back_a_scoped_token(client: FlaskClient, session: Session,
                                                      world: World):
    """Does Relay's sign-in page give the pane a token limited to the add-in's endpoints?"""
    bad = _dialog_sign_in(client, "rep@a.test", "wrong")
    assert bad.status_code == 401 and b"data-token" not in bad.data
    resp = _dialog_sign_in(client, "rep@a.test", "secret-pw")
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    value = re.search(r'data-token="(rly_[^"]+)"', resp.get_data(as_text=True)).group(1)
    assert b"/addin/outlook/dialog.js" in resp.data
    row = session.scalar(select(ApiToken).where(ApiToken.name == "Outlook add-in"))
    assert row is not None and row.scope == "outlook" and row.user_id == world.rep.id
    fresh = FlaskClient(client.application)  # no session cookie: the token alone
    assert fresh.get("/api/outlook/me", headers=bearer(value)).json["id"] == world.rep.id
    assert fresh.get("/api/tasks", headers=bearer(value)).status_code == 200
    denied = fresh.get("/api/contacts", headers=bearer(value))
    assert denied.status_code == 403 and "outlook" in denied.json["message"]
    assert fresh.post("/api/campaigns", headers=bearer(value), json={}).status_code == 403
    # Tokens without a scope (relay token create) still reach the whole API.
    assert fresh.get("/api/contacts", headers=world.auth(world.rep)).status_code == 200


def test_a_rep_links_a_microsoft_account_once(ms_client: FlaskClient, session: Session,
                                              world: World, keys: dict[str, Any]):
    """After signing in to Relay and linking, does the Microsoft token alone sign the rep in?"""
    resp = _dialog_sign_in(ms_client, "rep@a.test", "secret-pw")
    relay_token = re.search(r'data-token="(rly_[^"]+)"', resp.get_data(as_text=True)).group(1)
    linked = ms_client.post("/api/outlook/link", headers=bearer(relay_token),
                            json={"microsoft_token": token(keys)})
    assert linked.status_code == 200 and linked.json == {"linked": True, "created": True}
    again = ms_client.post("/api/outlook/link", headers=bearer(relay_token),
                           json={"microsoft_token": token(keys)})
    assert again.json == {"linked": True, "created": False}
    assert ms_client.get("/api/outlook/me",
                         headers=bearer(token(keys))).json["id"] == world.rep.id
    bad = ms_client.post("/api/outlook/link", headers=bearer(relay_token),
                         json={"microsoft_token": token(keys, scp="User.Read")})
    assert bad.status_code == 422
    other = ms_client.post("/api/outlook/link", headers=world.auth(world.rep2),
                           json={"microsoft_token": token(keys)})
    assert other.status_code == 409


def test_without_ms_client_id_jwts_are_not_accepted(client: FlaskClient, keys: dict[str, Any],
                                                   world: World):
    """With Microsoft sign-in off, is an Entra-looking token just an invalid API token?"""
    resp = client.get("/api/outlook/me", headers=bearer(token(keys)))
    assert resp.status_code == 401 and resp.json["message"] == "the API token is not valid"
