"""Secrets at rest (mailbox and Salesforce tokens, passwords): encrypted with a rotatable key ring.

``ENCRYPTION_KEYS`` holds ``kid:key`` pairs, comma-separated, the current one first::

    ENCRYPTION_KEYS="k2026b:<32 url-safe base64 bytes>,k2026a:<older key>"

(``python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"``
makes a key). Each stored value is ``{kid}:{Fernet token}``, so the key that encrypted it is
known without trying every key; rotating means putting a new key first, running
``relay mailboxes rekey`` (re-encrypts every value under the new key) and then dropping the old
key. Without ``ENCRYPTION_KEYS`` a development instance keeps a generated key in
``instance/encryption.keys`` and says so in the log; production refuses to store secrets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from flask import Flask

log = logging.getLogger(__name__)
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")


class KeyConfigError(ValueError):
    """The key configuration is unusable, or a value was encrypted under an unknown key."""


@dataclass(frozen=True)
class KeyRing:
    """Named Fernet keys; the first encrypts, every one decrypts the values stamped with it."""

    keys: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise KeyConfigError("the key ring needs at least one key")
        seen: set[str] = set()
        for kid, key in self.keys:
            if not _KID.match(kid):
                raise KeyConfigError(f"key id {kid!r}: use 1-32 letters, digits, '_', '.', '-'")
            if kid in seen:
                raise KeyConfigError(f"key id {kid!r} appears twice")
            seen.add(kid)
            try:
                Fernet(key)
            except ValueError:
                raise KeyConfigError(
                    f"key {kid!r} is not 32 url-safe base64-encoded bytes") from None

    @classmethod
    def parse(cls, value: str) -> KeyRing:
        """Read ``kid:key,kid:key`` (current first); raise KeyConfigError naming what is wrong."""
        pairs: list[tuple[str, bytes]] = []
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            kid, sep, key = item.partition(":")
            if not sep:
                raise KeyConfigError("ENCRYPTION_KEYS: write each key as kid:base64key")
            pairs.append((kid.strip(), key.strip().encode()))
        return cls(tuple(pairs))

    @property
    def current(self) -> str:
        """The id of the key new values are encrypted with."""
        return self.keys[0][0]

    def encrypt(self, plaintext: str) -> str:
        """Encrypt ``plaintext`` under the current key: ``{kid}:{token}``."""
        kid, key = self.keys[0]
        return f"{kid}:{Fernet(key).encrypt(plaintext.encode()).decode()}"

    def decrypt(self, stored: str) -> str:
        """Decrypt a value made by :meth:`encrypt` with whichever key its id names."""
        kid, sep, token = stored.partition(":")
        if not sep:
            raise KeyConfigError("the stored secret has no key id")
        for name, key in self.keys:
            if name == kid:
                try:
                    return Fernet(key).decrypt(token.encode()).decode()
                except InvalidToken:
                    raise KeyConfigError(f"the stored secret does not decrypt with key {kid!r}"
                                    ) from None
        raise KeyConfigError(f"the stored secret was encrypted with key {kid!r}, which is not in "
                        "ENCRYPTION_KEYS any more; add it back (after the current key)")

    def key_id_of(self, stored: str) -> str:
        """The id of the key a stored value was encrypted with."""
        return stored.partition(":")[0]

    def reencrypt(self, stored: str) -> str:
        """The same secret encrypted under the current key (unchanged when it already is)."""
        if self.key_id_of(stored) == self.current:
            return stored
        return self.encrypt(self.decrypt(stored))


def keyring_from_config(config: dict[str, object], instance_path: str | Path) -> KeyRing:
    """The app's key ring: ``ENCRYPTION_KEYS``, or a development key kept under ``instance/``.

    Production (``RELAY_ENV=production``) without ``ENCRYPTION_KEYS`` is an error: a secret
    must never be encrypted with a key nobody configured.
    """
    value = config.get("ENCRYPTION_KEYS")
    if value:
        return KeyRing.parse(str(value))
    if config.get("RELAY_ENV") == "production":
        raise KeyConfigError("RELAY_ENV=production needs ENCRYPTION_KEYS to store secrets: "
                        "set it to kid:key (a Fernet key) and restart")
    path = Path(instance_path) / "encryption.keys"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole to a temporary file, then linked into place: a concurrent process
        # (the web server and a worker starting together) sees no file or the whole key,
        # and only the first link wins.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".keys-")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(f"dev:{Fernet.generate_key().decode()}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    log.warning("ENCRYPTION_KEYS is not set: secrets are encrypted with the "
                "development key in %s; set ENCRYPTION_KEYS in production", path)
    return KeyRing.parse(path.read_text().strip())


def app_keyring(app: Flask) -> KeyRing:
    """The key ring of ``app`` (read once, then kept on the app): mailbox and CRM secrets."""
    ring: KeyRing | None = app.extensions.get("relay.keyring")
    if ring is None:
        ring = app.extensions["relay.keyring"] = keyring_from_config(dict(app.config),
                                                                     app.instance_path)
    return ring


def mask(secret: str | None) -> str | None:
    """How a secret is shown anywhere outside the process: never any of its characters."""
    return None if secret is None else "********"
