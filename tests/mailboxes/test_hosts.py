"""Mailbox hosts and SSRF (README, Security).

Internal addresses are refused unless listed in MAIL_HOST_ALLOWLIST, checked after resolving
and again at the socket; errors never echo the remote server; an unencrypted connection only
to allow-listed hosts.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest
from sqlalchemy import select

from server.mailboxes import hosts
from server.mailboxes.lifecycle import Mailbox
from server.sending.providers.smtp import SmtpTransport, config_from_settings
from server.sending.transport import TransportError


@pytest.fixture
def no_allowlist(app):
    app.config["MAIL_HOST_ALLOWLIST"] = ""
    return app


def fake_dns(monkeypatch, table):
    """Resolve names from ``table`` (tests never reach the network)."""
    def resolve(host, port, *a, **k):
        ip = table.get(host, host)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (ip, port))]
    monkeypatch.setattr(hosts, "getaddrinfo", resolve)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.0.0.5", "192.168.1.1",
                                  "169.254.169.254", "224.0.0.1", "240.0.0.1", "0.0.0.0",
                                  "::1", "fe80::1", "::ffff:127.0.0.1", "internal.test"])
@pytest.mark.parametrize("field", ["smtp_host", "imap_host"])
def test_internal_hosts_are_refused(no_allowlist, world, session, monkeypatch, host, field):
    """Loopback, private, link-local, multicast, reserved: 422 on the field, nothing stored."""
    fake_dns(monkeypatch, {"localhost": "127.0.0.1", "internal.test": "10.1.2.3",
                           "smtp.public.test": "93.184.216.34"})
    body = {"email": "rita@acme.test", "smtp_host": "smtp.public.test", "verify": False,
            field: host}
    r = no_allowlist.test_client().post("/api/mailbox/smtp", json=body,
                                        headers=world.auth(world.rep))
    assert r.status_code == 422, r.json
    assert r.json["errors"][0]["field"] == field
    assert session.scalar(select(Mailbox)) is None


def test_a_public_host_is_accepted_and_an_allowlisted_internal_one_too(no_allowlist, world,
                                                                        monkeypatch):
    """A public address passes; MAIL_HOST_ALLOWLIST lets a named internal host through."""
    fake_dns(monkeypatch, {"smtp.public.test": "93.184.216.34", "mail.corp": "10.1.2.3"})
    client = no_allowlist.test_client()
    ok = client.post("/api/mailbox/smtp", headers=world.auth(world.rep), json={
        "email": "rita@acme.test", "smtp_host": "smtp.public.test", "verify": False})
    assert ok.status_code == 201, ok.json
    body = {"email": "rita@acme.test", "smtp_host": "mail.corp", "verify": False}
    assert client.post("/api/mailbox/smtp", json=body,
                       headers=world.auth(world.rep)).status_code == 422
    no_allowlist.config["MAIL_HOST_ALLOWLIST"] = "mail.corp"
    assert client.post("/api/mailbox/smtp", json=body,
                       headers=world.auth(world.rep)).status_code == 201


def test_security_none_only_for_allowlisted_hosts(no_allowlist, world, monkeypatch):
    """A password in clear to a public host is refused; allow-listed, it is accepted."""
    fake_dns(monkeypatch, {"smtp.public.test": "93.184.216.34"})
    client = no_allowlist.test_client()
    body = {"email": "rita@acme.test", "smtp_host": "smtp.public.test", "verify": False,
            "smtp_security": "none"}
    r = client.post("/api/mailbox/smtp", json=body, headers=world.auth(world.rep))
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "smtp_host"
    assert "MAIL_HOST_ALLOWLIST" in r.json["errors"][0]["message"]
    no_allowlist.config["MAIL_HOST_ALLOWLIST"] = "smtp.public.test"
    assert client.post("/api/mailbox/smtp", json=body,
                       headers=world.auth(world.rep)).status_code == 201


class Banner:
    """A TCP server on 127.0.0.1 that answers every connection with ``banner`` and closes."""

    def __init__(self, banner: bytes):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.banner = banner
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn, contextlib.suppress(OSError):
                conn.sendall(self.banner)

    def close(self):
        self.sock.close()
        self.thread.join(5)


def test_errors_never_echo_the_remote_servers_bytes(app, world):
    """An allow-listed host that is not an SMTP server: the error does not carry its answer."""
    app.config["MAIL_HOST_ALLOWLIST"] = "127.0.0.1"
    server = Banner(b"HTTP/1.1 200 OK\r\nX-Secret: internal-token-42\r\n\r\n")
    try:
        r = app.test_client().post("/api/mailbox/smtp", headers=world.auth(world.rep), json={
            "email": "rita@acme.test", "smtp_host": "127.0.0.1", "smtp_port": server.port,
            "smtp_security": "none", "smtp_username": "rita", "password": "pw"})
    finally:
        server.close()
    assert r.status_code == 422
    text = r.get_data(as_text=True)
    assert "200 OK" not in text and "internal-token-42" not in text and "HTTP" not in text


def test_a_name_rebound_to_an_internal_address_is_refused_at_the_socket(monkeypatch):
    """A name public at the check but reaching 127.0.0.1 at the socket is refused there."""
    server = Banner(b"220 internal.example ESMTP secret-banner\r\n")
    settings = {"smtp_host": "rebind.test", "smtp_port": server.port, "smtp_security": "none"}
    fake_dns(monkeypatch, {"rebind.test": "93.184.216.34"})
    hosts.check_settings({**settings, "smtp_security": "starttls"}, [])  # passes the check
    real = socket.create_connection
    monkeypatch.setattr(hosts.socket, "create_connection",
                        lambda addr, *a, **k: real(("127.0.0.1", addr[1]), *a, **k))
    transport = SmtpTransport(config_from_settings(settings, None),
                              smtp_factory=hosts.smtp_factory("none", []))
    try:
        with pytest.raises((TransportError, hosts.HostRefused)) as info:
            transport.verify()
    finally:
        server.close()
    assert "secret-banner" not in str(info.value)
    assert server.accepted <= 1


def test_the_resolver_guards_the_workers_connections(app, world, session, monkeypatch):
    """The transport the worker builds for an SMTP mailbox checks the connected address."""
    from server.sending.providers import MailboxResolver

    app.config["MAIL_HOST_ALLOWLIST"] = ""
    server = Banner(b"220 internal ESMTP secret-banner\r\n")
    mb = Mailbox(org_id=world.org.id, owner_id=world.rep.id, provider="smtp",
                 email="rita@acme.test", display_name="", status="connected",
                 settings={"smtp_host": "127.0.0.1", "smtp_port": server.port,
                           "smtp_security": "none"}, daily_limit=100)
    try:
        transport = MailboxResolver(app).build(mb)
        with pytest.raises((TransportError, hosts.HostRefused)) as info:
            transport.verify()
    finally:
        server.close()
    assert "secret-banner" not in str(info.value)
