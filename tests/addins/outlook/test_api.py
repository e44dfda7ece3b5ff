"""The add-in's API (send reports), the hosted pages' headers, CORS, and the admin page."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.service import create_token
from server.addins.outlook.models import TaskSendReport
from server.addins.outlook.service import tagged_task_id
from server.campaigns.launch import launch
from server.campaigns.spec import SendOption, StepType
from server.db import utcnow
from server.feed.models import EventKind, FeedEvent
from server.tasks.models import Task
from tests.conftest import World, email_step, make_campaign, make_contact, make_template, task_step


def tasks_of(session: Session, world: World) -> tuple[Task, Task]:
    """An email task and a call task of rep@a.test."""
    tpl = make_template(session, world.rep)
    email = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)],
                          name="Email")
    call = make_campaign(session, world.rep, [task_step(1, StepType.CALL, "Call")],
                         name="Call")
    contact = make_contact(session, world.rep, "grace@example.com", first_name="Grace")
    launch(session, world.rep, email, [contact.id], now=utcnow())
    launch(session, world.rep, call, [contact.id], now=utcnow())
    session.commit()
    rows = session.scalars(select(Task).order_by(Task.id)).all()
    by_type = {t.type: t for t in rows}
    return by_type[StepType.EMAIL], by_type[StepType.CALL]


def addin_auth(session: Session, world: World) -> dict[str, str]:
    token = create_token(session, world.rep, "Outlook add-in", scope="outlook")
    session.commit()
    return {"Authorization": f"Bearer {token}"}


def test_the_send_handler_report_is_recorded_once_on_the_task(client: FlaskClient,
                                                              session: Session, world: World):
    """Does "sending" record a report and one Live Feed event, counting later reports?"""
    email, _ = tasks_of(session, world)
    auth = addin_auth(session, world)
    first = client.post(f"/api/outlook/tasks/{email.id}/sending", headers=auth, json={})
    assert first.status_code == 200 and first.json == {"first": True}
    again = client.post(f"/api/outlook/tasks/{email.id}/sending", headers=auth, json={})
    assert again.json == {"first": False}
    session.rollback()
    report = session.get(TaskSendReport, email.id)
    assert report is not None and report.reports == 2
    events = session.scalars(select(FeedEvent).where(FeedEvent.kind == EventKind.TASK_SENDING)
                             ).all()
    assert [e.data["task_id"] for e in events] == [email.id]
    assert events[0].summary.startswith("Sending from Outlook")
    # A report is not a completion: the task stays open until confirmed or marked as sent.
    assert session.get(Task, email.id).status.value == "open"


def test_sending_reports_are_refused_for_other_tasks(client: FlaskClient, session: Session,
                                                     world: World):
    """Is another rep's task a 404, a call task a 409, and no token a 401?"""
    email, call = tasks_of(session, world)
    assert client.post(f"/api/outlook/tasks/{email.id}/sending", json={}).status_code == 401
    other = client.post(f"/api/outlook/tasks/{email.id}/sending",
                        headers=world.auth(world.rep2), json={})
    assert other.status_code == 404
    assert client.post(f"/api/outlook/tasks/{call.id}/sending",
                       headers=addin_auth(session, world), json={}).status_code == 409


def test_the_task_header_is_parsed_strictly():
    """Is x-relay-task read case-insensitively, and anything but a number ignored?"""
    assert tagged_task_id({"X-Relay-Task": " 42 "}) == 42
    assert tagged_task_id({"x-relay-task": "42\r\nBcc: x"}) is None
    assert tagged_task_id({"x-other": "1"}) is None


def test_add_in_pages_may_be_framed_by_outlook_only(client: FlaskClient):
    """Do add-in pages carry a CSP with Outlook's frame-ancestors and no X-Frame-Options?"""
    for path in ("/addin/outlook/taskpane.html", "/addin/outlook/sign-in",
                 "/addin/outlook/commands.html"):
        with client.get(path) as resp:
            assert resp.status_code == 200
            csp = resp.headers["Content-Security-Policy"]
            ancestors = next(d for d in csp.split("; ") if d.startswith("frame-ancestors"))
            assert "https://outlook.office.com" in ancestors
            assert "https://outlook.office365.com" in ancestors
            assert "*" not in ancestors.replace("https://*.", "")
            assert "script-src 'self' https://appsforoffice.microsoft.com" in csp
            assert "X-Frame-Options" not in resp.headers


def test_cors_answers_only_the_add_in_origin(app: Flask, client: FlaskClient, world: World):
    """Is the API's CORS limited to PUBLIC_URL's origin (no wildcard, others get nothing)?"""
    app.config["PUBLIC_URL"] = "https://relay.example.com"
    ok = client.options("/api/tasks", headers={
        "Origin": "https://relay.example.com", "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://relay.example.com"
    assert "Authorization" in ok.headers["Access-Control-Allow-Headers"]
    get = client.get("/api/tasks", headers={"Origin": "https://relay.example.com",
                                            **world.auth(world.rep)})
    assert get.headers["Access-Control-Allow-Origin"] == "https://relay.example.com"
    assert "Origin" in get.headers["Vary"]
    evil = client.get("/api/tasks", headers={"Origin": "https://evil.example",
                                             **world.auth(world.rep)})
    assert "Access-Control-Allow-Origin" not in evil.headers


def test_the_well_known_file_lists_the_event_script(app: Flask, client: FlaskClient):
    """Does /.well-known/microsoft-officeaddins-allowed.json allow events.js of this origin?"""
    app.config["PUBLIC_URL"] = "https://relay.example.com"
    resp = client.get("/.well-known/microsoft-officeaddins-allowed.json")
    assert resp.json == {"allowed": ["https://relay.example.com/addin/outlook/events.js"]}


def sign_in(client: FlaskClient, email: str) -> None:
    import re

    page = client.get("/sign-in").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    client.post("/sign-in", data={"csrf": csrf, "email": email, "password": "secret-pw"})


def test_the_admin_page_is_for_admins_and_shows_what_to_fix(client: FlaskClient, world: World):
    """Does an admin see downloads, the manifest URL, steps and the http warning; a rep not?"""
    assert client.get("/admin/outlook").status_code == 302
    sign_in(client, "rep@a.test")
    assert client.get("/admin/outlook").status_code == 403
    assert b"/admin/outlook" not in client.get("/").data
    admin = FlaskClient(client.application)
    sign_in(admin, "admin@a.test")
    assert b'href="/admin/outlook"' in admin.get("/").data
    page = admin.get("/admin/outlook").get_data(as_text=True)
    assert "PUBLIC_URL is not https (http://127.0.0.1:5000): Outlook will refuse" in page
    assert 'value="http://127.0.0.1:5000/manifests/outlook.xml"' in page
    assert "Integrated apps" in page and "Upload custom apps" in page
    assert 'href="http://127.0.0.1:5000/manifests/outlook-app.zip"' in page


def test_the_admin_page_passes_a_production_configuration(app: Flask, client: FlaskClient,
                                                          world: World):
    """With an https PUBLIC_URL, does the admin page say the manifest passes every check?"""
    app.config["PUBLIC_URL"] = "https://relay.example.com"
    sign_in(client, "admin@a.test")
    page = client.get("/admin/outlook").get_data(as_text=True)
    assert 'id="problems-ok"' in page and 'id="problems"' not in page


def test_the_add_in_api_is_in_the_openapi_document(client: FlaskClient):
    """Are /api/outlook endpoints described in /openapi.json?"""
    paths: dict[str, Any] = client.get("/openapi.json").json["paths"]
    assert {"/api/outlook/me", "/api/outlook/link",
            "/api/outlook/tasks/{task_id}/sending"} <= set(paths)


def test_the_pane_gets_an_opaque_tag_and_the_handler_reports_by_it(
        client: FlaskClient, session: Session, world: World):
    """Is x-relay-task a random tag (stable per task), reported by tag, refused for others?"""
    from server.tasks.tags import TAG

    email, call = tasks_of(session, world)
    auth = addin_auth(session, world)
    first = client.post(f"/api/outlook/tasks/{email.id}/tag", headers=auth, json={})
    assert first.status_code == 200
    tag = first.json["tag"]
    assert TAG.match(tag) and tag != str(email.id)
    assert client.post(f"/api/outlook/tasks/{email.id}/tag", headers=auth,
                       json={}).json == {"tag": tag}
    sent = client.post("/api/outlook/sending", headers=auth, json={"tag": tag})
    assert sent.status_code == 200 and sent.json == {"first": True}
    session.rollback()
    assert session.get(TaskSendReport, email.id).reports == 1
    assert client.post("/api/outlook/sending", headers=world.auth(world.rep2),
                       json={"tag": tag}).status_code == 404
    assert client.post("/api/outlook/sending", headers=auth,
                       json={"tag": "rt_" + "x" * 24}).status_code == 404
    assert client.post(f"/api/outlook/tasks/{email.id}/tag", headers=world.auth(world.rep2),
                       json={}).status_code == 404
    assert client.post(f"/api/outlook/tasks/{call.id}/tag", headers=auth,
                       json={}).status_code == 404
