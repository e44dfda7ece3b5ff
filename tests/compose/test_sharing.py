"""The sharing policy (README, Security).

Org-readable templates and campaigns are changed only by their owner or an admin; each rep
has their own tasks and contacts, which an admin of the org may also read and act on;
nothing crosses orgs.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.launch import launch
from server.compose.models import Template
from server.tasks.models import Task, TaskStatus
from tests.conftest import World, make_campaign, make_contact, make_template, task_step
from tests.web.test_campaigns import sign_in

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def test_a_colleague_reads_but_cannot_change_or_delete_a_template(
        client: FlaskClient, session: Session, world: World):
    """Rep2 reads rep's template (200) but PATCH and DELETE are 403 and change nothing."""
    tpl = make_template(session, world.rep)
    session.commit()
    path = f"/api/templates/{tpl.id}"
    assert client.get(path, headers=world.auth(world.rep2)).status_code == 200
    r = client.patch(path, json={"subject": "Hijacked"}, headers=world.auth(world.rep2))
    assert r.status_code == 403, r.json
    assert client.delete(path, headers=world.auth(world.rep2)).status_code == 403
    session.rollback()
    assert session.get(Template, tpl.id).subject == "Hello {{first_name}}"
    # another org does not even see it
    assert client.get(path, headers=world.auth(world.outsider)).status_code == 404
    assert client.patch(path, json={"subject": "x"},
                        headers=world.auth(world.outsider)).status_code == 404


def test_the_owner_and_an_admin_change_and_delete_a_template(
        client: FlaskClient, session: Session, world: World):
    """The owner's PATCH and an admin's PATCH and DELETE work."""
    tpl = make_template(session, world.rep)
    session.commit()
    path = f"/api/templates/{tpl.id}"
    assert client.patch(path, json={"subject": "Mine"},
                        headers=world.auth(world.rep)).status_code == 200
    assert client.patch(path, json={"subject": "Admin's"},
                        headers=world.auth(world.admin)).status_code == 200
    assert client.delete(path, headers=world.auth(world.admin)).status_code == 200
    session.rollback()
    assert session.scalar(select(Template.id).where(Template.id == tpl.id)) is None


def test_a_colleague_cannot_save_a_template_on_the_web_page(
        client: FlaskClient, session: Session, world: World):
    """Rep2 can open rep's template page but saving it is 403 and changes nothing."""
    tpl = make_template(session, world.rep)
    session.commit()
    token = sign_in(client, "rep2@a.test")
    assert client.get(f"/templates/{tpl.id}").status_code == 200
    r = client.post(f"/templates/{tpl.id}", data={
        "csrf": token, "action": "save", "name": "Intro", "subject": "Hijacked",
        "body_html": "<p>Pay here</p>"})
    assert r.status_code == 403
    session.rollback()
    assert session.get(Template, tpl.id).subject == "Hello {{first_name}}"


def _task(session: Session, world: World) -> int:
    contact = make_contact(session, world.rep, "p@example.com")
    campaign = make_campaign(session, world.rep, [task_step(1)], name="Calls")
    launch(session, world.rep, campaign, [contact.id], now=NOW)
    session.commit()
    return session.scalar(select(Task.id).where(Task.contact_id == contact.id))


def test_an_admin_reads_and_acts_on_a_reps_task(client: FlaskClient, session: Session,
                                                world: World):
    """An admin of the org reads and completes a rep's task; a colleague and another org 404."""
    task_id = _task(session, world)
    path = f"/api/tasks/{task_id}"
    assert client.get(path, headers=world.auth(world.rep2)).status_code == 404
    assert client.get(path, headers=world.auth(world.outsider)).status_code == 404
    assert client.post(f"{path}/skip", json={},
                       headers=world.auth(world.rep2)).status_code == 404
    r = client.get(path, headers=world.auth(world.admin))
    assert r.status_code == 200 and r.json["id"] == task_id
    r = client.post(f"{path}/complete", json={}, headers=world.auth(world.admin))
    assert r.status_code == 200 and r.json["changed"] is True
    session.rollback()
    assert session.get(Task, task_id).status is TaskStatus.DONE


def test_an_admin_reads_and_changes_a_reps_contact(client: FlaskClient, session: Session,
                                                   world: World):
    """An admin of the org reads and changes a rep's contact; a colleague and another org 404."""
    contact = make_contact(session, world.rep, "p@example.com")
    session.commit()
    path = f"/api/contacts/{contact.id}"
    assert client.get(path, headers=world.auth(world.rep2)).status_code == 404
    assert client.get(path, headers=world.auth(world.outsider)).status_code == 404
    assert client.get(path, headers=world.auth(world.admin)).status_code == 200
    r = client.patch(path, json={"company": "Globex"}, headers=world.auth(world.admin))
    assert r.status_code == 200, r.json
    assert r.json["company"] == "Globex"
