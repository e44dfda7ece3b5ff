"""Templates over the API: CRUD, stored as written, visible across the org and no further."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.campaigns.spec import SendOption
from server.compose.models import Template
from tests.conftest import World, email_step, make_campaign, make_template


def _stored(session: Session) -> list[Template]:
    rows = list(session.scalars(select(Template).order_by(Template.id)))
    session.commit()
    return rows


def test_create_read_update_delete_template(client: FlaskClient, session: Session,
                                            world: World):
    """Can a template be created, read, changed and deleted, stored exactly as written?"""
    h = world.auth(world.rep)
    body = '<p>Hi {{first_name | default: "there"}},</p>\n<p>{{! Introduce yourself}}</p>'
    r = client.post("/api/templates", headers=h, json={
        "name": "Intro", "subject": "Quick question, {{first_name}}", "body_html": body})
    assert r.status_code == 201, r.json
    tid = r.json["id"]
    assert r.json["body_html"] == body and r.json["created_by_id"] == world.rep.id
    assert client.get(f"/api/templates/{tid}", headers=h).json["subject"] == (
        "Quick question, {{first_name}}")

    r = client.patch(f"/api/templates/{tid}", headers=h, json={"subject": "Re: hello"})
    assert r.status_code == 200, r.json
    assert (r.json["subject"], r.json["body_html"]) == ("Re: hello", body)
    assert _stored(session)[0].subject == "Re: hello"

    r = client.delete(f"/api/templates/{tid}", headers=h)
    assert r.status_code == 200 and r.json == {"deleted": tid}
    assert _stored(session) == []


def test_templates_are_shared_across_the_org(client: FlaskClient, session: Session,
                                             world: World):
    """Does every rep of an org see the org's templates, by name, and only the owner edit?"""
    make_template(session, world.rep, "Zeta")
    alpha = make_template(session, world.rep2, "Alpha")
    session.commit()
    r = client.get("/api/templates", headers=world.auth(world.rep))
    assert [t["name"] for t in r.json["items"]] == ["Alpha", "Zeta"]
    r = client.patch(f"/api/templates/{alpha.id}", headers=world.auth(world.rep),
                     json={"name": "Alpha 2"})
    assert r.status_code == 403
    r = client.patch(f"/api/templates/{alpha.id}", headers=world.auth(world.rep2),
                     json={"name": "Alpha 2"})
    assert r.status_code == 200


def test_another_orgs_template_is_not_found(client: FlaskClient, session: Session,
                                            world: World):
    """Is another org's template a 404 for reading, changing, deleting, and absent from lists?"""
    theirs = make_template(session, world.outsider, "Theirs")
    session.commit()
    h = world.auth(world.admin)
    assert client.get(f"/api/templates/{theirs.id}", headers=h).status_code == 404
    assert client.patch(f"/api/templates/{theirs.id}", headers=h,
                        json={"name": "Mine"}).status_code == 404
    assert client.delete(f"/api/templates/{theirs.id}", headers=h).status_code == 404
    assert client.get("/api/templates", headers=h).json["items"] == []
    assert _stored(session)[0].name == "Theirs"


def test_template_needs_a_name(client: FlaskClient, session: Session, world: World):
    """Is a template without a name, or with an empty one, refused naming `name`?"""
    h = world.auth(world.rep)
    for body in ({"subject": "s"}, {"name": ""}):
        r = client.post("/api/templates", headers=h, json=body)
        assert r.status_code == 422
        assert [e["field"] for e in r.json["errors"]] == ["name"]
    assert _stored(session) == []


def test_template_patch_with_null_is_refused_unchanged(client: FlaskClient, session: Session,
                                                       world: World):
    """Is `null` for a template field a 422 naming it, with nothing changed?"""
    tpl = make_template(session, world.rep, "Keep")
    session.commit()
    r = client.patch(f"/api/templates/{tpl.id}", headers=world.auth(world.rep),
                     json={"subject": "new", "body_html": None})
    assert r.status_code == 422
    assert [e["field"] for e in r.json["errors"]] == ["body_html"]
    assert _stored(session)[0].subject == "Hello {{first_name}}"


def test_template_in_use_cannot_be_deleted(client: FlaskClient, session: Session, world: World):
    """Is deleting a template that a campaign step uses a 409 naming the campaign?"""
    tpl = make_template(session, world.rep)
    campaign = make_campaign(session, world.rep, [email_step(1, SendOption.TASK, tpl)])
    session.commit()
    r = client.delete(f"/api/templates/{tpl.id}", headers=world.auth(world.rep))
    assert r.status_code == 409
    assert f"campaign {campaign.id}" in r.json["message"]
    assert len(_stored(session)) == 1
