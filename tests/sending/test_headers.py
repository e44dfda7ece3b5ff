"""The header builder: every outbound email's headers, threading and body (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default

import pytest

from server.sending.headers import (
    MAX_RECIPIENTS,
    HeaderError,
    build_message,
    message_bytes,
    parse_address,
    send_id_of,
)

TASK_TAG = "rt_Zm9vYmFyYmF6cXV4MTIzNDU2"  # an opaque task tag (server.tasks.tags)
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
EXPECTED_HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "X-Relay-Send",
                    "MIME-Version", "Content-Type"]


def build(**kw):
    args = dict(send_id=42, sender="Rita Rep <rita@acme.test>", to=["pat@client.test"],
                subject="Hello Pat", html="<p>Hi <b>Pat</b></p>", text="Hi Pat", date=NOW,
                nonce="0123456789abcdef")
    args.update(kw)
    return build_message(**args)


def parsed(message):
    return BytesParser(policy=default).parsebytes(message_bytes(message))


def test_plain_message_headers_and_alternative_body():
    """Does a first email carry our Message-ID, the send id, and text + HTML alternatives?"""
    msg = build(task_tag=TASK_TAG)
    back = parsed(msg)
    assert msg.message_id == "<relay.42.0123456789abcdef@acme.test>"
    assert back["Message-ID"] == msg.message_id
    assert back["X-Relay-Task"] == TASK_TAG
    assert back["X-Relay-Send"] == "42"
    assert back["From"] == "Rita Rep <rita@acme.test>"
    assert back.get_content_type() == "multipart/alternative"
    parts = [p.get_content_type() for p in back.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    assert back.get_body(("plain",)).get_content().strip() == "Hi Pat"
    assert "<b>Pat</b>" in back.get_body(("html",)).get_content()
    assert msg.recipients == ("pat@client.test",)
    assert send_id_of(msg.message_id) == 42
    assert send_id_of("<abc@gmail.com>") is None
    assert b"\r\n" in message_bytes(msg) and b"\n\n" not in message_bytes(msg).replace(
        b"\r\n", b"")


def test_follow_up_threads_with_in_reply_to_and_references():
    """Does a follow-up (E3) carry In-Reply-To and References ending with the previous id?"""
    prev = "<relay.41.aaaaaaaaaaaaaaaa@acme.test>"
    root = "<CAB12345@mail.gmail.com>"
    msg = build(in_reply_to=prev, references=[root], thread_id="18c0ffee")
    back = parsed(msg)
    assert back["In-Reply-To"] == prev
    assert back["References"].split() == [root, prev]
    assert msg.thread_id == "18c0ffee"


def test_text_is_derived_from_html_when_missing():
    """Is the plain-text part derived from the HTML when only HTML is given?"""
    back = parsed(build(text=None, html="<p>Hello <i>there</i></p>"))
    assert "Hello there" in back.get_body(("plain",)).get_content()


def test_quoted_display_names_with_commas_and_quotes_round_trip():
    """Do display names with commas and quotes survive as one address each?"""
    msg = build(to=['"Doe, Pat" <pat@client.test>', '"Sam \\"The Man\\" Lee" <sam@client.test>'],
                cc=["Ann <ann@client.test>"])
    back = parsed(msg)
    assert [a.addr_spec for a in back["To"].addresses] == ["pat@client.test",
                                                          "sam@client.test"]
    assert [a.display_name for a in back["To"].addresses] == ["Doe, Pat", 'Sam "The Man" Lee']
    assert msg.recipients == ("pat@client.test", "sam@client.test", "ann@client.test")


def test_non_ascii_subject_is_encoded_not_rejected():
    """Is a non-ASCII subject accepted and encoded (only `=?` typed by a user is refused)?"""
    back = parsed(build(subject="Réunion à Zürich — 日本"))
    assert back["Subject"] == "Réunion à Zürich — 日本"


INJECTION_SUBJECTS = [
    "Hi\r\nBcc: victim@evil.test",
    "Hi\nBcc: victim@evil.test",
    "Hi\rBcc: victim@evil.test",
    "Hi\x00Bcc: victim@evil.test",
    "Hi\u2028Bcc: victim@evil.test",
    "Hi\u2029Bcc: victim@evil.test",
    "Hi\u0085Bcc: victim@evil.test",
    "Hi\x0bBcc: victim@evil.test",
    "Hi\x0cBcc: victim@evil.test",
    "Hi\x1cBcc: victim@evil.test",
    "=?UTF-8?Q?=0A?=Bcc: victim@evil.test",
    "=?UTF-8?Q?Hi=0D=0ABcc:_victim@evil.test?=",
    "=?utf-8?b?SGkNCkJjYzogdmljdGltQGV2aWwudGVzdA==?=",
    "Hi %0d%0aBcc: victim@evil.test =?x",
]

INJECTION_ADDRESSES = [
    "pat@client.test\r\nBcc: victim@evil.test",
    "pat@client.test\nBcc: victim@evil.test",
    "Pat\u2028Bcc: victim@evil.test <pat@client.test>",
    "=?UTF-8?Q?=0A?= <pat@client.test>",
    "=?UTF-8?Q?Pat=0D=0ABcc:_victim@evil.test?= <pat@client.test>",
    "pat@client.test, victim@evil.test",
    "pat@client.test; victim@evil.test",
    '"pat@client.test" <victim@evil.test>, other@evil.test',
    "Pat <pat@client.test> victim@evil.test",
    "alice@example.org)<bob@example.org",
    '"alice@example.org" <bob@example.org>x',
    "group: a@b.test, c@d.test;",
    "pat@client.test\x00",
    "<>",
    "nobody",
    "pat@",
    "@client.test",
    "pat@client..test",
    "pat@@client.test",
]


@pytest.mark.parametrize("subject", INJECTION_SUBJECTS)
def test_injected_subjects_are_refused(subject):
    """Is every subject carrying a line break, a control or an encoded word refused by name?"""
    with pytest.raises(HeaderError) as err:
        build(subject=subject)
    assert err.value.field == "subject"


@pytest.mark.parametrize("value", INJECTION_ADDRESSES)
def test_injected_addresses_are_refused(value):
    """Is every address that is not exactly one plain address refused, naming its field?"""
    with pytest.raises(HeaderError) as err:
        build(to=[value])
    assert err.value.field == "to[0]"


@pytest.mark.parametrize("value", INJECTION_ADDRESSES[:5])
def test_injected_sender_names_are_refused(value):
    """Is the sender held to the same rules as the recipients?"""
    with pytest.raises(HeaderError) as err:
        build(sender=value)
    assert err.value.field == "from"


@pytest.mark.parametrize("subject", INJECTION_SUBJECTS + ["plain", "Re: Q3 — plan, \"v2\""])
@pytest.mark.parametrize("to", INJECTION_ADDRESSES[:6] + ['"Doe, Pat" <pat@client.test>'])
def test_no_combination_yields_an_extra_header(subject, to):
    """Whatever the input, do the produced bytes parse back to exactly the expected headers?"""
    try:
        msg = build(subject=subject, to=[to])
    except HeaderError:
        return
    back = parsed(msg)
    assert list(back.keys()) == EXPECTED_HEADERS
    assert len(back["To"].addresses) == 1


def test_threading_ids_are_checked():
    """Are In-Reply-To and References refused when they are not <left@right> msg-ids?"""
    for bad in ("<a@b>\r\nBcc: x@y.test", "no-brackets@b", "<a b@c>", "<a@b>>"):
        with pytest.raises(HeaderError) as err:
            build(in_reply_to=bad)
        assert err.value.field == "in_reply_to"
    with pytest.raises(HeaderError) as err:
        build(references=["<ok@x.test>", "<bad>\n"])
    assert err.value.field == "references[1]"


def test_recipient_limit():
    """Are 100 recipients accepted and 101 refused?"""
    many = [f"p{i}@client.test" for i in range(MAX_RECIPIENTS)]
    assert len(build(to=many).recipients) == MAX_RECIPIENTS
    with pytest.raises(HeaderError, match="at most 100"):
        build(to=many, cc=["one.more@client.test"])
    with pytest.raises(HeaderError):
        build(to="pat@client.test")


def test_other_refusals():
    """Are an empty recipient list, no body, a naive date and a bad domain refused?"""
    with pytest.raises(HeaderError, match="at least one"):
        build(to=[])
    with pytest.raises(HeaderError, match="body"):
        build(html=None, text=None)
    with pytest.raises(HeaderError, match="date"):
        build(date=datetime(2026, 1, 1))
    with pytest.raises(HeaderError, match="domain"):
        build(domain="bad domain")
    with pytest.raises(HeaderError, match="at most 998"):
        build(subject="x" * 999)


def test_parse_address_keeps_display_name():
    """Does parse_address split a quoted name and the address?"""
    r = parse_address("to", '"O\'Neil, Kate" <kate@client.test>')
    assert (r.name, r.email) == ("O'Neil, Kate", "kate@client.test")
    assert parse_address("to", "kate@client.test").name == ""


@pytest.mark.parametrize("kw", [
    {},
    {"sender": '"Doe, Zoë" <zoe@acme.test>', "to": ["Łukasz Ż <l@client.test>", "b@c.test"],
     "subject": "Grüße — " + "a long subject that has to be folded " * 6, "task_tag": TASK_TAG},
    {"in_reply_to": "<relay.41.aaaaaaaaaaaaaaaa@acme.test>",
     "references": ["<first@mail.gmail.com>"], "cc": ["cc@client.test"]},
    {"html": "<p>" + "é long line " * 200 + "</p>", "text": None},
    {"html": None, "text": "plain only\n" * 3},
])
def test_cached_header_classes_build_the_very_same_bytes(kw, monkeypatch):
    """Is the email built with the caching header registry byte for byte the stdlib's?"""
    import random
    from email.headerregistry import HeaderRegistry
    from email.policy import SMTP

    import server.sending.headers as headers

    random.seed(7)  # the multipart boundary is drawn from ``random``
    fast = message_bytes(build(**kw))
    monkeypatch.setattr(headers, "POLICY", SMTP)
    monkeypatch.setattr(headers, "_REGISTRY", HeaderRegistry())
    random.seed(7)
    plain = build(**kw).mime.as_bytes(policy=SMTP)
    assert fast == plain
    assert headers._REGISTRY["subject"] is not headers._REGISTRY["subject"]  # stdlib: new
    monkeypatch.undo()
    assert headers._REGISTRY["Subject"] is headers._REGISTRY["subject"]  # cached


@pytest.mark.parametrize("tag", ["7", "rt_short", "rt_Zm9vYmFyYmF6cXV4MTIzNDU2\r\nBcc: x@y.test",
                                 "rt_Zm9vYmFyYmF6cXV4MTIzNDU!"])
def test_x_relay_task_takes_only_an_opaque_tag(tag):
    """Is anything but an opaque tag (a plain task id, a smuggled header) refused?"""
    with pytest.raises(HeaderError) as err:
        build(task_tag=tag)
    assert err.value.field == "task_tag"
