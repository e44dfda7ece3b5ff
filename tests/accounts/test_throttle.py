"""Sign-in throttling (README, Security).

Per account and per client address, 429 with Retry-After, storage shared across web nodes;
an unknown email costs one hash check like a known one.
"""

from __future__ import annotations

import re
import uuid

import pytest
from flask import Flask
from flask.testing import FlaskClient

from server import db
from server.accounts import service
from server.app import create_app
from tests.conftest import World


def _csrf(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def _post(client: FlaskClient, path: str, email: str, password: str, csrf: str | None = None):
    return client.post(path, data={"csrf": csrf or _csrf(client, path), "email": email,
                                   "password": password})


@pytest.mark.parametrize("path", ["/sign-in", "/addin/outlook/sign-in"])
def test_sixty_wrong_passwords_then_the_right_one_is_throttled(client: FlaskClient,
                                                                world: World, path: str):
    """After the account's allowance of failures even the right password answers 429."""
    csrf = _csrf(client, path)
    codes = [_post(client, path, "rep@a.test", f"guess-{i}", csrf).status_code
             for i in range(60)]
    assert codes[0] == 401 and 429 in codes
    r = _post(client, path, "rep@a.test", "secret-pw", csrf)
    assert r.status_code == 429
    retry = int(r.headers["Retry-After"])
    assert 0 < retry <= 15 * 60
    assert "Too many failed sign-ins" in r.get_data(as_text=True)
    if path == "/sign-in":
        assert client.get("/").status_code == 302  # not signed in


def test_the_limit_is_per_account_and_per_client_address(app: Flask, world: World):
    """Failures on one account leave another account alone, until the address's own limit."""
    app.config.update(SIGNIN_LIMIT_PER_ACCOUNT="3 per 15 minutes",
                      SIGNIN_LIMIT_PER_ADDRESS="8 per 15 minutes")
    from server.accounts import throttle

    throttle.init_app(app)  # the new limits
    attacker = app.test_client()
    csrf = _csrf(attacker, "/sign-in")
    for _ in range(3):
        assert _post(attacker, "/sign-in", "rep@a.test", "nope", csrf).status_code == 401
    assert _post(attacker, "/sign-in", "rep@a.test", "secret-pw", csrf).status_code == 429
    # another account from the same address still signs in
    assert _post(attacker, "/sign-in", "rep2@a.test", "secret-pw", csrf).status_code == 302
    # spraying other emails from the same address hits the address limit
    codes = [_post(attacker, "/sign-in", f"nobody{i}@a.test", "nope",
                   _csrf(attacker, "/sign-in")).status_code for i in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    other = app.test_client()
    r = other.post("/sign-in", data={"csrf": _csrf(other, "/sign-in"), "email": "admin@a.test",
                                     "password": "secret-pw"},
                   environ_base={"REMOTE_ADDR": "10.9.8.7"})
    assert r.status_code == 302  # another address is not affected


def test_successful_sign_ins_are_not_counted(client: FlaskClient, world: World):
    """A rep signing in many times is never throttled."""
    for _ in range(30):
        r = _post(client, "/sign-in", "rep@a.test", "secret-pw")
        assert r.status_code == 302


def test_an_unknown_email_costs_one_password_check_like_a_known_one(world: World, session,
                                                                     monkeypatch):
    """No hash is generated per attempt for an unknown email: one check, as for a known one."""
    service.authenticate(session, "nobody@a.test", "x")  # the dummy hash is made once
    calls: list[str] = []
    real_check = service.check_password_hash
    monkeypatch.setattr(service, "generate_password_hash",
                        lambda *a, **k: calls.append("generate"))
    monkeypatch.setattr(service, "check_password_hash",
                        lambda h, p: calls.append("check") or real_check(h, p))
    assert service.authenticate(session, "nobody@a.test", "guess") is None
    unknown = list(calls)
    calls.clear()
    assert service.authenticate(session, "rep@a.test", "guess") is None
    assert unknown == calls == ["check"]


def _redis_reachable() -> bool:
    try:
        import redis

        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_timeout=0.5).ping())
    except Exception:
        return False


@pytest.mark.skipif(not _redis_reachable(), reason="no Redis on 127.0.0.1:6379")
def test_two_web_nodes_share_the_count_through_redis(database_url: str, world: World):
    """Failures counted by one web node throttle the account on another (redis:// storage)."""
    prefix = f"relay-test-{uuid.uuid4().hex}"
    config = {"TESTING": True, "DATABASE_URL": database_url, "SECRET_KEY": "test-secret",
              "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379/0",
              "RATELIMIT_KEY_PREFIX": prefix, "SIGNIN_LIMIT_PER_ACCOUNT": "3 per 15 minutes"}
    node_a, node_b = create_app(config), create_app(config)
    try:
        a, b = node_a.test_client(), node_b.test_client()
        for _ in range(3):
            assert _post(a, "/sign-in", "rep@a.test", "nope").status_code == 401
        assert _post(b, "/sign-in", "rep@a.test", "secret-pw").status_code == 429
    finally:
        import redis

        r = redis.Redis(host="127.0.0.1", port=6379)
        keys = list(r.scan_iter(f"*{prefix}*"))
        if keys:
            r.delete(*keys)
        db.dispose(node_a)
        db.dispose(node_b)
