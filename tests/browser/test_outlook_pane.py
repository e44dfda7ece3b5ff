"""In a real browser: the Outlook task pane from the Flask server, with Office.js stubbed.

The Office.js CDN URL is routed to ``office_stub.js``, which records every Office call; the
tests compare the recorded arguments with the task's prefill document from the server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.service import create_token
from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from server.compose.models import Template
from server.db import utcnow
from server.tasks.models import CompletedVia, Task, TaskStatus
from tests.conftest import World, email_step, make_campaign, make_contact

OFFICE_JS = "https://appsforoffice.microsoft.com/lib/1/hosted/office.js"
STUB = (Path(__file__).parent / "office_stub.js").read_text()


def email_task(session: Session, world: World, *, body: str, email: str, first: str,
               last: str, company: str = "Initech", campaign: str = "Spring outreach") -> Task:
    """An open email task of rep@a.test with a template of ``body``."""
    tpl = Template(org_id=world.org.id, created_by_id=world.rep.id, name=f"T {email}",
                   subject="Hello {{first_name}}", body_html=body)
    session.add(tpl)
    session.flush()
    camp = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)],
                         name=campaign)
    contact = make_contact(session, world.rep, email, first_name=first, last_name=last,
                           company=company)
    launch(session, world.rep, camp, [contact.id], now=utcnow())
    session.commit()
    task = session.scalar(select(Task).where(Task.contact_id == contact.id))
    assert task is not None
    return task


@pytest.fixture
def pane(page: Any, session: Session, world: World) -> Any:
    """Open the task pane with Office.js stubbed; ``open(mode, signed_in=True)``."""
    token = create_token(session, world.rep, "Outlook add-in", scope="outlook")
    session.commit()
    page.set_viewport_size({"width": 360, "height": 720})  # an Outlook task pane's width
    page.route(OFFICE_JS, lambda route: route.fulfill(
        status=200, content_type="text/javascript", body=STUB))

    def open_(mode: str, *, signed_in: bool = True, sets: dict[str, str] | None = None) -> str:
        config = {"mode": mode, "dialogToken": token,
                  "sets": sets or {"Mailbox": "1.13", "DialogApi": "1.2"}}
        page.add_init_script(f"window.__officeConfig = {json.dumps(config)};"
                             + (f"localStorage.setItem('relay.outlook.token', {json.dumps(token)});"
                                if signed_in else ""))
        page.goto("/addin/outlook/taskpane.html")
        page.wait_for_selector("body[data-ready=true]")
        return token

    return open_


def calls(page: Any) -> list[dict[str, Any]]:
    """The Office calls the stub recorded."""
    result: list[dict[str, Any]] = page.evaluate("window.__officeCalls")
    return result


def prefill_of(client: FlaskClient, token: str, task: Task) -> dict[str, Any]:
    resp = client.get(f"/api/tasks/{task.id}/prefill",
                      headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    doc: dict[str, Any] = resp.json
    return doc


def pick(page: Any, name: str) -> None:
    """Show every open task, then choose the one of contact ``name``."""
    page.select_option("#due", "all")
    page.locator(".task", has_text=name).click()
    page.locator("#preview:not([hidden])").wait_for()


def test_fill_this_message_sets_to_subject_and_body_from_the_prefill(
        pane: Any, page: Any, client: FlaskClient, session: Session, world: World,
        artifacts: Path):
    """In compose mode, does Fill set To, Subject and the HTML body (in order) from the prefill?"""
    task = email_task(session, world, body="<p>Hi {{first_name}},</p><p>Best,<br>{{my_name}}</p>",
                      email="grace@example.com", first="Grace", last="Hopper")
    email_task(session, world, body="<p>Hello {{first_name}}</p>", email="alan@example.com",
               first="Alan", last="Turing", company="Acme")
    token = pane("compose")
    page.select_option("#due", "all")
    page.locator(".task").nth(1).wait_for()
    assert page.locator(".task").count() == 2
    page.fill("#search", "initech")
    assert page.locator(".task").count() == 1
    pick(page, "Grace Hopper")
    assert page.locator("#preview-subject").inner_text() == "Hello Grace"
    assert page.locator("#open-new").is_hidden()
    page.get_by_role("button", name="Fill this message").click()
    page.locator("#status.success").wait_for()

    doc = prefill_of(client, token, task)
    recorded = calls(page)
    assert [c["name"] for c in recorded] == [
        "to.setAsync", "subject.setAsync", "body.getTypeAsync", "body.setAsync",
        "internetHeaders.setAsync"]
    assert recorded[0]["args"] == [[{"displayName": r["name"], "emailAddress": r["email"]}
                                    for r in doc["to"]]]
    assert recorded[0]["args"][0][0]["emailAddress"] == "grace@example.com"
    assert recorded[1]["args"] == [doc["subject"]]
    assert recorded[3]["args"] == [doc["html"], {"coercionType": "html"}]
    assert "Hi Grace," in doc["html"]
    page.screenshot(path=str(artifacts / "outlook-taskpane.png"), full_page=True)

    session.rollback()  # a fresh snapshot: the server committed in another connection
    # The header carries the task's opaque tag, never its sequential id.
    from server.tasks.tags import TaskTag

    tag = session.scalar(select(TaskTag.tag).where(TaskTag.task_id == task.id))
    assert tag is not None and recorded[4]["args"] == [{"x-relay-task": tag}]
    opened = session.get(Task, task.id)
    assert opened is not None and opened.opened_via is CompletedVia.OUTLOOK

    page.get_by_role("button", name="Mark as sent").click()
    page.locator("#status.success", has_text="Marked as sent").wait_for()
    session.rollback()  # a fresh snapshot: the server committed in another connection
    done = session.get(Task, task.id)
    assert done is not None and done.status is TaskStatus.DONE and done.via is CompletedVia.OUTLOOK
    assert page.locator(".task").count() == 0  # the search still filters to Initech


def test_open_in_new_message_uses_display_new_message_form(pane: Any, page: Any,
                                                          client: FlaskClient, session: Session,
                                                          world: World):
    """In read mode, does Open in new message pass the prefill to displayNewMessageForm?"""
    task = email_task(session, world, body="<p>Hi {{first_name}}</p>",
                      email="grace@example.com", first="Grace", last="Hopper")
    token = pane("read")
    pick(page, "Grace Hopper")
    assert page.locator("#fill").is_hidden()
    page.get_by_role("button", name="Open in new message").click()
    page.locator("#status.success").wait_for()
    doc = prefill_of(client, token, task)
    assert calls(page) == [{"name": "displayNewMessageForm", "args": [{
        "toRecipients": [{"displayName": "Grace Hopper", "emailAddress": "grace@example.com"}],
        "subject": doc["subject"], "htmlBody": doc["html"]}]}]


def test_a_body_over_32_kb_is_not_sent_to_display_new_message_form(pane: Any, page: Any,
                                                                  client: FlaskClient,
                                                                  session: Session, world: World):
    """With no item and a body over 32 KB, is the rep told to fill a new message instead?"""
    body = "<p>Hi {{first_name}}</p>" + "<p>" + "lorem ipsum dolor " * 2000 + "</p>"
    task = email_task(session, world, body=body, email="grace@example.com", first="Grace",
                      last="Hopper")
    token = pane("none")
    assert len(prefill_of(client, token, task)["html"].encode()) > 32 * 1024
    pick(page, "Grace Hopper")
    page.get_by_role("button", name="Open in new message").click()
    status = page.locator("#status.warning")
    status.wait_for()
    assert "Start a new message" in status.inner_text()
    assert "(at most 32 KB)" in status.inner_text()
    assert calls(page) == []


def test_a_blocked_task_says_why_and_fills_nothing(pane: Any, page: Any, session: Session,
                                                  world: World):
    """Does a task with a missing field show the field and keep Fill disabled?"""
    email_task(session, world, body="<p>Hi {{first_name}} in {{custom_field_region}}</p>",
               email="noregion@example.com", first="Ada", last="Lovelace")
    pane("compose")
    pick(page, "Ada Lovelace")
    blocked = page.locator("#preview-blocked")
    assert blocked.is_visible() and "custom_field_region" in blocked.inner_text()
    assert page.locator("#fill").is_disabled()
    assert calls(page) == []


def test_signing_in_through_the_office_dialog(pane: Any, page: Any, session: Session,
                                              world: World):
    """Without a token, does Sign in open Relay's sign-in dialog and use the token it returns?"""
    email_task(session, world, body="<p>Hi</p>", email="grace@example.com", first="Grace",
               last="Hopper")
    pane("compose", signed_in=False)
    assert page.locator("#signed-out").is_visible()
    page.get_by_role("button", name="Sign in to Relay").click()
    page.locator("#tasks-view:not([hidden])").wait_for()
    recorded = calls(page)
    assert recorded[0]["name"] == "displayDialogAsync"
    assert recorded[0]["args"][0].endswith("/addin/outlook/sign-in")
    assert page.locator("#who").inner_text() == world.rep.name
    assert page.evaluate("localStorage.getItem('relay.outlook.token')").startswith("rly_")
