"""The mailbox web page: connect, see and disconnect a mailbox without ever showing a secret."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from cryptography.fernet import Fernet
from sqlalchemy import select

from server.mailboxes.lifecycle import Mailbox, MailboxStatus, Provider
from tests.web.test_views import _csrf, _sign_in

KEY = Fernet.generate_key().decode()


def test_mailbox_page_needs_sign_in(client):
    """Is the page for signed-in reps only, and are its forms CSRF-protected?"""
    assert client.get("/mailbox").status_code == 302
    assert client.post("/mailbox/outbox", data={}).status_code == 302


def test_outbox_connect_and_disconnect_from_the_page(client, world, session):
    """Can a rep use the local outbox, see it on the page, and disconnect it?"""
    _sign_in(client, "rep@a.test", "secret-pw")
    page = client.get("/mailbox").get_data(as_text=True)
    assert "No mailbox is connected" in page and 'href="/mailbox"' in page
    assert client.post("/mailbox/outbox", data={"csrf": "forged"}).status_code == 400
    r = client.post("/mailbox/outbox", data={"csrf": _csrf(client, "/mailbox")},
                    follow_redirects=True)
    text = r.get_data(as_text=True)
    assert "Local outbox (nothing is delivered)" in text and "not delivered" in text
    r = client.post("/mailbox/disconnect", data={"csrf": _csrf(client, "/mailbox")},
                    follow_redirects=True)
    assert "Mailbox disconnected." in r.get_data(as_text=True)
    session.rollback()
    assert session.scalar(select(Mailbox.status)) is MailboxStatus.DISCONNECTED


def test_smtp_form_errors_keep_the_input_but_never_the_password(app, client, world, session):
    """Does a refused form name the field and not echo the password back?"""
    app.config["ENCRYPTION_KEYS"] = f"k1:{KEY}"
    _sign_in(client, "rep@a.test", "secret-pw")
    r = client.post("/mailbox/smtp", data={
        "csrf": _csrf(client, "/mailbox"), "email": "rep@a.test\nBcc: x@y.test",
        "smtp_host": "127.0.0.1", "smtp_port": "2525", "password": "form-secret-pw"})
    text = r.get_data(as_text=True)
    assert r.status_code == 422 and "email:" in text and "form-secret-pw" not in text
    assert 'value="127.0.0.1"' in text
    session.rollback()
    assert session.scalar(select(Mailbox)) is None


def test_google_button_redirects_to_consent(app, client, world):
    """Does "Connect Google" send the browser to Google's consent page with PKCE?"""
    app.config.update(ENCRYPTION_KEYS=f"k1:{KEY}", GOOGLE_CLIENT_ID="gid",
                      GOOGLE_CLIENT_SECRET="gsecret")
    _sign_in(client, "rep@a.test", "secret-pw")
    assert "Connect Google" in client.get("/mailbox").get_data(as_text=True)
    r = client.post(f"/mailbox/connect/{Provider.GOOGLE.value}",
                    data={"csrf": _csrf(client, "/mailbox")})
    assert r.status_code == 302
    q = parse_qs(urlsplit(r.location).query)
    assert urlsplit(r.location).netloc == "accounts.google.com"
    assert q["code_challenge_method"] == ["S256"] and q["client_id"] == ["gid"]
