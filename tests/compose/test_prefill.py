"""The prefill document of an email task (E1–E3, E5, E6): fields, follow-ups, ETag, scoping.

Tasks are made the real way: a campaign launched for a contact, earlier steps completed through
the task service. Expected bodies are computed with ``render_email`` itself, so these tests check
what the document is made of, not how the renderer formats it (that is tested with render.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.campaigns.launch import launch
from server.campaigns.models import EnrollmentStep
from server.campaigns.progress import send_finished
from server.campaigns.spec import SendOption, StepType
from server.compose import render
from server.compose.models import Template
from server.compose.prefill import (
    DOCUMENTS,
    PrefillInput,
    PreviousEmail,
    TemplateText,
    build_prefill,
    format_moment,
    reply_subject,
)
from server.compose.prefill_views import BODIES, PrefillOut
from server.compose.render import render_email
from server.contacts.models import Contact
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task
from server.tasks.service import complete_task, skip_task
from tests.conftest import World, email_step, make_campaign, make_contact, task_step

TASK, AT_TIME = SendOption.TASK, SendOption.AT_TIME
LAUNCH = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)  # Monday
SENT = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)  # 10:30 in Paris, the rep's time zone


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _fresh_documents() -> Iterator[None]:
    """Every test starts with an empty document cache."""
    DOCUMENTS.clear()
    BODIES.clear()
    yield
    DOCUMENTS.clear()
    BODIES.clear()


def template(session: Session, owner: User, subject: str, body: str,
             name: str = "T") -> Template:
    tpl = Template(org_id=owner.org_id, created_by_id=owner.id, name=name, subject=subject,
                   body_html=body)
    session.add(tpl)
    session.flush()
    return tpl


def contact_of(session: Session, owner: User, **values: Any) -> Contact:
    values.setdefault("company", "Initech")
    values.setdefault("title", "CTO")
    return make_contact(session, owner, values.pop("email", "pat@initech.test"), **values)


def task_ids(session: Session, contact: Contact) -> list[int]:
    session.expire_all()
    ids = list(session.scalars(select(Task.id).where(Task.contact_id == contact.id)
                               .order_by(Task.id)))
    session.commit()
    return ids


def one_email_task(session: Session, owner: User, subject: str = "Hello {{first_name}}",
                   body: str = "<p>Hi {{first_name}} at {{company}}.</p>",
                   **contact_values: Any) -> tuple[int, Contact, Template]:
    """An open email task from a one-step campaign, for a new contact."""
    tpl = template(session, owner, subject, body)
    campaign = make_campaign(session, owner, [email_step(1, TASK, tpl)], name="Q4 outreach")
    contact = contact_of(session, owner, **contact_values)
    launch(session, owner, campaign, [contact.id], now=LAUNCH)
    session.commit()
    return task_ids(session, contact)[0], contact, tpl


def contact_dict(contact: Contact) -> dict[str, Any]:
    return {"first_name": contact.first_name, "last_name": contact.last_name,
            "title": contact.title, "company": contact.company, "email": contact.email,
            "custom_fields": contact.custom_fields or {}}


def sender_dict(user: User) -> dict[str, Any]:
    return {"name": user.name, "title": user.title, "email": user.email}


def get(client: FlaskClient, world: World, user: User, task_id: int,
        **headers: str) -> Any:
    return client.get(f"/api/tasks/{task_id}/prefill", headers={**world.auth(user), **headers})


# -- the document -------------------------------------------------------------------------


def test_every_field_of_an_email_task(client: FlaskClient, session: Session,
                                      world: World) -> None:
    """What does a compose window get for a plain email task (E1)?"""
    task_id, contact, tpl = one_email_task(session, world.rep)
    r = get(client, world, world.rep, task_id)
    assert r.status_code == 200, r.json
    doc = r.json
    PrefillOut.model_validate(doc)
    task = session.get(Task, task_id)
    assert task is not None
    own = render_email(tpl.subject, tpl.body_html, contact_dict(contact), sender_dict(world.rep))
    assert list(doc) == ["task", "to", "cc", "bcc", "subject", "html", "text", "prompts",
                         "blocked", "follow_up", "links", "etag"]
    assert doc["task"] == {"id": task_id, "type": "email",
                           "campaign": {"id": task.campaign_id, "name": "Q4 outreach"},
                           "day": 1, "step": 1, "due_at": task.due_at.isoformat()}
    assert doc["to"] == [{"email": "pat@initech.test", "name": "Pat Doe"}]
    assert doc["cc"] == [] and doc["bcc"] == []
    assert doc["subject"] == "Hello Pat" == own.subject
    assert doc["html"] == own.html and "Hi Pat at Initech." in doc["html"]
    assert doc["text"] == own.text and "Hi Pat at Initech." in doc["text"]
    assert doc["prompts"] == []
    assert doc["blocked"] is None
    assert doc["follow_up"] is None
    links = doc["links"]
    assert links["truncated"] is False
    gmail = parse_qs(urlsplit(links["gmail"]).query)
    assert links["gmail"].startswith("https://mail.google.com/mail/?view=cm&fs=1&to=")
    assert gmail["to"] == ["pat@initech.test"] and gmail["su"] == ["Hello Pat"]
    assert gmail["body"] == [own.text]
    outlook = parse_qs(urlsplit(links["outlook_web"]).query)
    assert links["outlook_web"].startswith("https://outlook.office.com/mail/deeplink/compose?")
    assert outlook == {"to": ["pat@initech.test"], "subject": ["Hello Pat"], "body": [own.text]}
    assert links["mailto"].startswith("mailto:pat@initech.test?subject=Hello%20Pat&body=")
    assert r.headers["ETag"] == f'"{doc["etag"]}"'
    assert r.headers["Cache-Control"] == "private, no-cache"


def test_outlook_link_writes_spaces_as_percent_20(client: FlaskClient, session: Session,
                                                  world: World) -> None:
    """Does the Outlook link encode spaces as %20, never '+' (Outlook shows a '+' as is)?"""
    task_id, _, _ = one_email_task(session, world.rep, subject="A quick question for you",
                                   body="<p>Two words and more</p>")
    links = get(client, world, world.rep, task_id).json["links"]
    assert "subject=A%20quick%20question%20for%20you" in links["outlook_web"]
    assert "Two%20words%20and%20more" in links["outlook_web"]
    assert "+" not in links["outlook_web"]
    assert "su=A%20quick%20question%20for%20you" in links["gmail"]


def test_field_prompts_are_listed(client: FlaskClient, session: Session, world: World) -> None:
    """Are field prompts (E6) listed so the compose window can refuse to send?"""
    task_id, _, _ = one_email_task(
        session, world.rep, body="<p>Hi {{first_name}},</p><p>{{! Introduce yourself}}</p>")
    doc = get(client, world, world.rep, task_id).json
    assert doc["prompts"] == ["Introduce yourself"]
    assert doc["blocked"] is None


def test_a_missing_field_blocks_the_document(client: FlaskClient, session: Session,
                                             world: World) -> None:
    """Does a field with no value and no default block the email, naming the field (E5)?"""
    task_id, _, _ = one_email_task(
        session, world.rep, subject="For {{company}}",
        body="<p>Hi {{first_name}}, about {{custom_field_industry}}.</p>")
    doc = get(client, world, world.rep, task_id).json
    PrefillOut.model_validate(doc)
    assert doc["blocked"] is not None
    assert [f for f in doc["blocked"]["fields"] if "industry" in f]
    assert doc["subject"] == doc["html"] == doc["text"] == ""
    assert doc["links"] == {"gmail": None, "outlook_web": None, "mailto": None,
                            "truncated": False}
    assert doc["to"] == [{"email": "pat@initech.test", "name": "Pat Doe"}]


def test_a_default_or_blank_field_does_not_block(client: FlaskClient, session: Session,
                                                 world: World) -> None:
    """Do defaults, blank names and "your company" keep the email sendable (E5)?"""
    task_id, _, _ = one_email_task(
        session, world.rep, subject="Hi {{first_name | default: \"there\"}}",
        body="<p>{{custom_field_industry | default: \"your field\"}} at {{company}}</p>",
        first_name="", company="")
    doc = get(client, world, world.rep, task_id).json
    assert doc["blocked"] is None
    assert doc["subject"] == "Hi there"
    assert "your field at your company" in doc["text"]
    assert doc["to"] == [{"email": "pat@initech.test", "name": "Doe"}]


def test_a_contact_without_an_address_is_blocked_on_email(client: FlaskClient, session: Session,
                                                          world: World) -> None:
    """Is a contact whose address was removed after launch blocked on "email"?"""
    task_id, contact, _ = one_email_task(session, world.rep)
    contact.email = None
    session.commit()
    doc = get(client, world, world.rep, task_id).json
    assert doc["blocked"] == {"fields": ["email"]}
    assert doc["to"] == []


def test_long_bodies_leave_links_out(client: FlaskClient, session: Session,
                                     world: World) -> None:
    """Is a link over 2,000 characters null with truncated: true, the body still complete?"""
    body = "<p>" + "word " * 500 + "</p>"
    task_id, _, _ = one_email_task(session, world.rep, body=body)
    doc = get(client, world, world.rep, task_id).json
    assert doc["links"] == {"gmail": None, "outlook_web": None, "mailto": None,
                            "truncated": True}
    assert doc["text"].count("word") == 500


def test_links_just_under_the_limit_are_kept(client: FlaskClient, session: Session,
                                             world: World) -> None:
    """Are links of at most 2,000 characters all offered?"""
    task_id, _, _ = one_email_task(session, world.rep, body="<p>" + "x" * 1500 + "</p>")
    links = get(client, world, world.rep, task_id).json["links"]
    assert links["truncated"] is False
    assert all(len(links[k]) <= 2000 for k in ("gmail", "outlook_web", "mailto"))


# -- follow-ups (E2, E3) ----------------------------------------------------------------------


def follow_up_campaign(session: Session, owner: User, first_subject: str = "Quick question",
                       follow_subject: str = "", first_option: SendOption = TASK,
                       ) -> tuple[Any, Template, Template]:
    first = template(session, owner, first_subject,
                     "<p>Hi {{first_name}}, does {{company}} need help?</p>", "First")
    second = template(session, owner, follow_subject,
                      "<p>Just bumping this, {{first_name}}.</p>", "Second")
    send_time = time(9, 0) if first_option is AT_TIME else None
    steps = [email_step(1, first_option, first, send_time=send_time),
             email_step(2, TASK, second, follow_up=True)]
    return make_campaign(session, owner, steps, name="Follow-ups"), first, second


def test_follow_up_quotes_the_template_never_the_reps_edits(client: FlaskClient,
                                                            session: Session,
                                                            world: World) -> None:
    """Does a follow-up quote the previous step's template, not what the rep edited (E2)?"""
    campaign, first, second = follow_up_campaign(session, world.rep)
    contact = contact_of(session, world.rep)
    launch(session, world.rep, campaign, [contact.id], now=LAUNCH)
    session.commit()
    first_task = task_ids(session, contact)[0]
    # The rep rewrote the first email before sending it through the outbox.
    session.add(ScheduledSend(org_id=world.org.id, owner_id=world.rep.id,
                              campaign_id=campaign.id, task_id=first_task,
                              contact_id=contact.id, status=SendStatus.SENT, due_at=SENT,
                              to_email=contact.email or "", subject="My own words",
                              html="<p>REP EDITED THIS</p>", text="REP EDITED THIS",
                              sent_at=SENT))
    complete_task(session, world.rep, first_task, now=SENT, sent_at=SENT,
                  message_id="<first@relay.test>")
    session.commit()
    follow_task = task_ids(session, contact)[1]

    r = get(client, world, world.rep, follow_task)
    assert r.status_code == 200, r.json
    doc = r.json
    PrefillOut.model_validate(doc)
    people = contact_dict(contact), sender_dict(world.rep)
    own = render_email(second.subject, second.body_html, *people)
    earlier = render_email(first.subject, first.body_html, *people)
    fu = doc["follow_up"]
    assert "REP EDITED THIS" not in str(doc) and "My own words" not in str(doc)
    line = "On Mon, 23 Nov 2026 at 10:30, Rep wrote:"  # sent_at in the rep's Paris time
    assert fu["quoted_text"].startswith(line + "\n> ")
    assert "> Hi Pat, does Initech need help?" in fu["quoted_text"]
    assert line in fu["quoted_html"] and "<blockquote" in fu["quoted_html"]
    assert earlier.html in fu["quoted_html"]
    assert doc["html"].startswith(own.html) and doc["html"].endswith(fu["quoted_html"])
    assert doc["text"].startswith(own.text) and doc["text"].endswith(fu["quoted_text"])
    assert fu["in_reply_to"] == fu["references"] == "<first@relay.test>"
    assert fu["thread"] == {"gmail_thread_id": None, "outlook_conversation_id": None}
    assert doc["subject"] == "Re: Quick question"  # the follow-up's own subject is empty (E3)
    assert doc["task"]["day"] == 2


def test_re_is_not_doubled(client: FlaskClient, session: Session, world: World) -> None:
    """Does an empty follow-up subject become "Re: " + the previous one only once (E3)?"""
    campaign, _, _ = follow_up_campaign(session, world.rep, first_subject="RE: Pricing")
    contact = contact_of(session, world.rep)
    launch(session, world.rep, campaign, [contact.id], now=LAUNCH)
    session.commit()
    complete_task(session, world.rep, task_ids(session, contact)[0], now=SENT, sent_at=SENT)
    session.commit()
    doc = get(client, world, world.rep, task_ids(session, contact)[1]).json
    assert doc["subject"] == "RE: Pricing"
    assert doc["follow_up"]["in_reply_to"] is None  # no Message-ID was recorded


def test_a_follow_up_with_its_own_subject_keeps_it(client: FlaskClient, session: Session,
                                                   world: World) -> None:
    """Does a follow-up whose template has a subject keep it?"""
    campaign, _, _ = follow_up_campaign(session, world.rep, follow_subject="Checking in")
    contact = contact_of(session, world.rep)
    launch(session, world.rep, campaign, [contact.id], now=LAUNCH)
    session.commit()
    complete_task(session, world.rep, task_ids(session, contact)[0], now=SENT, sent_at=SENT)
    session.commit()
    doc = get(client, world, world.rep, task_ids(session, contact)[1]).json
    assert doc["subject"] == "Checking in"


def test_follow_up_after_an_automatic_email(client: FlaskClient, session: Session,
                                            world: World) -> None:
    """After an automatic email, is the quote dated when it was sent, without its stored body?"""
    campaign, _, _ = follow_up_campaign(session, world.rep, first_option=AT_TIME)
    contact = contact_of(session, world.rep)
    launch(session, world.rep, campaign, [contact.id], now=LAUNCH)
    session.commit()
    send = session.scalars(select(ScheduledSend).where(
        ScheduledSend.contact_id == contact.id)).one()
    send.status, send.sent_at = SendStatus.SENT, utc(2026, 11, 23, 14, 5)
    send.html = send.text = "STORED BODY"
    send_finished(session, send.id, utc(2026, 11, 23, 14, 6))
    session.commit()
    doc = get(client, world, world.rep, task_ids(session, contact)[0]).json
    assert doc["follow_up"]["quoted_text"].startswith("On Mon, 23 Nov 2026 at 15:05, Rep wrote:")
    assert "STORED BODY" not in str(doc)


def test_follow_up_after_a_skipped_email_is_dated_as_planned(client: FlaskClient,
                                                             session: Session,
                                                             world: World) -> None:
    """A skipped previous email was never sent: dated at its planned moment, no threading."""
    campaign, _, _ = follow_up_campaign(session, world.rep)
    contact = contact_of(session, world.rep)
    launch(session, world.rep, campaign, [contact.id], now=LAUNCH)
    session.commit()
    skip_task(session, world.rep, task_ids(session, contact)[0], now=SENT)
    session.commit()
    planned = session.scalars(select(EnrollmentStep.planned_at).where(
        EnrollmentStep.position == 0)).one()
    doc = get(client, world, world.rep, task_ids(session, contact)[1]).json
    assert doc["follow_up"]["quoted_text"].startswith(
        f"On {format_moment(planned, 'Europe/Paris')}, Rep wrote:")
    assert doc["follow_up"]["in_reply_to"] is None


def test_a_missing_field_in_the_quoted_email_blocks_too(client: FlaskClient, session: Session,
                                                        world: World) -> None:
    """Is a follow-up blocked when the previous email cannot be rendered for the contact?"""
    first = template(session, world.rep, "About {{custom_field_topic}}", "<p>Hi</p>", "First")
    second = template(session, world.rep, "Again", "<p>Hello again</p>", "Second")
    campaign = make_campaign(session, world.rep, [email_step(1, TASK, first),
                                                  email_step(2, TASK, second, follow_up=True)])
    contact = contact_of(session, world.rep)
    launch(session, world.rep, campaign, [contact.id], now=LAUNCH)
    session.commit()
    complete_task(session, world.rep, task_ids(session, contact)[0], now=SENT, sent_at=SENT)
    session.commit()
    doc = get(client, world, world.rep, task_ids(session, contact)[1]).json
    assert [f for f in doc["blocked"]["fields"] if "topic" in f]
    assert doc["html"] == doc["text"] == doc["follow_up"]["quoted_html"] == ""


# -- ETag ---------------------------------------------------------------------------------


def test_etag_and_if_none_match(client: FlaskClient, session: Session, world: World) -> None:
    """Does a request naming the current ETag get an empty 304, and a stale one a 200?"""
    task_id, _, _ = one_email_task(session, world.rep)
    first = get(client, world, world.rep, task_id)
    etag = first.headers["ETag"]
    again = get(client, world, world.rep, task_id, **{"If-None-Match": etag})
    assert again.status_code == 304
    assert again.get_data() == b""
    assert again.headers["ETag"] == etag
    stale = get(client, world, world.rep, task_id, **{"If-None-Match": '"something-else"'})
    assert stale.status_code == 200 and stale.json == first.json
    listed = get(client, world, world.rep, task_id, **{"If-None-Match": f'"x", {etag}'})
    assert listed.status_code == 304


def test_repeated_requests_compile_nothing_and_connect_nothing(
        app: Flask, client: FlaskClient, session: Session, world: World,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first request, do prefill and ping compile no template, open no connection?"""
    task_id, _, _ = one_email_task(session, world.rep)
    compiled: list[str] = []
    from_string = SandboxedEnvironment.from_string

    def counting(self: SandboxedEnvironment, source: Any, *args: Any, **kwargs: Any) -> Any:
        compiled.append(str(source))
        return from_string(self, source, *args, **kwargs)

    monkeypatch.setattr(SandboxedEnvironment, "from_string", counting)
    for cache in (render._ANALYSES, render._COMPILED, render._RENDERED):
        cache.clear()  # other tests compiled the same templates in this process
    first = get(client, world, world.rep, task_id)
    assert first.status_code == 200
    assert client.get("/api/ping", headers=world.auth(world.rep)).status_code == 200
    assert compiled  # the first document compiled its templates
    connects: list[object] = []
    for name in ("relay.engine", "relay.read_engine"):
        event.listen(app.extensions[name], "connect", lambda *a: connects.append(a))
    compiled.clear()
    DOCUMENTS.clear()  # even a document built again reuses the compiled templates
    BODIES.clear()
    for _ in range(20):
        r = get(client, world, world.rep, task_id)
        assert r.status_code == 200 and r.json == first.json
        assert client.get("/api/ping", headers=world.auth(world.rep)).status_code == 200
    assert compiled == []
    assert connects == []


def test_etag_changes_with_the_contact(client: FlaskClient, session: Session,
                                       world: World) -> None:
    """Does editing the contact change the document and its ETag?"""
    task_id, contact, _ = one_email_task(session, world.rep)
    etag = get(client, world, world.rep, task_id).headers["ETag"]
    r = client.patch(f"/api/contacts/{contact.id}", json={"first_name": "Sam"},
                     headers=world.auth(world.rep))
    assert r.status_code == 200, r.json
    after = get(client, world, world.rep, task_id, **{"If-None-Match": etag})
    assert after.status_code == 200
    assert after.headers["ETag"] != etag and after.json["subject"] == "Hello Sam"


def test_etag_changes_with_the_template(client: FlaskClient, session: Session,
                                        world: World) -> None:
    """Does editing the template change the document and its ETag?"""
    task_id, _, tpl = one_email_task(session, world.rep)
    etag = get(client, world, world.rep, task_id).headers["ETag"]
    r = client.patch(f"/api/templates/{tpl.id}", json={"subject": "Hey {{first_name}}"},
                     headers=world.auth(world.rep))
    assert r.status_code == 200, r.json
    after = get(client, world, world.rep, task_id, **{"If-None-Match": etag})
    assert after.status_code == 200
    assert after.headers["ETag"] != etag and after.json["subject"] == "Hey Pat"


def test_etag_changes_when_the_previous_email_is_sent(session: Session, world: World) -> None:
    """Is the ETag a function of the content (the quote date moves, so does the ETag)?"""
    base = PrefillInput(
        task_id=1, task_type=StepType.EMAIL, campaign_id=2, campaign_name="C", day=2, step=1,
        due_at=utc(2026, 11, 24, 9), contact={"first_name": "Pat", "email": "p@x.test"},
        sender={"name": "Rep", "email": "rep@a.test", "title": ""}, sender_timezone="UTC",
        template=TemplateText("", "<p>Again</p>"),
        previous=PreviousEmail(TemplateText("Hi", "<p>First</p>"),
                               planned_at=utc(2026, 11, 23, 9)))
    sent = PrefillInput(**{**base.__dict__, "previous": PreviousEmail(
        TemplateText("Hi", "<p>First</p>"), done=True, sent_at=utc(2026, 11, 23, 11),
        planned_at=utc(2026, 11, 23, 9), message_id="<m@x>")})
    now = utc(2026, 11, 24, 10)
    a, b = build_prefill(base, now=now), build_prefill(sent, now=now)
    assert a["etag"] != b["etag"]
    assert build_prefill(base, now=now)["etag"] == a["etag"]
    assert a["follow_up"]["quoted_text"].startswith("On Mon, 23 Nov 2026 at 09:00, Rep wrote:")
    assert b["follow_up"]["quoted_text"].startswith("On Mon, 23 Nov 2026 at 11:00, Rep wrote:")
    assert a["follow_up"]["in_reply_to"] is None and b["follow_up"]["in_reply_to"] == "<m@x>"
    assert a["subject"] == b["subject"] == "Re: Hi"


# -- scoping and kinds ----------------------------------------------------------------------


@pytest.mark.parametrize("who", ["rep2", "outsider", "admin"])
def test_another_reps_task_is_404(client: FlaskClient, session: Session, world: World,
                                  who: str) -> None:
    """Is another rep's task (same org, another org, even an admin's view) a 404?"""
    task_id, _, _ = one_email_task(session, world.rep)
    r = get(client, world, getattr(world, who), task_id)
    assert r.status_code == 404
    assert r.json["error"] == "not_found"


def test_unknown_task_and_no_token(client: FlaskClient, session: Session, world: World) -> None:
    """Is an unknown task a 404 and a request without credentials a 401?"""
    assert get(client, world, world.rep, 999_999).status_code == 404
    assert client.get("/api/tasks/1/prefill").status_code == 401
    assert client.get("/api/ping").status_code == 401
    forged = {"Authorization": "Bearer rly_not-a-real-token"}
    assert client.get("/api/tasks/1/prefill", headers=forged).status_code == 401
    assert client.get("/api/ping", headers=forged).status_code == 401


def test_a_call_task_has_no_prefill(client: FlaskClient, session: Session,
                                    world: World) -> None:
    """Is a call task a 409 that says only email tasks have a prefill?"""
    campaign = make_campaign(session, world.rep, [task_step(1)])
    contact = contact_of(session, world.rep)
    launch(session, world.rep, campaign, [contact.id], now=LAUNCH)
    session.commit()
    r = get(client, world, world.rep, task_ids(session, contact)[0])
    assert r.status_code == 409
    assert "only email tasks" in r.json["message"]


def test_ping(client: FlaskClient, world: World) -> None:
    """Does /api/ping answer who is calling?"""
    r = client.get("/api/ping", headers=world.auth(world.rep))
    assert r.status_code == 200
    assert r.json == {"ok": True, "user_id": world.rep.id}


def test_openapi_documents_prefill(client: FlaskClient) -> None:
    """Are the prefill document and ping described in /openapi.json?"""
    spec = client.get("/openapi.json").json
    op = spec["paths"]["/api/tasks/{task_id}/prefill"]["get"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/PrefillOut"
    props = spec["components"]["schemas"]["PrefillOut"]["properties"]
    assert set(props) == {"task", "to", "cc", "bcc", "subject", "html", "text", "prompts",
                          "blocked", "follow_up", "links", "etag"}
    assert "/api/ping" in spec["paths"]


# -- pure helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "expected"), [
    ("Pricing", "Re: Pricing"), ("Re: Pricing", "Re: Pricing"), ("RE:Pricing", "RE:Pricing"),
    ("re : Pricing", "re : Pricing"), ("", ""), ("Regarding pricing", "Re: Regarding pricing"),
])
def test_reply_subject(subject: str, expected: str) -> None:
    """Is "Re:" added once and never doubled (E3)?"""
    assert reply_subject(subject) == expected


def test_format_moment_uses_the_senders_zone() -> None:
    """Is the quote's date written in the sender's time zone?"""
    assert format_moment(utc(2026, 11, 24, 23, 30), "Europe/Paris") == "Wed, 25 Nov 2026 at 00:30"
