"""In a real browser: from the Command Center to a filled compose window, and scheduling it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from server.compose.models import Template
from server.db import utcnow
from server.feed.models import EventKind
from server.feed.service import record
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus
from tests.conftest import World, email_step, make_campaign, make_contact

BODY = ("<p>Hi {{first_name}},</p><p>{{! Introduce yourself}}</p>"
        "<p>Best,<br>{{my_name}}</p>")


def email_task(session: Session, world: World) -> Task:
    """An email task for rep@a.test (Europe/Paris) whose template has a field prompt."""
    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name="Intro",
                   subject="Hello {{first_name}}", body_html=BODY)
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)],
                             name="Spring outreach")
    contact = make_contact(session, world.rep, "grace@example.com", first_name="Grace",
                           last_name="Hopper", company="Initech")
    launch(session, world.rep, campaign, [contact.id], now=utcnow())
    session.commit()
    task = session.scalar(select(Task).where(Task.contact_id == contact.id))
    assert task is not None
    return task


def sign_in(page: Any) -> None:
    page.goto("/sign-in")
    page.get_by_label("Email").fill("rep@a.test")
    page.get_by_label("Password").fill("secret-pw")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/")


def test_rep_schedules_an_email_task_from_the_command_center(page: Any, session: Session,
                                                             world: World, artifacts: Path):
    """Can a rep sign in, open an email task, fill its prompt, schedule it, and see it listed?"""
    task = email_task(session, world)
    sign_in(page)
    assert page.get_by_role("heading", name="Command Center").is_visible()
    page.get_by_text("Live Feed").wait_for()
    page.screenshot(path=str(artifacts / "command-center.png"), full_page=True)

    page.get_by_role("link", name=task.title).click()
    page.wait_for_url(f"**/tasks/{task.id}/compose")
    assert "grace@example.com" in page.locator("#to").inner_text()
    assert "Grace Hopper" in page.locator("#to").inner_text()
    assert page.get_by_label("Subject").input_value() == "Hello Grace"
    editor = page.locator("#body-editor")
    assert "Hi Grace," in editor.inner_text() and "Best," in editor.inner_text()
    assert page.locator("mark.prompt").count() == 1
    schedule = page.get_by_role("button", name="Schedule")
    assert schedule.is_disabled() and page.get_by_role("button", name="Send now").is_disabled()

    # Select the highlighted prompt and type over it, as a rep would.
    editor.click()
    page.evaluate("""() => {
        const range = document.createRange();
        range.selectNode(document.querySelector('mark.prompt'));
        const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
    }""")
    page.keyboard.type("We met at the Lisbon fair last week.")
    assert schedule.is_enabled()
    assert "All prompts replaced" in page.locator("#prompt-status").inner_text()

    local = (utcnow() + timedelta(days=1)).astimezone(ZoneInfo("Europe/Paris"))
    page.get_by_label("Date").fill(local.strftime("%Y-%m-%d"))
    page.get_by_label("Time (Europe/Paris)").fill("09:30")
    page.screenshot(path=str(artifacts / "compose-window.png"), full_page=True)
    schedule.click()

    page.wait_for_url("**/?tab=scheduled")
    assert page.get_by_role("link", name="Scheduled").get_attribute("aria-current") == "page"
    row = page.locator("table tbody tr").filter(has_text="Hello Grace")
    assert row.count() == 1
    assert f"{local:%a %d %b} 09:30" in row.inner_text()
    assert "grace@example.com" in row.inner_text()
    assert "mailbox is not connected" in page.content()
    page.screenshot(path=str(artifacts / "command-center-scheduled.png"), full_page=True)

    session.rollback()  # end the snapshot taken before the browser wrote
    send = session.scalar(select(ScheduledSend).where(ScheduledSend.task_id == task.id))
    assert send is not None and send.status is SendStatus.SCHEDULED
    assert "Lisbon fair" in send.html and "{{!" not in send.html and "<mark" not in send.html
    assert "Lisbon fair" in send.text
    assert send.due_at.astimezone(ZoneInfo("Europe/Paris")).strftime("%H:%M") == "09:30"
    assert session.get(Task, task.id).status is TaskStatus.OPEN


def test_live_feed_shows_new_events_as_they_happen(page: Any, session: Session, world: World):
    """Does the Live Feed panel (EventSource with the session cookie) show a new event live?"""
    sign_in(page)
    page.locator("#feed-state.on").wait_for()
    record(session, org_id=world.org.id, owner_id=world.rep.id, kind=EventKind.TASK_CREATED,
           summary="New task: Call Ada — live", data={})
    session.commit()
    page.locator("#feed-list li").filter(has_text="Call Ada — live").wait_for()
