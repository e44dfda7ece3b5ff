"""What the Gmail add-on endpoints tell callers they refuse: nothing about the configuration.

Nor about the server's internals; an outage of Google's certificates is a 503 to retry, not
a 401.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask

from server.addins.gmail.deployment import ENDPOINTS
from server.app import create_app
from tests.addins.gmail.test_views import (
    _bad_system_tokens,
    gapp,
    gclient,
    google,
    gsession,
    gworld,
)
from tests.conftest import World
from tests.gmail_support import LocalGoogle, event, gmail_config

__all__ = ["gapp", "gclient", "google", "gsession", "gworld"]  # fixtures used here

#: Words that would tell a caller about the setup or the code: setting names, exception
#: class names, library and transport details.
_INTERNAL = ("GMAIL_ADDON", "Error", "Exception", "Traceback", "certs", "127.0.0.1",
             "HTTPConnection", "refused", "google.auth", "Transport", "audience", "service account")


def _plain(resp: Any) -> str:
    text = resp.get_data(as_text=True)
    for word in _INTERNAL:
        assert word not in text, (word, text)
    return text


def _app(database_url: str, certs_url: str, **overrides: Any) -> Flask:
    return create_app(gmail_config(database_url, certs_url, **overrides))


def test_bad_tokens_get_a_plain_401(gclient: Any, google: LocalGoogle, gworld: World) -> None:
    """Is every bad or missing system token a 401 that says no more than "not accepted"?"""
    path = ENDPOINTS["home"]
    body = event(google, "rep@a.test")
    bodies = set()
    for label, token in {**_bad_system_tokens(google), "none": ""}.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = gclient.post(path, json=body, headers=headers)
        assert resp.status_code == 401, label
        bodies.add(_plain(resp))
    assert len(bodies) == 1  # the same answer whatever was wrong


@pytest.mark.parametrize("unset", ["GMAIL_ADDON_SERVICE_ACCOUNT", "GMAIL_ADDON_CLIENT_ID",
                                   "GMAIL_ADDON_CERTS_URL"])
def test_unset_configuration_is_not_told_to_callers(database_url: str, google: LocalGoogle,
                                                    gworld: World, unset: str) -> None:
    """With a setting unset, is an anonymous caller answered a plain 401 not naming it?"""
    app = _app(database_url, google.certs_url, **{unset: None})
    try:
        client = app.test_client()
        path = ENDPOINTS["home"]
        for headers in ({}, {"Authorization": "Bearer x"},
                        {"Authorization": f"Bearer {google.system_token(path)}"}):
            resp = client.post(path, json=event(google, "rep@a.test"), headers=headers)
            assert resp.status_code == 401
            _plain(resp)
    finally:
        app.extensions["relay.engine"].dispose()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def failing_certs() -> Iterator[str]:
    """A certificate endpoint on 127.0.0.1 that answers 500."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = json.dumps({"error": "backend down"}).encode()
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/oauth2/v1/certs"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("outage", ["closed port", "500"])
def test_unreachable_certificates_are_a_503_with_retry_after(
        database_url: str, google: LocalGoogle, gworld: World, failing_certs: str,
        outage: str) -> None:
    """Without Google's certificates, is a well-formed call a 503 with Retry-After?

    Not a 401 (Google would show an authorisation error), and no internal text.
    """
    certs = (f"http://127.0.0.1:{_closed_port()}/oauth2/v1/certs" if outage == "closed port"
             else failing_certs)
    app = _app(database_url, certs)
    try:
        path = ENDPOINTS["home"]
        resp = app.test_client().post(path, json=event(google, "rep@a.test"),
                                      headers={"Authorization":
                                               f"Bearer {google.system_token(path)}"})
        assert resp.status_code == 503
        assert int(resp.headers["Retry-After"]) > 0
        _plain(resp)
    finally:
        app.extensions["relay.engine"].dispose()
