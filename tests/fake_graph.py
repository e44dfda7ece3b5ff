"""A local HTTP server on 127.0.0.1 standing in for the few Microsoft Graph mail endpoints.

It keeps messages in memory (drafts, Sent Items, Inbox), answers with Graph's JSON shapes, and
can be told to answer the next request to a path with a given status (or to drop the
connection after reading the request), so transports can be tested against real HTTP.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class GraphState:
    messages: dict[str, dict[str, Any]] = field(default_factory=dict)
    mime: dict[str, bytes] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    #: (method, path prefix) → list of (status, body, headers) or "drop", used first.
    scripted: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    delta_pages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ids: Any = field(default_factory=lambda: itertools.count(1))

    def script(self, method: str, path: str, *answers: Any) -> None:
        self.scripted.setdefault((method, path), []).extend(answers)


def _handler(state: GraphState, prefix: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _reply(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
                   raw: bytes | None = None) -> None:
            data = raw if raw is not None else (b"" if body is None
                                                else json.dumps(body).encode())
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if raw is None and body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            assert path.startswith(prefix), path
            path = path[len(prefix):]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            state.requests.append(Recorded(method, path, parse_qs(parts.query),
                                           dict(self.headers.items()), body))
            for (m, p), answers in state.scripted.items():
                if m == method and path.startswith(p) and answers:
                    answer = answers.pop(0)
                    if answer == "drop":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    status, payload, headers = answer
                    self._reply(status, payload, headers)
                    return
            self._route(method, path, parse_qs(parts.query), body)

        def _route(self, method: str, path: str, query: dict[str, list[str]],
                   body: Any) -> None:
            segs = path.strip("/").split("/")
            if method == "POST" and segs == ["me", "messages"]:
                return self._reply(201, self._new(body))
            if method == "POST" and len(segs) == 4 and segs[3] == "createReply":
                orig = state.messages.get(segs[2])
                if orig is None:
                    return self._reply(404, {"error": {"code": "ErrorItemNotFound",
                                                       "message": "not found"}})
                msg = self._new(body["message"], conversation=orig["conversationId"])
                return self._reply(201, msg)
            if method == "POST" and len(segs) == 4 and segs[3] == "send":
                msg = state.messages.get(segs[2])
                if msg is None or not msg["isDraft"]:
                    return self._reply(404, {"error": {"code": "ErrorItemNotFound",
                                                       "message": "not found"}})
                msg["isDraft"] = False
                msg["folder"] = "sentitems"
                msg["sentDateTime"] = "2026-11-24T10:00:05Z"
                return self._reply(202)
            if method == "GET" and len(segs) == 4 and segs[3] == "$value":
                if segs[2] not in state.mime:
                    return self._reply(404, {"error": {"code": "ErrorItemNotFound"}})
                return self._reply(200, raw=state.mime[segs[2]],
                                   headers={"Content-Type": "text/plain"})
            if method == "GET" and len(segs) == 3 and segs[1] == "messages":
                msg = state.messages.get(segs[2])
                if msg is None:
                    return self._reply(404, {"error": {"code": "ErrorItemNotFound",
                                                       "message": "not found"}})
                return self._reply(200, msg)
            if method == "GET" and segs[:2] == ["me", "mailFolders"] and segs[3:] == ["messages"]:
                flt = query.get("$filter", [""])[0]
                wanted = flt.split("eq '", 1)[1][:-1].replace("''", "'") if "eq '" in flt else ""
                found = [m for m in state.messages.values()
                         if m.get("folder") == segs[2] and m["internetMessageId"] == wanted]
                return self._reply(200, {"value": found})
            if method == "GET" and segs[:2] == ["me", "mailFolders"] and segs[3:] == [
                    "messages", "delta"]:
                pages = state.delta_pages.get(segs[2], [])
                token = query.get("page", ["0"])[0]
                page = pages[int(token)] if pages else {"value": []}
                return self._reply(200, page)
            if method == "DELETE" and len(segs) == 3 and segs[1] == "messages":
                if state.messages.pop(segs[2], None) is None:
                    return self._reply(404, {"error": {"code": "ErrorItemNotFound",
                                                       "message": "not found"}})
                return self._reply(204)
            return self._reply(400, {"error": {"code": "BadRequest",
                                               "message": f"no route {method} {path}"}})

        def _new(self, resource: dict[str, Any], conversation: str | None = None
                 ) -> dict[str, Any]:
            mid = f"AAkALg{next(state.ids):04d}="
            msg = dict(resource, id=mid, isDraft=True, folder="drafts",
                       conversationId=conversation or f"conv-{mid}")
            state.messages[mid] = msg
            return msg

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return Handler


@contextmanager
def fake_graph() -> Iterator[tuple[str, GraphState]]:
    """Serve a fake Graph on 127.0.0.1; yields (base URL, state)."""
    state = GraphState()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, "/v1.0"))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1.0", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
