"""Bad input: every one is a 4xx whose message names the field, and nothing is partly stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.campaigns.models import Campaign, CampaignStep, Enrollment, EnrollmentStep
from server.contacts.models import Contact
from server.feed.models import FeedEvent
from server.sending.models import ScheduledSend
from server.tasks.models import Task
from tests.conftest import World, make_contact, make_template

TABLES = (Campaign, CampaignStep, Contact, Enrollment, EnrollmentStep, Task, ScheduledSend,
          FeedEvent)


def _snapshot(session: Session) -> dict[str, int]:
    """Row counts of every table a request could write to."""
    out = {m.__tablename__: session.scalar(select(func.count()).select_from(m)) or 0
           for m in TABLES}
    session.commit()
    return out


def _fields(response: Any, status: int = 422) -> dict[str, str]:
    assert response.status_code == status, response.json
    body = response.json
    assert body["message"]
    return {e["field"]: e["message"] for e in body.get("errors", [])}


@pytest.fixture
def setup(session: Session, world: World) -> dict[str, Any]:
    """A template, two contacts with an email and one without, owned by world.rep."""
    tpl = make_template(session, world.rep)
    ada = make_contact(session, world.rep, "ada@example.com")
    bob = make_contact(session, world.rep, "bob@example.com")
    nomail = make_contact(session, world.rep, None, first_name="No")
    nomail.email = None
    session.commit()
    return {"tpl": tpl.id, "ada": ada.id, "bob": bob.id, "nomail": nomail.id}


def _campaign(client: FlaskClient, world: World, first: dict[str, Any]) -> int:
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "C", "timezone": "UTC", "steps": [first, {"day": 2, "type": "call"}]})
    assert r.status_code == 201, r.json
    return r.json["id"]


# -- the JSON body -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/campaigns", "/api/contacts", "/api/templates"])
def test_malformed_json_is_a_400(client: FlaskClient, session: Session, world: World, path: str):
    """Is a body that is not JSON answered 400 saying so, with nothing stored?"""
    before = _snapshot(session)
    r = client.post(path, headers=world.auth(world.rep), data='{"name": "x", ',
                    content_type="application/json")
    assert r.status_code == 400
    assert r.json["error"] == "malformed_json"
    assert "not valid JSON" in r.json["message"]
    assert _snapshot(session) == before


def test_json_that_is_not_an_object_is_a_422(client: FlaskClient, world: World):
    """Is a JSON array where an object is expected a 422 on `body`?"""
    r = client.post("/api/contacts", headers=world.auth(world.rep), json=[{"email": "a@b.co"}])
    assert list(_fields(r)) == ["body"]


def test_body_must_be_sent_as_json(client: FlaskClient, world: World):
    """Is a form-encoded body a 415 that says to send JSON?"""
    r = client.post("/api/templates", headers=world.auth(world.rep), data={"name": "x"})
    assert r.status_code == 415
    assert "application/json" in r.json["message"]


def test_unknown_fields_are_named(client: FlaskClient, session: Session, world: World,
                                  setup: dict[str, Any]):
    """Is each unknown field, at the top level and inside a step, reported by its path?"""
    before = _snapshot(session)
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "C", "colour": "red", "steps": [
            {"day": 1, "type": "email", "send_option": "task", "template_id": setup["tpl"],
             "delay_days": 2}]})
    assert _fields(r) == {"colour": "unknown field", "steps[0].delay_days": "unknown field"}
    r = client.post("/api/contacts", headers=world.auth(world.rep),
                    json={"email": "x@example.com", "phone": "123"})
    assert _fields(r) == {"phone": "unknown field"}
    assert _snapshot(session) == before


def test_wrong_types_are_not_coerced(client: FlaskClient, session: Session, world: World,
                                     setup: dict[str, Any]):
    """Are `"day": "1"`, `"follow_up": "true"` and a string template id each refused by path?"""
    before = _snapshot(session)
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "C", "steps": [
            {"day": "1", "type": "email", "send_option": "task",
             "template_id": str(setup["tpl"]), "follow_up": "true"}]})
    fields = _fields(r)
    assert set(fields) == {"steps[0].day", "steps[0].template_id", "steps[0].follow_up"}
    assert "integer" in fields["steps[0].day"]
    r = client.post("/api/campaigns", headers=world.auth(world.rep),
                    json={"name": 7, "steps": "call"})
    assert set(_fields(r)) == {"name", "steps"}
    assert _snapshot(session) == before


def test_unknown_step_type_and_send_option_are_named(client: FlaskClient, world: World,
                                                     setup: dict[str, Any]):
    """Are a step type and a send option outside the allowed values named with the choices?"""
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "C", "steps": [{"day": 1, "type": "sms"},
                               {"day": 2, "type": "email", "send_option": "asap",
                                "template_id": setup["tpl"]}]})
    fields = _fields(r)
    assert set(fields) == {"steps[0].type", "steps[1].send_option"}
    assert "'email'" in fields["steps[0].type"] and "'same_as_previous'" in (
        fields["steps[1].send_option"])


def test_unknown_time_zone_is_named(client: FlaskClient, session: Session, world: World):
    """Is an unknown time zone refused on `timezone` for a campaign and for a contact?"""
    before = _snapshot(session)
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "C", "timezone": "Paris", "steps": [{"day": 1, "type": "call"}]})
    assert "timezone" in _fields(r)
    r = client.post("/api/contacts", headers=world.auth(world.rep),
                    json={"email": "tz@example.com", "timezone": "GMT+25"})
    assert "timezone" in _fields(r)
    assert _snapshot(session) == before


def test_days_out_of_order_are_named(client: FlaskClient, session: Session, world: World):
    """Is a step whose day comes before the previous step's refused on its `day` (C1)?"""
    before = _snapshot(session)
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "C", "steps": [{"day": 1, "type": "call"}, {"day": 5, "type": "call"},
                               {"day": 2, "type": "call"}]})
    assert list(_fields(r)) == ["steps[2].day"]
    assert _snapshot(session) == before


def test_unknown_template_ids_are_named(client: FlaskClient, session: Session, world: World):
    """Is a template id that does not exist refused on that step's template_id?"""
    before = _snapshot(session)
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "C", "steps": [{"day": 1, "type": "email", "send_option": "task",
                                "template_id": 424242}]})
    assert _fields(r) == {"steps[0].template_id": "unknown template 424242"}
    assert _snapshot(session) == before


def test_bad_query_parameters_are_named(client: FlaskClient, world: World):
    """Are an unknown query parameter and a non-number page refused by name?"""
    h = world.auth(world.rep)
    assert list(_fields(client.get("/api/contacts?pgae=2", headers=h))) == ["pgae"]
    assert list(_fields(client.get("/api/contacts?page=two", headers=h))) == ["page"]
    assert list(_fields(client.get("/api/contacts?per_page=0", headers=h))) == ["per_page"]


# -- launch --------------------------------------------------------------------------------


def _launch(client: FlaskClient, world: World, cid: int, **body: Any):
    return client.post(f"/api/campaigns/{cid}/launch", headers=world.auth(world.rep), json=body)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def test_launch_with_unknown_contact_ids_stores_nothing(client: FlaskClient, session: Session,
                                                        world: World, setup: dict[str, Any]):
    """Is a launch naming contacts that do not exist refused on contact_ids, enrolling nobody?"""
    cid = _campaign(client, world, {"day": 1, "type": "call"})
    before = _snapshot(session)
    r = _launch(client, world, cid, contact_ids=[setup["ada"], 90001, 90002])
    assert _fields(r) == {"contact_ids": "unknown contacts: 90001, 90002"}
    assert _snapshot(session) == before


def test_launch_with_contacts_without_email_stores_nothing(
        client: FlaskClient, session: Session, world: World, setup: dict[str, Any]):
    """Is launching an email campaign for a contact without an address refused, naming them?"""
    cid = _campaign(client, world, {"day": 1, "type": "email", "send_option": "task",
                                    "template_id": setup["tpl"]})
    before = _snapshot(session)
    r = _launch(client, world, cid, contact_ids=[setup["ada"], setup["nomail"]])
    fields = _fields(r)
    assert list(fields) == ["contact_ids"]
    assert "no email address" in fields["contact_ids"]
    assert fields["contact_ids"].endswith(str(setup["nomail"]))
    assert _snapshot(session) == before


def test_launch_with_contact_ids_of_the_wrong_type(client: FlaskClient, session: Session,
                                                   world: World, setup: dict[str, Any]):
    """Is a contact id sent as a string refused at its index, with nobody enrolled?"""
    cid = _campaign(client, world, {"day": 1, "type": "call"})
    before = _snapshot(session)
    r = _launch(client, world, cid, contact_ids=[setup["ada"], str(setup["bob"])])
    assert list(_fields(r)) == ["contact_ids[1]"]
    assert list(_fields(_launch(client, world, cid, contact_ids=[]))) == ["contact_ids"]
    assert _snapshot(session) == before


def test_S1_launch_without_send_at_for_choose_at_launch(client: FlaskClient, session: Session,
                                                        world: World, setup: dict[str, Any]):
    """Is a launch without send_at refused when the first email is choose_at_launch (S1)?"""
    cid = _campaign(client, world, {"day": 1, "type": "email", "send_option": "choose_at_launch",
                                    "template_id": setup["tpl"]})
    before = _snapshot(session)
    r = _launch(client, world, cid, contact_ids=[setup["ada"]])
    assert r.status_code == 422
    assert r.json["errors"] == [{
        "field": "send_at", "rule": "S1",
        "message": "the first email is sent at a moment you choose: give send_at (S1)"}]
    assert _snapshot(session) == before


def test_T2_launch_with_send_at_in_the_past(client: FlaskClient, session: Session, world: World,
                                            setup: dict[str, Any]):
    """Is a send_at already in the past refused on send_at, with nobody enrolled?"""
    cid = _campaign(client, world, {"day": 1, "type": "email", "send_option": "choose_at_launch",
                                    "template_id": setup["tpl"]})
    before = _snapshot(session)
    past = datetime.now(UTC) - timedelta(hours=1)
    r = _launch(client, world, cid, contact_ids=[setup["ada"]], send_at=_iso(past))
    fields = _fields(r)
    assert list(fields) == ["send_at"] and "in the past" in fields["send_at"]
    assert _snapshot(session) == before


def test_T1_launch_with_both_start_at_and_send_at(client: FlaskClient, session: Session,
                                                  world: World, setup: dict[str, Any]):
    """Is giving both start_at and send_at refused on start_at, since send_at is the start?"""
    cid = _campaign(client, world, {"day": 1, "type": "email", "send_option": "at_time",
                                    "send_time": "09:00", "template_id": setup["tpl"]})
    before = _snapshot(session)
    soon = datetime.now(UTC) + timedelta(days=1)
    r = _launch(client, world, cid, contact_ids=[setup["ada"]], start_at=_iso(soon),
                send_at=_iso(soon))
    fields = _fields(r)
    assert list(fields) == ["start_at"] and "not both" in fields["start_at"]
    assert _snapshot(session) == before


def test_S1_send_at_for_a_first_step_that_is_not_a_timed_email(
        client: FlaskClient, session: Session, world: World, setup: dict[str, Any]):
    """Is send_at refused when the first step is a call, which has no send moment?"""
    cid = _campaign(client, world, {"day": 1, "type": "call"})
    before = _snapshot(session)
    soon = datetime.now(UTC) + timedelta(days=1)
    r = _launch(client, world, cid, contact_ids=[setup["ada"]], send_at=_iso(soon))
    assert list(_fields(r)) == ["send_at"]
    assert _snapshot(session) == before


def test_launch_with_start_at_in_the_past_or_naive(client: FlaskClient, session: Session,
                                                   world: World, setup: dict[str, Any]):
    """Are a start_at in the past and one without a UTC offset refused on start_at?"""
    cid = _campaign(client, world, {"day": 1, "type": "call"})
    before = _snapshot(session)
    past = datetime.now(UTC) - timedelta(days=1)
    r = _launch(client, world, cid, contact_ids=[setup["ada"]], start_at=_iso(past))
    assert "in the past" in _fields(r)["start_at"]
    r = _launch(client, world, cid, contact_ids=[setup["ada"]], start_at="2030-01-01T09:00:00")
    assert "timezone" in _fields(r)["start_at"]
    r = _launch(client, world, cid, contact_ids=[setup["ada"]], start_at="next tuesday")
    assert list(_fields(r)) == ["start_at"]
    assert _snapshot(session) == before


def test_launch_reports_every_problem_at_once(client: FlaskClient, session: Session,
                                              world: World, setup: dict[str, Any]):
    """Does one launch report an unknown contact and a contact without email together?"""
    cid = _campaign(client, world, {"day": 1, "type": "email", "send_option": "task",
                                    "template_id": setup["tpl"]})
    before = _snapshot(session)
    r = _launch(client, world, cid, contact_ids=[setup["nomail"], 777777])
    assert r.status_code == 422
    messages = [e["message"] for e in r.json["errors"]]
    assert len(messages) == 2
    assert "777777" in messages[0] and str(setup["nomail"]) in messages[1]
    assert _snapshot(session) == before


# -- CSV -------------------------------------------------------------------------------------


def test_csv_with_broken_rows_stores_nothing(client: FlaskClient, session: Session,
                                             world: World):
    """Does a CSV with an unclosed quote, a wrong cell count or a bad address store nothing?"""
    before = _snapshot(session)
    body = ('email,first_name\n'
            'one@example.com,One\n'
            'two@example.com,"Two\n'
            'three@example.com,Three,extra\n')
    r = client.post("/api/contacts/import", headers=world.auth(world.rep), data=body,
                    content_type="text/csv")
    fields = _fields(r)
    assert list(fields) == ["line 3"]
    assert "unreadable CSV" in fields["line 3"] and "quote" in fields["line 3"]
    assert _snapshot(session) == before

    body = ('email,first_name\nfour@example.com,Four\nnope,Bad\nfive@example.com,Five,x\n'
            'six@example.com,"Si"x\nseven@example.com,Seven\n')
    r = client.post("/api/contacts/import", headers=world.auth(world.rep), data=body,
                    content_type="text/csv")
    assert list(_fields(r)) == ["line 3.email", "line 4", "line 5"]
    assert _snapshot(session) == before


# -- out-of-range numbers and the order of checks ----------------------------------------------


def test_integers_too_large_for_the_database_are_named(client: FlaskClient, session: Session,
                                                       world: World, setup: dict[str, Any]):
    """Are ids, days, pages and cursors too large for any column refused by field, not a 500?"""
    h = world.auth(world.rep)
    before = _snapshot(session)
    huge = 10**20
    r = client.post("/api/campaigns", headers=h, json={"name": "C", "steps": [
        {"day": 1, "type": "email", "send_option": "task", "template_id": huge}]})
    assert list(_fields(r)) == ["steps[0].template_id"]
    r = client.post("/api/campaigns", headers=h, json={"name": "C", "steps": [
        {"day": 3_000_000_000, "type": "call"}]})
    assert _fields(r) == {"steps[0].day": "day must be 1000 or less (C1)"}
    cid = _campaign(client, world, {"day": 1, "type": "call"})
    before = _snapshot(session)
    r = _launch(client, world, cid, contact_ids=[setup["ada"], huge])
    assert list(_fields(r)) == ["contact_ids[1]"]
    for path, field in ((f"/api/contacts?page={huge}", "page"),
                        (f"/api/tasks?campaign_id={huge}", "campaign_id"),
                        (f"/api/tasks?page={huge}", "page"),
                        (f"/api/feed?after={huge}", "after")):
        assert list(_fields(client.get(path, headers=h))) == [field], path
    assert _snapshot(session) == before


def test_ids_too_large_in_the_path_are_not_found(client: FlaskClient, world: World):
    """Is an id in the URL beyond any stored id a 404 rather than a database error?"""
    h = world.auth(world.rep)
    for path in ("/api/contacts/99999999999999999999", "/api/campaigns/99999999999999999999",
                 "/api/tasks/99999999999999999999", "/api/enrollments/99999999999999999999"):
        assert client.get(path, headers=h).status_code == 404, path


def test_authentication_is_checked_before_the_input(client: FlaskClient, world: World):
    """Is a caller without a valid token told 401, not how their bad body is wrong?"""
    r = client.post("/api/campaigns", data="{not json", content_type="application/json")
    assert r.status_code == 401
    r = client.post("/api/campaigns", json={"bogus": 1},
                    headers={"Authorization": "Bearer rly_nope"})
    assert r.status_code == 401
    r = client.get("/api/contacts?page=zero")
    assert r.status_code == 401
