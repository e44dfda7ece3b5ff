"""Connecting mailboxes through the API: SMTP, local outbox, Google and Microsoft OAuth."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from server.mailboxes.lifecycle import Mailbox, MailboxStatus, OAuthState, Provider
from server.mailboxes.oauth import MicrosoftOAuth
from server.sending.providers import MailboxResolver
from server.sending.providers.gmail import GmailTransport
from server.sending.providers.graph import GraphTransport
from server.sending.providers.local import LocalOutboxTransport
from server.sending.providers.smtp import SmtpTransport
from tests.sending.providers.test_graph import FakeMsHttp
from tests.sending.providers.test_smtp_local import Sink, authenticator, free_port

KEY = Fernet.generate_key().decode()


@pytest.fixture
def mail_app(app):
    app.config.update(ENCRYPTION_KEYS=f"k1:{KEY}", GOOGLE_CLIENT_ID="gid.apps",
                      GOOGLE_CLIENT_SECRET="gsecret", MS_CLIENT_ID="ms-app",
                      MS_CLIENT_SECRET="ms-secret", PUBLIC_URL="https://relay.example.test")
    return app


def test_smtp_connect_verifies_login_and_never_returns_the_password(mail_app, world, session,
                                                                    caplog):
    """Is an SMTP mailbox verified, stored encrypted, and shown without its password?"""
    from aiosmtpd.controller import Controller

    port = free_port()
    ctl = Controller(Sink(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                     auth_require_tls=False)
    ctl.start()
    try:
        client = mail_app.test_client()
        body = {"email": "Rita <rita@acme.test>", "smtp_host": "127.0.0.1", "smtp_port": port,
                "smtp_security": "none", "smtp_username": "rita", "password": "wrong-one"}
        resp = client.post("/api/mailbox/smtp", json=body, headers=world.auth(world.rep))
        assert resp.status_code == 422
        assert resp.json["errors"][0]["field"] == "smtp_host"
        assert "wrong-one" not in resp.get_data(as_text=True)
        body["password"] = "right-password"
        resp = client.post("/api/mailbox/smtp", json=body, headers=world.auth(world.rep))
        assert resp.status_code == 201, resp.json
    finally:
        ctl.stop()
    out = resp.json
    assert out["connected"] and out["provider"] == "smtp" and out["email"] == "rita@acme.test"
    assert out["has_secret"] and out["display_name"] == "Rita"
    assert "right-password" not in resp.get_data(as_text=True)
    assert "right-password" not in caplog.text and "wrong-one" not in caplog.text
    stored = session.scalar(select(Mailbox.secret))
    assert stored.startswith("k1:") and "right-password" not in stored
    got = client.get("/api/mailbox", headers=world.auth(world.rep))
    assert "right-password" not in got.get_data(as_text=True) and got.json["connected"]
    transport = MailboxResolver(mail_app).transport_for(world.rep.id)
    assert isinstance(transport, SmtpTransport)
    assert transport.config.password == "right-password"
    other = client.get("/api/mailbox", headers=world.auth(world.rep2))
    assert other.json == {**other.json, "connected": False, "email": None}


def test_smtp_connect_refuses_a_bad_address(mail_app, world):
    """Is an email address with an injected header refused by field?"""
    resp = mail_app.test_client().post(
        "/api/mailbox/smtp", headers=world.auth(world.rep),
        json={"email": "rita@acme.test\nBcc: x@y.test", "smtp_host": "h", "verify": False})
    assert resp.status_code == 422 and resp.json["errors"][0]["field"] == "email"


def test_outbox_connect_and_disconnect(mail_app, world, caplog, tmp_path):
    """Does the local outbox connect loudly, and disconnect stop the transport?"""
    mail_app.config["MAIL_OUTBOX_DIR"] = str(tmp_path)
    client = mail_app.test_client()
    resp = client.post("/api/mailbox/outbox", json={}, headers=world.auth(world.rep))
    assert resp.status_code == 201 and resp.json["provider"] == "outbox"
    assert "NOT delivered" in caplog.text
    resolver = MailboxResolver(mail_app)
    transport = resolver.transport_for(world.rep.id)
    assert isinstance(transport, LocalOutboxTransport)
    assert transport.root == tmp_path / f"user-{world.rep.id}"
    resp = client.post("/api/mailbox/disconnect", headers=world.auth(world.rep))
    assert resp.json["changed"] and resp.json["mailbox"]["status"] == "disconnected"
    assert resolver.transport_for(world.rep.id) is None
    resp = client.post("/api/mailbox/disconnect", headers=world.auth(world.rep))
    assert not resp.json["changed"]


def test_resolver_default_outbox_only_when_configured(mail_app, world, caplog, tmp_path):
    """Without a mailbox: the outbox when MAIL_TRANSPORT=outbox (with a WARNING), else None."""
    mail_app.config["MAIL_OUTBOX_DIR"] = str(tmp_path)
    t = MailboxResolver(mail_app).transport_for(world.rep2.id)
    assert isinstance(t, LocalOutboxTransport)
    assert "NOT delivered" in caplog.text
    mail_app.config["MAIL_TRANSPORT"] = "mailbox"
    assert MailboxResolver(mail_app).transport_for(world.rep2.id) is None


class GoogleTokenServer:
    """A stand-in for Google's token endpoint on 127.0.0.1."""

    def __init__(self, answer):
        self.answer = answer
        self.forms = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers["Content-Length"])
                outer.forms.append(parse_qs(self.rfile.read(n).decode()))
                status, body = outer.answer
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _jwt(claims):
    def enc(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")
    return f"{enc({'alg': 'RS256', 'typ': 'JWT'})}.{enc(claims)}.{enc({'sig': 1})}"


SCOPE = ("openid https://www.googleapis.com/auth/userinfo.email "
         "https://www.googleapis.com/auth/gmail.send https://www.googleapis.com/auth/gmail.compose "
         "https://www.googleapis.com/auth/gmail.readonly")


def test_google_connect_with_pkce_and_state(mail_app, world, session, monkeypatch, caplog):
    """Does Google's flow send a PKCE challenge and state, and store the refresh token?"""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the stand-in is plain http
    caplog.set_level(logging.DEBUG)  # even at DEBUG no token reaches the log
    tokens = GoogleTokenServer((200, {
        "access_token": "ya29.access", "expires_in": 3599, "token_type": "Bearer",
        "refresh_token": "1//google-refresh-secret", "scope": SCOPE,
        "id_token": _jwt({"email": "rita@acme.test", "name": "Rita Rep"})}))
    try:
        mail_app.config["GOOGLE_TOKEN_URI"] = tokens.url
        client = mail_app.test_client()
        web_sign_in(client, "rep@a.test")  # the browser completing consent is the rep's
        resp = client.post("/api/mailbox/oauth/google/start", headers=world.auth(world.rep))
        url = resp.json["authorization_url"]
        parts = urlsplit(url)
        q = parse_qs(parts.query)
        assert parts.netloc == "accounts.google.com"
        assert q["code_challenge_method"] == ["S256"] and q["access_type"] == ["offline"]
        assert q["redirect_uri"] == ["https://relay.example.test/mailbox/oauth/google/callback"]
        assert "https://www.googleapis.com/auth/gmail.send" in q["scope"][0].split()
        state = q["state"][0]
        stored = session.scalar(select(OAuthState))
        assert state not in stored.state_hash and "code_verifier" not in stored.secret

        cb = client.get(f"/mailbox/oauth/google/callback?code=4/auth-code&state={state}")
        assert cb.status_code == 302 and cb.location.endswith("/mailbox")
        form = tokens.forms[0]
        assert form["code"] == ["4/auth-code"] and form["grant_type"] == ["authorization_code"]
        verifier = form["code_verifier"][0]
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        assert challenge.decode().rstrip("=") == q["code_challenge"][0]

        again = client.get(f"/mailbox/oauth/google/callback?code=4/auth-code&state={state}")
        assert again.status_code == 400  # a state works once
        forged = client.get("/mailbox/oauth/google/callback?code=x&state=forged")
        assert forged.status_code == 400
    finally:
        tokens.close()
    session.rollback()  # a fresh snapshot after the requests' commits
    mb = session.scalar(select(Mailbox).execution_options(populate_existing=True))
    assert (mb.provider, mb.email, mb.status) == (Provider.GOOGLE, "rita@acme.test",
                                                  MailboxStatus.CONNECTED)
    assert mb.daily_limit == 2000 and "google-refresh-secret" not in (mb.secret or "")
    got = client.get("/api/mailbox", headers=world.auth(world.rep)).get_data(as_text=True)
    assert "google-refresh-secret" not in got
    assert "google-refresh-secret" not in caplog.text and "ya29.access" not in caplog.text
    assert "4/auth-code" not in caplog.text
    transport = MailboxResolver(mail_app).transport_for(world.rep.id)
    assert isinstance(transport, GmailTransport)


def test_google_refusal_leaves_nothing_connected(mail_app, world, session, monkeypatch):
    """Does a refused code exchange answer 400 and connect nothing?"""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    tokens = GoogleTokenServer((400, {"error": "invalid_grant",
                                      "error_description": "Bad Request"}))
    try:
        mail_app.config["GOOGLE_TOKEN_URI"] = tokens.url
        client = mail_app.test_client()
        web_sign_in(client, "rep@a.test")
        url = client.post("/api/mailbox/oauth/google/start",
                          headers=world.auth(world.rep)).json["authorization_url"]
        state = parse_qs(urlsplit(url).query)["state"][0]
        cb = client.get(f"/mailbox/oauth/google/callback?code=bad&state={state}")
        assert cb.status_code == 400 and b"invalid_grant" in cb.data
    finally:
        tokens.close()
    session.rollback()
    assert session.scalar(select(Mailbox)) is None
    assert session.scalar(select(OAuthState)) is None


class MsHttp(FakeMsHttp):
    """msal's http_client: discovery, plus a token answer carrying the flow's nonce."""

    def __init__(self, claims):
        super().__init__((200, {}))
        self.claims = claims
        self.nonce = None

    def post(self, url, params=None, data=None, headers=None, **kw):
        self.posts.append((url, data))
        claims = {"aud": "ms-app", "iss": "https://login.microsoftonline.com/t-1/v2.0",
                  "iat": 1795000000, "exp": 4102444800, "nonce": self.nonce,
                  "sub": "sub-1", "oid": "oid-1", **self.claims}
        client_info = base64.urlsafe_b64encode(json.dumps(
            {"uid": "oid-1", "utid": "t-1"}).encode()).decode().rstrip("=")
        return self.Resp(200, {"access_token": "eyJ.access", "expires_in": 3600,
                               "token_type": "Bearer", "refresh_token": "0.ms-refresh-secret",
                               "scope": "Mail.Send Mail.ReadWrite User.Read",
                               "id_token": _jwt(claims), "client_info": client_info})


@pytest.mark.parametrize("tenants,ok", [(None, True), ("t-1,t-2", True), ("t-9", False)])
def test_microsoft_connect_through_msal(mail_app, world, session, tenants, ok, caplog):
    """Does msal's auth code flow connect the account, honouring the MS_TENANTS allow-list?"""
    caplog.set_level(logging.DEBUG)
    mail_app.config["MS_TENANTS"] = tenants
    http = MsHttp({"tid": "t-1", "preferred_username": "rita@contoso.test", "name": "Rita"})
    flow = MicrosoftOAuth(mail_app.config, http_client=http)
    mail_app.extensions["relay.oauth_providers"] = {Provider.MICROSOFT: flow}
    client = mail_app.test_client()
    web_sign_in(client, "rep@a.test")
    url = client.post("/api/mailbox/oauth/microsoft/start",
                      headers=world.auth(world.rep)).json["authorization_url"]
    q = parse_qs(urlsplit(url).query)
    assert q["code_challenge_method"] == ["S256"]
    assert "https://graph.microsoft.com/Mail.Send" in q["scope"][0].split()
    assert "offline_access" in q["scope"][0].split()
    http.nonce = q["nonce"][0]
    state = q["state"][0]
    assert q["response_mode"] == ["form_post"]
    cb = client.post("/mailbox/oauth/microsoft/callback",
                     data={"code": "M.code", "state": state})
    session.rollback()
    mb = session.scalar(select(Mailbox).execution_options(populate_existing=True))
    if not ok:
        assert cb.status_code == 400 and b"MS_TENANTS" in cb.data and mb is None
        return
    assert cb.status_code == 302, cb.data
    assert (mb.provider, mb.email, mb.daily_limit) == (Provider.MICROSOFT,
                                                       "rita@contoso.test", 10000)
    assert "ms-refresh-secret" not in (mb.secret or "") + caplog.text
    transport = MailboxResolver(mail_app, ms_token_client=object()).transport_for(world.rep.id)
    assert isinstance(transport, GraphTransport)


def test_schedule_reports_a_connected_mailbox(mail_app, world, session):
    """Does the compose outbox see the rep's connected mailbox (and not another rep's)?"""
    from server.sending.schedule import mailbox_connected

    assert not mailbox_connected(session, world.rep)
    client = mail_app.test_client()
    client.post("/api/mailbox/outbox", json={}, headers=world.auth(world.rep))
    session.rollback()
    assert mailbox_connected(session, world.rep)
    assert not mailbox_connected(session, world.rep2)
    client.post("/api/mailbox/disconnect", headers=world.auth(world.rep))
    session.rollback()
    assert not mailbox_connected(session, world.rep)


@pytest.mark.parametrize("extra,ok", [(" https://www.googleapis.com/auth/drive.file", True),
                                      ("-send", False)])
def test_google_grants_other_scopes(mail_app, world, session, monkeypatch, extra, ok):
    """Do extra granted scopes still connect, and a missing gmail.send refuse by name?"""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.delenv("OAUTHLIB_RELAX_TOKEN_SCOPE", raising=False)
    scope = SCOPE + extra if ok else SCOPE.replace(
        " https://www.googleapis.com/auth/gmail.send", "")
    tokens = GoogleTokenServer((200, {
        "access_token": "ya29.a", "expires_in": 3599, "token_type": "Bearer",
        "refresh_token": "1//r", "scope": scope,
        "id_token": _jwt({"email": "rita@acme.test"})}))
    try:
        mail_app.config["GOOGLE_TOKEN_URI"] = tokens.url
        client = mail_app.test_client()
        web_sign_in(client, "rep@a.test")
        url = client.post("/api/mailbox/oauth/google/start",
                          headers=world.auth(world.rep)).json["authorization_url"]
        state = parse_qs(urlsplit(url).query)["state"][0]
        cb = client.get(f"/mailbox/oauth/google/callback?code=c&state={state}")
    finally:
        tokens.close()
    if ok:
        assert cb.status_code == 302
    else:
        assert cb.status_code == 400 and b"gmail.send" in cb.data


class RotatingMsClient:
    """An msal stand-in whose refresh answers rotate the refresh token."""

    def __init__(self):
        self.seen = []

    def acquire_token_by_refresh_token(self, refresh_token, scopes):
        self.seen.append(refresh_token)
        return {"access_token": f"at-{len(self.seen)}", "expires_in": 3600,
                "refresh_token": f"rt-{len(self.seen) + 1}"}


def test_resolver_keeps_a_rotated_microsoft_refresh_token(mail_app, world, session):
    """Does the resolver store (encrypted) the new refresh token Microsoft hands back?"""
    from server.crypto import KeyRing
    from server.mailboxes import lifecycle as mbx
    from server.sending.headers import build_message
    from tests.fake_graph import fake_graph

    ring = KeyRing.parse(f"k1:{KEY}")
    mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                provider=Provider.MICROSOFT, email="rep@a.test", display_name="",
                settings={}, secret={"refresh_token": "rt-1"}, keyring=ring,
                now=datetime(2026, 11, 24, tzinfo=UTC))
    session.commit()
    client = RotatingMsClient()
    with fake_graph() as (base, state):
        resolver = MailboxResolver(mail_app, ms_token_client=client, graph_base_url=base)
        transport = resolver.transport_for(world.rep.id)
        msg = build_message(send_id=1, sender="rep@a.test", to=["pat@client.test"],
                            subject="Hi", html="<p>Hi</p>", text=None,
                            date=datetime(2026, 11, 24, tzinfo=UTC))
        transport.create_draft(msg)
        assert state.requests[0].headers["Authorization"] == "Bearer at-1"
    assert client.seen == ["rt-1"]
    session.rollback()
    mb = session.scalar(select(Mailbox).execution_options(populate_existing=True))
    assert mbx.read_secret(mb, ring) == {"refresh_token": "rt-2"}
    assert "rt-2" not in (mb.secret or "")


# -- the callback is bound to the signed-in user who started it ------------------------------


class StubFlow:
    """An OAuthProvider stand-in: a consent URL carrying the state; finish grants a mailbox."""

    def __init__(self):
        self.finished = 0

    def start(self, state, redirect_uri):
        return f"https://consent.example.test/?state={state}", {"v": 1}

    def finish(self, params, kept, redirect_uri):
        from server.mailboxes.oauth import Grant

        self.finished += 1
        return Grant(email="victim@acme.test", display_name="Victim",
                     refresh_token="victim-refresh", settings={})


def web_sign_in(client, email):
    """Sign ``client`` in through the sign-in form."""
    import re

    page = client.get("/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    r = client.post("/sign-in", data={"csrf": csrf, "email": email, "password": "secret-pw"})
    assert r.status_code == 302


def _callback(client, provider, state):
    path = f"/mailbox/oauth/{provider}/callback"
    if provider == "microsoft":
        r = client.post(path, data={"code": "c", "state": state})
        if r.status_code == 200 and b"relay_resumed" in r.data:
            # no SameSite=Lax cookie on the cross-site form_post: the page posts it again
            r = client.post(path, data={"code": "c", "state": state, "relay_resumed": "1"})
        return r
    return client.get(f"{path}?code=c&state={state}")


@pytest.mark.parametrize("provider", ["google", "microsoft"])
@pytest.mark.parametrize("completer", ["colleague", "anonymous"])
def test_callback_only_completes_for_the_user_who_started(mail_app, world, session, provider,
                                                         completer):
    """A consent URL started by one rep and completed in another's browser stores nothing."""
    flow = StubFlow()
    mail_app.extensions["relay.oauth_providers"] = {Provider(provider): flow}
    attacker = mail_app.test_client()
    url = attacker.post(f"/api/mailbox/oauth/{provider}/start",
                        headers=world.auth(world.rep)).json["authorization_url"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    victim = mail_app.test_client()
    if completer == "colleague":
        web_sign_in(victim, "rep2@a.test")
    cb = _callback(victim, provider, state)
    assert cb.status_code == 400
    assert flow.finished == 0  # the code was never redeemed
    session.rollback()
    assert session.scalar(select(Mailbox)) is None
    # the state is spent: the starter cannot replay it either
    web_sign_in(attacker, "rep@a.test")
    assert _callback(attacker, provider, state).status_code == 400
    session.rollback()
    assert session.scalar(select(Mailbox)) is None


@pytest.mark.parametrize("provider", ["google", "microsoft"])
def test_callback_completes_in_the_starters_signed_in_browser(mail_app, world, session,
                                                              provider):
    """The rep who started (by API token) and is signed in in the browser gets the mailbox."""
    flow = StubFlow()
    mail_app.extensions["relay.oauth_providers"] = {Provider(provider): flow}
    client = mail_app.test_client()
    web_sign_in(client, "rep@a.test")
    url = client.post(f"/api/mailbox/oauth/{provider}/start",
                      headers=world.auth(world.rep)).json["authorization_url"]
    state = parse_qs(urlsplit(url).query)["state"][0]
    cb = _callback(client, provider, state)
    assert cb.status_code == 302 and flow.finished == 1
    session.rollback()
    mb = session.scalar(select(Mailbox))
    assert mb.owner_id == world.rep.id and mb.email == "victim@acme.test"
