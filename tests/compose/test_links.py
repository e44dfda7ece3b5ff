"""Deep links into Gmail, Outlook on the web and mail clients: encoding and the length limit."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from server.compose.links import (
    MAX_LINK,
    compose_links,
    gmail_link,
    mailto_link,
    outlook_web_link,
)

TO = ["pat.doe+sales@initech.test"]


def test_gmail_link_round_trips() -> None:
    """Does Gmail's compose link carry to, su and body exactly, after view=cm&fs=1?"""
    url = gmail_link(TO, "Q&A: 50% off?", "Line one\nLine two & more = fun #1")
    assert url.startswith("https://mail.google.com/mail/?view=cm&fs=1&to=")
    query = parse_qs(urlsplit(url).query)
    assert query == {"view": ["cm"], "fs": ["1"], "to": TO, "su": ["Q&A: 50% off?"],
                     "body": ["Line one\nLine two & more = fun #1"]}


def test_outlook_link_uses_percent_20_and_round_trips() -> None:
    """Does Outlook's deep link write spaces as %20 (a '+' would show as a plus sign)?"""
    url = outlook_web_link(TO, "A quick question", "Hi Pat,\n\nTwo words")
    assert url.startswith("https://outlook.office.com/mail/deeplink/compose?to=")
    assert "subject=A%20quick%20question" in url
    assert "body=Hi%20Pat%2C%0A%0ATwo%20words" in url
    assert "to=pat.doe%2Bsales@initech.test" in url  # a literal '+' would read as a space
    query = parse_qs(urlsplit(url).query)
    assert query == {"to": TO, "subject": ["A quick question"],
                     "body": ["Hi Pat,\n\nTwo words"]}


def test_mailto_follows_rfc_6068() -> None:
    """Is the mailto: URI percent-encoded with CRLF line breaks (RFC 6068, section 5)?"""
    url = mailto_link(TO, "Hello there", "One\nTwo\r\nThree")
    assert url == ("mailto:pat.doe%2Bsales@initech.test?subject=Hello%20there"
                   "&body=One%0D%0ATwo%0D%0AThree")
    addr, _, query = url[len("mailto:"):].partition("?")
    assert unquote(addr) == TO[0]
    assert parse_qs(query)["body"] == ["One\r\nTwo\r\nThree"]


def test_unicode_is_utf8_percent_encoded() -> None:
    """Are non-ASCII characters sent as UTF-8 percent escapes?"""
    url = outlook_web_link(["zoe@example.test"], "Café", "Grüße")
    assert "subject=Caf%C3%A9" in url and "body=Gr%C3%BC%C3%9Fe" in url


def test_the_limit_is_2000_characters_per_link() -> None:
    """Is a link of exactly 2,000 characters kept and one of 2,001 left out?"""
    to, subject = ["a@b.test"], "S"
    base = len(mailto_link(to, subject, ""))
    at_limit = compose_links(to, subject, "x" * (MAX_LINK - base))
    assert len(at_limit["mailto"]) == 2000
    over = compose_links(to, subject, "x" * (MAX_LINK - base + 1))
    assert over["mailto"] is None and over["truncated"] is True
    # The longer Outlook and Gmail links crossed the limit earlier.
    assert at_limit["outlook_web"] is None and at_limit["truncated"] is True


def test_short_links_are_all_offered() -> None:
    """Does a short email get all three links and truncated: false?"""
    links = compose_links(TO, "Hi", "Short body")
    assert links["truncated"] is False
    assert all(links[k] for k in ("gmail", "outlook_web", "mailto"))
