"""Mailbox connections: encrypted secrets, key rotation, states, limits."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from server.crypto import KeyConfigError, KeyRing, keyring_from_config
from server.mailboxes import lifecycle as mbx
from server.mailboxes.lifecycle import Mailbox, MailboxStatus, Provider

K1 = Fernet.generate_key().decode()
K0 = Fernet.generate_key().decode()


def test_keyring_encrypts_with_the_current_key_and_reads_older_ones():
    """Is each value stamped with its key id, readable after rotation, and re-encryptable?"""
    old = KeyRing.parse(f"k0:{K0}")
    stored = old.encrypt("refresh-token-1")
    assert stored.startswith("k0:") and "refresh-token-1" not in stored
    rotated = KeyRing.parse(f"k1:{K1}, k0:{K0}")
    assert rotated.current == "k1"
    assert rotated.decrypt(stored) == "refresh-token-1"
    again = rotated.reencrypt(stored)
    assert again.startswith("k1:") and rotated.decrypt(again) == "refresh-token-1"
    assert rotated.reencrypt(again) == again
    with pytest.raises(KeyConfigError, match="k0"):
        KeyRing.parse(f"k1:{K1}").decrypt(stored)


@pytest.mark.parametrize("value", ["nokid", f"bad kid:{K1}", "k1:short", f"k1:{K1},k1:{K0}",
                                   ""])
def test_keyring_refuses_bad_configuration(value):
    """Is a malformed ENCRYPTION_KEYS refused with a message naming the problem?"""
    with pytest.raises(KeyConfigError):
        KeyRing.parse(value)


def test_keyring_tampered_value_is_refused():
    """Does a modified ciphertext fail loudly instead of decrypting to garbage?"""
    ring = KeyRing.parse(f"k1:{K1}")
    stored = ring.encrypt("x")
    with pytest.raises(KeyConfigError):
        ring.decrypt(stored[:-4] + "AAAA")


def test_development_key_file_and_production_refusal(tmp_path, caplog):
    """Without ENCRYPTION_KEYS: development keeps a key file and warns; production refuses."""
    ring = keyring_from_config({"RELAY_ENV": "development"}, tmp_path)
    assert (tmp_path / "encryption.keys").stat().st_mode & 0o777 == 0o600
    assert keyring_from_config({}, tmp_path).decrypt(ring.encrypt("s")) == "s"
    assert "ENCRYPTION_KEYS is not set" in caplog.text
    with pytest.raises(KeyConfigError, match="production"):
        keyring_from_config({"RELAY_ENV": "production"}, tmp_path)


def test_connect_encrypts_masks_and_rotates(session, world, now, caplog):
    """Is the password stored encrypted, absent from the view and logs, and rotatable?"""
    ring = KeyRing.parse(f"k0:{K0}")
    mb = mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                     provider=Provider.SMTP, email="rep@a.test", display_name="Rep",
                     settings={"smtp_host": "127.0.0.1", "smtp_port": 2525,
                               "smtp_username": "rep"},
                     secret={"password": "hunter2-secret"}, keyring=ring, now=now,
                     daily_limit=300)
    session.commit()
    raw = session.scalar(select(Mailbox.secret).where(Mailbox.id == mb.id))
    assert raw is not None and raw.startswith("k0:") and "hunter2" not in raw
    view = mbx.mailbox_view(mb)
    assert "hunter2" not in repr(view) and view.has_secret
    assert view.daily_limit == 300
    assert "hunter2" not in caplog.text
    rotated = KeyRing.parse(f"k1:{K1},k0:{K0}")
    assert mbx.reencrypt_secrets(session, rotated) == 1
    assert mbx.reencrypt_secrets(session, rotated) == 0
    session.commit()
    assert KeyRing.parse(f"k1:{K1}").decrypt(mb.secret or "").find("hunter2") > 0
    assert mbx.read_secret(mb, rotated) == {"password": "hunter2-secret"}


def test_one_mailbox_per_rep_reconnect_replaces_and_resets_cursors(session, world, now):
    """Does connecting again replace the rep's mailbox, and another address reset cursors?"""
    ring = KeyRing.parse(f"k0:{K0}")
    first = mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                        provider=Provider.GOOGLE, email="rep@gmail.com", display_name="",
                        settings={}, secret={"refresh_token": "r1"}, keyring=ring, now=now)
    assert first.daily_limit == mbx.GMAIL_CONSUMER_LIMIT
    mbx.set_cursor(session, first.id, "history", "100", now)
    again = mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                        provider=Provider.GOOGLE, email="rep@gmail.com", display_name="",
                        settings={}, secret={"refresh_token": "r2"}, keyring=ring, now=now)
    assert again.id == first.id and mbx.get_cursor(session, first.id, "history") == "100"
    other = mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                        provider=Provider.MICROSOFT, email="rep@a.test", display_name="",
                        settings={}, secret={"refresh_token": "r3"}, keyring=ring, now=now)
    assert other.id == first.id and other.daily_limit == mbx.GRAPH_LIMIT
    assert mbx.get_cursor(session, first.id, "history") is None
    assert session.scalars(select(Mailbox)).all() == [other]


def test_needs_reauth_pause_and_disconnect(session, world, now):
    """Do needs_reauth, the daily-limit pause and disconnect change what can send?"""
    ring = KeyRing.parse(f"k0:{K0}")
    mb = mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                     provider=Provider.GOOGLE, email="rep@acme.test", display_name="",
                     settings={}, secret={"refresh_token": "r"}, keyring=ring, now=now)
    assert mb.daily_limit == mbx.GMAIL_WORKSPACE_LIMIT and mbx.usable(mb, now)
    until = mbx.pause_owner_mailbox(session, world.rep.id, "dailyLimitExceeded", now)
    session.refresh(mb)
    assert until == now + timedelta(hours=24) and mb.paused_until == until
    assert not mbx.usable(mb, now) and mbx.usable(mb, until)
    assert mbx.mark_needs_reauth_for_owner(session, world.rep.id, "invalid_grant", now)
    assert not mbx.mark_needs_reauth(session, mb.id, "invalid_grant", now)
    session.refresh(mb)
    assert mb.status is MailboxStatus.NEEDS_REAUTH and not mbx.usable(mb, until)
    assert mbx.disconnect(session, world.rep.id, now)
    assert not mbx.disconnect(session, world.rep.id, now)
    session.refresh(mb)
    assert mb.status is MailboxStatus.DISCONNECTED and mb.secret is None


def test_relay_mailboxes_rekey_rotates_every_secret(runner, database_url, session, world, now):
    """Does `relay mailboxes rekey` re-encrypt stored secrets under the new first key?"""
    from server.cli import main

    old = KeyRing.parse(f"k0:{K0}")
    mb = mbx.connect(session, org_id=world.org.id, owner_id=world.rep.id,
                     provider=Provider.GOOGLE, email="rep@acme.test", display_name="",
                     settings={}, secret={"refresh_token": "r-secret"}, keyring=old, now=now)
    session.commit()
    env = {"DATABASE_URL": database_url, "ENCRYPTION_KEYS": f"k1:{K1},k0:{K0}"}
    result = runner.invoke(main, ["mailboxes", "rekey"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "re-encrypted 1 secret(s) with key k1" in result.output
    session.rollback()
    stored = session.scalar(select(Mailbox.secret).where(Mailbox.id == mb.id))
    assert stored.startswith("k1:")
    assert mbx.read_secret(session.get(Mailbox, mb.id, populate_existing=True),
                           KeyRing.parse(f"k1:{K1}")) == {
        "refresh_token": "r-secret"}
    bad = runner.invoke(main, ["mailboxes", "rekey"],
                        env={"DATABASE_URL": database_url, "ENCRYPTION_KEYS": "nokid"})
    assert bad.exit_code != 0 and "kid:base64key" in bad.output
