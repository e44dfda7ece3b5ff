"""Reply drafts through the real Gmail API client, offline.

google-api-python-client's static discovery document builds the ``gmail v1`` resource and
``HttpMockSequence`` answers in place of Google, recording what was sent: the request URI,
the headers (the user's OAuth token and ``X-Goog-Gmail-Access-Token``) and the body, whose
raw MIME is decoded and checked.
"""

from __future__ import annotations

import base64
import email
import json
from email import policy
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from googleapiclient.discovery import build
from googleapiclient.http import HttpMockSequence

from server.addins.gmail.client import EventTokens, GmailApiError, GoogleGmailApi, ReplyDraft
from server.addins.gmail.service import Fill, reply_draft_for

TOKENS = EventTokens(user_oauth_token="ya29.user-token", gmail_access_token="gmail-access-tok")


class RecordingHttp(HttpMockSequence):
    """HttpMockSequence that keeps every request it answered."""

    def __init__(self, iterable: list[tuple[dict[str, str], str]]) -> None:
        super().__init__(iterable)
        self.requests: list[dict[str, Any]] = []

    def request(self, uri: str, method: str = "GET", body: Any = None,
                headers: Any = None, redirections: int = 1, connection_type: Any = None
                ) -> Any:
        self.requests.append({"uri": uri, "method": method, "body": body,
                              "headers": dict(headers or {})})
        return super().request(uri, method, body, headers, redirections, connection_type)


def api_with(answers: list[tuple[dict[str, str], str]]) -> tuple[GoogleGmailApi, RecordingHttp]:
    http = RecordingHttp(answers)
    service = build("gmail", "v1", static_discovery=True, http=http)
    return GoogleGmailApi(service=service, http_factory=lambda: http), http


MESSAGE = {
    "id": "18c0ffee", "threadId": "18cthread",
    "payload": {"headers": [
        {"name": "From", "value": "Pat Doe <pat@initech.test>"},
        {"name": "Subject", "value": "Our call"},
        {"name": "Message-ID", "value": "<abc@mail.initech.test>"},
        {"name": "References", "value": "<root@mail.example.com>"},
    ]},
}


def test_reads_the_open_message_with_both_tokens() -> None:
    """Is the message read with format=metadata and both tokens, and parsed?"""
    api, http = api_with([({"status": "200"}, json.dumps(MESSAGE))])
    opened = api.opened_message(TOKENS, "18c0ffee")
    assert (opened.sender, opened.subject, opened.message_id, opened.thread_id) == (
        "pat@initech.test", "Our call", "<abc@mail.initech.test>", "18cthread")
    sent = http.requests[0]
    parts = urlsplit(sent["uri"])
    assert parts.path == "/gmail/v1/users/me/messages/18c0ffee"
    query = parse_qs(parts.query)
    assert query["format"] == ["metadata"]
    assert query["metadataHeaders"] == ["From", "Subject", "Message-ID", "References"]
    assert sent["headers"]["Authorization"] == "Bearer ya29.user-token"
    assert sent["headers"]["X-Goog-Gmail-Access-Token"] == "gmail-access-tok"


def test_creates_a_threaded_reply_draft() -> None:
    """Is the draft POSTed with its thread id and a threaded multipart/alternative MIME?"""
    api, http = api_with([
        ({"status": "200"}, json.dumps(MESSAGE)),
        ({"status": "200"}, json.dumps({"id": "r-5521", "message": {
            "id": "19dra", "threadId": "18cthread"}})),
    ])
    fill = Fill(task_title="Email Pat", to=["pat@initech.test"],
                recipients=[("pat@initech.test", "Pat Doe")], subject="Hello Pat",
                html="<p>Hello Pat</p>", text="Hello Pat", blocked=[], follow_up=None)
    opened = api.opened_message(TOKENS, "18c0ffee")
    created = api.create_reply_draft(TOKENS, reply_draft_for(fill, opened))
    assert (created.draft_id, created.thread_id) == ("r-5521", "18cthread")

    sent = http.requests[1]
    assert sent["method"] == "POST"
    assert sent["uri"] == "https://gmail.googleapis.com/gmail/v1/users/me/drafts?alt=json"
    assert sent["headers"]["Authorization"] == "Bearer ya29.user-token"
    assert sent["headers"]["X-Goog-Gmail-Access-Token"] == "gmail-access-tok"
    body = json.loads(sent["body"])
    assert body["message"]["threadId"] == "18cthread"
    mime = email.message_from_bytes(base64.urlsafe_b64decode(body["message"]["raw"]),
                                    policy=policy.default)
    assert mime["To"] == "Pat Doe <pat@initech.test>"
    assert mime["Subject"] == "Re: Our call"
    assert mime["In-Reply-To"] == "<abc@mail.initech.test>"
    assert mime["References"] == "<root@mail.example.com> <abc@mail.initech.test>"
    assert mime.get_content_type() == "multipart/alternative"
    kinds = [(p.get_content_type(), p.get_content().strip()) for p in mime.iter_parts()]
    assert kinds == [("text/plain", "Hello Pat"), ("text/html", "<p>Hello Pat</p>")]


def test_gmail_errors_become_gmail_api_errors() -> None:
    """Is a refusal from Gmail a GmailApiError with its status (and no token in it)?"""
    api, _ = api_with([({"status": "403"}, json.dumps(
        {"error": {"code": 403, "message": "Insufficient Permission"}}))])
    with pytest.raises(GmailApiError) as info:
        api.opened_message(TOKENS, "18c0ffee")
    assert info.value.status == 403
    assert "ya29" not in str(info.value) and "gmail-access-tok" not in str(info.value)


def test_header_injection_is_refused() -> None:
    """Is a subject with a line break refused instead of adding a header?"""
    from server.addins.gmail.client import reply_mime

    with pytest.raises(ValueError):
        reply_mime(ReplyDraft(to=[("a@b.test", "A")], subject="Hi\r\nBcc: x@evil.test",
                              html="<p>x</p>", text="x", in_reply_to="", references="",
                              thread_id="t"))


def _reply(**changes: Any) -> ReplyDraft:
    fields: dict[str, Any] = dict(to=[("pat@initech.test", "Pat Doe")], subject="Re: Our call",
                                  html="<p>x</p>", text="x", in_reply_to="<abc@mail.test>",
                                  references="<root@mail.test> <abc@mail.test>", thread_id="t")
    fields.update(changes)
    return ReplyDraft(**fields)


@pytest.mark.parametrize("changes,field", [
    ({"subject": "Re: Hi\u2028Bcc: x@evil.test"}, "subject"),
    ({"subject": "Re: Hi\x00there"}, "subject"),
    ({"subject": "Re: =?utf-8?q?=0D=0ABcc:_x@evil.test?="}, "subject"),
    ({"in_reply_to": "<abc@mail.test>\u0085Bcc: x@evil.test"}, "in_reply_to"),
    ({"in_reply_to": "not a message id"}, "in_reply_to"),
    ({"to": [("pat@initech.test, eve@evil.test", "Pat")]}, "to[0]"),
    ({"to": [("pat@initech.test", "Pat\u2029Doe")]}, "to[0]"),
])
def test_the_reply_draft_goes_through_the_header_builder(changes: dict[str, Any],
                                                         field: str) -> None:
    """Are the incoming email's values checked by server/sending/headers.py (HeaderError)?"""
    from server.addins.gmail.client import reply_mime
    from server.sending.headers import HeaderError

    with pytest.raises(HeaderError) as err:
        reply_mime(_reply(**changes))
    assert err.value.field == field


def test_a_malformed_reference_is_left_out_of_the_reply() -> None:
    """Is a References item that is not a msg-id dropped, the good ones kept in order?"""
    from server.addins.gmail.client import reply_mime

    raw = reply_mime(_reply(references="<root@mail.test> junk\u2028Bcc:x <abc@mail.test>"))
    mime = email.message_from_bytes(raw, policy=policy.default)
    assert mime["References"] == "<root@mail.test> <abc@mail.test>"
    assert mime["In-Reply-To"] == "<abc@mail.test>"
    assert mime["Bcc"] is None and mime["From"] is None and mime["Message-ID"] is None
