"""Fault-injecting fakes of a mail provider, for tests, the demo and benchmarks.

- :class:`FakeTransport` — in memory: drafts, sent mail and every call, with scripted or
  standing faults (429 with ``Retry-After``, 503, an accepted send whose answer is lost, a
  permanent refusal, a daily limit, a refused credential, a reconciliation that cannot tell).
- :class:`SinkServer` — a small HTTP "provider" on 127.0.0.1 standing in for Gmail or Graph:
  it keeps drafts, *delivers* a draft when asked to send it (recording the delivery by the
  email's send id and Message-ID), answers reconciliation, and can be told to answer 429 or
  503 or to accept a send and then drop the connection, at given rates (seeded).
- :class:`HttpSinkTransport` — the transport that talks to a sink over HTTP, so several worker
  processes can send to one sink; chosen with ``MAIL_TRANSPORT=sink`` and ``MAIL_SINK_URL``
  (``relay worker`` says loudly in its log when it uses it).

None of this is used unless configured.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from server.sending.headers import message_bytes, send_id_of
from server.sending.transport import (
    DailyLimitError,
    Draft,
    OutboundMessage,
    Outcome,
    OutcomeUnknown,
    PermanentError,
    ReauthRequired,
    Reconciled,
    Sent,
    TransientError,
    Transport,
)

#: Fault names understood by :class:`FakeTransport` (``"ok"`` is no fault).
FAULTS = ("ok", "429", "503", "drop", "timeout", "permanent", "daily", "reauth", "unknown")


@dataclass(frozen=True)
class Call:
    """One call a fake provider received: the operation, the send id and the moment."""

    op: str
    send_id: int
    at: datetime | float
    outcome: str


@dataclass
class FakeTransport:
    """An in-memory mailbox with injectable faults (see :data:`FAULTS`).

    ``now`` gives the moment recorded with each call (the test's clock). ``script`` holds
    faults per operation (``"draft"``, ``"send"``, ``"reconcile"``, ``"discard"``), consumed
    one per call before the standing ``mode`` applies. A ``"drop"`` send is delivered and
    then answers nothing (``OutcomeUnknown``); a ``"timeout"`` send is not delivered and
    answers nothing.
    """

    now: Callable[[], datetime]
    daily_limit: int = 100_000
    kind: str = "fake"
    address: str | None = None
    mode: dict[str, str] = field(default_factory=dict)
    script: dict[str, list[str]] = field(default_factory=dict)
    retry_after: float | None = 2.0
    drafts: dict[str, OutboundMessage] = field(default_factory=dict)
    delivered: list[tuple[int, str, datetime]] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    _next: int = 0

    def fault(self, op: str) -> str:
        """The fault the next ``op`` call meets."""
        queue = self.script.get(op)
        if queue:
            return queue.pop(0)
        return self.mode.get(op, "ok")

    def _raise(self, fault: str, op: str) -> None:
        if fault == "429":
            raise TransientError(f"{op}: 429 rate limited", retry_after=self.retry_after)
        if fault == "503":
            raise TransientError(f"{op}: 503 service unavailable")
        if fault == "timeout":
            raise OutcomeUnknown(f"{op}: timed out")
        if fault == "permanent":
            raise PermanentError(f"{op}: 550 recipient rejected")
        if fault == "daily":
            raise DailyLimitError(f"{op}: dailyLimitExceeded")
        if fault == "reauth":
            raise ReauthRequired(f"{op}: invalid_grant")

    def _id(self, prefix: str) -> str:
        self._next += 1
        return f"{prefix}{self._next}"

    def create_draft(self, message: OutboundMessage) -> Draft:
        """Store a draft (or fail as scripted)."""
        fault = self.fault("draft")
        self.calls.append(Call("draft", message.send_id, self.now(), fault))
        self._raise(fault, "draft")
        draft = Draft(self._id("d"), message.thread_id or self._id("t"))
        self.drafts[draft.id] = message
        if fault == "drop":
            raise OutcomeUnknown("draft: connection dropped after the request")
        return draft

    def delete_drafts(self, message_id: str) -> int:
        """Delete the drafts carrying ``message_id`` (or fail as scripted); how many."""
        fault = self.fault("discard")
        self.calls.append(Call("discard", send_id_of(message_id) or 0, self.now(), fault))
        self._raise(fault, "discard")
        gone = [d for d, m in self.drafts.items() if m.message_id == message_id]
        for draft_id in gone:
            del self.drafts[draft_id]
        return len(gone)

    def send_draft(self, draft: Draft, message: OutboundMessage) -> Sent:
        """Deliver a stored draft (or fail as scripted)."""
        fault = self.fault("send")
        self.calls.append(Call("send", message.send_id, self.now(), fault))
        self._raise(fault, "send")
        if draft.id not in self.drafts:
            raise PermanentError(f"send: draft {draft.id} not found")
        del self.drafts[draft.id]
        self.delivered.append((message.send_id, message.message_id, self.now()))
        if fault == "drop":
            raise OutcomeUnknown("send: connection dropped after the request")
        return Sent(self._id("m"), draft.thread_id)

    def reconcile(self, message: OutboundMessage, draft: Draft | None) -> Reconciled:
        """Draft still there → not sent; delivered → sent; ``"unknown"`` mode → unknown."""
        fault = self.fault("reconcile")
        self.calls.append(Call("reconcile", message.send_id, self.now(), fault))
        if fault == "unknown":
            return Reconciled(Outcome.UNKNOWN)
        self._raise(fault, "reconcile")
        if draft is not None and draft.id in self.drafts:
            return Reconciled(Outcome.NOT_SENT)
        for send_id, message_id, _at in self.delivered:
            if message_id == message.message_id:
                return Reconciled(Outcome.SENT, Sent(f"m-{send_id}", draft.thread_id
                                                     if draft else None))
        return Reconciled(Outcome.UNKNOWN)

    def deliveries(self) -> Counter[int]:
        """How many times each send id was delivered."""
        return Counter(send_id for send_id, _m, _at in self.delivered)

    def send_times(self) -> list[datetime]:
        """The moments of every send call that could have delivered (for the pace check)."""
        return [c.at for c in self.calls  # type: ignore[misc]
                if c.op == "send" and c.outcome in ("ok", "drop")]


class FakeResolver:
    """Every rep (or the listed ones) has the given transport; others have no mailbox."""

    def __init__(self, transport: Transport, owners: Iterable[int] | None = None) -> None:
        self.transport = transport
        self.owners = set(owners) if owners is not None else None

    def transport_for(self, owner_id: int) -> Transport | None:
        """The shared transport, or None for a rep who is not listed."""
        if self.owners is not None and owner_id not in self.owners:
            return None
        return self.transport


# -- the HTTP sink -------------------------------------------------------------------------


@dataclass
class SinkState:
    """What the sink holds: drafts, deliveries and a log of every request."""

    rates: dict[str, float] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    drafts: dict[str, str] = field(default_factory=dict)
    delivered: list[tuple[int, str, float, int]] = field(default_factory=list)
    requests: list[tuple[str, int, float, int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: int = 0
    #: Seconds every draft and send request takes (a provider's latency), outside the lock.
    delay: float = 0.0

    def roll(self) -> str:
        """The fault the next send meets: "429", "503", "drop" or "ok" by the rates."""
        x = self.rng.random()
        for name in ("429", "503", "drop"):
            p = self.rates.get(name, 0.0)
            if x < p:
                return name
            x -= p
        return "ok"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _SinkHTTPServer

    def setup(self) -> None:
        """No Nagle delay: headers and body go out as written (40 ms per request otherwise)."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Quiet: the sink logs nothing."""

    def _reply(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None
               ) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def do_GET(self) -> None:  # noqa: N802
        """``/state``: deliveries per send id and the request log."""
        st = self.server.state
        with st.lock:
            body = {"delivered": st.delivered, "requests": st.requests,
                    "drafts": len(st.drafts)}
        self._reply(200, body)

    def do_POST(self) -> None:  # noqa: N802
        """Drafts, sends, reconciliation and configuration."""
        st = self.server.state
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        pid = int(self.headers.get("X-Worker") or 0)
        path = self.path
        if path == "/config":
            with st.lock:
                st.rates = json.loads(raw)
                st.rng = random.Random(st.rates.pop("seed", 7))
            return self._reply(200, {})
        if path == "/reset":
            with st.lock:
                st.drafts.clear()
                st.delivered.clear()
                st.requests.clear()
            return self._reply(200, {})
        if st.delay and path.startswith("/drafts"):
            time.sleep(st.delay)
        if path == "/drafts":
            mime = raw.decode("utf-8", "replace")
            message_id = _header(mime, "Message-ID")
            send_id = send_id_of(message_id) or 0
            with st.lock:
                fault = st.roll()
                st.requests.append(("draft", send_id, time.time(), pid, fault))
                if fault not in ("429", "503"):
                    st.counter += 1
                    draft_id = f"d{st.counter}"
                    st.drafts[draft_id] = message_id
            if fault == "429":
                return self._reply(429, {"error": "rate"}, {"Retry-After": "0"})
            if fault == "503":
                return self._reply(503, {"error": "unavailable"})
            if fault == "drop":
                return self._drop()
            return self._reply(200, {"id": draft_id, "thread_id": f"t{draft_id}"})
        if path.startswith("/drafts/") and path.endswith("/send"):
            draft_id = path.split("/")[2]
            with st.lock:
                message_id = st.drafts.get(draft_id)
                send_id = send_id_of(message_id) or 0
                fault = "missing" if message_id is None else st.roll()
                st.requests.append(("send", send_id, time.time(), pid, fault))
                if message_id is not None and fault in ("ok", "drop"):
                    del st.drafts[draft_id]
                    st.delivered.append((send_id, message_id, time.time(), pid))
            if fault == "missing":
                return self._reply(404, {"error": f"no draft {draft_id}"})
            if fault == "429":
                return self._reply(429, {"error": "rate"}, {"Retry-After": "0"})
            if fault == "503":
                return self._reply(503, {"error": "unavailable"})
            if fault == "drop":
                return self._drop()
            return self._reply(200, {"id": f"m{draft_id}", "thread_id": f"t{draft_id}"})
        if path == "/reconcile":
            q = json.loads(raw)
            with st.lock:
                st.requests.append(("reconcile", send_id_of(q["message_id"]) or 0,
                                    time.time(), pid, "ok"))
                if q.get("draft_id") in st.drafts:
                    return self._reply(200, {"outcome": "not_sent"})
                for send_id, message_id, _at, _pid in st.delivered:
                    if message_id == q["message_id"]:
                        return self._reply(200, {"outcome": "sent", "id": f"m{send_id}"})
            return self._reply(200, {"outcome": "unknown"})
        self._reply(404, {"error": "no such path"})


def _header(mime: str, name: str) -> str:
    head = mime.split("\r\n\r\n", 1)[0].split("\n\n", 1)[0]
    for line in head.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return ""


class _SinkHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    state: SinkState


class SinkServer:
    """The HTTP sink on 127.0.0.1 (an ephemeral port), served from a background thread."""

    def __init__(self, rates: dict[str, float] | None = None, seed: int = 7, *,
                 delay: float = 0.0) -> None:
        self.httpd = _SinkHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.state = SinkState(rates=dict(rates or {}), rng=random.Random(seed),
                                     delay=delay)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def state(self) -> SinkState:
        """The sink's state (read it under ``state.lock``)."""
        return self.httpd.state

    def __enter__(self) -> SinkServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def deliveries(self) -> Counter[int]:
        """How many times each send id was delivered."""
        with self.state.lock:
            return Counter(send_id for send_id, _m, _t, _p in self.state.delivered)


class HttpSinkTransport:
    """A transport that sends through a :class:`SinkServer` over HTTP (one connection)."""

    kind = "sink"

    def __init__(self, url: str, *, timeout: float = 5.0, daily_limit: int = 1_000_000) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.daily_limit = daily_limit
        self._conn: http.client.HTTPConnection | None = None
        self._pid = str(__import__("os").getpid())

    def _request(self, path: str, body: bytes) -> tuple[int, dict[str, Any], str | None]:
        """POST ``body``; raises ``OSError``/``HTTPException`` when the answer is lost."""
        try:
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port,
                                                        timeout=self.timeout)
                self._conn.connect()
                assert self._conn.sock is not None
                self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn.request("POST", path, body=body, headers={"X-Worker": self._pid})
            resp = self._conn.getresponse()
            data = json.loads(resp.read() or b"{}")
            return resp.status, data, resp.getheader("Retry-After")
        except (OSError, http.client.HTTPException):
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise

    @staticmethod
    def _check(op: str, status: int, data: dict[str, Any], retry_after: str | None) -> None:
        if status == 429:
            raise TransientError(f"{op}: 429 rate limited",
                                 retry_after=float(retry_after) if retry_after else None)
        if status >= 500:
            raise TransientError(f"{op}: {status} {data.get('error', '')}".strip())
        if status >= 400:
            raise PermanentError(f"{op}: {status} {data.get('error', '')}".strip())

    def create_draft(self, message: OutboundMessage) -> Draft:
        """POST /drafts with the message's bytes."""
        try:
            status, data, ra = self._request("/drafts", message_bytes(message))
        except (OSError, http.client.HTTPException) as exc:
            raise OutcomeUnknown(f"draft: {type(exc).__name__}: {exc}") from None
        self._check("draft", status, data, ra)
        return Draft(data["id"], data.get("thread_id"))

    def send_draft(self, draft: Draft, message: OutboundMessage) -> Sent:
        """POST /drafts/{id}/send; a lost answer is ``OutcomeUnknown``."""
        try:
            status, data, ra = self._request(f"/drafts/{draft.id}/send", b"")
        except (OSError, http.client.HTTPException) as exc:
            raise OutcomeUnknown(f"send: {type(exc).__name__}: {exc}") from None
        self._check("send", status, data, ra)
        return Sent(data["id"], data.get("thread_id"))

    def reconcile(self, message: OutboundMessage, draft: Draft | None) -> Reconciled:
        """POST /reconcile: is the draft still there, or was the Message-ID delivered."""
        body = json.dumps({"message_id": message.message_id,
                           "draft_id": draft.id if draft else None}).encode()
        try:
            status, data, ra = self._request("/reconcile", body)
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"reconcile: {type(exc).__name__}: {exc}") from None
        self._check("reconcile", status, data, ra)
        outcome = Outcome(data["outcome"])
        sent = Sent(data["id"]) if outcome is Outcome.SENT else None
        return Reconciled(outcome, sent)


class SinkResolver:
    """Every rep sends through the sink at ``url`` (``MAIL_TRANSPORT=sink``)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.transport = HttpSinkTransport(url, timeout=timeout)

    def transport_for(self, owner_id: int) -> Transport | None:
        """The one sink transport of this process."""
        return self.transport


class ManualClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, start: datetime) -> None:
        self.moment = start

    def now(self) -> datetime:
        """The clock's current moment."""
        return self.moment

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward by ``seconds`` and return the new moment."""
        from datetime import timedelta

        self.moment = self.moment + timedelta(seconds=seconds)
        return self.moment
