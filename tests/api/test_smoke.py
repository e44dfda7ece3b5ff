"""A first end-to-end pass through the API: save, launch, list, complete."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from tests.conftest import World, make_contact, make_template


def test_launch_and_complete_call_task(client: FlaskClient, session: Session, world: World):
    """Does a launched call step appear as a task, and does completing it activate the next?"""
    tpl = make_template(session, world.rep)
    contact = make_contact(session, world.rep, "ada@example.com", first_name="Ada")
    session.commit()
    h = world.auth(world.rep)
    r = client.post("/api/campaigns", headers=h, json={
        "name": "C", "timezone": "UTC", "steps": [
            {"day": 1, "type": "call"},
            {"day": 2, "type": "email", "send_option": "task", "template_id": tpl.id},
        ]})
    assert r.status_code == 201, r.json
    cid = r.json["id"]
    r = client.post(f"/api/campaigns/{cid}/launch", headers=h, json={"contact_ids": [contact.id]})
    assert r.status_code == 201, r.json
    tasks = client.get("/api/tasks?due=all", headers=h).json
    assert tasks["total"] == 1 and tasks["items"][0]["type"] == "call"
    tid = tasks["items"][0]["id"]
    r = client.post(f"/api/tasks/{tid}/complete", headers=h)
    assert r.status_code == 200, r.json
    assert r.json["changed"] is True
    r = client.post(f"/api/tasks/{tid}/complete", headers=h)
    assert r.json["changed"] is False
    tasks = client.get("/api/tasks", headers=h).json
    assert [t["type"] for t in tasks["items"]] == ["email"]
    feed = client.get("/api/feed", headers=h).json
    kinds = [e["kind"] for e in feed["items"]]
    assert kinds == ["person.added", "task.created", "task.completed", "task.created"]
