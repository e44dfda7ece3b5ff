"""Campaigns over the API: save, read, list and update with steps and settings (C1–C3, S1–S5)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.campaigns.models import Campaign, CampaignStep, Enrollment
from server.tasks.models import Task
from tests.conftest import World, make_contact, make_template


def _counts(session: Session) -> tuple[int, int]:
    """How many campaigns and campaign steps are stored."""
    campaigns = session.scalar(select(func.count()).select_from(Campaign))
    steps = session.scalar(select(func.count()).select_from(CampaignStep))
    session.commit()
    return campaigns or 0, steps or 0


def _post(client: FlaskClient, world: World, steps: list[dict[str, Any]], **extra: Any):
    body = {"name": "Outbound", "timezone": "UTC", "steps": steps, **extra}
    return client.post("/api/campaigns", headers=world.auth(world.rep), json=body)


def _errors(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.json
    return {e["field"]: e["message"] for e in response.json["errors"]}


@pytest.fixture
def tpl(session: Session, world: World) -> int:
    """The id of a template in org A."""
    template = make_template(session, world.rep)
    session.commit()
    return template.id


# -- create, read, list ------------------------------------------------------------------------


def test_C1_steps_are_stored_in_order_with_their_number_in_the_day(
        client: FlaskClient, world: World, tpl: int):
    """Does a saved campaign keep its steps in order, each with its day and number in that day?"""
    r = _post(client, world, [
        {"day": 1, "type": "email", "send_option": "at_time", "send_time": "09:30",
         "template_id": tpl},
        {"day": 1, "type": "call", "title": "Call them", "priority": "high"},
        {"day": 3, "type": "email", "send_option": "same_as_previous", "template_id": tpl},
        {"day": 3, "type": "email", "send_option": "task", "template_id": tpl,
         "follow_up": True},
        {"day": 3, "type": "inmail"},
        {"day": 5, "type": "custom", "title": "Send a gift", "notes": "a book"},
    ])
    assert r.status_code == 201, r.json
    steps = r.json["steps"]
    assert [(s["position"], s["day"], s["step"], s["type"]) for s in steps] == [
        (0, 1, 1, "email"), (1, 1, 2, "call"), (2, 3, 1, "email"), (3, 3, 2, "email"),
        (4, 3, 3, "inmail"), (5, 5, 1, "custom")]
    assert steps[0]["send_time"] == "09:30" and steps[0]["send_option"] == "at_time"
    assert steps[1]["priority"] == "high" and steps[5]["notes"] == "a book"
    assert [s["follow_up"] for s in steps] == [False, False, False, True, False, False]
    again = client.get(f"/api/campaigns/{r.json['id']}", headers=world.auth(world.rep2)).json
    assert again["steps"] == steps


def test_C3_settings_default_and_timezone_defaults_to_owner(client: FlaskClient, world: World):
    """Without settings, is the timezone the owner's and are the other settings the defaults?"""
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "Defaults", "steps": [{"day": 1, "type": "call"}]})
    assert r.status_code == 201, r.json
    got = {k: r.json[k] for k in ("timezone", "skip_weekends", "late_task_policy", "on_reply",
                                  "on_bounce", "status", "people", "owner_id")}
    assert got == {"timezone": "Europe/Paris", "skip_weekends": False, "late_task_policy": "slide",
                   "on_reply": "end", "on_bounce": "remove", "status": "active", "people": 0,
                   "owner_id": world.rep.id}


def test_C3_settings_are_stored_as_given(client: FlaskClient, world: World):
    """Are every one of the C3 settings stored when given?"""
    r = _post(client, world, [{"day": 1, "type": "call"}], timezone="America/New_York",
              skip_weekends=True, late_task_policy="keep", on_reply="end_success",
              on_bounce="continue")
    assert r.status_code == 201, r.json
    got = client.get(f"/api/campaigns/{r.json['id']}", headers=world.auth(world.rep)).json
    assert (got["timezone"], got["skip_weekends"], got["late_task_policy"], got["on_reply"],
            got["on_bounce"]) == ("America/New_York", True, "keep", "end_success", "continue")


@pytest.mark.parametrize(("setting", "value"), [
    ("late_task_policy", "later"), ("on_reply", "stop"), ("on_bounce", "end"),
    ("skip_weekends", "yes")])
def test_C3_unknown_setting_values_are_refused(client: FlaskClient, session: Session,
                                               world: World, setting: str, value: str):
    """Is a value outside a C3 setting's choices a 422 naming that setting, nothing stored?"""
    errors = _errors(_post(client, world, [{"day": 1, "type": "call"}], **{setting: value}))
    assert list(errors) == [setting]
    assert _counts(session) == (0, 0)


def test_C3_unknown_timezone_is_refused(client: FlaskClient, session: Session, world: World):
    """Is a timezone that is not an IANA name a 422 on `timezone` citing C3?"""
    errors = _errors(_post(client, world, [{"day": 1, "type": "call"}], timezone="Europe/Atlantis"))
    assert errors == {"timezone": "unknown time zone 'Europe/Atlantis' (C3)"}
    assert _counts(session) == (0, 0)


def test_list_campaigns_is_org_wide_newest_first_and_filters_by_status(
        client: FlaskClient, world: World):
    """Does the list show the org's campaigns (any owner), newest first, filtered by status?"""
    a = _post(client, world, [{"day": 1, "type": "call"}], name="A").json["id"]
    b = client.post("/api/campaigns", headers=world.auth(world.rep2), json={
        "name": "B", "steps": [{"day": 1, "type": "call"}]}).json["id"]
    client.post("/api/campaigns", headers=world.auth(world.outsider), json={
        "name": "Other org", "steps": [{"day": 1, "type": "call"}]})
    h = world.auth(world.rep)
    assert [c["id"] for c in client.get("/api/campaigns", headers=h).json["items"]] == [b, a]
    assert client.post(f"/api/campaigns/{a}/end", headers=h).status_code == 200
    r = client.get("/api/campaigns?status=ended", headers=h)
    assert [c["id"] for c in r.json["items"]] == [a]
    r = client.get("/api/campaigns?status=paused", headers=h)
    assert r.status_code == 422 and r.json["errors"][0]["field"] == "status"


# -- invalid campaigns: one error per field, naming the rule, nothing stored (S5) -----------


def test_S3_same_as_previous_on_first_step_is_rejected(client: FlaskClient, session: Session,
                                                       world: World, tpl: int):
    """Is same_as_previous on the first step a 422 with the documented message, nothing stored?"""
    r = _post(client, world, [
        {"day": 1, "type": "email", "send_option": "same_as_previous", "template_id": tpl}])
    assert r.status_code == 422
    assert r.json["errors"] == [{
        "field": "steps[0].send_option",
        "message": "same_as_previous is not allowed on the first step (S3)", "rule": "S3"}]
    assert "steps[0].send_option: same_as_previous is not allowed on the first step (S3)" in (
        r.json["message"])
    assert _counts(session) == (0, 0)


def test_S3_choose_at_launch_on_a_later_step_is_rejected(client: FlaskClient, session: Session,
                                                         world: World, tpl: int):
    """Is choose_at_launch on the second email step a 422 on that step citing S3?"""
    errors = _errors(_post(client, world, [
        {"day": 1, "type": "email", "send_option": "task", "template_id": tpl},
        {"day": 2, "type": "email", "send_option": "choose_at_launch", "template_id": tpl}]))
    assert errors == {
        "steps[1].send_option": "choose_at_launch is only allowed on the first step (S3)"}
    assert _counts(session) == (0, 0)


def test_S1_first_step_options_are_accepted(client: FlaskClient, world: World, tpl: int):
    """Is each S1 option (choose_at_launch, at_time, task) accepted on the first step?"""
    for option, extra in (("choose_at_launch", {}), ("at_time", {"send_time": "08:00"}),
                          ("task", {})):
        r = _post(client, world, [{"day": 1, "type": "email", "send_option": option,
                                   "template_id": tpl, **extra}])
        assert r.status_code == 201, (option, r.json)


def test_S2_later_step_options_are_accepted(client: FlaskClient, world: World, tpl: int):
    """Is each S2 option (same_as_previous, at_time, task) accepted on a later email step?"""
    for option, extra in (("same_as_previous", {}), ("at_time", {"send_time": "17:45"}),
                          ("task", {})):
        r = _post(client, world, [
            {"day": 1, "type": "call"},
            {"day": 2, "type": "email", "send_option": option, "template_id": tpl, **extra}])
        assert r.status_code == 201, (option, r.json)


def test_S1_email_step_without_send_option_lists_the_choices(client: FlaskClient, world: World,
                                                             tpl: int):
    """Does an email step with no send option get an error listing that step's options?"""
    errors = _errors(_post(client, world, [
        {"day": 1, "type": "email", "template_id": tpl},
        {"day": 2, "type": "email", "template_id": tpl}]))
    assert errors["steps[0].send_option"] == (
        "an email step needs a send option: choose_at_launch, at_time, task (S1)")
    assert errors["steps[1].send_option"] == (
        "an email step needs a send option: at_time, same_as_previous, task (S2)")


def test_S1_at_time_needs_a_send_time_in_HH_MM(client: FlaskClient, world: World, tpl: int):
    """Is at_time without send_time, or with a time not in HH:MM, refused on send_time?"""
    errors = _errors(_post(client, world, [
        {"day": 1, "type": "email", "send_option": "at_time", "template_id": tpl}]))
    assert errors == {"steps[0].send_time": "at_time needs a send_time (S1)"}
    for bad in ("9:30", "24:00", "09:60", "noon"):
        errors = _errors(_post(client, world, [
            {"day": 1, "type": "email", "send_option": "at_time", "send_time": bad,
             "template_id": tpl}]))
        assert list(errors) == ["steps[0].send_time"]
        assert "HH:MM" in errors["steps[0].send_time"]


def test_S4_follow_up_after_a_call_is_rejected(client: FlaskClient, session: Session,
                                               world: World, tpl: int):
    """Is a follow-up right after a call step a 422 on its follow_up citing S4, nothing stored?"""
    errors = _errors(_post(client, world, [
        {"day": 1, "type": "email", "send_option": "task", "template_id": tpl},
        {"day": 2, "type": "call"},
        {"day": 3, "type": "email", "send_option": "same_as_previous", "template_id": tpl,
         "follow_up": True}]))
    assert errors == {"steps[2].follow_up": "a follow-up needs an email step immediately before "
                      "it; steps[1] is a call step (S4)"}
    assert _counts(session) == (0, 0)


def test_S4_follow_up_on_the_first_step_is_rejected(client: FlaskClient, world: World, tpl: int):
    """Is a follow-up on the first step (no previous email) rejected citing S4?"""
    errors = _errors(_post(client, world, [
        {"day": 1, "type": "email", "send_option": "task", "template_id": tpl,
         "follow_up": True}]))
    assert list(errors) == ["steps[0].follow_up"] and errors["steps[0].follow_up"].endswith("(S4)")


def test_S4_follow_up_after_an_email_is_accepted(client: FlaskClient, world: World, tpl: int):
    """Is a follow-up directly after an email step accepted, whatever its send option?"""
    r = _post(client, world, [
        {"day": 1, "type": "email", "send_option": "choose_at_launch", "template_id": tpl},
        {"day": 1, "type": "email", "send_option": "at_time", "send_time": "15:00",
         "template_id": tpl, "follow_up": True},
        {"day": 4, "type": "email", "send_option": "task", "template_id": tpl,
         "follow_up": True}])
    assert r.status_code == 201, r.json


def test_S5_every_error_is_reported_at_once(client: FlaskClient, session: Session, world: World,
                                            tpl: int):
    """Does one save report one error per offending field, each naming its step and rule?"""
    r = _post(client, world, [
        {"day": 1, "type": "email", "send_option": "same_as_previous", "template_id": tpl},
        {"day": 2, "type": "call", "send_option": "task"},
        {"day": 3, "type": "email", "send_option": "choose_at_launch", "template_id": tpl,
         "follow_up": True},
        {"day": 4, "type": "email", "send_option": "at_time", "template_id": tpl},
        {"day": 5, "type": "email", "send_option": "task"},
    ], timezone="Nowhere/City")
    errors = _errors(r)
    assert set(errors) == {"timezone", "steps[0].send_option", "steps[1].send_option",
                           "steps[2].send_option", "steps[2].follow_up", "steps[3].send_time",
                           "steps[4].template_id"}
    rules = {e["field"]: e.get("rule") for e in r.json["errors"]}
    assert rules == {"timezone": "C3", "steps[0].send_option": "S3", "steps[1].send_option": "C1",
                     "steps[2].send_option": "S3", "steps[2].follow_up": "S4",
                     "steps[3].send_time": "S2", "steps[4].template_id": "C1"}
    assert all(m.endswith(f"({rules[f]})") for f, m in errors.items())
    assert _counts(session) == (0, 0)


def test_C1_days_out_of_order_are_rejected(client: FlaskClient, session: Session, world: World):
    """Are steps listed out of day order, or with day 0, refused on their day field (C1)?"""
    errors = _errors(_post(client, world, [
        {"day": 0, "type": "call"}, {"day": 3, "type": "call"}, {"day": 2, "type": "call"}]))
    assert errors == {
        "steps[0].day": "day must be 1 or more (C1)",
        "steps[2].day": "day 2 comes after day 3; list steps in day order (C1)"}
    assert _counts(session) == (0, 0)


def test_C1_campaign_needs_steps(client: FlaskClient, session: Session, world: World):
    """Is a campaign without steps, or without the steps field, refused?"""
    assert _errors(_post(client, world, [])) == {
        "steps": "a campaign needs at least one step (C1)"}
    r = client.post("/api/campaigns", headers=world.auth(world.rep), json={"name": "x"})
    assert _errors(r) == {"steps": "field required"}
    assert _counts(session) == (0, 0)


def test_C1_template_references(client: FlaskClient, session: Session, world: World, tpl: int):
    """Must email steps name a template of the org, and other steps none?"""
    other = make_template(session, world.outsider, "Other org")
    session.commit()
    errors = _errors(_post(client, world, [
        {"day": 1, "type": "email", "send_option": "task"},
        {"day": 2, "type": "call", "template_id": tpl},
        {"day": 3, "type": "email", "send_option": "task", "template_id": 999_999},
        {"day": 4, "type": "email", "send_option": "task", "template_id": other.id}]))
    assert errors == {
        "steps[0].template_id": "an email step needs a template (C1)",
        "steps[1].template_id": "a call step has no template (C1)",
        "steps[2].template_id": "unknown template 999999",
        "steps[3].template_id": f"unknown template {other.id}"}
    assert _counts(session) == (0, 0)


# -- update ------------------------------------------------------------------------------------


def _campaign(client: FlaskClient, world: World, tpl: int) -> int:
    r = _post(client, world, [
        {"day": 1, "type": "email", "send_option": "task", "template_id": tpl},
        {"day": 2, "type": "call"}])
    assert r.status_code == 201, r.json
    return r.json["id"]


def test_update_replaces_steps_before_launch(client: FlaskClient, session: Session,
                                             world: World, tpl: int):
    """Before anyone is added, does PATCH steps replace every step (same positions reused)?"""
    cid = _campaign(client, world, tpl)
    r = client.patch(f"/api/campaigns/{cid}", headers=world.auth(world.rep), json={
        "name": "Renamed", "skip_weekends": True, "steps": [
            {"day": 1, "type": "inmail"},
            {"day": 2, "type": "email", "send_option": "at_time", "send_time": "10:00",
             "template_id": tpl},
            {"day": 4, "type": "email", "send_option": "same_as_previous", "template_id": tpl,
             "follow_up": True}]})
    assert r.status_code == 200, r.json
    assert r.json["name"] == "Renamed" and r.json["skip_weekends"] is True
    assert [(s["day"], s["type"]) for s in r.json["steps"]] == [
        (1, "inmail"), (2, "email"), (4, "email")]
    assert _counts(session) == (1, 3)
    got = client.get(f"/api/campaigns/{cid}", headers=world.auth(world.rep)).json
    assert got["steps"] == r.json["steps"]


def test_update_settings_only_keeps_steps(client: FlaskClient, session: Session, world: World,
                                          tpl: int):
    """Does a PATCH of settings alone leave the steps as they were?"""
    cid = _campaign(client, world, tpl)
    r = client.patch(f"/api/campaigns/{cid}", headers=world.auth(world.rep),
                     json={"timezone": "Asia/Tokyo", "on_reply": "continue"})
    assert r.status_code == 200, r.json
    assert (r.json["timezone"], r.json["on_reply"]) == ("Asia/Tokyo", "continue")
    assert [s["type"] for s in r.json["steps"]] == ["email", "call"]
    assert _counts(session) == (1, 2)


def test_S5_invalid_update_changes_nothing(client: FlaskClient, session: Session, world: World,
                                           tpl: int):
    """Does an invalid PATCH (bad step and bad timezone) leave name, settings and steps alone?"""
    cid = _campaign(client, world, tpl)
    r = client.patch(f"/api/campaigns/{cid}", headers=world.auth(world.rep), json={
        "name": "Changed", "timezone": "Bad/Zone", "steps": [
            {"day": 1, "type": "email", "send_option": "same_as_previous", "template_id": tpl}]})
    assert set(_errors(r)) == {"timezone", "steps[0].send_option"}
    got = client.get(f"/api/campaigns/{cid}", headers=world.auth(world.rep)).json
    assert (got["name"], got["timezone"]) == ("Outbound", "UTC")
    assert [s["type"] for s in got["steps"]] == ["email", "call"]


def test_steps_cannot_be_replaced_after_launch(client: FlaskClient, session: Session,
                                               world: World, tpl: int):
    """Once a person is in the campaign, is replacing its steps a 409 (settings still change)?"""
    cid = _campaign(client, world, tpl)
    contact = make_contact(session, world.rep, "a@example.com")
    session.commit()
    h = world.auth(world.rep)
    assert client.post(f"/api/campaigns/{cid}/launch", headers=h,
                       json={"contact_ids": [contact.id]}).status_code == 201
    r = client.patch(f"/api/campaigns/{cid}", headers=h,
                     json={"steps": [{"day": 1, "type": "call"}]})
    assert r.status_code == 409
    assert "1 people are in this campaign" in r.json["message"]
    assert _counts(session) == (1, 2)
    r = client.patch(f"/api/campaigns/{cid}", headers=h, json={"name": "Still renamable"})
    assert r.status_code == 200 and r.json["people"] == 1


def test_ended_campaign_cannot_be_changed(client: FlaskClient, world: World, tpl: int):
    """Is any change to an ended campaign a 409?"""
    cid = _campaign(client, world, tpl)
    h = world.auth(world.rep)
    assert client.post(f"/api/campaigns/{cid}/end", headers=h).status_code == 200
    r = client.patch(f"/api/campaigns/{cid}", headers=h, json={"name": "x"})
    assert r.status_code == 409 and "ended" in r.json["message"]


def test_non_owner_rep_cannot_edit_but_admin_can(client: FlaskClient, world: World, tpl: int):
    """Is a PATCH or end by another rep of the org a 403, while the org's admin may edit?"""
    cid = _campaign(client, world, tpl)
    r = client.patch(f"/api/campaigns/{cid}", headers=world.auth(world.rep2), json={"name": "x"})
    assert r.status_code == 403 and "owner" in r.json["message"]
    assert client.post(f"/api/campaigns/{cid}/end",
                       headers=world.auth(world.rep2)).status_code == 403
    r = client.patch(f"/api/campaigns/{cid}", headers=world.auth(world.admin),
                     json={"name": "By admin"})
    assert r.status_code == 200 and r.json["name"] == "By admin"


# -- between orgs and reps ---------------------------------------------------------------------


def test_another_orgs_campaign_is_not_found(client: FlaskClient, session: Session, world: World,
                                            tpl: int):
    """Is another org's campaign a 404 for read, update, launch, plan and end?"""
    cid = _campaign(client, world, tpl)
    contact = make_contact(session, world.outsider, "b@example.com")
    session.commit()
    h = world.auth(world.outsider)
    assert client.get(f"/api/campaigns/{cid}", headers=h).status_code == 404
    assert client.patch(f"/api/campaigns/{cid}", headers=h, json={"name": "x"}).status_code == 404
    assert client.post(f"/api/campaigns/{cid}/launch", headers=h,
                       json={"contact_ids": [contact.id]}).status_code == 404
    assert client.get(f"/api/campaigns/{cid}/plan", headers=h).status_code == 404
    assert client.post(f"/api/campaigns/{cid}/end", headers=h).status_code == 404
    assert client.get("/api/campaigns", headers=h).json["items"] == []
    assert session.scalar(select(func.count()).select_from(Enrollment)) == 0
    session.commit()


def test_another_reps_enrollment_and_task_are_not_found(client: FlaskClient, session: Session,
                                                        world: World):
    """Are another rep's enrollment and task a 404 (read, plan, remove, complete, skip)?

    An admin of the org reads them (README, Security); their queue stays their own.
    """
    contact = make_contact(session, world.rep2, "theirs@example.com")
    session.commit()
    h2 = world.auth(world.rep2)
    cid = client.post("/api/campaigns", headers=world.auth(world.rep), json={
        "name": "Shared", "steps": [{"day": 1, "type": "call"}]}).json["id"]
    r = client.post(f"/api/campaigns/{cid}/launch", headers=h2, json={"contact_ids": [contact.id]})
    assert r.status_code == 201, r.json
    eid = r.json["enrolled"][0]["enrollment_id"]
    tid = client.get("/api/tasks", headers=h2).json["items"][0]["id"]
    ha = world.auth(world.admin)
    assert client.get(f"/api/enrollments/{eid}", headers=ha).status_code == 200
    assert client.get(f"/api/enrollments/{eid}/plan", headers=ha).status_code == 200
    assert client.get(f"/api/tasks/{tid}", headers=ha).status_code == 200
    assert client.get("/api/tasks", headers=ha).json["total"] == 0
    for user in (world.rep, world.outsider):
        h = world.auth(user)
        assert client.get(f"/api/enrollments/{eid}", headers=h).status_code == 404
        assert client.get(f"/api/enrollments/{eid}/plan", headers=h).status_code == 404
        assert client.post(f"/api/enrollments/{eid}/remove", headers=h).status_code == 404
        assert client.get(f"/api/tasks/{tid}", headers=h).status_code == 404
        assert client.post(f"/api/tasks/{tid}/complete", headers=h).status_code == 404
        assert client.post(f"/api/tasks/{tid}/skip", headers=h).status_code == 404
        assert client.get("/api/tasks", headers=h).json["total"] == 0
    status = session.scalar(select(Task.status).where(Task.id == tid))
    session.commit()
    assert status.value == "open"
    assert client.get(f"/api/enrollments/{eid}", headers=h2).json["status"] == "active"


def test_launch_with_another_reps_contact_is_refused(client: FlaskClient, session: Session,
                                                     world: World, tpl: int):
    """Is launching another rep's contact a 422 on contact_ids that enrolls nobody?"""
    mine = make_contact(session, world.rep, "mine@example.com")
    theirs = make_contact(session, world.rep2, "theirs@example.com")
    session.commit()
    cid = _campaign(client, world, tpl)
    r = client.post(f"/api/campaigns/{cid}/launch", headers=world.auth(world.rep),
                    json={"contact_ids": [mine.id, theirs.id]})
    assert _errors(r) == {"contact_ids": f"unknown contacts: {theirs.id}"}
    assert session.scalar(select(func.count()).select_from(Enrollment)) == 0
    session.commit()


def test_campaigns_need_a_valid_token(client: FlaskClient, world: World):
    """Are campaign endpoints a 401 without a token, with a bad one and with another scheme?"""
    assert client.get("/api/campaigns").status_code == 401
    assert client.post("/api/campaigns", json={"name": "x", "steps": []}).status_code == 401
    for header in ("Bearer rly_not-a-real-token", "Bearer ", "Basic dXNlcjpwdw==",
                   "Bearer " + world.tokens[world.rep.email] + "x"):
        r = client.get("/api/campaigns", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.json["error"] == "unauthorized"


def test_T1_launch_reports_the_start_in_utc(client: FlaskClient, session: Session, world: World,
                                            tpl: int):
    """Is a send_at given with a +05:30 offset reported back as the same moment in UTC?"""
    contact = make_contact(session, world.rep, "utc@example.com")
    session.commit()
    r = _post(client, world, [{"day": 1, "type": "email", "send_option": "choose_at_launch",
                               "template_id": tpl}])
    cid = r.json["id"]
    moment = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    local = moment.astimezone(timezone(timedelta(hours=5, minutes=30)))
    r = client.post(f"/api/campaigns/{cid}/launch", headers=world.auth(world.rep),
                    json={"contact_ids": [contact.id], "send_at": local.isoformat()})
    assert r.status_code == 201, r.json
    assert r.json["start"] == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
