"""Campaign endpoints: save, read, list, launch, plan, end; enrollment plan and removal."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal

from flask import Blueprint
from pydantic import AwareDatetime, Field, field_validator

from server.accounts.auth import api_user
from server.api.errors import not_found
from server.api.operations import Model, Out, Query, operation
from server.campaigns import launch as launch_service
from server.campaigns import service
from server.campaigns.models import (
    Campaign,
    CampaignStatus,
    Enrollment,
    EnrollmentStatus,
    OnBounce,
    OnReply,
)
from server.campaigns.planning import PlannedStep, plan
from server.campaigns.progress import enrollment_plan, leave
from server.campaigns.spec import LatePolicy, SendOption, StepType
from server.contacts.service import get_contact
from server.db import get_session, utcnow

bp = Blueprint("campaigns", __name__, url_prefix="/api/campaigns")
enrollments_bp = Blueprint("enrollments", __name__, url_prefix="/api/enrollments")



class StepIn(Model):
    """One step (C1). Email steps need ``send_option`` and ``template_id``."""

    day: int = Field(description="the day within the campaign, 1 or more (C2)")
    type: StepType
    send_option: SendOption | None = None
    send_time: str | None = Field(None, description="HH:MM local time, for at_time")
    follow_up: bool = False
    template_id: int | None = None
    title: str = Field("", max_length=200)
    notes: str = Field("", max_length=10_000)
    priority: Literal["normal", "high"] = "normal"

    @field_validator("send_time")
    @classmethod
    def _hhmm(cls, value: str | None) -> str | None:
        if value is not None and service.parse_hhmm(value) is None:
            raise ValueError(service.HHMM_HINT)
        return value

    def as_input(self) -> service.StepInput:
        """The service's form of the step."""
        data = self.model_dump()
        if self.send_time is not None:
            data["send_time"] = service.parse_hhmm(self.send_time)
        return service.StepInput(**data)


#: The rule a malformed value of a campaign body breaks, by field (S5); any other is S5's.
_STEP_RULES = {"day": "C1", "type": "C1", "follow_up": "S4"}
_SETTING_RULES = {"timezone": "C3", "skip_weekends": "C3", "late_task_policy": "C3",
                  "on_reply": "C3", "on_bounce": "C3"}


def campaign_rule(loc: tuple[Any, ...]) -> str:
    """The rule broken by a malformed value at ``loc`` of a campaign body (S5).

    A step's send option or send time breaks S1 on the first step and S2 on a later one.
    """
    if len(loc) >= 3 and loc[0] == "steps" and isinstance(loc[1], int):
        name = loc[2]
        if name in ("send_option", "send_time"):
            return "S1" if loc[1] == 0 else "S2"
        return _STEP_RULES.get(str(name), "S5")
    if len(loc) == 1:
        return _SETTING_RULES.get(str(loc[0]), "S5")
    return "S5"


class Settings(Model):
    """Campaign settings (C3); omitted ones take their defaults."""

    rule_of: ClassVar = staticmethod(campaign_rule)

    timezone: str | None = Field(None, description="IANA name; default the owner's")
    skip_weekends: bool | None = None
    late_task_policy: LatePolicy | None = None
    on_reply: OnReply | None = None
    on_bounce: OnBounce | None = None


class CampaignIn(Settings):
    """A new campaign."""

    name: str = Field(min_length=1, max_length=200)
    steps: list[StepIn]


class CampaignPatch(Settings):
    """Changes to a campaign; ``steps`` replaces every step (only before anyone is added)."""

    name: str | None = Field(None, min_length=1, max_length=200)
    steps: list[StepIn] | None = None


class StepOut(Out):
    """A campaign step."""

    position: int
    day: int
    step: int = Field(description="number within its day")
    type: StepType
    send_option: SendOption | None
    send_time: str | None
    follow_up: bool
    template_id: int | None
    title: str
    notes: str
    priority: str


class CampaignOut(Out):
    """A campaign with its steps."""

    id: int
    name: str
    owner_id: int
    status: CampaignStatus
    timezone: str
    skip_weekends: bool
    late_task_policy: LatePolicy
    on_reply: OnReply
    on_bounce: OnBounce
    steps: list[StepOut]
    people: int
    created_at: datetime


class CampaignList(Out):
    """The org's campaigns."""

    items: list[CampaignOut]


class CampaignListQuery(Query):
    """Filter by status."""

    status: CampaignStatus | None = None


class LaunchIn(Model):
    """Add the caller's contacts to a campaign."""

    contact_ids: list[int]
    start_at: AwareDatetime | None = Field(None, description="a scheduled start; default now")
    send_at: AwareDatetime | None = Field(
        None, description="the first email's moment: required for choose_at_launch, an "
        "override for at_time; it becomes the campaign start (T1)")


class Enrolled(Out):
    """A person added by a launch."""

    enrollment_id: int
    contact_id: int


class LaunchOut(Out):
    """What a launch did."""

    enrolled: list[Enrolled]
    already_enrolled: list[int] = Field(description="contacts already in the campaign")
    start: datetime
    scheduled: bool = Field(description="true when the start is in the future")


class PlannedStepOut(Out):
    """One step of a person's plan (P1)."""

    position: int
    day: int
    effective_day: int
    step: int
    type: StepType
    send_option: SendOption | None
    due_at: datetime
    due_local: datetime
    local_date: date
    rule: str
    explanation: str
    depends_on: int | None
    status: str
    done_at: datetime | None


class PlanOut(Out):
    """A person's plan, in UTC and campaign-local time."""

    campaign_id: int
    enrollment_id: int | None
    contact_id: int | None
    timezone: str
    start: datetime
    steps: list[PlannedStepOut]


class PlanQuery(Query):
    """Preview inputs: who, and when the campaign would start."""

    contact_id: int | None = None
    start_at: AwareDatetime | None = None
    send_at: AwareDatetime | None = None


class EnrollmentOut(Out):
    """A person in a campaign."""

    id: int
    campaign_id: int
    contact_id: int
    owner_id: int
    status: EnrollmentStatus
    start_at: datetime
    send_at: datetime | None
    end_reason: str | None
    created_at: datetime
    ended_at: datetime | None


class RemoveIn(Model):
    """Why the person is removed."""

    reason: str = Field("removed by hand", max_length=200)


class EndOut(Out):
    """The ended campaign and how many people left it."""

    campaign: CampaignOut
    people_removed: int


def campaign_out(campaign: Campaign) -> CampaignOut:
    """Serialise a campaign."""
    numbers = service.steps_in_day(campaign.steps)
    steps = [StepOut(position=s.position, day=s.day, step=numbers[i], type=s.type,
                     send_option=s.send_option,
                     send_time=s.send_time.strftime("%H:%M") if s.send_time else None,
                     follow_up=s.follow_up, template_id=s.template_id, title=s.title,
                     notes=s.notes, priority=s.priority)
             for i, s in enumerate(campaign.steps)]
    return CampaignOut(id=campaign.id, name=campaign.name, owner_id=campaign.owner_id,
                       status=campaign.status, timezone=campaign.timezone,
                       skip_weekends=campaign.skip_weekends,
                       late_task_policy=campaign.late_task_policy, on_reply=campaign.on_reply,
                       on_bounce=campaign.on_bounce, steps=steps,
                       people=service.people_count(get_session(), campaign),
                       created_at=campaign.created_at)


def plan_out(campaign: Campaign, planned: list[PlannedStep], start: datetime, *,
             enrollment_id: int | None, contact_id: int | None,
             statuses: list[str] | None = None) -> PlanOut:
    """Serialise a plan."""
    numbers = service.steps_in_day(campaign.steps)
    steps = []
    for i, p in enumerate(planned):
        step = campaign.steps[i]
        steps.append(PlannedStepOut(
            position=p.position, day=p.day, effective_day=p.effective_day, step=numbers[i],
            type=step.type, send_option=step.send_option, due_at=p.due_at,
            due_local=p.due_local, local_date=p.local_date, rule=p.rule,
            explanation=p.explanation, depends_on=p.depends_on,
            status=statuses[i] if statuses else "preview", done_at=p.done_at))
    return PlanOut(campaign_id=campaign.id, enrollment_id=enrollment_id, contact_id=contact_id,
                   timezone=campaign.timezone, start=start, steps=steps)


def _load(campaign_id: int) -> Campaign:
    campaign = service.get_campaign(get_session(), api_user(), campaign_id)
    if campaign is None:
        raise not_found("campaign")
    return campaign


def _settings(body: Settings) -> dict[str, Any]:
    return {k: getattr(body, k) for k in service.SETTING_FIELDS if getattr(body, k) is not None}


@operation(bp, "", "POST", body=CampaignIn, response=CampaignOut, status=201)
def create(body: CampaignIn) -> CampaignOut:
    """Create a campaign; an invalid one is rejected with every error and nothing stored (S5)."""
    campaign = service.create_campaign(get_session(), api_user(), name=body.name,
                                       settings=_settings(body),
                                       steps=[s.as_input() for s in body.steps])
    get_session().commit()
    return campaign_out(campaign)


@operation(bp, "", "GET", query=CampaignListQuery, response=CampaignList)
def list_(query: CampaignListQuery) -> CampaignList:
    """List the org's campaigns, newest first."""
    rows = service.list_campaigns(get_session(), api_user(), query.status)
    return CampaignList(items=[campaign_out(c) for c in rows])


@operation(bp, "/<int:campaign_id>", "GET", response=CampaignOut)
def read(campaign_id: int) -> CampaignOut:
    """Read a campaign of the caller's org."""
    return campaign_out(_load(campaign_id))


@operation(bp, "/<int:campaign_id>", "PATCH", body=CampaignPatch, response=CampaignOut)
def update(campaign_id: int, body: CampaignPatch) -> CampaignOut:
    """Change a campaign's name, settings, or (before anyone is added) its steps."""
    steps = [s.as_input() for s in body.steps] if body.steps is not None else None
    campaign = service.update_campaign(get_session(), api_user(), _load(campaign_id),
                                       name=body.name, settings=_settings(body), steps=steps)
    get_session().commit()
    return campaign_out(campaign)


@operation(bp, "/<int:campaign_id>/launch", "POST", body=LaunchIn, response=LaunchOut,
           status=201)
def launch(campaign_id: int, body: LaunchIn) -> LaunchOut:
    """Add contacts to a campaign; people already in it are reported, not added twice."""
    result = launch_service.launch(get_session(), api_user(), _load(campaign_id),
                                   body.contact_ids, start_at=body.start_at,
                                   send_at=body.send_at, now=utcnow())
    get_session().commit()
    assert result.start is not None
    return LaunchOut(enrolled=[Enrolled(enrollment_id=e, contact_id=c)
                               for e, c in result.enrolled],
                     already_enrolled=result.already_enrolled,
                     start=result.start.astimezone(UTC),
                     scheduled=result.scheduled)


@operation(bp, "/<int:campaign_id>/plan", "GET", query=PlanQuery, response=PlanOut)
def preview(campaign_id: int, query: PlanQuery) -> PlanOut:
    """Preview the plan for a person before launch (P1): every step's due moment and rule."""
    campaign = _load(campaign_id)
    if query.contact_id is not None and get_contact(get_session(), api_user(),
                                                    query.contact_id) is None:
        raise not_found("contact")
    now = utcnow()
    from server.errors import Invalid

    errors = launch_service.check_launch(campaign, [0], query.start_at, query.send_at, now)
    if errors:
        raise Invalid(errors)
    start = query.start_at or now
    planned = plan(service.step_specs(campaign.steps), service.settings_of(campaign), start,
                   send_at=query.send_at)
    return plan_out(campaign, planned, (query.send_at or start).astimezone(UTC),
                    enrollment_id=None,
                    contact_id=query.contact_id)


@operation(bp, "/<int:campaign_id>/end", "POST", response=EndOut)
def end(campaign_id: int) -> EndOut:
    """End a campaign (X1): everyone still in it leaves; nothing already sent is touched."""
    campaign = _load(campaign_id)
    count = service.end_campaign(get_session(), api_user(), campaign, utcnow())
    get_session().commit()
    return EndOut(campaign=campaign_out(campaign), people_removed=count)


def _enrollment(enrollment_id: int) -> Enrollment:
    from sqlalchemy import select

    from server.accounts.models import Role

    user = api_user()
    # Reps see their own; an admin any of the org's (README, Security).
    mine = (Enrollment.org_id == user.org_id if user.role is Role.ADMIN
            else Enrollment.owner_id == user.id)
    enrollment = get_session().scalar(select(Enrollment).where(
        Enrollment.id == enrollment_id, mine))
    if enrollment is None:
        raise not_found("enrollment")
    return enrollment


@operation(enrollments_bp, "/<int:enrollment_id>", "GET", response=EnrollmentOut)
def read_enrollment(enrollment_id: int) -> EnrollmentOut:
    """Read one of the caller's enrollments (a person in a campaign)."""
    return EnrollmentOut.model_validate(_enrollment(enrollment_id))


@operation(enrollments_bp, "/<int:enrollment_id>/plan", "GET", response=PlanOut)
def enrollment_plan_view(enrollment_id: int) -> PlanOut:
    """A person's plan: done steps with their real moments, the rest as now planned (P1)."""
    enrollment = _enrollment(enrollment_id)
    campaign = get_session().get(Campaign, enrollment.campaign_id)
    assert campaign is not None
    rows, planned = enrollment_plan(get_session(), enrollment, campaign)
    statuses = [r.status.value for r in rows]
    return plan_out(campaign, planned, enrollment.send_at or enrollment.start_at,
                    enrollment_id=enrollment.id, contact_id=enrollment.contact_id,
                    statuses=statuses)


@operation(enrollments_bp, "/<int:enrollment_id>/remove", "POST", body=RemoveIn,
           response=EnrollmentOut)
def remove(enrollment_id: int, body: RemoveIn) -> EnrollmentOut:
    """Remove a person from a campaign (X1); removing twice is harmless."""
    enrollment = _enrollment(enrollment_id)
    leave(get_session(), enrollment.id, EnrollmentStatus.REMOVED, body.reason, utcnow())
    get_session().commit()
    get_session().refresh(enrollment)
    return EnrollmentOut.model_validate(enrollment)

