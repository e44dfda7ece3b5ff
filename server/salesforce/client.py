"""The Salesforce REST calls sync makes, behind a small protocol.

:class:`SimpleSalesforceApi` is the real implementation over ``simple-salesforce`` (the wire is
a built ``Salesforce`` object); every failure becomes one of four exceptions the sync decides
on: :class:`SessionExpired` (401 INVALID_SESSION_ID: refresh once), :class:`RateLimited`
(REQUEST_LIMIT_EXCEEDED: pause the org), :class:`Unavailable` (5xx, timeouts, dropped
connections: back off and retry) and :class:`Rejected` (Salesforce refused the record: shown).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError
from simple_salesforce.format import format_soql

API_VERSION = "59.0"
TIMEOUT_SECONDS = 30.0


class SalesforceFailure(Exception):
    """A Salesforce call failed; ``code`` is Salesforce's errorCode when it gave one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SessionExpired(SalesforceFailure):
    """The access token is no longer valid (401 INVALID_SESSION_ID)."""


class RateLimited(SalesforceFailure):
    """The org's API request limit is reached (REQUEST_LIMIT_EXCEEDED)."""


class Unavailable(SalesforceFailure):
    """Salesforce could not be reached or answered 5xx: the outcome is unknown, retry later."""


class Rejected(SalesforceFailure):
    """Salesforce refused the request (400, 403, 404): retrying the same data will not help."""


class SalesforceApi(Protocol):
    """What the sync needs from Salesforce."""

    def find_person(self, email: str) -> str | None:
        """The Id of the Contact, else the unconverted Lead, with this email (None: no match)."""
        ...

    def find_user(self, email: str) -> str | None:
        """The Id of the active Salesforce User with this email (None: none)."""
        ...

    def create_task(self, fields: dict[str, Any]) -> str:
        """Create a Task; its Id."""
        ...

    def update_task(self, sf_id: str, fields: dict[str, Any]) -> None:
        """Change fields of a Task."""
        ...

    def upsert_task(self, field: str, key: str, fields: dict[str, Any]) -> str:
        """Create or update the Task whose external-id ``field`` is ``key``; its Id."""
        ...

    def find_task(self, field: str, value: str) -> str | None:
        """The Id of the Task whose ``field`` equals ``value`` (None: there is none)."""
        ...

    def completed_since(self, since: datetime) -> list[tuple[str, datetime]]:
        """Completed Tasks whose ``SystemModstamp`` is after ``since``: (Id, SystemModstamp)."""
        ...

    def external_id_fields(self) -> list[str]:
        """The names of Task's custom external-id fields."""
        ...


class _TimeoutSession(requests.Session):
    """A requests session that never waits forever (simple-salesforce passes no timeout)."""

    def __init__(self, verify: str | bool = True) -> None:
        super().__init__()
        self.verify = verify

    def request(self, method: str | bytes, url: str | bytes, *args: Any,  # type: ignore[override]
                **kwargs: Any) -> requests.Response:
        """Send with the default timeout unless one is given."""
        kwargs.setdefault("timeout", TIMEOUT_SECONDS)
        if isinstance(self.verify, str):
            # A configured CA bundle wins over REQUESTS_CA_BUNDLE in the environment, which
            # requests would otherwise prefer to the session's own setting.
            kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


def http_session(ca_bundle: str | None = None) -> requests.Session:
    """The HTTP session every Salesforce call uses (``ca_bundle`` trusts a private CA)."""
    return _TimeoutSession(ca_bundle or True)


def _error_code(content: Any) -> tuple[str | None, str]:
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode"), str(content[0].get("message", ""))
    if isinstance(content, dict):
        return content.get("errorCode") or content.get("error"), str(
            content.get("message") or content.get("error_description") or "")
    return None, str(content)[:300]


def translate(exc: Exception) -> SalesforceFailure:
    """The sync's exception for a ``simple-salesforce`` or ``requests`` failure."""
    if isinstance(exc, SalesforceError):
        code, message = _error_code(exc.content)
        text = f"{code}: {message}" if code else message or f"HTTP {exc.status}"
        if code == "REQUEST_LIMIT_EXCEEDED":
            return RateLimited(text, code)
        if exc.status == 401:
            return SessionExpired(text, code or "INVALID_SESSION_ID")
        if exc.status >= 500:
            return Unavailable(f"Salesforce answered {exc.status}: {text}", code)
        return Rejected(text, code)
    if isinstance(exc, requests.RequestException):
        return Unavailable(f"Salesforce unreachable: {type(exc).__name__}")
    raise exc


def _soql_datetime(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def parse_sf_datetime(value: str) -> datetime:
    """A Salesforce datetime (``2026-11-24T10:00:00.000+0000``) as an aware UTC datetime."""
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(UTC)


class SimpleSalesforceApi:
    """:class:`SalesforceApi` over a ``simple_salesforce.Salesforce`` connection."""

    def __init__(self, sf: Salesforce) -> None:
        self.sf = sf

    @classmethod
    def connect(cls, instance_url: str, access_token: str, *, ca_bundle: str | None = None,
                version: str = API_VERSION) -> SimpleSalesforceApi:
        """A client for an instance and an access token."""
        return cls(Salesforce(instance_url=instance_url, session_id=access_token,
                              version=version, session=http_session(ca_bundle)))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SalesforceError, requests.RequestException) as exc:
            raise translate(exc) from None

    def _first_id(self, soql: str) -> str | None:
        records = self._call(self.sf.query, soql)["records"]
        return records[0]["Id"] if records else None

    def find_person(self, email: str) -> str | None:
        """The Contact with this email, else an unconverted Lead with it."""
        found = self._first_id(format_soql(
            "SELECT Id FROM Contact WHERE Email = {} ORDER BY CreatedDate LIMIT 1", email))
        if found:
            return found
        return self._first_id(format_soql(
            "SELECT Id FROM Lead WHERE Email = {} AND IsConverted = false "
            "ORDER BY CreatedDate LIMIT 1", email))

    def find_user(self, email: str) -> str | None:
        """The active User with this email (the rep's own Salesforce user)."""
        return self._first_id(format_soql(
            "SELECT Id FROM User WHERE Email = {} AND IsActive = true LIMIT 1", email))

    def create_task(self, fields: dict[str, Any]) -> str:
        """POST sobjects/Task."""
        return str(self._call(self.sf.Task.create, fields)["id"])

    def update_task(self, sf_id: str, fields: dict[str, Any]) -> None:
        """PATCH sobjects/Task/<Id>."""
        self._call(self.sf.Task.update, sf_id, fields)

    def upsert_task(self, field: str, key: str, fields: dict[str, Any]) -> str:
        """PATCH sobjects/Task/<field>/<key>: creates once, updates after."""
        resp = self._call(self.sf.Task.upsert, f"{field}/{key}", fields, raw_response=True)
        if resp.status_code in (200, 201) and resp.content:
            return str(resp.json()["id"])
        found = self.find_task(field, key)  # 204 from older API versions carries no body
        if found is None:
            raise Unavailable(f"upsert of {field}={key} answered {resp.status_code} without "
                              "a record")
        return found

    def find_task(self, field: str, value: str) -> str | None:
        """SELECT Id FROM Task WHERE <field> = <value>."""
        if not field.replace("_", "").isalnum():
            raise ValueError(f"not a field name: {field!r}")
        return self._first_id(format_soql(
            f"SELECT Id FROM Task WHERE {field} = {{}} LIMIT 1", value))

    def completed_since(self, since: datetime) -> list[tuple[str, datetime]]:
        """Completed Tasks changed after ``since``, oldest change first."""
        soql = ("SELECT Id, Status, SystemModstamp FROM Task WHERE SystemModstamp > "
                f"{_soql_datetime(since)} AND Status = 'Completed' ORDER BY SystemModstamp")
        records = self._call(self.sf.query_all, soql)["records"]
        return [(r["Id"], parse_sf_datetime(r["SystemModstamp"])) for r in records]

    def external_id_fields(self) -> list[str]:
        """Task's custom fields marked External ID (from sobjects/Task/describe)."""
        described = self._call(self.sf.Task.describe)
        return [f["name"] for f in described.get("fields", [])
                if f.get("externalId") and f.get("custom")]
