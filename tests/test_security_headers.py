"""Security headers: no page can be framed by another site, sniffed, or leak its address.

Add-in pages keep the ``frame-ancestors`` that lets Outlook frame them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.addins.outlook.views import OUTLOOK_FRAME_ANCESTORS
from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from server.tasks.models import Task
from tests.conftest import World, email_step, make_campaign, make_contact, make_template
from tests.web.test_campaigns import sign_in

#: Routes left out of the walk: streams that hold the connection open.
_SKIP = ("stream", "/events")


def _frame_ancestors(csp: str) -> list[str]:
    for part in csp.split(";"):
        words = part.split()
        if words and words[0] == "frame-ancestors":
            return words[1:]
    return []


def _pages(app: Flask) -> list[str]:
    """Every GET route that takes no argument (pages, manifests, JSON), outside the add-in."""
    out = []
    for rule in app.url_map.iter_rules():
        if ("GET" in (rule.methods or ()) and not rule.arguments
                and not any(s in rule.rule for s in _SKIP)):
            out.append(rule.rule)
    return sorted(out)


def test_every_page_sends_the_security_headers(app: Flask, client: FlaskClient, world: World):
    """Does every GET route, signed in or not, forbid framing by others, sniffing, referrers?

    Outlook's add-in pages keep their own frame-ancestors.
    """
    pages = _pages(app)
    assert "/campaigns" in pages and "/sign-in" in pages and "/openapi.json" in pages
    for signed_in in (False, True):
        if signed_in:
            sign_in(client)
        for path in pages:
            r = client.get(path)
            r.close()
            csp = r.headers.get("Content-Security-Policy", "")
            ancestors = _frame_ancestors(csp)
            if path.startswith("/addin/outlook/"):
                assert set(OUTLOOK_FRAME_ANCESTORS) <= set(ancestors), path
            else:
                assert ancestors in (["'self'"], ["'none'"]), (path, csp)
            assert r.headers.get("X-Content-Type-Options") == "nosniff", path
            assert r.headers.get("Referrer-Policy") in (
                "strict-origin-when-cross-origin", "same-origin", "no-referrer"), path


@pytest.mark.parametrize("path", ["/addin/outlook/taskpane.html", "/addin/outlook/sign-in"])
def test_addin_pages_keep_their_outlook_frame_ancestors(client: FlaskClient, path: str):
    """Are the Outlook add-in pages still frameable by Outlook, and only by Outlook?"""
    r = client.get(path)
    r.close()
    ancestors = _frame_ancestors(r.headers["Content-Security-Policy"])
    assert ancestors[0] == "'self'" and set(ancestors[1:]) == set(OUTLOOK_FRAME_ANCESTORS)
    assert "X-Frame-Options" not in r.headers


def test_signed_in_compose_page_cannot_be_framed(client: FlaskClient, session: Session,
                                                 world: World):
    """Is the signed-in compose window of an email task sent with frame-ancestors 'self'?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)])
    contact = make_contact(session, world.rep, "ada@example.com")
    launch(session, world.rep, campaign, [contact.id], now=datetime(2026, 11, 24, tzinfo=UTC))
    session.commit()
    task_id = session.scalar(select(Task.id))
    sign_in(client)
    r = client.get(f"/tasks/{task_id}/compose")
    assert r.status_code == 200
    assert _frame_ancestors(r.headers["Content-Security-Policy"]) in (["'self'"], ["'none'"])
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
