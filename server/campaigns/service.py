"""Campaign operations: save (with validation), read, list, end."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.accounts.service import valid_timezone
from server.api.errors import FieldError
from server.campaigns.models import Campaign, CampaignStatus, CampaignStep, Enrollment
from server.campaigns.rules import MAX_STEPS, validate_steps
from server.campaigns.spec import CampaignSettings, SendOption, StepSpec, StepType
from server.compose.models import Template
from server.compose.render import template_prompts
from server.errors import Conflict, Forbidden, Invalid

_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
HHMM_HINT = "use HH:MM, 24-hour (e.g. 09:30)"


def parse_hhmm(text: str) -> time | None:
    """A 24-hour ``HH:MM`` local time of day (an ``at_time`` send time), or None if malformed."""
    m = _HHMM.match(text)
    return time(int(m.group(1)), int(m.group(2))) if m else None


SETTING_FIELDS = ("timezone", "skip_weekends", "late_task_policy", "on_reply", "on_bounce")


@dataclass(frozen=True)
class StepInput:
    """A step as a client describes it (already type-checked)."""

    day: int
    type: StepType
    send_option: SendOption | None = None
    send_time: time | None = None
    follow_up: bool = False
    template_id: int | None = None
    title: str = ""
    notes: str = ""
    priority: str = "normal"


def step_specs(steps: Sequence[CampaignStep | StepInput]) -> list[StepSpec]:
    """The rule modules' view of a campaign's steps, in order."""
    return [
        StepSpec(position=i, day=s.day, type=StepType(s.type),
                 send_option=SendOption(s.send_option) if s.send_option else None,
                 send_time=s.send_time, follow_up=bool(s.follow_up))
        for i, s in enumerate(steps)
    ]


def settings_of(campaign: Campaign) -> CampaignSettings:
    """The timing settings of a campaign (C3)."""
    return CampaignSettings(timezone=campaign.timezone, skip_weekends=campaign.skip_weekends,
                            late_task_policy=campaign.late_task_policy)


def steps_in_day(steps: Sequence[CampaignStep | StepInput | StepSpec]) -> list[int]:
    """Each step's 1-based number within its day."""
    out: list[int] = []
    prev_day, n = None, 0
    for s in steps:
        n = n + 1 if s.day == prev_day else 1
        prev_day = s.day
        out.append(n)
    return out


def check_campaign(session: Session, user: User, settings: dict[str, Any],
                   steps: Sequence[StepInput] | None) -> list[FieldError]:
    """Every error in a campaign's settings and steps: C1–C3, S1–S5 and template references."""
    errors: list[FieldError] = []
    tz = settings.get("timezone")
    if tz is not None and not valid_timezone(tz):
        errors.append(FieldError("timezone", f"unknown time zone {tz!r} (C3)", "C3"))
    if steps is None:
        return errors
    errors.extend(FieldError(e.field, e.message, e.rule) for e in validate_steps(step_specs(steps)))
    if len(steps) > MAX_STEPS:
        return errors
    bad_fields = {e.field for e in errors}
    wanted = {s.template_id for s in steps if s.template_id is not None}
    known = {row.id: row for row in session.execute(
        select(Template.id, Template.name, Template.subject, Template.body_html).where(
            Template.id.in_(wanted), Template.org_id == user.org_id))} if wanted else {}
    for i, s in enumerate(steps):
        name = f"steps[{i}].template_id"
        if name in bad_fields:
            continue
        if s.type is StepType.EMAIL and s.template_id is None:
            errors.append(FieldError(name, "an email step needs a template (C1)", "C1"))
        elif s.type is not StepType.EMAIL and s.template_id is not None:
            errors.append(FieldError(name, f"a {s.type.value} step has no template (C1)", "C1"))
        elif s.template_id is not None and s.template_id not in known:
            errors.append(FieldError(name, f"unknown template {s.template_id}", "C1"))
        elif (s.template_id is not None and s.send_option is not None
              and s.send_option is not SendOption.TASK):
            prompt = _first_prompt(known[s.template_id])
            if prompt is not None:
                errors.append(FieldError(
                    name, f'template "{known[s.template_id].name}" has a field prompt '
                          f"({prompt}), which only an email task can have (E6)", "E6"))
    return errors


def _first_prompt(template: Any) -> str | None:
    """The first field prompt ``{{! …}}`` of a template's subject or body, as written."""
    for source in (template.subject, template.body_html):
        prompts = template_prompts(source or "")
        if prompts:
            text = prompts[0] if len(prompts[0]) <= 60 else prompts[0][:57] + "..."
            return "{{! " + text + "}}"
    return None


def _apply_steps(session: Session, campaign: Campaign, steps: Sequence[StepInput]) -> None:
    if campaign.steps:
        campaign.steps.clear()
        # The unit of work inserts before it deletes; the old rows must go first or the new
        # ones collide with them on (campaign_id, position).
        session.flush()
    for i, s in enumerate(steps):
        campaign.steps.append(CampaignStep(
            position=i, day=s.day, type=s.type, send_option=s.send_option,
            send_time=s.send_time, follow_up=s.follow_up, template_id=s.template_id,
            title=s.title, notes=s.notes, priority=s.priority))


def create_campaign(session: Session, user: User, *, name: str, settings: dict[str, Any],
                    steps: Sequence[StepInput]) -> Campaign:
    """Validate and store a campaign; raises Invalid (nothing stored) on any error (S5)."""
    settings = {k: v for k, v in settings.items() if v is not None}
    settings.setdefault("timezone", user.timezone)
    errors = check_campaign(session, user, settings, steps)
    if errors:
        raise Invalid(errors)
    campaign = Campaign(org_id=user.org_id, owner_id=user.id, name=name, **settings)
    session.add(campaign)
    _apply_steps(session, campaign, steps)
    session.flush()
    return campaign


def people_count(session: Session, campaign: Campaign) -> int:
    """How many people were ever added to the campaign."""
    return session.scalar(
        select(func.count()).select_from(Enrollment).where(Enrollment.campaign_id == campaign.id)
    ) or 0


def _may_change(user: User, campaign: Campaign) -> None:
    if campaign.owner_id != user.id and user.role is not Role.ADMIN:
        raise Forbidden("only the campaign's owner or an admin can change it")


def update_campaign(session: Session, user: User, campaign: Campaign, *, name: str | None,
                    settings: dict[str, Any], steps: Sequence[StepInput] | None) -> Campaign:
    """Change a campaign. Steps can be replaced only while nobody has been added to it."""
    _may_change(user, campaign)
    if campaign.status is CampaignStatus.ENDED:
        raise Conflict("the campaign has ended and can no longer be changed")
    errors = check_campaign(session, user, settings, steps)
    if errors:
        raise Invalid(errors)
    if steps is not None:
        count = people_count(session, campaign)
        if count:
            raise Conflict(f"{count} people are in this campaign; its steps can no longer be "
                           "changed (make a copy instead)")
        _apply_steps(session, campaign, steps)
    if name is not None:
        campaign.name = name
    for key, value in settings.items():
        setattr(campaign, key, value)
    session.flush()
    return campaign


def get_campaign(session: Session, user: User, campaign_id: int) -> Campaign | None:
    """A campaign of the user's org, or None."""
    return session.scalar(
        select(Campaign).where(Campaign.id == campaign_id, Campaign.org_id == user.org_id)
    )


def list_campaigns(session: Session, user: User, status: CampaignStatus | None) -> list[Campaign]:
    """The org's campaigns, newest first."""
    stmt = select(Campaign).where(Campaign.org_id == user.org_id)
    if status is not None:
        stmt = stmt.where(Campaign.status == status)
    return list(session.scalars(stmt.order_by(Campaign.id.desc())))


def end_campaign(session: Session, user: User, campaign: Campaign, now: datetime) -> int:
    """End a campaign (X1): every person still in it leaves; returns how many left."""
    from server.campaigns.progress import leave

    _may_change(user, campaign)
    if campaign.status is CampaignStatus.ENDED:
        return 0
    campaign.status = CampaignStatus.ENDED
    campaign.ended_at = now
    from server.campaigns.models import EnrollmentStatus

    open_ids = list(session.scalars(select(Enrollment.id).where(
        Enrollment.campaign_id == campaign.id,
        Enrollment.status.in_([EnrollmentStatus.ACTIVE, EnrollmentStatus.SCHEDULED]))))
    for enrollment_id in open_ids:
        leave(session, enrollment_id, EnrollmentStatus.ENDED, "campaign ended", now)
    session.flush()
    return len(open_ids)
