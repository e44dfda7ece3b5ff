"""The launch preview speaks plain sentences: the plan's reasons without rule codes (P1, T8)."""

# Test docstrings are the question the test answers (CONVENTIONS), so they end in "?".

from __future__ import annotations

import re
from datetime import UTC, datetime, time

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from server.campaigns.spec import SendOption
from tests.conftest import World, email_step, make_campaign, make_contact, make_template
from tests.web.test_campaigns import sign_in

#: A rule code as docs/send-options.md numbers them (T8, E5…): never on a page.
RULE_CODE = re.compile(r"\b[CSTEPX]\d{1,2}\b")


def test_T8_launch_preview_explains_the_spring_forward_gap_without_rule_codes(
        client: FlaskClient, session: Session, world: World, monkeypatch: pytest.MonkeyPatch):
    """Preview for a 02:30 email on 28 Mar 2027: 03:30 explained in words, with no rule code?"""
    monkeypatch.setattr("server.web.campaigns.utcnow",
                        lambda: datetime(2027, 3, 20, 12, 0, tzinfo=UTC))
    tpl = make_template(session, world.rep)
    camp = make_campaign(session, world.rep, [
        email_step(1, SendOption.AT_TIME, tpl, send_time=time(2, 30)),
        email_step(2, SendOption.SAME_AS_PREVIOUS, tpl),
    ], name="Night", timezone="Europe/Paris")
    ada = make_contact(session, world.rep, "ada@example.com", first_name="Ada")
    session.commit()
    token = sign_in(client)
    r = client.post(f"/campaigns/{camp.id}/launch", data={
        "csrf": token, "action": "preview", "start_date": "2027-03-28", "start_time": "00:30",
        "contact_ids": [ada.id]})
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert "Sun 28 Mar 2027 03:30" in page
    assert "02:30 does not exist that night (clocks go forward), so 03:30" in page
    assert "same time as previous email (day 1, 03:30)" in page
    assert RULE_CODE.findall(page) == []
