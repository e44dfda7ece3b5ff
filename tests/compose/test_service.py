"""Templates saved over the API pass the template language's checks (E4–E7, bad input)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.compose.models import Template
from tests.conftest import World, make_template


def _stored(session: Session) -> list[tuple[str, str, str]]:
    rows = [(t.name, t.subject, t.body_html)
            for t in session.scalars(select(Template).order_by(Template.id))]
    session.commit()
    return rows


def _create(client: FlaskClient, world: World, **values: Any) -> Any:
    body = {"name": "Intro", "subject": "Hello", "body_html": "<p>Hi</p>", **values}
    return client.post("/api/templates", headers=world.auth(world.rep), json=body)


def _errors(response: Any, status: int = 422) -> list[tuple[str, str]]:
    assert response.status_code == status, response.json
    return [(e["field"], e["message"]) for e in response.json["errors"]]


def test_E4_marketo_default_and_prompts_are_saved_as_written(client: FlaskClient,
                                                             session: Session, world: World):
    """Is a template with Marketo defaults, sender, custom fields and prompts stored as is?"""
    body = ('<p>Hi {{first_name | default: "there"}},</p>\n<p>{{! Introduce yourself}}</p>\n'
            "<p>{{ company_friendly }} · {{custom_field_phone}} · {{my_name}}</p>")
    r = _create(client, world, subject="{{first_name|default:'Hi'}}, a question", body_html=body)
    assert r.status_code == 201, r.json
    assert _stored(session) == [("Intro", "{{first_name|default:'Hi'}}, a question", body)]


@pytest.mark.parametrize(("body", "message"), [
    ("<p>Hi</p>\n<p>{{ ''.__class__.__mro__ }}</p>",
     "line 2, column 9: only fields and the default filter are allowed; found attribute access"),
    ("<p>\n\n  {{ cycler.__init__.__globals__ }}</p>",
     "line 3, column 12: only fields and the default filter are allowed; found attribute access"),
    ("{{ self }}", 'line 1, column 4: unknown field "self"'),
    ("<p>x</p>\n{% for i in range(99999999) %}{{first_name}}{% endfor %}",
     "line 2, column 1: only fields and the default filter are allowed; found a {% … %} block "
     "(loops, conditions and other statements are not supported)"),
])
def test_E7_sandbox_escapes_are_refused_at_save_with_line_and_column(
        client: FlaskClient, session: Session, world: World, body: str, message: str):
    """Is each sandbox escape or loop a 422 on body_html at its line and column, unsaved?"""
    errors = _errors(_create(client, world, body_html=body))
    assert errors[0] == ("body_html", message)
    assert _stored(session) == []


def test_E4_an_unknown_field_is_named(client: FlaskClient, session: Session, world: World):
    """Is an unknown field a 422 naming it, in the subject and in the body?"""
    r = _create(client, world, subject="Hi {{frist_name}}",
                body_html="<p>a</p>\n<p>b</p>\n<p> {{ favourite_colour }}</p>")
    assert _errors(r) == [
        ("subject", 'line 1, column 6: unknown field "frist_name" (did you mean "first_name"?)'),
        ("body_html", 'line 3, column 8: unknown field "favourite_colour"'),
    ]
    assert _stored(session) == []


def test_a_syntax_error_is_a_422_with_line_and_column(client: FlaskClient, session: Session,
                                                      world: World):
    """Is a template syntax error a 422 with its line and column?"""
    r = _create(client, world, body_html="<p>ok</p>\n<p>{{ first_name ! }}</p>")
    assert _errors(r) == [
        ("body_html", "line 2, column 18: syntax error: unexpected character '!'")]
    r = _create(client, world, body_html="<p>ok</p>\n<p>{{ first_name </p>")
    assert _errors(r) == [("body_html", 'line 2, column 4: this field is not closed; end it '
                                        'with "}}"')]
    assert _stored(session) == []


def test_a_body_over_256_kb_is_a_413(client: FlaskClient, session: Session, world: World):
    """Is a body over 256 KB refused with 413 when created and when changed, nothing stored?"""
    huge = "<p>" + "é" * (128 * 1024) + "</p>"  # 128 Ki characters, over 256 KB in UTF-8
    r = _create(client, world, body_html=huge)
    assert _errors(r, 413) == [("body_html", "is larger than 256 KB; shorten the template")]
    assert _stored(session) == []
    tpl = make_template(session, world.rep)
    session.commit()
    r = client.patch(f"/api/templates/{tpl.id}", headers=world.auth(world.rep),
                     json={"body_html": huge})
    assert r.status_code == 413
    assert _stored(session)[0][2] == "<p>Hi</p>"


@pytest.mark.parametrize("subject", ["Hello\r\nBcc: x@example.com", "Hi\nthere", "Hi\r"])
def test_cr_or_lf_in_a_subject_is_a_422(client: FlaskClient, session: Session, world: World,
                                         subject: str):
    """Is a subject with CR or LF refused naming `subject`, when created and changed?"""
    assert _errors(_create(client, world, subject=subject)) == [
        ("subject", "may not contain a line break (CR or LF); a subject is one line")]
    tpl = make_template(session, world.rep)
    session.commit()
    r = client.patch(f"/api/templates/{tpl.id}", headers=world.auth(world.rep),
                     json={"subject": subject})
    assert [f for f, _ in _errors(r)] == ["subject"]
    assert [s for _, s, _ in _stored(session)] == ["Hello {{first_name}}"]


def test_a_patch_checks_only_the_fields_it_changes(client: FlaskClient, session: Session,
                                                   world: World):
    """Can a template stored before the checks be renamed, but not given a new bad body?"""
    tpl = make_template(session, world.rep)
    tpl.body_html = "{% if x %}legacy{% endif %}"
    session.commit()
    h = world.auth(world.rep)
    assert client.patch(f"/api/templates/{tpl.id}", headers=h,
                        json={"name": "Renamed"}).status_code == 200
    r = client.patch(f"/api/templates/{tpl.id}", headers=h, json={"body_html": "{{ x.y }}"})
    assert [f for f, _ in _errors(r)] == ["body_html"]


def test_many_problems_are_listed_up_to_a_limit(client: FlaskClient, world: World):
    """Does a template with many problems list the first twenty and say how many remain?"""
    body = "\n".join("{{ nope }}" for _ in range(25))
    errors = _errors(_create(client, world, body_html=body))
    assert len(errors) == 21
    assert errors[0] == ("body_html", 'line 1, column 4: unknown field "nope"')
    assert errors[-1] == ("body_html", "5 more problems after these; fix the ones above first")


# -- E6 at campaign save ------------------------------------------------------------------


def _campaign(client: FlaskClient, world: World, steps: list[dict[str, Any]]) -> Any:
    return client.post("/api/campaigns", headers=world.auth(world.rep),
                       json={"name": "Outbound", "timezone": "UTC", "steps": steps})


def test_E6_an_automatic_step_with_a_prompt_is_refused(client: FlaskClient, session: Session,
                                                       world: World):
    """Is an automatic email step whose template has a prompt refused naming step and rule?"""
    plain = make_template(session, world.rep, "Plain")
    prompt = make_template(session, world.rep, "Personal")
    prompt.body_html = "<p>Hi {{first_name}},</p><p>{{! Introduce yourself}}</p>"
    in_subject = make_template(session, world.rep, "Subject prompt")
    in_subject.subject = "{{! A catchy subject}}"
    session.commit()
    r = _campaign(client, world, [
        {"day": 1, "type": "email", "send_option": "at_time", "send_time": "09:00",
         "template_id": plain.id},
        {"day": 2, "type": "email", "send_option": "same_as_previous", "template_id": prompt.id},
        {"day": 3, "type": "email", "send_option": "task", "template_id": prompt.id},
        {"day": 4, "type": "email", "send_option": "at_time", "send_time": "10:00",
         "template_id": in_subject.id},
    ])
    assert r.status_code == 422, r.json
    assert [(e["field"], e["message"], e.get("rule")) for e in r.json["errors"]] == [
        ("steps[1].template_id", 'template "Personal" has a field prompt ({{! Introduce '
                                 "yourself}}), which only an email task can have (E6)", "E6"),
        ("steps[3].template_id", 'template "Subject prompt" has a field prompt ({{! A catchy '
                                 "subject}}), which only an email task can have (E6)", "E6"),
    ]


def test_E6_an_email_task_may_have_a_prompt(client: FlaskClient, session: Session,
                                            world: World):
    """Is a prompt fine in the template of an email task (the rep replaces it)?"""
    tpl = make_template(session, world.rep)
    tpl.body_html = "{{! Introduce yourself}}"
    session.commit()
    r = _campaign(client, world, [
        {"day": 1, "type": "email", "send_option": "task", "template_id": tpl.id}])
    assert r.status_code == 201, r.json


def test_E6_a_prompt_cannot_be_added_to_a_template_sent_automatically(
        client: FlaskClient, session: Session, world: World):
    """Is adding a prompt to a template that a live campaign sends automatically refused?"""
    auto = make_template(session, world.rep, "Auto")
    task = make_template(session, world.rep, "Task")
    session.commit()
    r = _campaign(client, world, [
        {"day": 1, "type": "email", "send_option": "choose_at_launch", "template_id": auto.id},
        {"day": 2, "type": "email", "send_option": "task", "template_id": task.id}])
    assert r.status_code == 201, r.json
    h = world.auth(world.rep)
    r = client.patch(f"/api/templates/{auto.id}", headers=h,
                     json={"body_html": "<p>{{! Say why}}</p>"})
    assert _errors(r) == [("body_html", 'campaign "Outbound" sends this template automatically '
                                        "(step 1); only an email task's template can have a "
                                        "field prompt {{! …}} (E6)")]
    assert r.json["errors"][0]["rule"] == "E6"
    r = client.patch(f"/api/templates/{task.id}", headers=h,
                     json={"body_html": "<p>{{! Say why}}</p>"})
    assert r.status_code == 200, r.json
