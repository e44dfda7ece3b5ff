"""Which mail hosts a rep may connect Relay to (against SSRF through mailbox settings).

A rep types the SMTP and IMAP host of their mailbox, and Relay's servers connect there: left
unchecked, that lets anyone probe the network Relay runs in (metadata services, databases,
admin ports). So a host is refused when any address it resolves to is loopback, link-local,
private, multicast, reserved or unspecified — unless the host name or the address is listed
in ``MAIL_HOST_ALLOWLIST`` (comma-separated names, addresses or networks, e.g.
``127.0.0.1,mail.internal,10.1.0.0/16``) — and the address actually connected is checked again
at the socket, before a byte is read, so a name that resolves to a public address for the
check and to an internal one for the connection (DNS rebinding) is refused too.
``smtp_security``/``imap_security`` ``none`` (password in clear) is only for allow-listed hosts.
Errors name the rule, never what the remote server answered.
"""

from __future__ import annotations

import imaplib
import ipaddress
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from server.mailboxes.lifecycle import MailboxError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: The resolver (tests replace it: they never reach the network).
getaddrinfo: Callable[..., list[Any]] = socket.getaddrinfo


class HostRefused(MailboxError):
    """A mail host Relay will not connect to (the message says why, in plain words)."""


def allowlist(config: Mapping[str, Any]) -> frozenset[str]:
    """The ``MAIL_HOST_ALLOWLIST`` entries, lower-cased."""
    raw = str(config.get("MAIL_HOST_ALLOWLIST") or "")
    return frozenset(e.strip().lower() for e in raw.split(",") if e.strip())


def _address(value: str) -> Address:
    ip = ipaddress.ip_address(value.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _listed(allow: Iterable[str], host: str | None, ip: Address | None) -> bool:
    for entry in allow:
        if host is not None and entry == host.lower().rstrip("."):
            return True
        if ip is not None:
            try:
                if ip in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
    return False


def internal(ip: Address) -> bool:
    """True for an address a mailbox must not point at (loopback, private, …)."""
    return (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_multicast
            or ip.is_reserved or ip.is_unspecified or not ip.is_global)


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (a literal address is itself)."""
    try:
        infos = getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise HostRefused(f"{host} could not be found", "host") from None
    return [_address(info[4][0]) for info in infos]


def check_host(host: str, port: int, allow: Iterable[str], field: str, *,
               security: str | None = None) -> None:
    """Refuse ``host`` (HostRefused on ``field``) unless it is public or allow-listed.

    Every address the name resolves to must be public, or the host or that address listed;
    ``security == "none"`` only for allow-listed hosts.
    """
    allow = frozenset(allow)
    addresses = resolve(host, port)
    host_listed = _listed(allow, host, None)
    for ip in addresses:
        if internal(ip) and not (host_listed or _listed(allow, None, ip)):
            raise HostRefused(f"{host} is an internal address ({ip}); Relay connects only to "
                              "public mail servers unless MAIL_HOST_ALLOWLIST lists it", field)
    if security == "none" and not (host_listed or all(_listed(allow, None, ip)
                                                     for ip in addresses)):
        raise HostRefused("an unencrypted connection (security none) is only allowed for "
                          "hosts in MAIL_HOST_ALLOWLIST", field)


def check_settings(settings: Mapping[str, Any], allow: Iterable[str]) -> None:
    """Check the SMTP and IMAP hosts of mailbox ``settings`` (see the module doc)."""
    check_host(str(settings["smtp_host"]), int(settings.get("smtp_port") or 587), allow,
               "smtp_host", security=settings.get("smtp_security"))
    if settings.get("imap_host"):
        check_host(str(settings["imap_host"]), int(settings.get("imap_port") or 993), allow,
                   "imap_host", security=settings.get("imap_security"))


def check_peer(sock: socket.socket, host: str, allow: Iterable[str]) -> None:
    """Refuse a connected socket whose peer is internal and not allow-listed (rebinding)."""
    ip = _address(sock.getpeername()[0])
    if internal(ip) and not (_listed(allow, host, None) or _listed(allow, None, ip)):
        sock.close()
        raise HostRefused(f"{host} now points to an internal address; refused", "host")


def guarded_connection(host: str, port: int, timeout: float | None, allow: Iterable[str],
                       source_address: Any = None) -> socket.socket:
    """``socket.create_connection`` that checks the address actually connected."""
    sock = socket.create_connection((host, port), timeout, source_address)
    check_peer(sock, host, allow)
    return sock


def smtp_factory(security: str, allow: Iterable[str]) -> Callable[..., smtplib.SMTP]:
    """An ``SmtpTransport`` ``smtp_factory`` whose sockets are checked before the greeting."""
    allow = frozenset(allow)

    class GuardedSMTP(smtplib.SMTP):
        def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
            return guarded_connection(host, port, timeout, allow, self.source_address)

    class GuardedSMTPSSL(smtplib.SMTP_SSL):
        def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
            sock = guarded_connection(host, port, timeout, allow, self.source_address)
            return self.context.wrap_socket(sock, server_hostname=self._host)

    def make(host: str, port: int, timeout: float) -> smtplib.SMTP:
        if security == "ssl":
            return GuardedSMTPSSL(host, port, timeout=timeout,
                                  context=ssl.create_default_context())
        return GuardedSMTP(host, port, timeout=timeout)

    return make


def imap_factory(security: str, allow: Iterable[str], timeout: float
                 ) -> Callable[..., imaplib.IMAP4]:
    """An ``SmtpTransport`` ``imap_factory`` whose sockets are checked before the greeting."""
    allow = frozenset(allow)

    class GuardedIMAP(imaplib.IMAP4):
        def _create_socket(self, timeout: float | None = None) -> socket.socket:
            return guarded_connection(self.host, self.port, timeout, allow)

    class GuardedIMAPSSL(imaplib.IMAP4_SSL):
        def _create_socket(self, timeout: float | None = None) -> socket.socket:
            sock = guarded_connection(self.host, self.port, timeout, allow)
            return self.ssl_context.wrap_socket(sock, server_hostname=self.host)

    def make(host: str, port: int) -> imaplib.IMAP4:
        if security == "ssl":
            return GuardedIMAPSSL(host, port, timeout=timeout,
                                  ssl_context=ssl.create_default_context())
        imap = GuardedIMAP(host, port, timeout=timeout)
        if security == "starttls":
            imap.starttls(ssl_context=ssl.create_default_context())
        return imap

    return make
