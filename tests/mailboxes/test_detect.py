"""Sent, reply, bounce and automatic-reply detection from recorded messages (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from server.mailboxes import detect
from server.mailboxes.detect import OpenTask, SentEmail

FIXTURES = Path(__file__).parent.parent / "fixtures" / "mail"
OUR_ID = "<relay.1.0123456789abcdef@acme.test>"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def load(name: str, task_id: int = 7) -> bytes:
    return (FIXTURES / name).read_bytes().replace(b"__TASK_ID__", str(task_id).encode())


def obs(name: str, thread_id: str | None = None, task_id: int = 7) -> detect.Observed:
    return detect.observe(load(name, task_id), provider_id=name, thread_id=thread_id)


def task(task_id=7, subject="Hello Pat", start=datetime(2026, 11, 24, 9, 0, tzinfo=UTC),
         message_id=None, to="pat@client.test"):
    return OpenTask(task_id=task_id, to_email=to, subject=subject, message_id=message_id,
                    window_start=start)


SENT = SentEmail(enrollment_id=3, contact_email="pat@client.test", subject="Hello Pat",
                 message_id=OUR_ID, thread_id="thread-1",
                 sent_at=datetime(2026, 11, 24, 10, 0, tzinfo=UTC))
OTHER = SentEmail(enrollment_id=4, contact_email="sam@client.test", subject="Hello Sam",
                  message_id="<relay.2.aaaaaaaaaaaaaaaa@acme.test>", thread_id="thread-2")


def test_a_task_sent_by_hand_in_gmail_matches_by_recipient_and_subject():
    """Does a Gmail-sent email complete the task with the same recipient and subject?"""
    o = obs("sent_gmail_by_hand.eml")
    assert o.date == datetime(2026, 11, 24, 14, 47, 12, tzinfo=UTC)
    assert o.recipients == ("pat@client.test",) and o.sender == "rep@a.test"
    assert detect.match_sent(o, [task(6, "Other subject"), task(7)], NOW) == detect.Match(
        7, "recipient+subject")


def test_sent_detection_respects_the_task_window_and_ambiguity():
    """Is a message older than the task, or matching two tasks, left unmatched?"""
    o = obs("sent_gmail_by_hand.eml")
    late = task(start=datetime(2026, 11, 24, 15, 0, tzinfo=UTC))
    assert detect.match_sent(o, [late], NOW) is None
    assert detect.match_sent(o, [task(7), task(8)], NOW) is None
    assert detect.match_sent(o, [task(7)], datetime(2026, 11, 24, 14, 0, tzinfo=UTC)) is None


def test_the_x_relay_task_header_wins_over_a_changed_subject():
    """Does the X-Relay-Task header match even when the rep rewrote the subject?"""
    o = obs("sent_outlook_header.eml", task_id=9)
    assert o.relay_task == 9
    assert detect.match_sent(o, [task(7), task(9)], NOW) == detect.Match(9, "x-relay-task")
    assert detect.match_sent(o, [task(7)], NOW) is None  # not an open task of the rep


def test_our_message_id_matches_a_task():
    """Does a recorded Message-ID match its task?"""
    o = obs("sent_outlook_header.eml", task_id=999)
    mid = "<DB9PR08MB67164A5E2C1D0F3B9E8A7C64D1592@DB9PR08MB6716.eurprd08.prod.outlook.com>"
    assert detect.match_sent(o, [task(5, subject=None, message_id=mid)], NOW) == detect.Match(
        5, "message-id")


def test_reply_by_in_reply_to():
    """Is a reply naming our Message-ID in In-Reply-To matched to its enrollment?"""
    o = obs("reply_in_reply_to.eml")
    assert not o.auto_reply and o.bounce is None
    assert o.refs == (OUR_ID,)
    assert detect.match_reply(o, [OTHER, SENT]) == detect.Match(3, "in-reply-to")


def test_reply_by_thread_id_and_by_sender_and_subject():
    """Without threading headers: thread id first, else the contact's address and subject."""
    o = obs("reply_subject_only.eml", thread_id="thread-1")
    assert o.sender == "pat@client.test" and o.refs == ()
    assert detect.match_reply(o, [OTHER, SENT]) == detect.Match(3, "thread-id")
    o = obs("reply_subject_only.eml")
    assert detect.match_reply(o, [OTHER, SENT]) == detect.Match(3, "sender+subject")
    assert detect.match_reply(o, [OTHER]) is None


@pytest.mark.parametrize("name", ["ooo_auto_submitted.eml", "ooo_german_subject.eml",
                                  "ooo_french_precedence.eml"])
def test_automatic_replies_are_not_replies(name):
    """Are out-of-office answers (headers or subjects, several languages) flagged?"""
    o = obs(name)
    assert o.auto_reply and o.bounce is None


def test_normal_messages_are_not_automatic():
    """Are a real reply and a hand-sent email not flagged as automatic?"""
    assert not obs("reply_in_reply_to.eml").auto_reply
    assert not obs("reply_subject_only.eml").auto_reply
    assert not obs("sent_gmail_by_hand.eml").auto_reply


def test_gmail_dsn_is_a_bounce_about_our_email():
    """Does a multipart/report DSN give the failed recipient, status and original id?"""
    o = obs("bounce_dsn_gmail.eml")
    assert o.bounce == detect.Bounce(
        recipients=("pat@client.test",), status="5.1.1",
        diagnostic="550 5.1.1 <pat@client.test>: Recipient address rejected: User unknown",
        original_message_id=OUR_ID)
    assert not o.auto_reply
    assert detect.match_bounce(o.bounce, [OTHER, SENT]) == detect.Match(3, "dsn-message-id")


def test_plain_text_mailer_daemon_bounce():
    """Is an Exim plain-text failure from Mailer-Daemon a bounce of its recipient?"""
    o = obs("bounce_plain_exim.eml")
    assert o.bounce is not None and o.bounce.recipients == ("pat@client.test",)
    assert o.bounce.status == "5.1.1" and o.bounce.original_message_id is None
    assert detect.match_bounce(o.bounce, [OTHER, SENT]) == detect.Match(3, "dsn-recipient")


def test_a_delay_notice_is_not_a_bounce():
    """Is 'Action: delayed' left alone (still automatic, never a reply)?"""
    o = obs("dsn_delayed.eml")
    assert o.bounce is None and o.auto_reply


@pytest.mark.parametrize("subject,expected", [
    ("Re: Hello Pat", "hello pat"), ("RE: Fwd: hello   pat", "hello pat"),
    ("AW: WG: Hello Pat", "hello pat"), ("Re[2]: Hello Pat", "hello pat"),
    ("SV: Hello Pat", "hello pat"), ("Hello Pat", "hello pat"),
])
def test_subject_normalisation(subject, expected):
    """Are reply and forward prefixes in several languages ignored when comparing?"""
    assert detect.normalise_subject(subject) == expected
