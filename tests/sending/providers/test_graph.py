"""Graph transport against a local HTTP server on 127.0.0.1; msal token refresh offline."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import parse_qs

import pytest
import requests

from server.sending.headers import build_message
from server.sending.providers.graph import GraphTransport, MsalTokens, ms_client
from server.sending.transport import (
    DailyLimitError,
    Outcome,
    OutcomeUnknown,
    PermanentError,
    ReauthRequired,
    TransientError,
)
from tests.fake_graph import fake_graph

TASK_TAG = "rt_Zm9vYmFyYmF6cXV4MTIzNDU2"  # an opaque task tag (server.tasks.tags)
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)


def message(thread_id=None, send_id=21):
    return build_message(send_id=send_id, sender="Rita <rita@acme.test>",
                         to=['"Doe, Pat" <pat@client.test>'], cc=["sam@client.test"],
                         subject="Hello Pat", html="<p>Hi <b>Pat</b></p>", text="Hi Pat",
                         date=NOW, task_tag=TASK_TAG, thread_id=thread_id,
                         in_reply_to="<relay.20.aaaaaaaaaaaaaaaa@acme.test>" if thread_id
                         else None)


@pytest.fixture
def graph():
    with fake_graph() as (base, state), requests.Session() as session:
        yield GraphTransport(lambda: "access-1", base_url=base, session=session, timeout=5,
                             clock=lambda: NOW), state


def test_draft_then_send_then_reconcile(graph):
    """Does the draft carry our id and headers, send by immutable id, and reconcile as sent?"""
    t, state = graph
    msg = message()
    draft = t.create_draft(msg)
    create = state.requests[0]
    assert (create.method, create.path) == ("POST", "/me/messages")
    assert create.headers["Prefer"] == 'IdType="ImmutableId"'
    assert create.headers["Authorization"] == "Bearer access-1"
    body = create.body
    assert body["internetMessageId"] == msg.message_id
    assert {"name": "X-Relay-Task", "value": TASK_TAG} in body["internetMessageHeaders"]
    assert body["toRecipients"] == [{"emailAddress": {"address": "pat@client.test",
                                                      "name": "Doe, Pat"}}]
    assert body["ccRecipients"] == [{"emailAddress": {"address": "sam@client.test"}}]
    assert body["body"]["contentType"] == "html" and "<b>Pat</b>" in body["body"]["content"]
    assert t.reconcile(msg, draft).outcome is Outcome.NOT_SENT

    sent = t.send_draft(draft, msg)
    assert state.requests[-1].path == f"/me/messages/{draft.id}/send"
    assert sent.provider_id == draft.id and sent.sent_at == NOW
    rec = t.reconcile(msg, draft)
    assert rec.outcome is Outcome.SENT and rec.sent.provider_id == draft.id


def test_follow_up_is_a_reply_draft_in_the_conversation(graph):
    """Is a follow-up created with createReply on the earlier email's id?"""
    t, state = graph
    first = t.create_draft(message())
    t.send_draft(first, message())
    follow = message(thread_id=first.id, send_id=22)
    draft = t.create_draft(follow)
    req = state.requests[-1]
    assert (req.method, req.path) == ("POST", f"/me/messages/{first.id}/createReply")
    assert req.body["message"]["internetMessageId"] == follow.message_id
    assert draft.thread_id == first.thread_id


def test_reconcile_by_internet_message_id_when_the_draft_id_is_unknown(graph):
    """Without a draft id, is the email found in Sent Items by internetMessageId?"""
    t, state = graph
    msg = message()
    draft = t.create_draft(msg)
    t.send_draft(draft, msg)
    rec = t.reconcile(msg, None)
    assert rec.outcome is Outcome.SENT and rec.sent.provider_id == draft.id
    req = state.requests[-1]
    assert req.path == "/me/mailFolders/sentitems/messages"
    assert req.query["$filter"] == [f"internetMessageId eq '{msg.message_id}'"]
    assert t.reconcile(message(send_id=99), None).outcome is Outcome.NOT_SENT
    state.messages.clear()
    assert t.reconcile(msg, draft).outcome is Outcome.UNKNOWN


@pytest.mark.parametrize("answer,error,sending", [
    ((429, {"error": {"code": "TooManyRequests", "message": "slow down"}},
      {"Retry-After": "3"}), TransientError, True),
    ((503, {"error": {"code": "ServiceUnavailable", "message": "busy"}},
      {"Retry-After": "3"}), TransientError, True),  # still a draft: provably not sent
    ((503, {"error": {"code": "ServiceUnavailable", "message": "busy"}}, {}),
     TransientError, False),
    ((400, {"error": {"code": "ErrorInvalidRecipients", "message": "bad"}}, {}),
     PermanentError, False),
    ((401, {"error": {"code": "InvalidAuthenticationToken", "message": "expired"}}, {}),
     ReauthRequired, False),
    ((403, {"error": {"code": "ErrorExceededMessageLimit", "message": "limit"}}, {}),
     DailyLimitError, True),
    ("drop", None, True),
    ("drop", None, False),
])
def test_errors_are_typed(graph, answer, error, sending):
    """Is each Graph answer (or a dropped connection) the error the dispatcher acts on?"""
    t, state = graph
    if sending:
        draft = t.create_draft(message())
        state.script("POST", f"/me/messages/{draft.id}/send", answer)
        expected = OutcomeUnknown if answer == "drop" else error
        with pytest.raises(expected) as exc:
            t.send_draft(draft, message())
    else:
        state.script("POST", "/me/messages", answer)
        expected = TransientError if answer == "drop" else error
        with pytest.raises(expected) as exc:
            t.create_draft(message())
    if answer != "drop" and answer[2].get("Retry-After"):
        assert exc.value.retry_after == 3.0


def test_delta_pages_and_mime(graph):
    """Does the delta walk follow nextLink to the deltaLink, and $value give the MIME?"""
    t, state = graph
    base = t.base_url
    state.delta_pages["sentitems"] = [
        {"value": [{"id": "m1"}, {"id": "gone", "@removed": {"reason": "deleted"}}],
         "@odata.nextLink": f"{base}/me/mailFolders/sentitems/messages/delta?page=1"},
        {"value": [{"id": "m2"}],
         "@odata.deltaLink": f"{base}/me/mailFolders/sentitems/messages/delta?page=1&d=1"},
    ]
    pages = list(t.delta("sentitems", None))
    assert [[m["id"] for m in p.messages] for p in pages] == [["m1"], ["m2"]]
    assert pages[-1].delta_link.endswith("d=1")
    assert "$select" in state.requests[0].query
    state.mime["m2"] = b"Subject: x\r\n\r\nhello"
    assert t.raw_message("m2") == b"Subject: x\r\n\r\nhello"


class FakeMsHttp:
    """msal's http_client, answering the authority discovery and the token endpoint."""

    def __init__(self, token_answer):
        self.token_answer = token_answer
        self.posts = []

    class Resp:
        """A requests-like response."""

        def __init__(self, status, body):
            self.status_code = status
            self.text = json.dumps(body)
            self.headers = {}

        def raise_for_status(self):
            if self.status_code >= 400:
                raise requests.HTTPError(self.status_code)

    def get(self, url, params=None, headers=None, **kw):
        assert url.startswith("https://login.microsoftonline.com/"), url
        tenant = "https://login.microsoftonline.com/common"
        return self.Resp(200, {
            "authorization_endpoint": f"{tenant}/oauth2/v2.0/authorize",
            "token_endpoint": f"{tenant}/oauth2/v2.0/token",
            "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0",
            "tenant_region_scope": None, "cloud_instance_name": "microsoftonline.com"})

    def post(self, url, params=None, data=None, headers=None, **kw):
        self.posts.append((url, data))
        status, body = self.token_answer
        return self.Resp(status, body)

    def close(self):
        pass


def test_msal_refresh_invalid_grant_needs_reauth():
    """Does msal's invalid_grant answer become ReauthRequired (with no token in it)?"""
    http = FakeMsHttp((400, {"error": "invalid_grant",
                             "error_description": "AADSTS70008: The refresh token has expired"}))
    client = ms_client({"MS_CLIENT_ID": "app-id", "MS_CLIENT_SECRET": "app-secret"}, http)
    tokens = MsalTokens("0.AAA-refresh-secret", {}, client=client)
    with pytest.raises(ReauthRequired) as exc:
        tokens.access_token()
    assert "refresh-secret" not in str(exc.value)
    url, data = http.posts[-1]
    assert url == "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    form = data if isinstance(data, dict) else parse_qs(data)
    assert form["grant_type"] in ("refresh_token", ["refresh_token"])


def test_msal_refresh_caches_the_token_and_keeps_a_rotated_refresh_token():
    """Is the access token reused until expiry, and a new refresh token handed back to store?"""
    http = FakeMsHttp((200, {"access_token": "at-1", "expires_in": 3600, "token_type": "Bearer",
                             "refresh_token": "rt-2", "scope": "Mail.Send Mail.ReadWrite"}))
    client = ms_client({"MS_CLIENT_ID": "app-id", "MS_CLIENT_SECRET": "app-secret"}, http)
    stored = []
    clock = [0.0]
    tokens = MsalTokens("rt-1", {}, client=client, on_new_refresh_token=stored.append,
                        monotonic=lambda: clock[0])
    assert tokens.access_token() == "at-1"
    assert tokens.access_token() == "at-1"
    assert len(http.posts) == 1 and stored == ["rt-2"]
    clock[0] = 3600.0
    tokens.access_token()
    assert len(http.posts) == 2


def test_a_5xx_to_send_after_the_draft_left_is_unknown(graph):
    """A 503 to send when the message is no longer a draft: nobody knows (reconcile)."""
    t, state = graph
    draft = t.create_draft(message())
    state.script("POST", f"/me/messages/{draft.id}/send",
                 (503, {"error": {"code": "ServiceUnavailable", "message": "busy"}}, {}))
    state.messages[draft.id]["isDraft"] = False  # it left before the answer was lost
    with pytest.raises(OutcomeUnknown):
        t.send_draft(draft, message())
    gets = [r for r in state.requests if r.method == "GET"]
    assert [r.path for r in gets] == [f"/me/messages/{draft.id}"]


def test_earlier_drafts_are_found_by_internet_message_id_and_deleted(graph):
    """Does delete_drafts filter the Drafts folder by internetMessageId and delete them?"""
    t, state = graph
    msg = message()
    first = t.create_draft(msg)
    other = t.create_draft(message())
    assert t.delete_drafts(msg.message_id) == 1
    assert first.id not in state.messages and other.id in state.messages
    deletes = [r.path for r in state.requests if r.method == "DELETE"]
    assert deletes == [f"/me/messages/{first.id}"]
    query = [r.query for r in state.requests if r.path == "/me/mailFolders/drafts/messages"]
    assert query[0]["$filter"] == [f"internetMessageId eq '{msg.message_id}'"]
    assert t.delete_drafts(msg.message_id) == 0
