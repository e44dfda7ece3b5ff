"""Microsoft 365 mailboxes through Microsoft Graph (``requests``), tokens from msal.

Why not the O365 library the issue names: its ``Connection`` builds the token URLs from
``https://login.microsoftonline.com/{tenant}`` itself, keeps tokens in its own token backend
(files by default) where Relay keeps them encrypted in the database, and mounts its own retry
policy on its sessions, while here only the dispatcher decides about retries (after
reconciliation). Its Graph base URL could be changed by subclassing its protocol, but the token
side could not be pointed at a local stand-in without overriding its internals, and the tests
must not reach the network. So this module speaks the few Graph endpoints it needs directly,
against a configurable base URL (``GRAPH_BASE_URL``, default
``https://graph.microsoft.com/v1.0``), with msal's ``ConfidentialClientApplication`` (the
library O365 itself uses) for tokens.

Every request asks for immutable ids (``Prefer: IdType="ImmutableId"``), so a draft keeps its
id when sending moves it to Sent Items. Drafts: ``POST /me/messages`` (new email) or
``POST /me/messages/{id}/createReply`` (a follow-up, replying to the earlier email's id), with
our ``Message-ID`` as ``internetMessageId`` and ``X-Relay-*`` in ``internetMessageHeaders``;
sending: ``POST /me/messages/{id}/send``. Reconciliation: the message still ``isDraft`` → not
sent; no longer a draft, or found in Sent Items by ``internetMessageId`` → sent.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import requests

from server.db import utcnow
from server.mailboxes.lifecycle import GRAPH_LIMIT
from server.sending.transport import (
    DailyLimitError,
    Draft,
    OutboundMessage,
    Outcome,
    OutcomeUnknown,
    PermanentError,
    ReauthRequired,
    Reconciled,
    Sent,
    TransientError,
    TransportError,
)

log = logging.getLogger(__name__)

GRAPH_BASE_URL = "https://graph.microsoft.com/v1.0"
MS_AUTHORITY = "https://login.microsoftonline.com/common"
#: Delegated permissions Relay asks for (msal adds openid/profile/offline_access itself).
GRAPH_SCOPES = ("https://graph.microsoft.com/Mail.Send",
                "https://graph.microsoft.com/Mail.ReadWrite",
                "https://graph.microsoft.com/User.Read")
_PREFER = 'IdType="ImmutableId"'
_DAILY_CODES = frozenset({"ErrorQuotaExceeded", "ErrorExceededMessageLimit",
                          "ErrorMessageSubmissionBlocked", "ErrorSubmissionQuotaExceeded"})
_AUTH_CODES = frozenset({"InvalidAuthenticationToken", "ErrorAccessDenied",
                         "AuthenticationError", "invalid_grant"})


class MsalTokens:
    """Access tokens for one mailbox from its refresh token, through msal (cached until expiry).

    ``client`` is an msal ``ConfidentialClientApplication`` (or anything with
    ``acquire_token_by_refresh_token``); by default one is made from ``MS_CLIENT_ID``,
    ``MS_CLIENT_SECRET`` and ``MS_AUTHORITY``. A new refresh token in the answer (Microsoft
    rotates them) is handed to ``on_new_refresh_token`` to be stored.
    """

    def __init__(self, refresh_token: str, config: Mapping[str, Any], *, client: Any = None,
                 on_new_refresh_token: Callable[[str], None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._refresh_token = refresh_token
        self._config = config
        self._client = client
        self._on_new = on_new_refresh_token
        self._monotonic = monotonic
        self._token: str | None = None
        self._expires = 0.0

    def _app(self) -> Any:
        if self._client is None:
            self._client = ms_client(self._config)
        return self._client

    def access_token(self) -> str:
        """A valid access token (refreshing it when needed); ReauthRequired on invalid_grant."""
        if self._token is not None and self._monotonic() < self._expires:
            return self._token
        try:
            result = self._app().acquire_token_by_refresh_token(self._refresh_token,
                                                                scopes=list(GRAPH_SCOPES))
        except (requests.RequestException, OSError) as exc:
            raise TransientError(f"Microsoft token endpoint unreachable: {exc}") from None
        if "access_token" not in result:
            error = str(result.get("error", "unknown_error"))
            desc = str(result.get("error_description", ""))[:300]
            if error in ("invalid_grant", "interaction_required", "invalid_client",
                         "unauthorized_client"):
                raise ReauthRequired(f"Microsoft refused the refresh token: {error}: {desc}")
            raise TransientError(f"Microsoft token refresh failed: {error}: {desc}")
        self._token = str(result["access_token"])
        self._expires = self._monotonic() + max(0, int(result.get("expires_in", 3600)) - 60)
        new = result.get("refresh_token")
        if new and new != self._refresh_token:
            self._refresh_token = new
            if self._on_new is not None:
                self._on_new(new)
        return self._token


def ms_client(config: Mapping[str, Any], http_client: Any = None) -> Any:
    """The msal confidential client of Relay's Entra app (``MS_CLIENT_ID``/``SECRET``)."""
    import msal

    kwargs: dict[str, Any] = {}
    if http_client is not None:
        kwargs["http_client"] = http_client
    return msal.ConfidentialClientApplication(
        config.get("MS_CLIENT_ID") or "", client_credential=config.get("MS_CLIENT_SECRET"),
        authority=config.get("MS_AUTHORITY") or MS_AUTHORITY, **kwargs)


def _recipients(addresses: list[Any]) -> list[dict[str, Any]]:
    out = []
    for a in addresses:
        entry: dict[str, Any] = {"address": a.addr_spec}
        if a.display_name:
            entry["name"] = a.display_name
        out.append({"emailAddress": entry})
    return out


def message_resource(message: OutboundMessage) -> dict[str, Any]:
    """The Graph ``message`` JSON of a built email (body, recipients, our headers and id)."""
    mime = message.mime
    html = mime.get_body(("html",))
    text = mime.get_body(("plain",))
    if html is not None:
        body = {"contentType": "html", "content": html.get_content()}
    else:
        body = {"contentType": "text", "content": text.get_content() if text else ""}
    headers = [{"name": name, "value": str(mime[name])}
               for name in ("X-Relay-Task", "X-Relay-Send") if mime[name] is not None]
    resource: dict[str, Any] = {
        "subject": str(mime["Subject"] or ""),
        "body": body,
        "toRecipients": _recipients(list(mime["To"].addresses)),
        "internetMessageId": message.message_id,
        "internetMessageHeaders": headers,
    }
    if mime["Cc"] is not None:
        resource["ccRecipients"] = _recipients(list(mime["Cc"].addresses))
    return resource


@dataclass(frozen=True)
class DeltaPage:
    """Messages changed in a folder, and the link to continue from (next page or delta)."""

    messages: list[dict[str, Any]]
    next_link: str | None
    delta_link: str | None


class GraphTransport:
    """A Microsoft 365 mailbox through Graph; ``access_token`` returns a bearer token."""

    kind = "graph"

    def __init__(self, access_token: Callable[[], str], *, base_url: str | None = None,
                 session: requests.Session | None = None, daily_limit: int = GRAPH_LIMIT,
                 timeout: float = 30.0, clock: Callable[[], datetime] = utcnow) -> None:
        self._token = access_token
        self.base_url = (base_url or GRAPH_BASE_URL).rstrip("/")
        self._session = session or requests.Session()
        self.daily_limit = daily_limit
        self._timeout = timeout
        self._clock = clock

    def _request(self, method: str, path: str, *, json: Any = None,
                 params: Mapping[str, str] | None = None, sending: bool = False,
                 expect: tuple[int, ...] = (200, 201, 202, 204), url: str | None = None
                 ) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._token()}", "Prefer": _PREFER}
        target = url or f"{self.base_url}{path}"
        try:
            resp = self._session.request(method, target, json=json, params=params,
                                         headers=headers, timeout=self._timeout)
        except requests.ConnectTimeout as exc:
            raise TransientError(f"Graph unreachable: {exc}") from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            if sending:
                raise OutcomeUnknown(f"Graph: no answer to {method} {path}: {exc}") from None
            raise TransientError(f"Graph: {method} {path} failed: {exc}") from None
        if resp.status_code in expect:
            return resp
        raise self._error(resp, method, path, sending)

    @staticmethod
    def _error(resp: requests.Response, method: str, path: str, sending: bool
               ) -> TransportError:
        code, message = "", ""
        try:
            err = resp.json().get("error", {})
            code, message = str(err.get("code", "")), str(err.get("message", ""))
        except ValueError:
            message = resp.text[:300]
        reason = f"Graph {resp.status_code} {code}: {message}".strip()
        retry_after: float | None = None
        with contextlib.suppress(KeyError, ValueError):
            retry_after = float(resp.headers["Retry-After"])
        if code in _DAILY_CODES or "quota" in message.lower():
            return DailyLimitError(reason)
        if resp.status_code == 429:
            return TransientError(reason, retry_after=retry_after)
        if resp.status_code >= 500:
            if sending:
                unknown = OutcomeUnknown(reason)
                unknown.retry_after = retry_after  # type: ignore[attr-defined]
                return unknown
            return TransientError(reason, retry_after=retry_after)
        if resp.status_code == 401 or code in _AUTH_CODES:
            return ReauthRequired(reason)
        return PermanentError(reason)

    def create_draft(self, message: OutboundMessage) -> Draft:
        """A new draft, or for a follow-up a reply draft to the earlier email (createReply)."""
        resource = message_resource(message)
        if message.thread_id:
            resp = self._request("POST", f"/me/messages/{quote(message.thread_id, safe='')}"
                                         "/createReply", json={"message": resource})
        else:
            resp = self._request("POST", "/me/messages", json=resource)
        data = resp.json()
        return Draft(id=data["id"], thread_id=data.get("conversationId"))

    def send_draft(self, draft: Draft, message: OutboundMessage) -> Sent:
        """``POST /me/messages/{id}/send`` (202); the immutable id stays the sent id."""
        try:
            self._request("POST", f"/me/messages/{quote(draft.id, safe='')}/send",
                          sending=True, expect=(202, 200, 204))
        except PermanentError as exc:
            if exc.reason.startswith("Graph 404"):
                raise OutcomeUnknown(f"the draft {draft.id} is gone: {exc.reason}") from exc
            raise
        except OutcomeUnknown as exc:
            # A 5xx may come after the email left: still a draft → provably not sent.
            if exc.reason.startswith("Graph 5") and self._still_draft(draft):
                raise TransientError(f"{exc.reason} (still a draft: not sent)",
                                     retry_after=getattr(exc, "retry_after", None)) from exc
            raise
        return Sent(provider_id=draft.id, thread_id=draft.thread_id, sent_at=self._clock())

    def _still_draft(self, draft: Draft) -> bool:
        """Whether the message is still a draft (False when that cannot be told either)."""
        try:
            resp = self._request("GET", f"/me/messages/{quote(draft.id, safe='')}",
                                 params={"$select": "id,isDraft"})
            return bool(resp.json().get("isDraft"))
        except (TransportError, ValueError):
            return False

    def delete_drafts(self, message_id: str) -> int:
        """Delete every draft carrying ``message_id`` (``internetMessageId``); how many."""
        quoted = message_id.replace("'", "''")
        resp = self._request("GET", "/me/mailFolders/drafts/messages", params={
            "$filter": f"internetMessageId eq '{quoted}'", "$select": "id,isDraft"})
        found = [m["id"] for m in resp.json().get("value") or []
                 if m.get("id") and m.get("isDraft", True)]
        for item in found:
            self._request("DELETE", f"/me/messages/{quote(item, safe='')}",
                          expect=(204, 200, 404))
        return len(found)

    def find_sent(self, message_id: str) -> Sent | None:
        """Our message in Sent Items by ``internetMessageId``, or None."""
        quoted = message_id.replace("'", "''")
        resp = self._request("GET", "/me/mailFolders/sentitems/messages", params={
            "$filter": f"internetMessageId eq '{quoted}'",
            "$select": "id,conversationId,sentDateTime,isDraft"})
        found = resp.json().get("value") or []
        if not found:
            return None
        item = found[0]
        return Sent(provider_id=item["id"], thread_id=item.get("conversationId"),
                    sent_at=_parse_time(item.get("sentDateTime")))

    def reconcile(self, message: OutboundMessage, draft: Draft | None) -> Reconciled:
        """Still a draft → not sent; sent (same immutable id, or found by id) → sent."""
        if draft is not None:
            try:
                resp = self._request("GET", f"/me/messages/{quote(draft.id, safe='')}",
                                     params={"$select": "id,isDraft,conversationId,"
                                                        "sentDateTime,internetMessageId"})
                item = resp.json()
                if item.get("isDraft"):
                    return Reconciled(Outcome.NOT_SENT)
                return Reconciled(Outcome.SENT, Sent(
                    provider_id=item["id"], thread_id=item.get("conversationId"),
                    sent_at=_parse_time(item.get("sentDateTime"))))
            except PermanentError as exc:
                if not exc.reason.startswith("Graph 404"):
                    raise
        sent = self.find_sent(message.message_id)
        if sent is not None:
            return Reconciled(Outcome.SENT, sent)
        return Reconciled(Outcome.UNKNOWN if draft is not None else Outcome.NOT_SENT)

    # -- sync -------------------------------------------------------------------------

    def delta(self, folder: str, link: str | None, since: datetime | None = None
              ) -> Iterator[DeltaPage]:
        """Pages of ``/me/mailFolders/{folder}/messages/delta`` from a saved link (or anew).

        A new walk can be limited to messages received ``since`` a moment (the one
        ``$filter`` message delta supports), so a first sync does not page through years.
        """
        url = link
        while True:
            if url is None:
                params = {"$select": "id,conversationId,internetMessageId,subject,"
                                     "sentDateTime,receivedDateTime,isDraft"}
                if since is not None:
                    stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                    params["$filter"] = f"receivedDateTime ge {stamp}"
                resp = self._request("GET", f"/me/mailFolders/{folder}/messages/delta",
                                     params=params)
            else:
                resp = self._request("GET", "", url=url)
            data = resp.json()
            page = DeltaPage(messages=[m for m in data.get("value", [])
                                       if "@removed" not in m],
                             next_link=data.get("@odata.nextLink"),
                             delta_link=data.get("@odata.deltaLink"))
            yield page
            if not page.next_link:
                return
            url = page.next_link

    def raw_message(self, message_id: str) -> bytes:
        """A message's MIME bytes (``GET /me/messages/{id}/$value``)."""
        return self._request("GET", f"/me/messages/{quote(message_id, safe='')}/$value").content


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
