"""A local stand-in for Salesforce: OAuth token, SOQL query, Task create/update/upsert.

It speaks HTTPS on 127.0.0.1 with a certificate it makes for itself (``simple-salesforce``
always builds ``https://`` URLs), stores records in memory, answers the queries the sync
sends, and fails on demand: a status with a Salesforce error body, REQUEST_LIMIT_EXCEEDED,
INVALID_SESSION_ID, a dropped connection after a Task was created, or a held response (to kill
a worker mid-call). The tests use it; it says so in the log when started.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import re
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger("relay.salesforce.fake")

ID_PREFIX = {"Task": "00T", "Contact": "003", "Lead": "00Q", "User": "005"}


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, written to ``directory`` (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    import ipaddress

    # A fixed, wide validity: OpenSSL checks it against the operating system's clock, which
    # need not be the process clock a test moved (RELAY_TEST_NOW) or froze; the key is made
    # anew for each fake and trusted only by the tests that start it.
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC))
            .not_valid_after(datetime(2099, 12, 31, tzinfo=UTC))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "fake-sf.pem", directory / "fake-sf.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class Failure:
    """One planned failure for an operation (``create``, ``update``, ``upsert``, ``query``...)."""

    status: int = 503
    code: str | None = None
    drop_after: bool = False   # do the operation, then close the connection without answering
    hold: float = 0.0          # do the operation, then wait this long before answering
    ok: bool = False           # answer normally (to let calls through before a failure)


@dataclass
class FakeState:
    """Everything the fake holds; tests read and change it directly."""

    records: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {"Task": {}, "Contact": {}, "Lead": {}, "User": {}})
    valid_tokens: set[str] = field(default_factory=set)
    refresh_tokens: set[str] = field(default_factory=set)
    auth_codes: dict[str, str] = field(default_factory=dict)  # code -> PKCE challenge
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    external_id_fields: list[str] = field(default_factory=list)
    jwt_public_key: str | None = None
    refresh_works: bool = True
    clock: datetime | None = None
    counter: Any = field(default_factory=lambda: itertools.count(1))


class FakeSalesforce:
    """The server; ``start()`` it, use ``url`` as login and instance URL, ``stop()`` it."""

    def __init__(self, client_id: str = "fake-client", client_secret: str = "fake-secret",
                 version: str = "59.0") -> None:
        self.client_id, self.client_secret, self.version = client_id, client_secret, version
        self.state = FakeState()
        self.lock = threading.RLock()
        self._dir = tempfile.TemporaryDirectory(prefix="fake-sf-")
        self.cert_path, key_path = self_signed(Path(self._dir.name))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, key_path)
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeSalesforce:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        log.warning("fake Salesforce serving at %s (development and tests only)", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and remove the certificate."""
        self.server.shutdown()
        self.server.server_close()
        self._dir.cleanup()

    # -- test controls ----------------------------------------------------------------------

    def issue_token(self) -> str:
        """A new valid access token."""
        token = f"00Dfake!{next(self.state.counter)}"
        with self.lock:
            self.state.valid_tokens.add(token)
        return token

    def expire_tokens(self) -> None:
        """Every access token becomes invalid (the next call gets INVALID_SESSION_ID)."""
        with self.lock:
            self.state.valid_tokens.clear()

    def fail(self, op: str, *failures: Failure) -> None:
        """Make the next calls of ``op`` fail, one failure per call, in order."""
        with self.lock:
            self.state.failures.setdefault(op, []).extend(failures)

    def add(self, sobject: str, **fields: Any) -> str:
        """Store a record (Contact, Lead, Task) and return its Id."""
        with self.lock:
            return self._insert(sobject, fields)

    def tasks(self) -> list[dict[str, Any]]:
        """Every Task stored, oldest first."""
        with self.lock:
            return [dict(r) for r in self.state.records["Task"].values()]

    def complete(self, task_id: str, status: str = "Completed") -> None:
        """Change a Task's Status as a Salesforce user would (bumps SystemModstamp)."""
        with self.lock:
            rec = self.state.records["Task"][task_id]
            rec["Status"] = status
            rec["SystemModstamp"] = self._now()

    def authorization_code(self, challenge: str) -> str:
        """A code the authorize page would hand back for a PKCE ``challenge``."""
        code = f"code-{next(self.state.counter)}"
        with self.lock:
            self.state.auth_codes[code] = challenge
        return code

    # -- internals --------------------------------------------------------------------------

    def _now(self) -> str:
        moment = self.state.clock or datetime.now(UTC)
        # Each change gets a distinct, increasing stamp (as a real org's commits do).
        stamp = moment + timedelta(milliseconds=next(self.state.counter))
        return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"

    def _insert(self, sobject: str, fields: dict[str, Any]) -> str:
        n = next(self.state.counter)
        rec_id = f"{ID_PREFIX[sobject]}{n:015d}"[:18]
        stamp = self._now()
        self.state.records[sobject][rec_id] = {"Id": rec_id, **fields, "CreatedDate": stamp,
                                               "SystemModstamp": stamp}
        return rec_id

    def _take_failure(self, op: str) -> Failure | None:
        with self.lock:
            queue = self.state.failures.get(op)
            return queue.pop(0) if queue else None

    def _token_response(self, refresh: bool) -> dict[str, Any]:
        token = self.issue_token()
        issued = str(int(time.time() * 1000))
        identity = f"{self.url}/id/00Dfake/005fake"
        sig = base64.b64encode(hmac.new(self.client_secret.encode(),
                                        (identity + issued).encode(), hashlib.sha256)
                               .digest()).decode()
        body = {"access_token": token, "instance_url": self.url, "id": identity,
                "token_type": "Bearer", "issued_at": issued, "signature": sig,
                "scope": "api refresh_token"}
        if refresh:
            rt = f"5Aep-refresh-{next(self.state.counter)}"
            with self.lock:
                self.state.refresh_tokens.add(rt)
            body["refresh_token"] = rt
        return body

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """The OAuth token endpoint (authorization_code with PKCE, refresh_token, JWT)."""
        grant = form.get("grant_type")
        bad = (400, {"error": "invalid_grant", "error_description": "authentication failure"})
        if grant == "authorization_code":
            challenge = self.state.auth_codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            expected = base64.urlsafe_b64encode(
                hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if (challenge is None or challenge != expected
                    or form.get("client_secret") != self.client_secret):
                return bad
            return 200, self._token_response(refresh=True)
        if grant == "refresh_token":
            if (not self.state.refresh_works
                    or form.get("refresh_token") not in self.state.refresh_tokens):
                return 400, {"error": "invalid_grant",
                             "error_description": "expired access/refresh token"}
            body = self._token_response(refresh=False)
            return 200, body
        if grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            if not self.state.jwt_public_key:
                return bad
            try:
                claims = jwt.decode(form.get("assertion", ""), self.state.jwt_public_key,
                                    algorithms=["RS256"], audience=self.url)
            except jwt.PyJWTError:
                return bad
            if claims.get("iss") != self.client_id or not claims.get("sub"):
                return bad
            body = self._token_response(refresh=False)
            for k in ("signature", "issued_at"):
                body.pop(k, None)
            return 200, body
        return 400, {"error": "unsupported_grant_type", "error_description": str(grant)}

    def query(self, soql: str) -> list[dict[str, Any]]:
        """Answer the SOQL the sync sends (by-field equality, and the completions poll)."""
        m = re.fullmatch(r"SELECT Id FROM (Contact|Lead|Task|User) WHERE (\w+) = "
                         r"'((?:[^'\\]|\\.)*)'(?: AND IsConverted = false)?"
                         r"(?: AND IsActive = true)?(?: ORDER BY CreatedDate)? LIMIT 1", soql)
        if m:
            sobject, fld, raw = m.groups()
            value = re.sub(r"\\(.)", lambda x: {"n": "\n", "r": "\r", "t": "\t"}.get(
                x.group(1), x.group(1)), raw)
            rows = [r for r in self.state.records[sobject].values()
                    if str(r.get(fld, "")).lower() == value.lower()
                    and not (sobject == "Lead" and r.get("IsConverted"))
                    and not (sobject == "User" and r.get("IsActive") is False)]
            return [{"attributes": {"type": sobject}, "Id": r["Id"]} for r in rows[:1]]
        m = re.fullmatch(r"SELECT Id, Status, SystemModstamp FROM Task WHERE SystemModstamp > "
                         r"(\S+) AND Status = 'Completed' ORDER BY SystemModstamp", soql)
        if m:
            since = datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.000Z").replace(tzinfo=UTC)
            rows = [r for r in self.state.records["Task"].values()
                    if r.get("Status") == "Completed"
                    and datetime.strptime(r["SystemModstamp"], "%Y-%m-%dT%H:%M:%S.%f%z") > since]
            rows.sort(key=lambda r: r["SystemModstamp"])
            return [{"attributes": {"type": "Task"}, "Id": r["Id"], "Status": r["Status"],
                     "SystemModstamp": r["SystemModstamp"]} for r in rows]
        raise ValueError(soql)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSalesforce
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        """Quiet: the test output stays readable."""

    def _send(self, status: int, body: Any = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str) -> None:
        self._send(status, [{"message": message, "errorCode": code}])

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        auth = self.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        if token in self.fake.state.valid_tokens:
            return True
        self._error(401, "INVALID_SESSION_ID", "Session expired or invalid")
        return False

    def _planned(self, op: str) -> Failure | None:
        failure = self.fake._take_failure(op)
        if failure is not None and failure.ok:
            return None
        if failure is None or failure.drop_after or failure.hold:
            return failure
        if failure.code == "REQUEST_LIMIT_EXCEEDED":
            self._error(failure.status if failure.status != 503 else 403, failure.code,
                        "TotalRequests Limit exceeded.")
        elif failure.code == "INVALID_SESSION_ID":
            self._error(401, failure.code, "Session expired or invalid")
        else:
            self._error(failure.status, failure.code or "SERVER_UNAVAILABLE",
                        "the server is temporarily unavailable")
        return failure

    def _after(self, failure: Failure | None, status: int, body: Any) -> None:
        if failure is not None and failure.drop_after:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if failure is not None and failure.hold:
            time.sleep(failure.hold)
        self._send(status, body)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        """Token endpoint and Task creation."""
        path = urlsplit(self.path).path
        body = self._body()
        self.fake.state.calls.append(("POST", path))
        if path == "/services/oauth2/token":
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
            status, answer = self.fake.token(form)
            self._send(status, answer)
            return
        m = re.fullmatch(r"/services/data/v[\d.]+/sobjects/(\w+)/?", path)
        if not m:
            self._error(404, "NOT_FOUND", "The requested resource does not exist")
            return
        if not self._authorised():
            return
        failure = self._planned("create")
        if failure is not None and not (failure.drop_after or failure.hold):
            return
        fields = json.loads(body)
        with self.fake.lock:
            if m.group(1) == "Task" and "WhoId" in fields and not any(
                    fields["WhoId"] in self.fake.state.records[o]
                    for o in ("Contact", "Lead")):
                self._error(400, "MALFORMED_ID", "Name ID: id value of incorrect type")
                return
            rec_id = self.fake._insert(m.group(1), fields)
        self._after(failure, 201, {"id": rec_id, "success": True, "errors": []})

    def do_PATCH(self) -> None:  # noqa: N802 - stdlib name
        """Task update by Id, and upsert by external id field."""
        path = urlsplit(self.path).path
        body = self._body()
        self.fake.state.calls.append(("PATCH", path))
        if not self._authorised():
            return
        fields = json.loads(body)
        m = re.fullmatch(r"/services/data/v[\d.]+/sobjects/Task/(\w+)/(.+)", path)
        if m:
            fld, key = m.group(1), unquote(m.group(2))
            if fld not in self.fake.state.external_id_fields:
                self._error(404, "NOT_FOUND", f"Provided external ID field does not exist: {fld}")
                return
            failure = self._planned("upsert")
            if failure is not None and not (failure.drop_after or failure.hold):
                return
            with self.fake.lock:
                found = [r for r in self.fake.state.records["Task"].values()
                         if r.get(fld) == key]
                if found:
                    found[0].update(fields)
                    found[0]["SystemModstamp"] = self.fake._now()
                    answer = (200, {"id": found[0]["Id"], "success": True, "errors": [],
                                    "created": False})
                else:
                    rec_id = self.fake._insert("Task", {**fields, fld: key})
                    answer = (201, {"id": rec_id, "success": True, "errors": [],
                                    "created": True})
            self._after(failure, *answer)
            return
        m = re.fullmatch(r"/services/data/v[\d.]+/sobjects/Task/(\w+)", path)
        if not m:
            self._error(404, "NOT_FOUND", "The requested resource does not exist")
            return
        failure = self._planned("update")
        if failure is not None and not (failure.drop_after or failure.hold):
            return
        with self.fake.lock:
            rec = self.fake.state.records["Task"].get(m.group(1))
            if rec is None:
                self._error(404, "NOT_FOUND", "The requested resource does not exist")
                return
            rec.update(fields)
            rec["SystemModstamp"] = self.fake._now()
        self._after(failure, 204, None)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        """SOQL query and Task describe."""
        parts = urlsplit(self.path)
        self.fake.state.calls.append(("GET", parts.path))
        if not self._authorised():
            return
        if re.fullmatch(r"/services/data/v[\d.]+/query/?", parts.path):
            failure = self._planned("query")
            if failure is not None and not (failure.drop_after or failure.hold):
                return
            soql = parse_qs(parts.query)["q"][0]
            with self.fake.lock:
                try:
                    records = self.fake.query(soql)
                except ValueError:
                    self._error(400, "MALFORMED_QUERY", f"unexpected SOQL: {soql[:200]}")
                    return
            self._after(failure, 200, {"totalSize": len(records), "done": True,
                                       "records": records})
            return
        if re.fullmatch(r"/services/data/v[\d.]+/sobjects/Task/describe/?", parts.path):
            fields = [{"name": "Id", "externalId": False, "custom": False},
                      {"name": "Subject", "externalId": False, "custom": False}]
            fields += [{"name": f, "externalId": True, "custom": True}
                       for f in self.fake.state.external_id_fields]
            self._send(200, {"name": "Task", "fields": fields})
            return
        self._error(404, "NOT_FOUND", "The requested resource does not exist")
