"""Web pages: the sign-in redirect, signing in and out with a CSRF-protected form."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.conftest import World, make_contact, make_user


def _csrf(client: FlaskClient, path: str = "/sign-in") -> str:
    """The CSRF token of the form on ``path``."""
    r = client.get(path)
    assert r.status_code == 200
    match = re.search(r'name="csrf" value="([^"]+)"', r.get_data(as_text=True))
    assert match, "the page has no CSRF field"
    return match.group(1)


def _sign_in(client: FlaskClient, email: str, password: str):
    return client.post("/sign-in", data={"csrf": _csrf(client), "email": email,
                                         "password": password})


def test_home_redirects_to_sign_in(client: FlaskClient):
    """Does a visitor who is not signed in get sent from / to /sign-in?"""
    r = client.get("/")
    assert r.status_code == 302
    assert r.headers["Location"] == "/sign-in"
    page = client.get("/sign-in").get_data(as_text=True)
    assert 'type="password"' in page and 'name="csrf"' in page


def test_sign_in_with_the_right_password(client: FlaskClient, world: World):
    """Does the right email and password sign the rep in and show their start page?"""
    r = _sign_in(client, "REP@a.test", "secret-pw")
    assert r.status_code == 302 and r.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Your tasks" in text and "Rep · Org A" in text
    assert "Times are in Europe/Paris" in text


def test_sign_in_with_a_wrong_password(client: FlaskClient, world: World):
    """Is a wrong password a 401 that says so, keeps the email, and leaves the visitor out?"""
    r = _sign_in(client, "rep@a.test", "not-the-password")
    assert r.status_code == 401
    text = r.get_data(as_text=True)
    assert "That email and password do not match an account." in text
    assert 'value="rep@a.test"' in text
    assert client.get("/").status_code == 302


def test_sign_in_with_an_unknown_email_looks_the_same(client: FlaskClient, world: World):
    """Is an unknown email answered exactly like a wrong password (no account probing)?"""
    r = _sign_in(client, "nobody@a.test", "secret-pw")
    assert r.status_code == 401
    assert "That email and password do not match an account." in r.get_data(as_text=True)


def test_sign_in_without_csrf_token_is_refused(client: FlaskClient, world: World):
    """Is a sign-in form posted without the page's CSRF token refused, signing nobody in?"""
    client.get("/sign-in")
    r = client.post("/sign-in", data={"email": "rep@a.test", "password": "secret-pw"})
    assert r.status_code == 400
    r = client.post("/sign-in", data={"csrf": "forged", "email": "rep@a.test",
                                      "password": "secret-pw"})
    assert r.status_code == 400
    assert client.get("/").status_code == 302


def test_sign_out(client: FlaskClient, world: World):
    """Does signing out (with the CSRF token) end the session, and without it change nothing?"""
    assert _sign_in(client, "rep@a.test", "secret-pw").status_code == 302
    assert client.post("/sign-out", data={"csrf": "wrong"}).status_code == 400
    assert client.get("/").status_code == 200
    r = client.post("/sign-out", data={"csrf": _csrf(client, "/")})
    assert r.status_code == 302 and r.headers["Location"] == "/sign-in"
    assert client.get("/").status_code == 302


def test_start_page_lists_todays_tasks(client: FlaskClient, session: Session, world: World):
    """After a launch, does the signed-in rep's start page list the new call task?"""
    contact = make_contact(session, world.rep, "grace@example.com", first_name="Grace")
    session.commit()
    h = world.auth(world.rep)
    cid = client.post("/api/campaigns", headers=h, json={
        "name": "Calls", "steps": [{"day": 1, "type": "call", "title": "Call Grace"}]}).json["id"]
    assert client.post(f"/api/campaigns/{cid}/launch", headers=h,
                       json={"contact_ids": [contact.id]}).status_code == 201
    assert _sign_in(client, "rep@a.test", "secret-pw").status_code == 302
    text = client.get("/").get_data(as_text=True)
    assert "Call Grace" in text and "grace@example.com" in text and "Calls · day 1" in text


def test_user_without_password_cannot_sign_in(client: FlaskClient, session: Session,
                                              world: World):
    """Can a user created without a password (API-only) not sign in with an empty one?"""
    make_user(session, world.org, "nopw@a.test", password=None)
    session.commit()
    assert _sign_in(client, "nopw@a.test", "").status_code == 401
