"""The Gmail add-on's endpoints: who may call them, what they answer, what they record.

Requests are made as Google makes them: a system ID token for the endpoint's URL in the
Authorization header and an event object whose ``userIdToken`` names the Gmail user. Both
are signed with a key generated for the test session and verified against a certificate
endpoint on 127.0.0.1. Every 200 answer is parsed strictly into Google's types
(``tests/gmail_types.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.addins.gmail import cards
from server.addins.gmail.client import FakeGmailApi, OpenedMessage
from server.addins.gmail.deployment import ENDPOINTS
from server.addins.gmail.models import GmailReplyDraft
from server.app import create_app
from server.campaigns.launch import launch
from server.campaigns.spec import SendOption
from server.compose.models import Template
from server.compose.prefill import DOCUMENTS
from server.contacts.models import Contact
from server.feed.models import EventKind, FeedEvent
from server.tasks.models import CompletedVia, Task, TaskStatus
from tests.conftest import World, email_step, make_campaign, make_contact
from tests.gmail_support import (
    ALL_SCOPES,
    CLIENT_ID,
    PUBLIC_URL,
    SERVICE_ACCOUNT,
    LocalGoogle,
    event,
    gmail_config,
)
from tests.gmail_types import cards_in, check_response

LAUNCH = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def google() -> Iterator[LocalGoogle]:
    """Google's certificate endpoint on 127.0.0.1, and its signing key."""
    local = LocalGoogle()
    yield local
    local.close()


@pytest.fixture
def gapp(database_url: str, google: LocalGoogle) -> Iterator[Flask]:
    """The app configured for the add-on (fake Gmail API, local certificates)."""
    DOCUMENTS.clear()
    app = create_app(gmail_config(database_url, google.certs_url))
    yield app
    app.extensions["relay.engine"].dispose()


@pytest.fixture
def gclient(gapp: Flask) -> FlaskClient:
    """A test client of the add-on app."""
    return gapp.test_client()


@pytest.fixture
def gsession(gapp: Flask) -> Iterator[Session]:
    """A session on the add-on app's database."""
    s: Session = gapp.extensions["relay.sessionmaker"]()
    yield s
    s.close()


@pytest.fixture
def gworld(gsession: Session) -> World:
    """Two orgs with users (rep@a.test is the Gmail user of most tests)."""
    return World(gsession)


def post(client: FlaskClient, google: LocalGoogle, name: str, body: dict[str, Any],
         token: str | None = None) -> Any:
    """POST ``body`` to endpoint ``name`` with a valid system token unless ``token``."""
    path = ENDPOINTS[name]
    auth = token if token is not None else google.system_token(path)
    headers = {"Authorization": f"Bearer {auth}"} if auth else {}
    resp = client.post(path, json=body, headers=headers)
    if resp.status_code == 200:
        check_response(resp.get_json())
    return resp


def email_tasks(session: Session, owner: Any, n: int, *, subject: str = "Hi {{first_name}}",
                body: str = "<p>Hello {{first_name}} at {{company}}.</p>",
                start: int = 0, **contact_values: Any) -> list[int]:
    """``n`` open email tasks of ``owner``, one per new contact (person<i>@example.com)."""
    tpl = Template(org_id=owner.org_id, created_by_id=owner.id, name=f"T{start}",
                   subject=subject, body_html=body)
    session.add(tpl)
    session.flush()
    campaign = make_campaign(session, owner, [email_step(1, SendOption.TASK, tpl)],
                             name=f"Q4 outreach {start}")
    contacts = [make_contact(session, owner, f"person{start + i}@example.com",
                             company="Initech", **contact_values) for i in range(n)]
    launch(session, owner, campaign, [c.id for c in contacts], now=LAUNCH)
    session.commit()
    ids = list(session.scalars(select(Task.id).where(
        Task.contact_id.in_([c.id for c in contacts])).order_by(Task.id)))
    session.commit()
    return ids


def texts(body: dict[str, Any]) -> str:
    """Every card's JSON as one string (to look for names and buttons)."""
    import json

    return json.dumps(cards_in(body))


# -- who may call ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_refuses_a_call_without_a_bearer(gclient: FlaskClient,
                                                        google: LocalGoogle, gworld: World,
                                                        name: str) -> None:
    """Is each add-on endpoint a 401 without an Authorization header?"""
    resp = post(gclient, google, name, event(google, "rep@a.test"), token="")
    assert resp.status_code == 401


@pytest.mark.parametrize("name", sorted(ENDPOINTS))
def test_every_endpoint_refuses_a_token_for_another_endpoint(gclient: FlaskClient,
                                                             google: LocalGoogle,
                                                             gworld: World, name: str) -> None:
    """Is a token minted for another endpoint's URL (a mis-addressed call) refused?"""
    other = "/gmail/home/list" if name != "home_list" else "/gmail/home"
    resp = post(gclient, google, name, event(google, "rep@a.test"),
                token=google.system_token(other))
    assert resp.status_code == 401


def _b64(value: dict[str, Any]) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _bad_system_tokens(google: LocalGoogle) -> dict[str, str]:
    path = ENDPOINTS["home"]
    valid = google.system_token(path)
    head, payload, _sig = valid.split(".")
    return {
        "wrong audience": google.system_token(path, aud="https://evil.test/gmail/home"),
        "audience without path": google.system_token(path, aud=PUBLIC_URL),
        "another service account": google.system_token(
            path, email="service-999@gcp-sa-gsuiteaddons.iam.gserviceaccount.com"),
        "email not verified": google.system_token(path, email_verified=False),
        "expired": google.system_token(path, iat=1_700_000_000, exp=1_700_003_600),
        "unsigned": f"{head}.{payload}.",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "signed by another key": google.system_token(path, signer_pem=google.other_private_pem),
        "unknown key id": google.system_token(path, kid="nope"),
        "not Google's issuer": google.system_token(path, iss="https://evil.test"),
        "garbage": "not-a-token",
    }


def test_bad_system_tokens_are_401(gclient: FlaskClient, google: LocalGoogle,
                                   gworld: World) -> None:
    """Is each bad system token (audience, account, email_verified, expiry, signature) a 401?"""
    for label, token in _bad_system_tokens(google).items():
        resp = post(gclient, google, "home", event(google, "rep@a.test"), token=token)
        assert resp.status_code == 401, label
        assert resp.get_json()["error"] == "unauthorized", label


def test_a_valid_call_is_200_and_acts_as_the_right_relay_user(gclient: FlaskClient,
                                                              gsession: Session,
                                                              google: LocalGoogle,
                                                              gworld: World) -> None:
    """Does a valid call answer the Gmail user's own tasks, not another rep's?"""
    email_tasks(gsession, gworld.rep, 1, first_name="Mine")
    email_tasks(gsession, gworld.rep2, 1, start=50, first_name="Theirs")
    resp = post(gclient, google, "home", event(google, "rep@a.test"))
    assert resp.status_code == 200
    shown = texts(resp.get_json())
    assert "Mine" in shown and "Theirs" not in shown
    resp = post(gclient, google, "home", event(google, "rep2@a.test"))
    shown = texts(resp.get_json())
    assert "Theirs" in shown and "Mine" not in shown


def test_bad_user_tokens_are_401(gclient: FlaskClient, google: LocalGoogle,
                                 gworld: World) -> None:
    """Is a userIdToken for another client id, unverified, expired or foreign-signed a 401?"""
    bad = {
        "another client": google.user_token("rep@a.test", aud="other.apps.googleusercontent"),
        "system audience": google.user_token("rep@a.test", aud=PUBLIC_URL + "/gmail/home"),
        "not verified": google.user_token("rep@a.test", email_verified=False),
        "expired": google.user_token("rep@a.test", iat=1_700_000_000, exp=1_700_003_600),
        "foreign key": google.user_token("rep@a.test", signer_pem=google.other_private_pem),
    }
    for label, token in bad.items():
        body = event(google, "rep@a.test")
        body["authorizationEventObject"]["userIdToken"] = token
        resp = post(gclient, google, "home", body)
        assert resp.status_code == 401, label


def test_unset_configuration_refuses_everything(database_url: str, google: LocalGoogle,
                                                gworld: World) -> None:
    """With the service account or client id unset, is even a well-signed call a 401?"""
    for unset in ("GMAIL_ADDON_SERVICE_ACCOUNT", "GMAIL_ADDON_CLIENT_ID",
                  "GMAIL_ADDON_CERTS_URL"):
        app = create_app(gmail_config(database_url, google.certs_url, **{unset: None}))
        try:
            resp = post(app.test_client(), google, "home", event(google, "rep@a.test"))
            assert resp.status_code == 401, unset
        finally:
            app.extensions["relay.engine"].dispose()
    # The sanity check: the same call with everything set is accepted.
    app = create_app(gmail_config(database_url, google.certs_url))
    try:
        assert post(app.test_client(), google, "home",
                    event(google, "rep@a.test")).status_code == 200
    finally:
        app.extensions["relay.engine"].dispose()


def test_certificates_are_fetched_once(gapp: Flask, gclient: FlaskClient,
                                       google: LocalGoogle, gworld: World) -> None:
    """Do ten calls (twenty tokens) fetch Google's certificates only once?"""
    before = google.hits
    for _ in range(10):
        assert post(gclient, google, "home", event(google, "rep@a.test")).status_code == 200
    assert google.hits - before == 1
    assert gapp.extensions["relay.gmail.verifier"].request.fetches == 1


def test_an_unknown_google_account_gets_a_card_saying_how_to_get_access(
        gclient: FlaskClient, google: LocalGoogle, gworld: World) -> None:
    """Is a verified Google account with no Relay user told how to get access?"""
    resp = post(gclient, google, "home", event(google, "stranger@elsewhere.test"))
    assert resp.status_code == 200
    shown = texts(resp.get_json())
    assert "No Relay account" in shown and "stranger@elsewhere.test" in shown
    resp = post(gclient, google, "compose_fill", event(google, "stranger@elsewhere.test",
                                                       params={"task_id": "1"}))
    assert "renderActions" in resp.get_json()
    assert "No Relay account" in texts(resp.get_json())


def test_missing_scopes_are_requested(gclient: FlaskClient, google: LocalGoogle,
                                      gsession: Session, gworld: World) -> None:
    """Without the compose scope, does Fill ask for it (and fill nothing)?"""
    task_id = email_tasks(gsession, gworld.rep, 1)[0]
    granted = [s for s in ALL_SCOPES if "action.compose" not in s]
    resp = post(gclient, google, "compose_fill",
                event(google, "rep@a.test", params={"task_id": str(task_id)}, scopes=granted))
    assert resp.status_code == 200
    assert resp.get_json() == {"requesting_google_scopes": {"scopes": [
        "https://www.googleapis.com/auth/gmail.addons.current.action.compose"]}}
    assert gsession.get(Task, task_id).opened_at is None
    # No userIdToken at all (email scope not granted, no scope list): ask for the email scope.
    body = event(google, "rep@a.test")
    del body["authorizationEventObject"]["userIdToken"]
    del body["authorizationEventObject"]["authorizedScopes"]
    resp = post(gclient, google, "home", body)
    assert resp.get_json() == {"requesting_google_scopes": {"scopes": [
        "https://www.googleapis.com/auth/userinfo.email"]}}


def test_a_scope_the_deployment_does_not_declare_is_not_asked_for(
        database_url: str, google: LocalGoogle, gworld: World) -> None:
    """With draftAccess NONE, does the message card explain instead of asking for metadata?"""
    app = create_app(gmail_config(database_url, google.certs_url,
                                  GMAIL_ADDON_DRAFT_ACCESS="NONE"))
    try:
        granted = [s for s in ALL_SCOPES if "metadata" not in s]
        body = post(app.test_client(), google, "message",
                    event(google, "rep@a.test", scopes=granted)).get_json()
        assert "requesting_google_scopes" not in body
        assert "GMAIL_ADDON_DRAFT_ACCESS=METADATA" in texts(body)
    finally:
        app.extensions["relay.engine"].dispose()


def test_a_get_is_not_an_add_on_call(gclient: FlaskClient) -> None:
    """Is there only POST on the add-on paths (no query-string routing)?"""
    assert gclient.get("/gmail/home").status_code == 405


# -- home -------------------------------------------------------------------------------------


def test_home_pages_by_twenty_with_more(gclient: FlaskClient, google: LocalGoogle,
                                        gsession: Session, gworld: World) -> None:
    """Does the home card show 20 tasks and a More button that shows the next 5?"""
    email_tasks(gsession, gworld.rep, 25)
    body = post(gclient, google, "home", event(google, "rep@a.test")).get_json()
    card = cards_in(body)[0]
    tasks = [w for w in card["sections"][1]["widgets"] if "decoratedText" in w]
    assert len(tasks) == 20
    more = card["sections"][2]["widgets"][0]["buttonList"]["buttons"][0]
    assert more["text"] == "More"
    action = more["onClick"]["action"]
    assert action["function"] == PUBLIC_URL + "/gmail/home/list"
    params = {p["key"]: p["value"] for p in action["parameters"]}
    assert params == {"due": "all", "page": "2"}
    body = post(gclient, google, "home_list",
                event(google, "rep@a.test", params=params)).get_json()
    card = body["renderActions"]["action"]["navigations"][0]["updateCard"]
    tasks = [w for w in card["sections"][1]["widgets"] if "decoratedText" in w]
    assert len(tasks) == 5
    assert len(card["sections"]) == 2  # no More on the last page


def test_the_universal_action_is_answered_like_the_homepage_trigger(
        gclient: FlaskClient, google: LocalGoogle, gsession: Session, gworld: World) -> None:
    """Does "My email tasks" push the home card the way the homepage trigger does?"""
    email_tasks(gsession, gworld.rep, 2)
    home = post(gclient, google, "home", event(google, "rep@a.test")).get_json()
    body = post(gclient, google, "universal_tasks", event(google, "rep@a.test")).get_json()
    assert set(body) == {"action"} and "renderActions" not in body
    [navigation] = body["action"]["navigations"]
    assert navigation["pushCard"] == home["action"]["navigations"][0]["pushCard"]
    unknown = post(gclient, google, "universal_tasks", event(google, "nobody@a.test")).get_json()
    assert set(unknown) == {"action"}


def test_home_due_filter(gclient: FlaskClient, google: LocalGoogle, gsession: Session,
                         gworld: World) -> None:
    """Does the due filter narrow the list to the window asked for?"""
    ids = email_tasks(gsession, gworld.rep, 3)
    now = datetime.now(UTC)
    for task_id, when in zip(ids, (now - timedelta(days=3), now, now + timedelta(days=30)),
                             strict=True):
        gsession.get(Task, task_id).due_at = when
    gsession.commit()
    counts = {}
    for due in ("overdue", "next7", "all"):
        body = post(gclient, google, "home_list",
                    event(google, "rep@a.test", params={"due": due, "page": "1"})).get_json()
        card = body["renderActions"]["action"]["navigations"][0]["updateCard"]
        counts[due] = sum("decoratedText" in w for w in card["sections"][1]["widgets"])
    assert counts == {"overdue": 1, "next7": 1, "all": 3}


def test_contact_text_is_escaped(gclient: FlaskClient, google: LocalGoogle,
                                 gsession: Session, gworld: World) -> None:
    """Is a contact's name with markup shown as text, never as card HTML?"""
    email_tasks(gsession, gworld.rep, 1, first_name='<a href="x">Bob</a>')
    card = cards_in(post(gclient, google, "home", event(google, "rep@a.test")).get_json())[0]
    widget = card["sections"][1]["widgets"][0]["decoratedText"]
    assert widget["text"].startswith("&lt;a href=&quot;x&quot;&gt;Bob&lt;/a&gt;")
    assert "<a" not in widget["text"]


# -- compose ----------------------------------------------------------------------------------


def test_compose_lists_the_recipients_tasks_first(gclient: FlaskClient, google: LocalGoogle,
                                                  gsession: Session, gworld: World) -> None:
    """With a recipient typed, is that contact's task offered first, then the others?"""
    ids = email_tasks(gsession, gworld.rep, 3)
    body = event(google, "rep@a.test", draftMetadata={"toRecipients": ["Person2@example.com"]})
    card = cards_in(post(gclient, google, "compose", body).get_json())[0]
    first = card["sections"][0]
    assert first["header"] == "For these recipients"
    fill = first["widgets"][0]["decoratedText"]["button"]["onClick"]["action"]
    assert fill["function"] == PUBLIC_URL + "/gmail/compose/fill"
    assert fill["parameters"] == [{"key": "task_id", "value": str(ids[2])}]
    others = [w["decoratedText"]["button"]["onClick"]["action"]["parameters"][0]["value"]
              for w in card["sections"][1]["widgets"]]
    assert others == [str(ids[0]), str(ids[1])]


def test_compose_without_metadata_lists_by_due(database_url: str, google: LocalGoogle,
                                               gworld: World, gsession: Session) -> None:
    """With draftAccess NONE, are recipients ignored and tasks listed by due date?"""
    email_tasks(gsession, gworld.rep, 2)
    app = create_app(gmail_config(database_url, google.certs_url,
                                  GMAIL_ADDON_DRAFT_ACCESS="NONE"))
    try:
        body = event(google, "rep@a.test", draftMetadata={"toRecipients": ["x@example.com"]})
        card = cards_in(post(app.test_client(), google, "compose", body).get_json())[0]
        assert [s["header"] for s in card["sections"]] == ["Due soonest"]
    finally:
        app.extensions["relay.engine"].dispose()


def test_fill_answers_the_prefill_and_records_the_open_once(gclient: FlaskClient,
                                                            google: LocalGoogle,
                                                            gsession: Session,
                                                            gworld: World) -> None:
    """Does Fill fill recipient, subject and HTML, record the open once, and replay the same?"""
    task_id = email_tasks(gsession, gworld.rep, 1, first_name="Ada")[0]
    body = event(google, "rep@a.test", params={"task_id": str(task_id)})
    first = post(gclient, google, "compose_fill", body).get_json()
    markup = first["renderActions"]["hostAppAction"]["gmailAction"]["updateDraftActionMarkup"]
    assert markup["updateToRecipients"] == {"toRecipients": [{"email": "person0@example.com"}]}
    assert markup["updateSubject"] == {"subject": "Hi Ada"}
    assert markup["updateBody"]["type"] == "IN_PLACE_INSERT"
    assert markup["updateBody"]["insertContents"] == [
        {"content": "<p>Hello Ada at Initech.</p>", "contentType": "MUTABLE_HTML"}]
    again = post(gclient, google, "compose_fill", event(
        google, "rep@a.test", params={"task_id": str(task_id)})).get_json()
    assert again == first
    gsession.expire_all()
    task = gsession.get(Task, task_id)
    assert task.opened_via is CompletedVia.GMAIL and task.opened_at is not None
    opened = gsession.scalar(select(func.count()).select_from(FeedEvent).where(
        FeedEvent.kind == EventKind.TASK_OPENED))
    assert opened == 1


def test_a_blocked_task_shows_its_fields_and_fills_nothing(gclient: FlaskClient,
                                                           google: LocalGoogle,
                                                           gsession: Session,
                                                           gworld: World) -> None:
    """Does a task missing a field answer a card naming it, and no draft update?"""
    task_id = email_tasks(gsession, gworld.rep, 1,
                          body="<p>About {{custom_field_region}}.</p>")[0]
    body = post(gclient, google, "compose_fill",
                event(google, "rep@a.test", params={"task_id": str(task_id)})).get_json()
    assert "hostAppAction" not in body["renderActions"]
    shown = texts(body)
    assert "Cannot fill this email" in shown and "custom_field_region" in shown
    assert gsession.get(Task, task_id).opened_at is None


def test_another_reps_task_is_not_filled(gclient: FlaskClient, google: LocalGoogle,
                                         gsession: Session, gworld: World) -> None:
    """Is another rep's task refused with a card, and left unopened?"""
    task_id = email_tasks(gsession, gworld.rep2, 1)[0]
    body = post(gclient, google, "compose_fill",
                event(google, "rep@a.test", params={"task_id": str(task_id)})).get_json()
    assert "hostAppAction" not in body["renderActions"]
    assert "not one of your tasks" in texts(body)
    assert gsession.get(Task, task_id).opened_at is None


# -- opened message ----------------------------------------------------------------------------


def _message(gapp: Flask, sender: str) -> FakeGmailApi:
    api: FakeGmailApi = gapp.extensions["relay.gmail.api"]
    api.messages["18c0ffee"] = OpenedMessage(
        id="18c0ffee", thread_id="18c0ffee", sender=sender, sender_name="Person",
        subject="Our call", message_id="<abc@mail.example.com>",
        references="<root@mail.example.com>")
    return api


def test_message_card_lists_the_senders_tasks(gapp: Flask, gclient: FlaskClient,
                                              google: LocalGoogle, gsession: Session,
                                              gworld: World) -> None:
    """Does the opened-message card offer the sender's open email tasks to reply with?"""
    ids = email_tasks(gsession, gworld.rep, 2)
    _message(gapp, "person1@example.com")
    body = event(google, "rep@a.test",
                 gmail={"messageId": "18c0ffee", "threadId": "18c0ffee",
                        "accessToken": "gmail-access-token-SECRET-0123456789"})
    card = cards_in(post(gclient, google, "message", body).get_json())[0]
    widgets = card["sections"][0]["widgets"]
    assert len(widgets) == 1
    button = widgets[0]["decoratedText"]["button"]
    assert button["text"] == "Reply with this task"
    assert button["onClick"]["action"]["parameters"] == [{"key": "task_id",
                                                          "value": str(ids[1])}]


def test_reply_creates_one_threaded_draft_even_when_replayed(gapp: Flask,
                                                             gclient: FlaskClient,
                                                             google: LocalGoogle,
                                                             gsession: Session,
                                                             gworld: World) -> None:
    """Does "Reply with this task" create and open one threaded draft, even when replayed?"""
    task_id = email_tasks(gsession, gworld.rep, 1, first_name="Ada")[0]
    api = _message(gapp, "person0@example.com")
    gmail = {"messageId": "18c0ffee", "threadId": "18c0ffee",
             "accessToken": "gmail-access-token-SECRET-0123456789"}
    answers = [post(gclient, google, "message_reply",
                    event(google, "rep@a.test", params={"task_id": str(task_id)},
                          gmail=gmail)).get_json() for _ in range(2)]
    assert answers[0] == answers[1]
    markup = answers[0]["renderActions"]["hostAppAction"]["gmailAction"][
        "openCreatedDraftActionMarkup"]
    assert markup == {"draftId": "r-fake-1", "draftThreadId": "18c0ffee"}
    assert len(api.drafts) == 1
    reply, _ = api.drafts[0]
    assert reply.subject == "Re: Our call"
    assert reply.in_reply_to == "<abc@mail.example.com>"
    assert reply.references == "<root@mail.example.com> <abc@mail.example.com>"
    assert reply.to == [("person0@example.com", "Ada Doe")]
    assert reply.html == "<p>Hello Ada at Initech.</p>"
    rows = gsession.scalars(select(GmailReplyDraft)).all()
    assert [(r.task_id, r.draft_id) for r in rows] == [(task_id, "r-fake-1")]
    gsession.expire_all()
    assert gsession.get(Task, task_id).opened_via is CompletedVia.GMAIL


def test_tokens_never_reach_the_logs(gapp: Flask, gclient: FlaskClient, google: LocalGoogle,
                                     gsession: Session, gworld: World,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """After accepted, refused and failing calls, does no log line hold a token?"""
    caplog.set_level(logging.DEBUG)
    task_id = email_tasks(gsession, gworld.rep, 1)[0]
    secrets: list[str] = []

    def call(name: str, body: dict[str, Any], token: str | None = None) -> None:
        auth = body["authorizationEventObject"]
        secrets.extend([auth["userIdToken"], auth["userOAuthToken"], auth["systemIdToken"]])
        if body.get("gmail", {}).get("accessToken"):
            secrets.append(body["gmail"]["accessToken"])
        sent = token if token is not None else google.system_token(ENDPOINTS[name])
        secrets.append(sent)
        post(gclient, google, name, body, token=sent)

    gmail = {"messageId": "missing", "accessToken": "gmail-access-token-SECRET-0123456789"}
    call("home", event(google, "rep@a.test"))
    call("home", event(google, "rep@a.test"), token=google.system_token("/gmail/other"))
    bad = event(google, "rep@a.test")
    bad["authorizationEventObject"]["userIdToken"] = google.user_token("rep@a.test", aud="x")
    call("home", bad)
    call("home", event(google, "rep@a.test"), token="eyJhbGciOi.garbage-token-SECRET-xyz")
    call("home", event(google, "rep@a.test"), token="short-SECRET")
    call("message", event(google, "rep@a.test", gmail=gmail))  # Gmail answers 404
    call("message_reply", event(google, "rep@a.test", params={"task_id": str(task_id)},
                                gmail=gmail))
    assert caplog.records, "the refusals are logged"
    for secret in secrets:
        assert secret not in caplog.text
        assert secret[-20:] not in caplog.text  # not even a signature


def test_card_builders_stay_under_the_widget_limit() -> None:
    """Does a card refuse more than 100 widgets, and do the pickers stay far below?"""
    item = cards.TaskItem(id=1, title="t", due_at=LAUNCH, campaign="c", contact_name="n",
                          contact_email="e@x.test", company="co")
    urls = cards.Urls(public=PUBLIC_URL, home_list="h", compose_fill="f", message_reply="r")
    many = [item] * cards.PICKER_SIZE
    compose = cards.compose_card(many, many, tz="UTC", urls=urls, recipients=["e@x.test"])
    assert sum(len(s["widgets"]) for s in compose["sections"]) == 40
    with pytest.raises(ValueError):
        cards.card("x", [{"widgets": [{"textParagraph": {"text": "a"}}] * 101}])


def test_settings_are_the_configured_ones(gapp: Flask) -> None:
    """Is the verifier bound to the configured service account, client and certificates?"""
    verifier = gapp.extensions["relay.gmail.verifier"]
    assert (verifier.service_account, verifier.client_id) == (SERVICE_ACCOUNT, CLIENT_ID)
    assert verifier.missing_settings() == []


def test_cancelled_tasks_are_not_listed(gclient: FlaskClient, google: LocalGoogle,
                                        gsession: Session, gworld: World) -> None:
    """Are only open email tasks listed on the home card?"""
    ids = email_tasks(gsession, gworld.rep, 2)
    gsession.get(Task, ids[0]).status = TaskStatus.CANCELLED
    gsession.commit()
    card = cards_in(post(gclient, google, "home", event(google, "rep@a.test")).get_json())[0]
    assert sum("decoratedText" in w for w in card["sections"][1]["widgets"]) == 1
    assert gsession.scalar(select(func.count()).select_from(Contact)) == 2
