"""Connecting an org (OAuth with PKCE, JWT bearer), the settings API and the admin page."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.crypto import KeyRing, app_keyring
from server.salesforce.fake import FakeSalesforce
from server.salesforce.models import AuthKind, ConnectionStatus, SalesforceConnection
from tests.conftest import World
from tests.salesforce.conftest import KEY_1, KEY_2, KEY_3, connect, connection


def _signed_in(client: FlaskClient, email: str) -> str:
    r = client.get("/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', r.get_data(as_text=True)).group(1)
    r = client.post("/sign-in", data={"csrf": csrf, "email": email, "password": "secret-pw"})
    assert r.status_code == 302
    return csrf


def _page_csrf(client: FlaskClient) -> str:
    html = client.get("/admin/salesforce").get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_oauth_web_server_flow_with_pkce(sf_app: Flask, world: World, session: Session,
                                        fake_sf: FakeSalesforce):
    """Does an admin connect via authorize → callback, with PKCE and sealed tokens?"""
    fake_sf.state.external_id_fields = ["Relay_Id__c"]
    client = sf_app.test_client()
    _signed_in(client, "admin@a.test")
    r = client.get("/admin/salesforce/connect")
    assert r.status_code == 302
    url = urlsplit(r.headers["Location"])
    assert f"{url.scheme}://{url.netloc}" == fake_sf.url
    assert url.path == "/services/oauth2/authorize"
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert q["response_type"] == "code" and q["code_challenge_method"] == "S256"
    assert q["client_id"] == fake_sf.client_id
    assert q["redirect_uri"] == "http://127.0.0.1:5000/admin/salesforce/callback"
    code = fake_sf.authorization_code(q["code_challenge"])
    r = client.get(f"/admin/salesforce/callback?code={code}&state=forged")
    assert r.status_code == 400  # a forged state is refused (and the attempt is used up)
    r = client.get("/admin/salesforce/connect")
    q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
    code = fake_sf.authorization_code(q["code_challenge"])
    r = client.get(f"/admin/salesforce/callback?code={code}&state={q['state']}")
    assert r.status_code == 302
    conn = connection(session, world.org.id)
    assert conn.status is ConnectionStatus.CONNECTED and conn.auth_kind is AuthKind.OAUTH
    assert conn.instance_url == fake_sf.url
    assert conn.external_id_field == "Relay_Id__c"  # found by describing Task
    # Tokens are sealed: none of the fake's tokens appear in the row.
    for token in fake_sf.state.valid_tokens | fake_sf.state.refresh_tokens:
        assert token not in (conn.access_token or "") + (conn.refresh_token or "")
    assert conn.access_token.startswith("k1:") and conn.refresh_token.startswith("k1:")
    html = client.get("/admin/salesforce").get_data(as_text=True)
    assert "Connected" in html and fake_sf.url in html
    for token in fake_sf.state.valid_tokens:
        assert token not in html


def test_a_wrong_pkce_verifier_does_not_connect(sf_app: Flask, world: World, session: Session,
                                                fake_sf: FakeSalesforce):
    """When Salesforce refuses the code exchange, is the org left disconnected with a message?"""
    client = sf_app.test_client()
    _signed_in(client, "admin@a.test")
    r = client.get("/admin/salesforce/connect")
    q = {k: v[0] for k, v in parse_qs(urlsplit(r.headers["Location"]).query).items()}
    code = fake_sf.authorization_code("a-different-challenge")
    r = client.get(f"/admin/salesforce/callback?code={code}&state={q['state']}",
                   follow_redirects=True)
    assert "Salesforce did not connect: invalid_grant" in r.get_data(as_text=True)
    session.commit()
    assert session.scalar(select(SalesforceConnection)) is None


def test_jwt_bearer_connects_an_integration_user(sf_app: Flask, world: World,
                                                 session: Session, fake_sf: FakeSalesforce,
                                                 tmp_path: Path, now: datetime):
    """Does the JWT bearer flow connect, and refresh by a new assertion when it expires?

    The whole test runs at the fixed moment ``now`` (the page signs its assertion on the
    process clock, the refresh on ``now``; the fake Salesforce checks ``exp`` on the process
    clock), so it passes on any date.
    """
    with time_machine.travel(now, tick=False):
        _jwt_bearer_connects(sf_app, world, session, fake_sf, tmp_path, now)


def _jwt_bearer_connects(sf_app: Flask, world: World, session: Session, fake_sf: FakeSalesforce,
                         tmp_path: Path, now: datetime) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "sf.key"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    fake_sf.state.jwt_public_key = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    sf_app.config["SALESFORCE_JWT_KEY_FILE"] = str(pem)
    client = sf_app.test_client()
    _signed_in(client, "admin@a.test")
    r = client.post("/admin/salesforce/jwt", data={"csrf": _page_csrf(client),
                                                   "username": "integration@acme.test"})
    assert r.status_code == 302
    conn = connection(session, world.org.id)
    assert (conn.status, conn.auth_kind, conn.username, conn.refresh_token) == (
        ConnectionStatus.CONNECTED, AuthKind.JWT, "integration@acme.test", None)
    # An expired session is renewed with a fresh assertion.
    from server.salesforce import service

    fake_sf.expire_tokens()
    tokens = service.fresh_tokens(sf_app.config, conn, app_keyring(sf_app), now)
    assert tokens.access_token in fake_sf.state.valid_tokens


def test_settings_api_validates_the_template(sf_app: Flask, world: World):
    """Is an unknown template field a 422 naming it, and a valid one saved with a preview?"""
    client = sf_app.test_client()
    headers = world.auth(world.admin)
    r = client.put("/api/salesforce/settings", headers=headers,
                   json={"subject_template": "{{activity_type}} {{first_name}}"})
    assert r.status_code == 422
    err = r.get_json()["errors"][0]
    assert err["field"] == "subject_template" and "{{first_name}}" in err["message"]
    r = client.put("/api/salesforce/settings", headers=headers,
                   json={"subject_template": "[{{sales_campaign_name}}] {{activity_subject}}",
                         "sync_reminders": True})
    assert r.status_code == 200
    body = r.get_json()
    assert body["sync_reminders"] is True
    assert body["subject_preview"] == "[Q3 outreach] Quick question about your Q3 plans"
    r = client.get("/api/salesforce", headers=headers)
    assert r.get_json()["status"] == "disconnected"
    assert r.get_json()["settings"]["subject_template"] == \
        "[{{sales_campaign_name}}] {{activity_subject}}"


def test_settings_default_to_reminders_off(sf_app: Flask, world: World):
    """Does a new org start with reminder tasks not synced?"""
    r = sf_app.test_client().get("/api/salesforce", headers=world.auth(world.admin))
    assert r.get_json()["settings"]["sync_reminders"] is False


def test_subject_preview_endpoint(sf_app: Flask, world: World):
    """Does the preview render a template for a sample email, and name unknown fields?"""
    client = sf_app.test_client()
    r = client.post("/api/salesforce/subject-preview", headers=world.auth(world.admin),
                    json={"subject_template": "{{activity_type}}\n— day {{sales_campaign_day}}"
                                              " step {{sales_campaign_step}}"})
    assert r.get_json() == {"subject": "Email — day 2 step 1"}
    r = client.post("/api/salesforce/subject-preview", headers=world.auth(world.admin),
                    json={"subject_template": "{{nope}}"})
    assert r.status_code == 422 and "{{nope}}" in r.get_json()["message"]


def test_reps_cannot_manage_salesforce(sf_app: Flask, world: World):
    """Is a rep refused by the API (403) and the admin page (403)?"""
    client = sf_app.test_client()
    assert client.get("/api/salesforce", headers=world.auth(world.rep)).status_code == 403
    _signed_in(client, "rep@a.test")
    assert client.get("/admin/salesforce").status_code == 403


def test_admin_page_shows_status_and_problems(sf_app: Flask, world: World, session: Session,
                                              fake_sf: FakeSalesforce, now: datetime):
    """Does the page show "needs re-authorisation" and list unmatched items with a retry?"""
    from server.salesforce import enqueue, sync

    connect(sf_app, fake_sf, world.org.id, now)
    enqueue.reply_detected(session, org_id=world.org.id, owner_id=world.rep.id,
                           contact_id=_contact(session, world), subject="Hi",
                           message_id="<r@x>", received_at=now, now=now)
    session.commit()
    sync.process(sf_app, now)
    client = sf_app.test_client()
    _signed_in(client, "admin@a.test")
    html = client.get("/admin/salesforce").get_data(as_text=True)
    assert "no Salesforce Contact or Lead has the email nobody@x.test" in html
    assert "Retry these" in html
    r = client.post("/admin/salesforce/retry", data={"csrf": _page_csrf(client)},
                    follow_redirects=True)
    assert "1 item queued again." in r.get_data(as_text=True)
    with sf_app.app_context():
        conn = connection(session, world.org.id)
        conn.status = ConnectionStatus.NEEDS_REAUTH
        conn.status_reason = "the session expired and could not be refreshed: invalid_grant"
        session.commit()
    html = client.get("/admin/salesforce").get_data(as_text=True)
    assert "Needs re-authorisation" in html and "invalid_grant" in html
    assert client.get("/openapi.json").get_json()["paths"]["/api/salesforce/settings"]


def _contact(session: Session, world: World) -> int:
    from tests.conftest import make_contact

    contact = make_contact(session, world.rep, "nobody@x.test")
    session.commit()
    return contact.id


def test_reseal_command_moves_tokens_to_the_newest_key(sf_app: Flask, world: World,
                                                        session: Session, runner,
                                                        database_url: str,
                                                        fake_sf: FakeSalesforce, now: datetime):
    """After a new key is put first, does `relay salesforce reseal` move every token to it?"""
    from server.cli import main

    connect(sf_app, fake_sf, world.org.id, now)  # sealed with KEY_1
    env = {"DATABASE_URL": database_url, "ENCRYPTION_KEYS": f"{KEY_2},{KEY_1}"}
    result = runner.invoke(main, ["salesforce", "reseal"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2 tokens resealed with key ")
    only_new = KeyRing.parse(KEY_2)
    conn = connection(session, world.org.id)
    assert only_new.decrypt(conn.access_token) in fake_sf.state.valid_tokens
    assert only_new.decrypt(conn.refresh_token) in fake_sf.state.refresh_tokens
    again = runner.invoke(main, ["salesforce", "reseal"], env=env, catch_exceptions=False)
    assert again.output.startswith("0 tokens resealed")
    missing = runner.invoke(main, ["salesforce", "reseal"],
                            env={"DATABASE_URL": database_url, "ENCRYPTION_KEYS": KEY_3})
    assert missing.exit_code == 1 and "keep the old key" in missing.output
