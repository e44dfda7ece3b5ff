"""Template operations: saving checks the template language (E4–E7) and E6 for live steps."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.api.errors import FieldError
from server.campaigns.models import Campaign, CampaignStatus, CampaignStep
from server.campaigns.spec import SendOption, StepType
from server.compose.models import Template
from server.compose.render import MAX_OUTPUT, check_template, template_prompts
from server.errors import Forbidden, Invalid

#: The largest template body, in bytes of UTF-8 (the same cap as a rendered email).
MAX_BODY = MAX_OUTPUT
#: Problems listed per field; a template with more gets one line saying how many remain.
MAX_PROBLEMS = 20


class TemplateTooLarge(Invalid):
    """A template body over :data:`MAX_BODY` (the API answers 413, pages show it as a 422)."""


def may_change_template(user: User, template: Template) -> bool:
    """True when ``user`` may change or delete ``template``: its owner, or an admin of its org.

    Every rep of the org may read and use a template (README, Security).
    """
    if template.org_id != user.org_id:
        return False
    return user.role is Role.ADMIN or template.created_by_id == user.id


def require_change_template(user: User, template: Template) -> None:
    """Raise Forbidden (403) unless ``user`` may change ``template``."""
    if not may_change_template(user, template):
        raise Forbidden("only the template's owner or an admin can change or delete it")


def get_template(session: Session, user: User, template_id: int) -> Template | None:
    """A template of the user's org, or None."""
    return session.scalar(
        select(Template).where(Template.id == template_id, Template.org_id == user.org_id)
    )


def list_templates(session: Session, user: User) -> list[Template]:
    """Every template of the user's org, by name."""
    return list(session.scalars(
        select(Template).where(Template.org_id == user.org_id).order_by(Template.name, Template.id)
    ))


def template_errors(values: dict[str, Any]) -> list[FieldError]:
    """Every problem of the given ``subject`` and ``body_html``, one error per problem.

    A subject is one line (no CR or LF); both are checked by the template language: known
    fields, the default filter with a quoted text, prompts, nothing else (E4, E6, E7). Each
    message starts with the line and column: ``line 3, column 5: unknown field "frist_name"``.
    Raises :class:`TemplateTooLarge` for a body over 256 KB (checked before anything else).
    """
    body = values.get("body_html")
    if isinstance(body, str) and len(body.encode("utf-8", "surrogatepass")) > MAX_BODY:
        raise TemplateTooLarge([FieldError("body_html", f"is larger than {MAX_BODY // 1024} KB; "
                                                        "shorten the template")])
    errors: list[FieldError] = []
    for name in ("subject", "body_html"):
        source = values.get(name)
        if not isinstance(source, str):
            continue
        if name == "subject" and ("\r" in source or "\n" in source):
            errors.append(FieldError(name, "may not contain a line break (CR or LF); a subject "
                                           "is one line"))
            continue
        problems = check_template(source)
        errors.extend(FieldError(name, str(p)) for p in problems[:MAX_PROBLEMS])
        if len(problems) > MAX_PROBLEMS:
            errors.append(FieldError(name, f"{len(problems) - MAX_PROBLEMS} more problems "
                                           "after these; fix the ones above first"))
    return errors


def _automatic_uses(session: Session, template: Template) -> list[tuple[str, int]]:
    """(campaign name, step number) of live campaigns that send this template automatically."""
    rows = session.execute(
        select(Campaign.name, CampaignStep.position)
        .join(Campaign, Campaign.id == CampaignStep.campaign_id)
        .where(CampaignStep.template_id == template.id, CampaignStep.type == StepType.EMAIL,
               CampaignStep.send_option != SendOption.TASK,
               Campaign.status != CampaignStatus.ENDED)
        .order_by(Campaign.id, CampaignStep.position).limit(1)
    ).all()
    return [(r.name, r.position + 1) for r in rows]


def create_template(session: Session, user: User, *, name: str, subject: str,
                    body_html: str) -> Template:
    """Store a template as written, once it passes the checks (``Invalid`` otherwise)."""
    errors = template_errors({"subject": subject, "body_html": body_html})
    if errors:
        raise Invalid(errors)
    template = Template(org_id=user.org_id, created_by_id=user.id, name=name, subject=subject,
                        body_html=body_html)
    session.add(template)
    session.flush()
    return template


def update_template(session: Session, template: Template, values: dict[str, Any]) -> Template:
    """Change the given fields; null is not a value for any of them (nothing changes then).

    The new subject and body pass the same checks as a new template. A field prompt cannot be
    added to a template that a live campaign sends automatically (E6): that step could never
    send it.
    """
    errors = [FieldError(name, 'may not be null; send "" to clear it')
              for name, value in values.items() if value is None]
    if errors:
        raise Invalid(errors)
    errors = template_errors(values)
    if not errors:
        for name in ("subject", "body_html"):
            if name in values and template_prompts(values[name]):
                uses = _automatic_uses(session, template)
                if uses:
                    campaign, step = uses[0]
                    errors.append(FieldError(
                        name, f'campaign "{campaign}" sends this template automatically (step '
                              f"{step}); only an email task's template can have a field prompt "
                              "{{! …}} (E6)", "E6"))
                break
    if errors:
        raise Invalid(errors)
    for key, value in values.items():
        setattr(template, key, value)
    session.flush()
    return template
