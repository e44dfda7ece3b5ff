"""Salesforce API endpoints (admins): status, settings, subject preview, problems, retry."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint
from pydantic import Field

from server.accounts.auth import api_user
from server.accounts.models import Role, User
from server.api.errors import FieldError
from server.api.operations import Model, Out, operation
from server.db import get_session, utcnow
from server.errors import Forbidden, Invalid
from server.salesforce import service
from server.salesforce.mapping import preview_activity, render_subject, template_errors
from server.salesforce.models import AuthKind, ConnectionStatus, SyncKind, SyncStatus

bp = Blueprint("salesforce", __name__, url_prefix="/api/salesforce")


def require_admin() -> User:
    """The calling admin; a rep is refused (403)."""
    user = api_user()
    if user.role is not Role.ADMIN:
        raise Forbidden("only an admin can manage the Salesforce connection")
    return user


class SettingsOut(Out):
    """The org's activity settings."""

    sync_reminders: bool = Field(description="sync call, InMail and custom tasks (off by "
                                             "default; email tasks always sync)")
    subject_template: str
    external_id_field: str | None
    subject_preview: str


class StatusOut(Out):
    """The connection as the admin sees it (never a token)."""

    status: ConnectionStatus
    status_reason: str | None
    auth_kind: AuthKind | None
    username: str | None
    instance_url: str | None
    connected_at: datetime | None
    paused_until: datetime | None
    settings: SettingsOut
    outbox: dict[str, int] = Field(description="sync items by status")


class SettingsIn(Model):
    """Change some settings; fields left out stay as they are."""

    sync_reminders: bool | None = None
    subject_template: str | None = Field(None, max_length=2000)
    external_id_field: str | None = Field(None, max_length=80)


class PreviewIn(Model):
    """A template to preview."""

    subject_template: str = Field(max_length=2000)


class PreviewOut(Out):
    """The template rendered for a sample email activity."""

    subject: str


class ProblemOut(Out):
    """An item that did not sync: unmatched person or refused record."""

    id: int
    kind: SyncKind
    status: SyncStatus
    task_id: int | None
    reason: str | None
    updated_at: datetime


class ProblemList(Out):
    """The latest problems, newest first."""

    items: list[ProblemOut]


class RetryOut(Out):
    """How many items went back to the queue."""

    retried: int


def _settings_out(conn: object | None) -> SettingsOut:
    from server.salesforce.models import DEFAULT_SUBJECT_TEMPLATE

    template = getattr(conn, "subject_template", None) or DEFAULT_SUBJECT_TEMPLATE
    return SettingsOut(sync_reminders=bool(getattr(conn, "sync_reminders", False)),
                       subject_template=template,
                       external_id_field=getattr(conn, "external_id_field", None),
                       subject_preview=render_subject(template, preview_activity()))


def _status_out(user: User) -> StatusOut:
    view = service.overview(get_session(), user.org_id)
    conn = view.conn
    return StatusOut(
        status=conn.status if conn else ConnectionStatus.DISCONNECTED,
        status_reason=conn.status_reason if conn else None,
        auth_kind=conn.auth_kind if conn else None,
        username=conn.username if conn else None,
        instance_url=conn.instance_url if conn else None,
        connected_at=conn.connected_at if conn else None,
        paused_until=conn.paused_until if conn else None,
        settings=_settings_out(conn), outbox=view.counts)


@operation(bp, "", "GET", response=StatusOut)
def status() -> StatusOut:
    """The org's Salesforce connection status, settings and outbox counts (admins)."""
    return _status_out(require_admin())


@operation(bp, "/settings", "PUT", body=SettingsIn, response=SettingsOut)
def update_settings(body: SettingsIn) -> SettingsOut:
    """Change the activity settings; an unknown template field is a 422 naming it."""
    user = require_admin()
    conn = service.save_settings(get_session(), user.org_id, sync_reminders=body.sync_reminders,
                                 subject_template=body.subject_template,
                                 external_id_field=body.external_id_field or None,
                                 clear_external_id=body.external_id_field == "")
    get_session().commit()
    return _settings_out(conn)


@operation(bp, "/subject-preview", "POST", body=PreviewIn, response=PreviewOut)
def subject_preview(body: PreviewIn) -> PreviewOut:
    """Render a subject template for a sample email activity (nothing is saved)."""
    require_admin()
    errors = template_errors(body.subject_template)
    if errors:
        raise Invalid([FieldError("subject_template", e) for e in errors])
    return PreviewOut(subject=render_subject(body.subject_template, preview_activity()))


@operation(bp, "/problems", "GET", response=ProblemList)
def problems() -> ProblemList:
    """Items that did not sync: people with no Contact or Lead, records Salesforce refused."""
    user = require_admin()
    view = service.overview(get_session(), user.org_id)
    return ProblemList(items=[ProblemOut.model_validate(i) for i in view.problems])


@operation(bp, "/retry", "POST", response=RetryOut)
def retry() -> RetryOut:
    """Queue the unmatched and failed items again (after fixing them in Salesforce)."""
    user = require_admin()
    n = service.retry_problems(get_session(), user.org_id, utcnow())
    get_session().commit()
    return RetryOut(retried=n)
