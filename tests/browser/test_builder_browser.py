"""The campaign builder in a real browser: sign in, build a two-day campaign, preview, launch.

Drives Debian's Chromium (``/usr/bin/chromium``, never a downloaded browser) through Playwright
against the app served on 127.0.0.1 (the ``browser``, ``live_server`` and ``page`` fixtures of
``tests/browser/conftest.py``). Skips, saying why, where that Chromium is absent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.models import Campaign, Enrollment
from tests.conftest import World, make_contact, make_template


@pytest.fixture
def tab(page: Any) -> Any:
    """A fresh tab on the live server (``tests/browser/conftest.py``), taller for the builder."""
    page.set_viewport_size({"width": 1280, "height": 1000})
    return page


def _options(tab: Any, name: str) -> list[str]:
    return tab.eval_on_selector(f"select[name='{name}']",
                                "s => Array.from(s.options).map(o => o.value)")


def test_build_a_two_day_campaign_and_launch_it(tab: Any, session: Session, world: World,
                                                 artifacts: Path):
    """Can a rep build a two-day campaign in the builder, preview the plan and launch it?"""
    from playwright.sync_api import expect

    template = make_template(session, world.rep, "Intro")
    make_contact(session, world.rep, "ada@example.com", first_name="Ada", last_name="Lovelace")
    session.commit()

    tab.goto("/sign-in")
    tab.fill("input[name=email]", "rep@a.test")
    tab.fill("input[name=password]", "secret-pw")
    tab.click("button[type=submit]:not(.link)")
    tab.wait_for_url(re.compile(r"/$"))

    tab.goto("/campaigns/new")
    tab.get_by_label("Name", exact=True).fill("Two days")
    # Day 1: the first email offers exactly the S1 options; at_time shows the time field.
    assert _options(tab, "steps-0-send_option") == ["", "choose_at_launch", "at_time", "task"]
    expect(tab.locator("#steps-0-send_time")).to_be_hidden()
    tab.select_option("#steps-0-send_option", "at_time")
    expect(tab.locator("#steps-0-send_time")).to_be_visible()
    tab.fill("#steps-0-send_time", "09:30")
    tab.select_option("#steps-0-template_id", str(template.id))
    expect(tab.locator("#steps-0-follow_up")).to_be_hidden()  # nothing before it (S4)

    # Day 2: a later email offers the S2 options and the follow-up box; a call has neither.
    tab.click("#add-day")
    expect(tab.locator("#groups-1-day")).to_have_value("2")
    assert _options(tab, "steps-1-send_option") == ["", "same_as_previous", "at_time", "task"]
    expect(tab.locator("#steps-1-follow_up")).to_be_visible()
    tab.select_option("#steps-1-send_option", "same_as_previous")
    tab.select_option("#steps-1-template_id", str(template.id))
    tab.check("#steps-1-follow_up")
    tab.select_option("#groups-1-new_type", "call")
    tab.locator("[data-add-step]").nth(1).click()
    expect(tab.locator("#steps-2-type")).to_have_value("call")
    expect(tab.locator("#steps-2-send_option")).to_be_hidden()
    tab.fill("#steps-2-title", "Call Ada")
    # A follow-up right after a call is not offered (S4).
    tab.locator("[data-add-step]").nth(1).click()
    expect(tab.locator("#steps-3-follow_up")).to_be_hidden()
    tab.locator("[data-remove-step]").nth(3).click()
    expect(tab.locator("#steps-3-type")).to_have_count(0)

    tab.screenshot(path=str(artifacts / "builder.png"), full_page=True)

    tab.click("#save")
    expect(tab.get_by_role("status")).to_contain_text("Saved “Two days”.")
    session.rollback()
    campaign = session.scalars(select(Campaign)).one()
    assert [(s.day, s.type.value, s.send_option and s.send_option.value, s.follow_up)
            for s in campaign.steps] == [(1, "email", "at_time", False),
                                         (2, "email", "same_as_previous", True),
                                         (2, "call", None, False)]

    tab.get_by_role("link", name="Launch…").click()
    tab.get_by_label(re.compile("Ada Lovelace")).check()
    tab.click("#preview-button")
    preview = tab.locator("#preview")
    expect(preview).to_contain_text("Plan for Ada Lovelace")
    expect(preview.locator("tbody tr")).to_have_count(3)
    expect(preview).to_contain_text("UTC")
    tab.screenshot(path=str(artifacts / "launch-preview.png"), full_page=True)
    assert session.scalars(select(Enrollment)).first() is None

    tab.click("#confirm-button")
    expect(tab.locator("#launch-result")).to_contain_text("Added 1 person")
    expect(tab.locator("#enrolled")).to_contain_text("Ada Lovelace")
    session.rollback()
    assert len(session.scalars(select(Enrollment)).all()) == 1
