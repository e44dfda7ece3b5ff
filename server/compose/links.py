"""Deep links that open a filled compose window in Gmail, Outlook on the web or a mail client.

Pure functions. A link carries the plain-text body (none of these hosts takes HTML), every
value percent-encoded with ``%20`` for spaces (``urllib.parse.quote``, never ``quote_plus``:
Outlook on the web shows a ``+`` as a plus sign). Browsers, proxies and the hosts themselves
cut URLs somewhere after about 2,000 characters, so a link longer than :data:`MAX_LINK` is
not offered at all (``None``, with ``truncated: true``) rather than silently losing the end of
the email; clients then fill the draft through the add-in paths instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

#: The longest link offered, in characters.
MAX_LINK = 2000

GMAIL_COMPOSE = "https://mail.google.com/mail/?view=cm&fs=1"
OUTLOOK_COMPOSE = "https://outlook.office.com/mail/deeplink/compose"


def _q(value: str) -> str:
    """Percent-encode a query value: spaces as %20, ``@`` kept, everything else reserved."""
    return quote(value, safe="@")


def _lines(text: str, newline: str) -> str:
    """``text`` with every line break (CRLF, CR or LF) written as ``newline``."""
    return newline.join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))


def gmail_link(to: Sequence[str], subject: str, body: str) -> str:
    """Gmail's full-window compose view (``view=cm``) with recipients, subject (``su``), body."""
    return (f"{GMAIL_COMPOSE}&to={_q(','.join(to))}&su={_q(subject)}"
            f"&body={_q(_lines(body, chr(10)))}")


def outlook_web_link(to: Sequence[str], subject: str, body: str) -> str:
    """Outlook on the web's compose deep link with recipients, subject and body."""
    return (f"{OUTLOOK_COMPOSE}?to={_q(','.join(to))}&subject={_q(subject)}"
            f"&body={_q(_lines(body, chr(10)))}")


def mailto_link(to: Sequence[str], subject: str, body: str) -> str:
    """An RFC 6068 ``mailto:`` URI; line breaks in the body are CRLF (``%0D%0A``), as it asks."""
    addresses = ",".join(quote(a, safe="@") for a in to)
    return (f"mailto:{addresses}?subject={_q(subject)}"
            f"&body={_q(_lines(body, chr(13) + chr(10)))}")


def compose_links(to: Sequence[str], subject: str, body: str,
                  limit: int = MAX_LINK) -> dict[str, Any]:
    """The prefill document's ``links``: each link, or None when longer than ``limit``.

    ``truncated`` is true when at least one link was left out for its length.
    """
    links: dict[str, Any] = {
        "gmail": gmail_link(to, subject, body),
        "outlook_web": outlook_web_link(to, subject, body),
        "mailto": mailto_link(to, subject, body),
    }
    truncated = False
    for name, url in links.items():
        if len(url) > limit:
            links[name] = None
            truncated = True
    links["truncated"] = truncated
    return links


def no_links() -> dict[str, Any]:
    """The ``links`` of a document that cannot be sent (blocked, or without a recipient)."""
    return {"gmail": None, "outlook_web": None, "mailto": None, "truncated": False}
