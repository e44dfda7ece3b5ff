"""The Salesforce admin page in a real browser: live subject preview, saving the settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.salesforce.models import SalesforceConnection
from tests.conftest import World


def test_subject_template_preview_follows_typing_and_saves(page: Any, session: Session,
                                                           world: World, artifacts: Path):
    """Does the preview follow the template as the admin types, name a bad field, and save?"""
    from playwright.sync_api import expect

    page.goto("/sign-in")
    page.fill("input[name=email]", "admin@a.test")
    page.fill("input[name=password]", "secret-pw")
    page.click("button[type=submit]:not(.link)")
    page.wait_for_url(re.compile(r"/$"))
    page.get_by_role("link", name="Salesforce").click()
    expect(page.get_by_text("Not connected")).to_be_visible()
    preview = page.locator("#sf-preview")
    expect(preview).to_have_text("Email: Quick question about your Q3 plans")

    template = page.get_by_label("Activity subject")
    template.fill("[{{sales_campaign_name}} d{{sales_campaign_day}}] {{activity_subject}}")
    expect(preview).to_have_text("[Q3 outreach d2] Quick question about your Q3 plans")
    template.fill("{{activity_type}} {{first_name}}")
    expect(preview).to_contain_text("unknown field {{first_name}}")

    template.fill("{{activity_type}} · {{activity_subject}}")
    page.get_by_label("Sync reminder tasks").check()
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_text("Settings saved.")).to_be_visible()
    page.screenshot(path=str(artifacts / "salesforce-admin.png"), full_page=True)
    session.commit()
    conn = session.scalar(select(SalesforceConnection))
    assert conn is not None
    assert (conn.subject_template, conn.sync_reminders) == (
        "{{activity_type}} · {{activity_subject}}", True)
