"""Gmail transport, offline: the static discovery document and HttpMockSequence."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import default
from urllib.parse import parse_qs, urlsplit

import pytest
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build
from googleapiclient.http import HttpMockSequence

from server.sending.headers import build_message
from server.sending.providers.gmail import GmailTransport, google_credentials
from server.sending.transport import (
    DailyLimitError,
    Draft,
    Outcome,
    OutcomeUnknown,
    PermanentError,
    ReauthRequired,
    TransientError,
)

TASK_TAG = "rt_Zm9vYmFyYmF6cXV4MTIzNDU2"  # an opaque task tag (server.tasks.tags)
NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
BASE = "https://gmail.googleapis.com/gmail/v1/users/me"


def message(thread_id=None, in_reply_to=None):
    return build_message(send_id=12, sender="rita@acme.test", to=["pat@client.test"],
                         subject="Re: Hello", html="<p>Following up</p>", text=None,
                         date=NOW, in_reply_to=in_reply_to, thread_id=thread_id, task_tag=TASK_TAG)


def ok(body):
    return ({"status": "200"}, json.dumps(body))


def err(status, reason, message="error", headers=None):
    hdrs = {"status": str(status), **(headers or {})}
    return (hdrs, json.dumps({"error": {"code": status, "message": message,
                                        "errors": [{"reason": reason, "message": message}]}}))


def gmail(responses):
    http = HttpMockSequence(responses)
    service = build("gmail", "v1", http=http, static_discovery=True)
    return GmailTransport(service, clock=lambda: NOW), http


def request(http, i):
    uri, method, body, _headers = http.request_sequence[i]
    parts = urlsplit(uri)
    return (method, f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(parts.query),
            json.loads(body) if body else None)


def test_follow_up_draft_is_created_in_its_thread_then_sent():
    """Does drafts.create get the raw MIME and threadId, and drafts.send the draft id?"""
    prev = "<relay.11.aaaaaaaaaaaaaaaa@acme.test>"
    msg = message(thread_id="18c1", in_reply_to=prev)
    t, http = gmail([ok({"id": "r-99", "message": {"id": "m-1", "threadId": "18c1"}}),
                     ok({"id": "m-2", "threadId": "18c1", "labelIds": ["SENT"]})])
    draft = t.create_draft(msg)
    assert draft == Draft(id="r-99", thread_id="18c1")
    sent = t.send_draft(draft, msg)
    assert (sent.provider_id, sent.thread_id, sent.sent_at) == ("m-2", "18c1", NOW)

    method, url, query, body = request(http, 0)
    assert (method, url, query) == ("POST", f"{BASE}/drafts", {"alt": ["json"]})
    assert body["message"]["threadId"] == "18c1"
    raw = base64.urlsafe_b64decode(body["message"]["raw"])
    back = BytesParser(policy=default).parsebytes(raw)
    assert back["Message-ID"] == msg.message_id
    assert back["In-Reply-To"] == prev and back["References"] == prev
    assert back["X-Relay-Task"] == TASK_TAG
    method, url, query, body = request(http, 1)
    assert (method, url, body) == ("POST", f"{BASE}/drafts/send", {"id": "r-99"})


def test_reconcile_draft_still_there_is_not_sent():
    """Is a draft that still exists proof that the email did not leave?"""
    t, http = gmail([ok({"id": "r-99", "message": {"id": "m-1"}})])
    assert t.reconcile(message(), Draft("r-99")).outcome is Outcome.NOT_SENT
    method, url, query, _ = request(http, 0)
    assert (method, url, query["format"]) == ("GET", f"{BASE}/drafts/r-99", ["minimal"])


def test_reconcile_finds_the_sent_message_by_rfc822msgid():
    """Draft gone → is the email found in SENT by our Message-ID?"""
    msg = message()
    t, http = gmail([err(404, "notFound", "Requested entity was not found."),
                     ok({"messages": [{"id": "m-7", "threadId": "t-7"}],
                         "resultSizeEstimate": 1})])
    rec = t.reconcile(msg, Draft("r-99"))
    assert rec.outcome is Outcome.SENT
    assert rec.sent is not None and (rec.sent.provider_id, rec.sent.thread_id) == ("m-7", "t-7")
    method, url, query, _ = request(http, 1)
    assert (method, url) == ("GET", f"{BASE}/messages")
    assert query["q"] == [f"rfc822msgid:{msg.message_id}"]
    assert query["labelIds"] == ["SENT"]


def test_reconcile_gone_and_not_found():
    """A vanished draft not yet in SENT is unknown; without a draft it was never sent."""
    t, _ = gmail([err(404, "notFound"), ok({"resultSizeEstimate": 0})])
    assert t.reconcile(message(), Draft("r-1")).outcome is Outcome.UNKNOWN
    t, _ = gmail([ok({"resultSizeEstimate": 0})])
    assert t.reconcile(message(), None).outcome is Outcome.NOT_SENT


@pytest.mark.parametrize("response,error,sending", [
    (err(429, "rateLimitExceeded", headers={"retry-after": "7"}), TransientError, True),
    (err(403, "userRateLimitExceeded", "User-rate limit exceeded"), TransientError, True),
    (err(403, "dailyLimitExceeded", "Daily Limit Exceeded"), DailyLimitError, True),
    (err(400, "failedPrecondition", "Mail sending limit exceeded"), DailyLimitError, True),
    ([err(503, "backendError"), err(404, "notFound")], OutcomeUnknown, True),
    ([err(503, "backendError"), ok({"id": "r-1"})], TransientError, True),
    (err(503, "backendError"), TransientError, False),
    (err(400, "invalidArgument", "Invalid To header"), PermanentError, True),
    (err(404, "notFound"), OutcomeUnknown, True),
    (err(401, "authError", "Invalid Credentials"), ReauthRequired, False),
    (err(403, "insufficientPermissions", "Insufficient Permission"), ReauthRequired, False),
])
def test_errors_are_typed(response, error, sending):
    """Is each Gmail answer turned into the transport error the dispatcher acts on?

    A 5xx to drafts.send is followed by a look at the draft: still there, it was provably
    not sent (retried); gone, nobody knows.
    """
    responses = list(response) if isinstance(response, list) else [response]
    retry_after = responses[0][0].get("retry-after")
    t, _ = gmail(responses)
    with pytest.raises(error) as exc:
        if sending:
            t.send_draft(Draft("r-1"), message())
        else:
            t.create_draft(message())
    if retry_after:
        assert exc.value.retry_after == 7.0


def test_invalid_grant_on_refresh_needs_reauth():
    """Does Google answering invalid_grant to the token refresh become ReauthRequired?"""
    creds = google_credentials("1//refresh-secret", {"GOOGLE_CLIENT_ID": "cid",
                                                     "GOOGLE_CLIENT_SECRET": "csecret"},
                               token_uri="https://oauth2.example.test/token")
    http = HttpMockSequence([({"status": "400"}, json.dumps(
        {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}))])
    t = GmailTransport.from_credentials(creds, http=lambda c: AuthorizedHttp(c, http=http))
    with pytest.raises(ReauthRequired) as exc:
        t.create_draft(message())
    assert "1//refresh-secret" not in str(exc.value)
    uri, method, body, _ = http.request_sequence[0]
    assert (uri, method) == ("https://oauth2.example.test/token", "POST")
    form = parse_qs(body.decode())
    assert form["grant_type"] == ["refresh_token"] and form["client_id"] == ["cid"]


def test_history_pages_and_raw_messages():
    """Does history.list page through messageAdded and messages.get decode the raw bytes?"""
    raw = base64.urlsafe_b64encode(b"Subject: hi\r\n\r\nbody").decode().rstrip("=")
    t, http = gmail([
        ok({"history": [{"id": "101", "messagesAdded": [{"message": {"id": "a"}}]}],
            "nextPageToken": "p2", "historyId": "105"}),
        ok({"history": [{"id": "104", "messagesAdded": [{"message": {"id": "b"}},
                                                        {"message": {"id": "c"}}]}],
            "historyId": "106"}),
        ok({"id": "b", "threadId": "t1", "labelIds": ["SENT"], "internalDate": "1795000000000",
            "raw": raw}),
    ])
    pages = list(t.history("100"))
    assert [p.message_ids for p in pages] == [["a"], ["b", "c"]]
    assert pages[-1].history_id == "106"
    _, url, query, _ = request(http, 0)
    assert url == f"{BASE}/history" and query["startHistoryId"] == ["100"]
    assert query["historyTypes"] == ["messageAdded"]
    _, _, query, _ = request(http, 1)
    assert query["pageToken"] == ["p2"]
    data, meta = t.raw_message("b")
    assert data == b"Subject: hi\r\n\r\nbody" and meta["threadId"] == "t1"


class TimingOutHttp(HttpMockSequence):
    """Answers from a sequence, then times out (the request left; no answer came back)."""

    def request(self, uri, method="GET", body=None, headers=None, redirections=1,
                connection_type=None):
        if not self._iterable:
            raise TimeoutError("timed out")
        return super().request(uri, method, body, headers, redirections, connection_type)


def test_a_timeout_on_send_is_an_unknown_outcome_and_elsewhere_transient():
    """Is drafts.send without an answer OutcomeUnknown, and drafts.create a retry?"""
    http = TimingOutHttp([ok({"id": "r-1", "message": {"id": "m"}})])
    t = GmailTransport(build("gmail", "v1", http=http, static_discovery=True))
    draft = t.create_draft(message())
    with pytest.raises(OutcomeUnknown, match="no answer"):
        t.send_draft(draft, message())
    with pytest.raises(TransientError):
        t.create_draft(message())


def test_earlier_drafts_of_an_email_are_found_by_message_id_and_deleted():
    """Does delete_drafts search drafts by rfc822msgid and delete each one found?"""
    msg = message()
    t, http = gmail([ok({"drafts": [{"id": "r-7", "message": {"id": "m-7"}}]}),
                     ({"status": "204"}, "")])
    assert t.delete_drafts(msg.message_id) == 1
    method, url, query, _ = request(http, 0)
    assert (method, url) == ("GET", f"{BASE}/drafts")
    assert query["q"] == [f"rfc822msgid:{msg.message_id}"]
    method, url, _query, _ = request(http, 1)
    assert (method, url) == ("DELETE", f"{BASE}/drafts/r-7")
    t, _ = gmail([ok({"resultSizeEstimate": 0})])
    assert t.delete_drafts(msg.message_id) == 0
