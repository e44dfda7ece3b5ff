"""Secrets at rest: AES-GCM with rotatable keys, each value naming the key that sealed it.

``ENCRYPTION_KEYS`` is a comma-separated list, newest first. A value is stored as
``v1:<key id>:<base64url(nonce + ciphertext)>``, where the key id is the first 8 hex digits of
the key's SHA-256: decrypting picks the key by id, so old values keep opening after a new key
is put in front, and :func:`reseal` moves a value to the newest key. Development without
``ENCRYPTION_KEYS`` derives one key from ``SECRET_KEY`` (and says so in the log); production
refuses to seal without configured keys.

The mailbox tokens of the sending issue need the same; this module is written so it can move
to one shared place (``server/crypto.py``) unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger("relay.secrets")

_PREFIX = "v1"


class SecretsError(RuntimeError):
    """A value cannot be sealed or opened (no key, unknown key id, tampered value)."""


@dataclass(frozen=True)
class Keyring:
    """The configured keys by id, and the id of the newest (which seals)."""

    keys: dict[str, bytes]
    newest: str


def _key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def _derive(material: str) -> bytes:
    # A configured key may be any string; AES-256 takes 32 bytes, so it is hashed to them.
    return hashlib.sha256(material.encode()).digest()


def keyring(config: Mapping[str, Any]) -> Keyring:
    """The keyring of an app configuration (``ENCRYPTION_KEYS``, newest first)."""
    raw = [k.strip() for k in str(config.get("ENCRYPTION_KEYS") or "").split(",") if k.strip()]
    if not raw:
        if config.get("RELAY_ENV") == "production":
            raise SecretsError("set ENCRYPTION_KEYS (comma-separated, newest first) to store "
                               "Salesforce tokens")
        log.warning("ENCRYPTION_KEYS is not set: secrets are sealed with a key derived from "
                    "SECRET_KEY (development only)")
        raw = ["dev:" + str(config["SECRET_KEY"])]
    keys = {}
    for material in raw:
        key = _derive(material)
        keys.setdefault(_key_id(key), key)
    return Keyring(keys=keys, newest=_key_id(_derive(raw[0])))


def seal(ring: Keyring, plaintext: str) -> str:
    """Encrypt ``plaintext`` with the newest key."""
    nonce = os.urandom(12)
    kid = ring.newest
    ct = AESGCM(ring.keys[kid]).encrypt(nonce, plaintext.encode(), kid.encode())
    return f"{_PREFIX}:{kid}:{base64.urlsafe_b64encode(nonce + ct).decode()}"


def open_sealed(ring: Keyring, sealed: str) -> str:
    """Decrypt a value sealed by :func:`seal` with whichever configured key sealed it."""
    try:
        prefix, kid, blob = sealed.split(":", 2)
    except ValueError:
        raise SecretsError("not a sealed value") from None
    if prefix != _PREFIX:
        raise SecretsError(f"unknown sealed-value version {prefix!r}")
    key = ring.keys.get(kid)
    if key is None:
        raise SecretsError(f"the key {kid} that sealed this value is not in ENCRYPTION_KEYS")
    data = base64.urlsafe_b64decode(blob.encode())
    try:
        return AESGCM(key).decrypt(data[:12], data[12:], kid.encode()).decode()
    except Exception as exc:  # cryptography raises InvalidTag; the caller needs one type
        raise SecretsError("the sealed value does not open (tampered or wrong key)") from exc


def reseal(ring: Keyring, sealed: str) -> str:
    """The same secret sealed with the newest key (rotation); unchanged if already so."""
    if sealed.split(":", 2)[1:2] == [ring.newest]:
        return sealed
    return seal(ring, open_sealed(ring, sealed))
