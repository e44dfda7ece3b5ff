"""Campaign pages: the list, the builder (S1-S5) and the launch dialog with its preview (P1)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.campaigns.models import Campaign, Enrollment
from server.campaigns.spec import SendOption, StepType
from server.compose.models import Template
from tests.conftest import (
    World,
    email_step,
    make_campaign,
    make_contact,
    make_template,
    task_step,
)


def csrf_of(html: str) -> str:
    """The CSRF token of a page's form."""
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client: FlaskClient, email: str = "rep@a.test") -> str:
    """Sign in through the form; returns the signed-in session's CSRF token."""
    token = csrf_of(client.get("/sign-in").get_data(as_text=True))
    r = client.post("/sign-in", data={"csrf": token, "email": email, "password": "secret-pw"})
    assert r.status_code == 302
    # Signing in starts a new session, with a new token.
    return csrf_of(client.get("/campaigns").get_data(as_text=True))


def options_of(html: str, name: str) -> list[str]:
    """The option values of the select called ``name``."""
    match = re.search(rf'<select name="{re.escape(name)}"[^>]*>(.*?)</select>', html, re.S)
    assert match, f"no select {name}"
    return re.findall(r'<option value="([^"]*)"', match.group(1))


def control(html: str, name: str) -> str:
    """The opening tag of the input called ``name``."""
    match = re.search(rf'<input [^>]*name="{re.escape(name)}"[^>]*>', html)
    assert match, f"no input {name}"
    return match.group(0)


def wrapper_hidden(html: str, name: str) -> bool:
    """True when the follow-up checkbox ``name`` sits in a hidden wrapper (not offered)."""
    match = re.search(rf'<div class="check" data-show="follow_up"( hidden)?>\s*'
                      rf'<input [^>]*name="{re.escape(name)}"', html)
    assert match, f"no follow-up checkbox {name}"
    return match.group(1) is not None


def builder_form(token: str, days: list[tuple[int, list[dict[str, Any]]]], *,
                 name: str = "Q3 outreach", action: str = "save", **settings: str) -> dict:
    """The builder's form fields for days of steps, as the page posts them."""
    data = {"csrf": token, "name": name, "timezone": "Europe/Paris",
            "late_task_policy": "slide", "on_reply": "end", "on_bounce": "remove",
            "action": action, **settings}
    i = 0
    for g, (day, steps) in enumerate(days):
        data[f"groups-{g}-day"] = str(day)
        for step in steps:
            data[f"steps-{i}-group"] = str(g)
            for key, value in step.items():
                data[f"steps-{i}-{key}"] = str(value)
            i += 1
    return data


def _count(session: Session, model: Any) -> int:
    session.rollback()  # a fresh transaction sees what the requests committed
    return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def template(session: Session, world: World) -> Template:
    """A template in org A."""
    t = make_template(session, world.rep)
    session.commit()
    return t


def test_pages_need_a_signed_in_rep(client: FlaskClient, world: World):
    """Are the campaign pages sent to the sign-in page for a visitor?"""
    for path in ("/campaigns", "/campaigns/new", "/campaigns/1", "/campaigns/1/launch"):
        r = client.get(path)
        assert r.status_code == 302 and r.headers["Location"] == "/sign-in", path


def test_builder_saves_a_valid_two_day_campaign(client: FlaskClient, session: Session,
                                                world: World, template: Template):
    """Does a valid builder form store the campaign with its steps and settings (C1-C3)?"""
    token = sign_in(client)
    r = client.post("/campaigns/new", data=builder_form(token, [
        (1, [{"type": "email", "send_option": "at_time", "send_time": "09:30",
              "template_id": template.id}]),
        (3, [{"type": "email", "send_option": "same_as_previous", "follow_up": "on",
              "template_id": template.id},
             {"type": "call", "title": "Call them", "notes": "ask about Q3"}]),
    ], skip_weekends="on", on_reply="end_success"))
    assert r.status_code == 302, r.get_data(as_text=True)
    campaign = session.scalars(select(Campaign)).one()
    assert r.headers["Location"] == f"/campaigns/{campaign.id}"
    assert (campaign.name, campaign.timezone, campaign.skip_weekends, campaign.on_reply.value) \
        == ("Q3 outreach", "Europe/Paris", True, "end_success")
    assert [(s.day, s.type, s.send_option, s.send_time, s.follow_up, s.title)
            for s in campaign.steps] == [
        (1, StepType.EMAIL, SendOption.AT_TIME, time(9, 30), False, ""),
        (3, StepType.EMAIL, SendOption.SAME_AS_PREVIOUS, None, True, ""),
        (3, StepType.CALL, None, None, False, "Call them"),
    ]
    assert campaign.steps[2].notes == "ask about Q3"
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Saved “Q3 outreach”." in page
    assert 'name="groups-1-day" id="groups-1-day" data-gfield="day" value="3"' in page


def test_builder_shows_s3_and_s4_errors_next_to_the_step(client: FlaskClient, session: Session,
                                                         world: World, template: Template):
    """Are S3 and S4 errors shown next to the step they name, with nothing stored (S5)?"""
    token = sign_in(client)
    r = client.post("/campaigns/new", data=builder_form(token, [
        (1, [{"type": "email", "send_option": "same_as_previous", "template_id": template.id}]),
        (2, [{"type": "call"},
             {"type": "email", "send_option": "task", "follow_up": "on",
              "template_id": template.id}]),
    ]))
    assert r.status_code == 422
    page = r.get_data(as_text=True)
    first = re.search(r'id="steps-0-errors"><ul>(.*?)</ul>', page).group(1)
    assert "same_as_previous is not allowed on the first step (S3)" in first
    third = re.search(r'id="steps-2-errors"><ul>(.*?)</ul>', page).group(1)
    assert "a follow-up needs an email step immediately before it" in third
    assert "step 1 of day 2 is a call step (S4)" in third
    assert 'id="steps-1-errors"' not in page
    assert "The campaign was not saved." in page and 'href="#steps-2-errors"' in page
    assert re.search(r'role="alert" id="steps-0-errors"', page)
    assert _count(session, Campaign) == 0
    # What was typed is kept, apart from the option the first step cannot have.
    assert options_of(page, "steps-0-send_option") == ["", "choose_at_launch", "at_time", "task"]
    assert 'value="same_as_previous" selected' not in page
    assert 'value="call" selected' in page


def test_builder_offers_only_the_options_valid_at_each_position(
        client: FlaskClient, session: Session, world: World, template: Template):
    """Does each email step offer only its S1/S2 options, and follow-up only after an email (S4)?"""
    token = sign_in(client)
    r = client.post("/campaigns/new", data=builder_form(token, [
        (1, [{"type": "email"}, {"type": "email"}]),
        (2, [{"type": "call"}, {"type": "email", "send_option": "at_time",
                                "send_time": "10:00"}]),
    ], action="refresh"))
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert options_of(page, "steps-0-send_option") == ["", "choose_at_launch", "at_time", "task"]
    assert options_of(page, "steps-1-send_option") == ["", "same_as_previous", "at_time", "task"]
    assert options_of(page, "steps-3-send_option") == ["", "same_as_previous", "at_time", "task"]
    assert wrapper_hidden(page, "steps-0-follow_up")  # first step: nothing before it
    assert not wrapper_hidden(page, "steps-1-follow_up")  # right after an email
    assert wrapper_hidden(page, "steps-3-follow_up")  # right after a call
    assert "disabled" in control(page, "steps-3-follow_up")
    # send_time only for at_time
    assert "disabled" in control(page, "steps-0-send_time")
    assert "disabled" not in control(page, "steps-3-send_time")
    # A first email on a later day cannot be chosen at launch (T1 makes that moment day 1).
    r = client.post("/campaigns/new", data=builder_form(token, [(2, [{"type": "email"}])],
                                                        action="refresh"))
    assert options_of(r.get_data(as_text=True), "steps-0-send_option") == [
        "", "at_time", "task"]
    assert _count(session, Campaign) == 0


def test_builder_buttons_work_without_javascript(client: FlaskClient, world: World,
                                                 template: Template):
    """Do Add day, Add step and Remove step re-render the form (nothing saved)?"""
    token = sign_in(client)
    days = [(1, [{"type": "email", "send_option": "task", "template_id": template.id}])]
    page = client.post("/campaigns/new", data=builder_form(token, days, action="add_day")
                       ).get_data(as_text=True)
    assert 'name="groups-1-day" id="groups-1-day" data-gfield="day" value="2"' in page
    assert options_of(page, "steps-1-send_option") == ["", "same_as_previous", "at_time", "task"]
    form = builder_form(token, days, action="add_step:0")
    form["groups-0-new_type"] = "inmail"
    page = client.post("/campaigns/new", data=form).get_data(as_text=True)
    assert re.search(r'name="steps-1-type".*?<option value="inmail" selected', page, re.S)
    page = client.post("/campaigns/new", data=builder_form(token, days, action="remove_step:0")
                       ).get_data(as_text=True)
    assert 'name="steps-0-type"' not in page


def test_builder_refuses_a_form_without_csrf(client: FlaskClient, session: Session,
                                             world: World, template: Template):
    """Is a builder post without the session's CSRF token refused?"""
    sign_in(client)
    r = client.post("/campaigns/new", data=builder_form("forged", [
        (1, [{"type": "call"}])]))
    assert r.status_code == 400
    assert _count(session, Campaign) == 0


def test_list_shows_name_status_steps_people_owner(client: FlaskClient, session: Session,
                                                   world: World, template: Template):
    """Does the list show each campaign's name, status, step count, people and owner?"""
    campaign = make_campaign(session, world.rep2, [task_step(1), task_step(2)], name="Calls")
    contact = make_contact(session, world.rep2, "x@example.com")
    session.add(Enrollment(org_id=world.org.id, campaign_id=campaign.id, contact_id=contact.id,
                           owner_id=world.rep2.id, start_at=datetime.now(UTC),
                           status="active"))
    make_campaign(session, world.outsider, [task_step(1)], name="Secret plan")
    session.commit()
    sign_in(client)
    page = client.get("/campaigns").get_data(as_text=True)
    row = re.search(r"<tr>\s*<td><a href=\"/campaigns/\d+\">Calls</a>.*?</tr>", page, re.S)
    cells = re.findall(r"<td>(.*?)</td>", row.group(0), re.S)
    assert [re.sub(r"<[^>]+>", "", c).strip() for c in cells[1:5]] == ["active", "2", "1",
                                                                       "Rep2"]
    assert "Secret plan" not in page


def test_a_launched_campaign_keeps_its_steps(client: FlaskClient, session: Session,
                                             world: World, template: Template):
    """Once people are in, are the steps read-only while the name can still change?"""
    campaign = make_campaign(session, world.rep, [task_step(1, title="Ring")], name="Old")
    contact = make_contact(session, world.rep, "p@example.com")
    session.commit()
    from server.campaigns.launch import launch

    launch(session, world.rep, campaign, [contact.id])
    session.commit()
    token = sign_in(client)
    page = client.get(f"/campaigns/{campaign.id}").get_data(as_text=True)
    assert "1 person is in this campaign" in page
    assert re.search(r'<fieldset id="days"[^>]*disabled', page)
    r = client.post(f"/campaigns/{campaign.id}", data=builder_form(token, [], name="New"))
    assert r.status_code == 302
    session.expire_all()
    stored = session.get(Campaign, campaign.id)
    assert stored.name == "New" and [s.title for s in stored.steps] == ["Ring"]


def test_another_orgs_campaign_is_not_found(client: FlaskClient, session: Session,
                                            world: World):
    """Is another org's campaign a 404 on every page, for reading and for posting?"""
    campaign = make_campaign(session, world.outsider, [task_step(1)])
    session.commit()
    token = sign_in(client)
    assert client.get(f"/campaigns/{campaign.id}").status_code == 404
    assert client.get(f"/campaigns/{campaign.id}/launch").status_code == 404
    assert client.post(f"/campaigns/{campaign.id}", data=builder_form(
        token, [(1, [{"type": "call"}])])).status_code == 404
    assert client.post(f"/campaigns/{campaign.id}/launch",
                       data={"csrf": token, "action": "confirm"}).status_code == 404


# -- launch dialog ------------------------------------------------------------------------


def _tomorrow_paris() -> str:
    return (datetime.now(UTC) + timedelta(days=2)).date().isoformat()


@pytest.fixture
def launchable(session: Session, world: World, template: Template) -> dict[str, Any]:
    """A Paris campaign (email at 09:30 on day 1, call on day 2) and two of rep's contacts."""
    campaign = make_campaign(session, world.rep, [
        email_step(1, SendOption.AT_TIME, template, send_time=time(9, 30)),
        task_step(2, StepType.CALL, "Call"),
    ], name="Paris", timezone="Europe/Paris")
    ada = make_contact(session, world.rep, "ada@example.com", first_name="Ada",
                       last_name="Lovelace", company="Engines")
    bob = make_contact(session, world.rep, "bob@example.com", first_name="Bob",
                       last_name="Stone")
    make_contact(session, world.rep2, "theirs@example.com", first_name="Theirs")
    session.commit()
    return {"campaign": campaign, "ada": ada, "bob": bob}


def test_launch_dialog_lists_the_reps_contacts(client: FlaskClient, launchable: dict):
    """Does the dialog list the rep's contacts, searchable, with send_at optional for at_time?"""
    sign_in(client)
    cid = launchable["campaign"].id
    page = client.get(f"/campaigns/{cid}/launch").get_data(as_text=True)
    assert "Ada Lovelace" in page and "Bob Stone" in page and "Theirs" not in page
    assert 'name="send_date"' in page and "optional: overrides its 09:30 send time" in page
    assert 'name="start_date"' in page and "Europe/Paris" in page
    assert 'id="confirm-button"' not in page  # confirming comes after a preview
    page = client.get(f"/campaigns/{cid}/launch?q=engines").get_data(as_text=True)
    assert "Ada Lovelace" in page and "Bob Stone" not in page


def test_launch_preview_shows_each_persons_plan(client: FlaskClient, session: Session,
                                                launchable: dict):
    """Does Preview show each step's local and UTC moment and rule (P1), storing nothing?"""
    token = sign_in(client)
    cid = launchable["campaign"].id
    day = _tomorrow_paris()
    r = client.post(f"/campaigns/{cid}/launch", data={
        "csrf": token, "action": "preview", "start_date": day, "start_time": "08:00",
        "contact_ids": [launchable["ada"].id, launchable["bob"].id]})
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert "Preview: each person's plan" in page
    assert "Plan for Ada Lovelace" in page and "Plan for Bob Stone" in page
    local = datetime.fromisoformat(day).strftime("%a %d %b %Y") + " 09:30"
    assert local in page
    assert re.search(rf"{day} 0[78]:30 UTC", page)  # CET or CEST
    assert "send at 09:30 (T2)" in page or "09:30" in page
    assert re.search(r"Day 2 · step 1</td>\s*<td>call", page)
    assert 'id="confirm-button"' in page and 'name="previewed"' in page
    assert _count(session, Enrollment) == 0


def test_confirm_enrolls_and_reports_who_was_already_in(client: FlaskClient, session: Session,
                                                        launchable: dict):
    """Does Confirm enroll the chosen people, and a second launch report who was already in?"""
    token = sign_in(client)
    cid = launchable["campaign"].id
    form = {"csrf": token, "action": "preview", "contact_ids": [launchable["ada"].id]}
    page = client.post(f"/campaigns/{cid}/launch", data=form).get_data(as_text=True)
    form.update(action="confirm",
                previewed=re.search(r'name="previewed" value="(\w+)"', page).group(1))
    r = client.post(f"/campaigns/{cid}/launch", data=form)
    assert r.status_code == 200
    page = r.get_data(as_text=True)
    assert "Added 1 person" in page and re.search(r'id="enrolled"><li>Ada Lovelace', page)
    assert _count(session, Enrollment) == 1

    form = {"csrf": token, "action": "preview",
            "contact_ids": [launchable["ada"].id, launchable["bob"].id]}
    page = client.post(f"/campaigns/{cid}/launch", data=form).get_data(as_text=True)
    form.update(action="confirm",
                previewed=re.search(r'name="previewed" value="(\w+)"', page).group(1))
    page = client.post(f"/campaigns/{cid}/launch", data=form).get_data(as_text=True)
    assert re.search(r'id="enrolled"><li>Bob Stone', page)
    assert re.search(r'id="already"><li>Ada Lovelace', page)
    assert _count(session, Enrollment) == 2


def test_confirm_with_other_choices_previews_again(client: FlaskClient, session: Session,
                                                   launchable: dict):
    """If the choices changed since the preview, does Confirm preview again, not launch?"""
    token = sign_in(client)
    cid = launchable["campaign"].id
    form = {"csrf": token, "action": "preview", "contact_ids": [launchable["ada"].id]}
    page = client.post(f"/campaigns/{cid}/launch", data=form).get_data(as_text=True)
    previewed = re.search(r'name="previewed" value="(\w+)"', page).group(1)
    form.update(action="confirm", previewed=previewed,
                contact_ids=[launchable["ada"].id, launchable["bob"].id])
    page = client.post(f"/campaigns/{cid}/launch", data=form).get_data(as_text=True)
    assert "Your choices changed since the preview" in page and "Plan for Bob Stone" in page
    assert _count(session, Enrollment) == 0


def test_launch_errors_are_shown_at_their_field(client: FlaskClient, session: Session,
                                                world: World, template: Template):
    """Are a missing send_at (S1), no contacts and a past moment shown inline, storing nothing?"""
    campaign = make_campaign(session, world.rep, [
        email_step(1, SendOption.CHOOSE_AT_LAUNCH, template)], timezone="UTC")
    contact = make_contact(session, world.rep, "c@example.com")
    session.commit()
    token = sign_in(client)
    page = client.get(f"/campaigns/{campaign.id}/launch").get_data(as_text=True)
    assert "Send the first email at (required)" in page
    r = client.post(f"/campaigns/{campaign.id}/launch", data={
        "csrf": token, "action": "preview", "contact_ids": [contact.id]})
    assert r.status_code == 422
    page = r.get_data(as_text=True)
    assert re.search(r'id="send_at-errors"><ul><li>the first email is sent at a moment you '
                     r"choose: give send_at \(S1\)", page)
    r = client.post(f"/campaigns/{campaign.id}/launch", data={
        "csrf": token, "action": "preview", "send_date": "2020-01-01", "send_time": "09:00"})
    page = r.get_data(as_text=True)
    assert 'id="contact_ids-errors"' in page and "give at least one contact" in page
    assert "is in the past" in page
    r = client.post(f"/campaigns/{campaign.id}/launch", data={
        "csrf": token, "action": "preview", "contact_ids": [contact.id],
        "send_date": _tomorrow_paris(), "send_time": "09:00"})
    assert r.status_code == 200 and "choose_at_launch" in r.get_data(as_text=True)
    assert _count(session, Enrollment) == 0
