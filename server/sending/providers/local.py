"""The local outbox: a folder of ``.eml`` files standing in for a mailbox (the embedded default).

``drafts/<send id>.eml`` is a draft, ``sent/<send id>.eml`` a sent message. Drafts are written
atomically (a temporary file, fsync, rename) and sending is one atomic rename from ``drafts/``
to ``sent/``, so a crash leaves the message in exactly one of the two folders and
:meth:`LocalOutboxTransport.reconcile` can tell which. Nothing leaves the machine: the
resolver says so with a WARNING the first time a rep's mail goes here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from email.parser import BytesHeaderParser
from email.policy import default
from pathlib import Path

from server.db import utcnow
from server.mailboxes.lifecycle import OUTBOX_LIMIT
from server.sending.headers import message_bytes
from server.sending.transport import (
    Draft,
    OutboundMessage,
    Outcome,
    PermanentError,
    Reconciled,
    Sent,
    TransientError,
)


class LocalOutboxTransport:
    """Drafts and "sends" into a folder: ``drafts/`` and ``sent/`` of ``.eml`` files."""

    kind = "outbox"

    def __init__(self, root: str | Path, daily_limit: int = OUTBOX_LIMIT,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.root = Path(root)
        self.daily_limit = daily_limit
        self._clock = clock

    @property
    def drafts(self) -> Path:
        """The folder of drafts."""
        return self.root / "drafts"

    @property
    def sent(self) -> Path:
        """The folder of sent messages."""
        return self.root / "sent"

    def _name(self, message: OutboundMessage) -> str:
        return f"{int(message.send_id)}.eml"

    def _message_id_in(self, path: Path) -> str | None:
        try:
            with path.open("rb") as fh:
                return BytesHeaderParser(policy=default).parse(fh).get("Message-ID")
        except FileNotFoundError:
            return None

    def create_draft(self, message: OutboundMessage) -> Draft:
        """Write ``drafts/<send id>.eml`` atomically (replacing an older draft of the send)."""
        try:
            self.drafts.mkdir(parents=True, exist_ok=True)
            self.sent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.drafts, prefix=".tmp-", suffix=".eml")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(message_bytes(message))
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.drafts / self._name(message))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise TransientError(f"local outbox: cannot write the draft: {exc}") from exc
        return Draft(id=self._name(message))

    def send_draft(self, draft: Draft, message: OutboundMessage) -> Sent:
        """Move the draft to ``sent/`` in one rename; a second call finds it already sent."""
        src, dst = self.drafts / draft.id, self.sent / draft.id
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            if self._message_id_in(dst) == message.message_id:
                return Sent(provider_id=draft.id, sent_at=self._sent_at(dst))
            raise PermanentError(f"local outbox: the draft {draft.id} is gone") from None
        except OSError as exc:
            raise TransientError(f"local outbox: cannot move the draft: {exc}") from exc
        return Sent(provider_id=draft.id, sent_at=self._clock())

    def _sent_at(self, path: Path) -> datetime:
        from datetime import UTC

        return datetime.fromtimestamp(path.stat().st_mtime, UTC)

    def reconcile(self, message: OutboundMessage, draft: Draft | None) -> Reconciled:
        """Sent when ``sent/`` holds this Message-ID; otherwise it did not leave."""
        dst = self.sent / self._name(message)
        if self._message_id_in(dst) == message.message_id:
            return Reconciled(Outcome.SENT, Sent(provider_id=dst.name,
                                                 sent_at=self._sent_at(dst)))
        return Reconciled(Outcome.NOT_SENT)
