"""A small IMAP4rev1 server on 127.0.0.1 for the SMTP mailboxes' IMAP side.

It speaks just what the transport and the sync use — CAPABILITY, LOGIN, SELECT/EXAMINE (with
UIDVALIDITY), UID SEARCH (``HEADER name value`` and ``UID n:*``, including the real servers'
quirk that ``n:*`` past the last message still returns the last one), UID FETCH
``BODY.PEEK[]``, APPEND with a literal, UID STORE, EXPUNGE, LOGOUT — over a real socket, so
``imaplib`` is exercised as it is against a real server.
"""

from __future__ import annotations

import re
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import default

_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"|(\([^)]*\))|(\S+)')


@dataclass
class Folder:
    uidvalidity: int = 42
    next_uid: int = 1
    messages: dict[int, tuple[bytes, set[str]]] = field(default_factory=dict)

    def add(self, raw: bytes, flags: set[str] | None = None) -> int:
        uid = self.next_uid
        self.messages[uid] = (raw, set(flags or ()))
        self.next_uid += 1
        return uid


@dataclass
class ImapState:
    user: str = "rita"
    password: str = "right-password"
    folders: dict[str, Folder] = field(default_factory=lambda: {
        "INBOX": Folder(), "Sent": Folder(), "Drafts": Folder()})
    commands: list[str] = field(default_factory=list)


def _args(line: bytes) -> list[bytes]:
    out = []
    for m in _TOKEN.finditer(line):
        if m.group(1) is not None:
            out.append(re.sub(rb"\\(.)", rb"\1", m.group(1)))
        else:
            out.append(m.group(2) or m.group(3))
    return out


class _Handler(socketserver.StreamRequestHandler):
    state: ImapState

    def _send(self, data: bytes) -> None:
        self.wfile.write(data + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        self._send(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] fake IMAP ready")
        selected: Folder | None = None
        authed = False
        while True:
            line = self.rfile.readline()
            if not line:
                return
            line = line.rstrip(b"\r\n")
            literal = re.search(rb"\{(\d+)\}$", line)
            payload = b""
            if literal:
                self._send(b"+ Ready for literal data")
                payload = self.rfile.read(int(literal.group(1)))
                self.rfile.readline()
                line = line[:literal.start()].rstrip()
            tag, _, rest = line.partition(b" ")
            args = _args(rest)
            cmd = args[0].upper().decode() if args else ""
            self.state.commands.append(cmd + (" " + args[1].upper().decode()
                                              if cmd == "UID" and len(args) > 1 else ""))
            ok = tag + b" OK done"
            if cmd == "CAPABILITY":
                self._send(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN")
                self._send(ok)
            elif cmd == "LOGIN":
                if (args[1].decode(), args[2].decode()) == (self.state.user,
                                                            self.state.password):
                    authed = True
                    self._send(ok)
                else:
                    self._send(tag + b" NO [AUTHENTICATIONFAILED] Invalid credentials")
            elif not authed and cmd != "LOGOUT":
                self._send(tag + b" BAD not authenticated")
            elif cmd in ("SELECT", "EXAMINE"):
                selected = self.state.folders.get(args[1].decode())
                if selected is None:
                    self._send(tag + b" NO no such mailbox")
                    continue
                self._send(b"* %d EXISTS" % len(selected.messages))
                self._send(b"* OK [UIDVALIDITY %d] UIDs valid" % selected.uidvalidity)
                self._send(b"* OK [UIDNEXT %d] next" % selected.next_uid)
                self._send(ok)
            elif cmd == "APPEND":
                folder = self.state.folders.setdefault(args[1].decode(), Folder())
                flags = set(args[2].strip(b"()").decode().split()) if len(args) > 2 else set()
                uid = folder.add(payload, flags)
                self._send(tag + b" OK [APPENDUID %d %d] appended" % (folder.uidvalidity, uid))
            elif cmd == "UID" and selected is not None:
                self._uid(tag, [a.decode() for a in args[1:]], selected)
            elif cmd == "EXPUNGE" and selected is not None:
                for uid in [u for u, (_, f) in selected.messages.items() if "\\Deleted" in f]:
                    del selected.messages[uid]
                self._send(ok)
            elif cmd == "LOGOUT":
                self._send(b"* BYE logging out")
                self._send(ok)
                return
            else:
                self._send(tag + b" BAD unsupported " + cmd.encode())

    def _uid(self, tag: bytes, args: list[str], folder: Folder) -> None:
        sub = args[0].upper()
        if sub == "SEARCH":
            if args[1].upper() == "HEADER":
                name, value = args[2], args[3]
                hits = [u for u, (raw, _) in folder.messages.items()
                        if value.lower() in str(BytesHeaderParser(policy=default).parsebytes(
                            raw).get(name, "")).lower()]
            else:  # UID n:*
                start = int(args[2].split(":")[0])
                hits = [u for u in folder.messages if u >= start]
                if not hits and folder.messages:
                    hits = [max(folder.messages)]
            self._send(b"* SEARCH" + b"".join(b" %d" % u for u in hits))
        elif sub == "FETCH":
            uid = int(args[1])
            if uid in folder.messages:
                raw = folder.messages[uid][0]
                seq = list(folder.messages).index(uid) + 1
                self.wfile.write(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, uid, len(raw))
                                 + raw + b")\r\n")
        elif sub == "STORE":
            uid = int(args[1])
            if uid in folder.messages:
                folder.messages[uid][1].update(args[3].strip("()").split())
        self._send(tag + b" OK UID done")


@contextmanager
def fake_imap() -> Iterator[tuple[int, ImapState]]:
    """Serve the fake IMAP on 127.0.0.1; yields (port, state)."""
    state = ImapState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1], state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
