"""Template endpoints."""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint
from pydantic import Field
from sqlalchemy import select

from server.accounts.auth import api_user
from server.api.errors import ApiError, not_found
from server.api.operations import Model, Out, operation
from server.campaigns.models import CampaignStep
from server.compose import service
from server.compose.models import Template
from server.contacts.views import Deleted
from server.db import get_session

bp = Blueprint("templates", __name__, url_prefix="/api/templates")


class TemplateIn(Model):
    """A new template, stored as written once it passes the template language's checks.

    Fields ``{{first_name}}``, defaults ``{{first_name | default: "there"}}`` and prompts
    ``{{! …}}`` only (E4–E7); a problem is a 422 naming the field with its line and column; a
    body over 256 KB is a 413; a subject is one line.
    """

    name: str = Field(min_length=1, max_length=200)
    subject: str = Field("", max_length=998)
    # No length limit here: a body over 256 KB is a 413, not a 422 (the service checks).
    body_html: str = ""


class TemplatePatch(Model):
    """Fields to change on a template."""

    name: str | None = Field(None, min_length=1, max_length=200)
    subject: str | None = Field(None, max_length=998)
    body_html: str | None = None


class TemplateOut(Out):
    """A template."""

    id: int
    name: str
    subject: str
    body_html: str
    created_by_id: int | None
    updated_at: datetime


class TemplateList(Out):
    """Every template of the org."""

    items: list[TemplateOut]


def _too_large(exc: service.TemplateTooLarge) -> ApiError:
    return ApiError(413, "payload_too_large", str(exc), exc.errors)


def _load(template_id: int) -> Template:
    template = service.get_template(get_session(), api_user(), template_id)
    if template is None:
        raise not_found("template")
    return template


@operation(bp, "", "POST", body=TemplateIn, response=TemplateOut, status=201)
def create(body: TemplateIn) -> TemplateOut:
    """Create a template for the caller's org (422 with line and column; 413 over 256 KB)."""
    try:
        template = service.create_template(get_session(), api_user(), **body.model_dump())
    except service.TemplateTooLarge as exc:
        raise _too_large(exc) from None
    get_session().commit()
    return TemplateOut.model_validate(template)


@operation(bp, "", "GET", response=TemplateList)
def list_() -> TemplateList:
    """List the org's templates."""
    rows = service.list_templates(get_session(), api_user())
    return TemplateList(items=[TemplateOut.model_validate(t) for t in rows])


@operation(bp, "/<int:template_id>", "GET", response=TemplateOut)
def read(template_id: int) -> TemplateOut:
    """Read a template of the caller's org."""
    return TemplateOut.model_validate(_load(template_id))


@operation(bp, "/<int:template_id>", "PATCH", body=TemplatePatch, response=TemplateOut)
def update(template_id: int, body: TemplatePatch) -> TemplateOut:
    """Change a template (its owner or an admin); campaigns using it pick the change up."""
    try:
        template = _load(template_id)
        service.require_change_template(api_user(), template)
        template = service.update_template(get_session(), template,
                                           body.model_dump(exclude_unset=True))
    except service.TemplateTooLarge as exc:
        raise _too_large(exc) from None
    get_session().commit()
    return TemplateOut.model_validate(template)


@operation(bp, "/<int:template_id>", "DELETE", response=Deleted)
def delete(template_id: int) -> Deleted:
    """Delete a template that no campaign step uses (its owner or an admin)."""
    template = _load(template_id)
    service.require_change_template(api_user(), template)
    session = get_session()
    used = session.scalar(select(CampaignStep.campaign_id).where(
        CampaignStep.template_id == template.id).limit(1))
    if used is not None:
        raise ApiError(409, "in_use", f"campaign {used} uses this template; change its steps first")
    session.delete(template)
    session.commit()
    return Deleted(deleted=template_id)
