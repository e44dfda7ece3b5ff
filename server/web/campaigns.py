"""Campaign pages: the list, the builder (S1-S5) and the launch dialog with its plan preview (P1).

The builder keeps its whole state in one form. Plain JavaScript (``builder.js``) adds and removes
days and steps and re-renders each step's send options as the campaign changes; without it the
same buttons post the form and the server re-renders it. Either way the server decides: a save
goes through ``service.create_campaign`` / ``update_campaign`` and each rule error is shown next
to the step it names.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from flask import (
    Blueprint,
    abort,
    flash,
    redirect,
    request,
    url_for,
)
from sqlalchemy import func, select

from server.accounts.models import User
from server.api.errors import FieldError
from server.campaigns import launch as launch_service
from server.campaigns import service
from server.campaigns.models import Campaign, CampaignStatus, Enrollment, OnBounce, OnReply
from server.campaigns.planning import plan
from server.campaigns.spec import LatePolicy, SendOption, StepType
from server.compose.service import list_templates
from server.contacts.models import Contact
from server.contacts.service import list_contacts
from server.db import get_session, utcnow
from server.errors import Conflict, Forbidden, Invalid
from server.web.views import page, require_csrf, require_signed_in

bp = Blueprint("campaign_pages", __name__, static_folder="static/campaigns",
               static_url_path="/static/campaigns")

#: The words each send option is offered with (S1, S2).
OPTION_LABELS: dict[str, str] = {
    SendOption.CHOOSE_AT_LAUNCH.value: "I will choose when to send this email (at launch)",
    SendOption.AT_TIME.value: "Send this email at the following time",
    SendOption.SAME_AS_PREVIOUS.value: "Send at the same time as the previous email",
    SendOption.TASK.value: "Create a task; I will send this email myself",
}
STEP_TYPE_LABELS: dict[str, str] = {"email": "Email", "call": "Call", "inmail": "LinkedIn InMail",
                                    "custom": "Custom task"}
#: Contacts listed in the launch dialog; a search narrows a longer list.
LAUNCH_LIST_LIMIT = 500
_STEP_KEY = re.compile(r"^steps-(\d+)-(\w+)$")
_GROUP_KEY = re.compile(r"^groups-(\d+)-day$")
_STEP_REF = re.compile(r"steps\[(\d+)\]")


# -- builder state --------------------------------------------------------------------------


@dataclass
class StepRow:
    """One step as the builder form holds it: raw strings, so bad input can be shown again."""

    type: str = "email"
    send_option: str = ""
    send_time: str = ""
    follow_up: bool = False
    template_id: str = ""
    title: str = ""
    notes: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass
class DayGroup:
    """A day of the builder and its steps, in order."""

    day: str
    steps: list[StepRow] = field(default_factory=list)


@dataclass
class Builder:
    """The whole builder form: name, settings (C3) and the days with their steps."""

    name: str = ""
    timezone: str = "UTC"
    skip_weekends: bool = False
    late_task_policy: str = LatePolicy.SLIDE.value
    on_reply: str = OnReply.END.value
    on_bounce: str = OnBounce.REMOVE.value
    groups: list[DayGroup] = field(default_factory=list)
    errors: dict[str, list[str]] = field(default_factory=dict)

    def has_errors(self) -> bool:
        """True when any field or step has an error."""
        return bool(self.errors) or any(s.errors for _, s in self.rows())

    def rows(self) -> list[tuple[int, StepRow]]:
        """Every step with its day number as written (0 when the day is not a number)."""
        return [(_int_or_zero(g.day), s) for g in self.groups for s in g.steps]


def allowed_options(position: int, day: int, step_type: str) -> list[str]:
    """The send options offered for an email step at ``position`` on ``day`` (S1, S2, S3).

    The first step offers choose_at_launch, at_time and task (choose_at_launch only on day 1,
    as the rules module requires); every later email step offers same_as_previous, at_time and
    task. Other step types have no send option.
    """
    if step_type != StepType.EMAIL.value:
        return []
    if position == 0:
        first = [SendOption.CHOOSE_AT_LAUNCH.value] if day <= 1 else []
        return first + [SendOption.AT_TIME.value, SendOption.TASK.value]
    return [SendOption.SAME_AS_PREVIOUS.value, SendOption.AT_TIME.value, SendOption.TASK.value]


def follow_up_offered(position: int, previous_type: str | None) -> bool:
    """True when the follow-up checkbox exists: the step right before is an email (S4)."""
    return position > 0 and previous_type == StepType.EMAIL.value


def _int_or_zero(value: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def builder_from_campaign(campaign: Campaign) -> Builder:
    """The builder form of a stored campaign."""
    b = Builder(name=campaign.name, timezone=campaign.timezone,
                skip_weekends=campaign.skip_weekends,
                late_task_policy=campaign.late_task_policy.value,
                on_reply=campaign.on_reply.value, on_bounce=campaign.on_bounce.value)
    for s in campaign.steps:
        if not b.groups or b.groups[-1].day != str(s.day):
            b.groups.append(DayGroup(day=str(s.day)))
        b.groups[-1].steps.append(StepRow(
            type=s.type.value, send_option=s.send_option.value if s.send_option else "",
            send_time=s.send_time.strftime("%H:%M") if s.send_time else "",
            follow_up=s.follow_up, template_id=str(s.template_id or ""), title=s.title,
            notes=s.notes))
    return b


def builder_from_form(form: Any) -> Builder:
    """Read the builder form: ``groups-<g>-day`` and ``steps-<i>-<field>`` (with ``group``)."""
    b = Builder(name=form.get("name", "").strip(), timezone=form.get("timezone", "UTC"),
                skip_weekends=form.get("skip_weekends") == "on",
                late_task_policy=form.get("late_task_policy", LatePolicy.SLIDE.value),
                on_reply=form.get("on_reply", OnReply.END.value),
                on_bounce=form.get("on_bounce", OnBounce.REMOVE.value))
    groups: dict[int, DayGroup] = {}
    for key in form:
        m = _GROUP_KEY.match(key)
        if m:
            groups[int(m.group(1))] = DayGroup(day=form.get(key, "").strip())
    raw: dict[int, dict[str, str]] = {}
    for key in form:
        m = _STEP_KEY.match(key)
        if m:
            raw.setdefault(int(m.group(1)), {})[m.group(2)] = form.get(key, "")
    for i in sorted(raw):
        values = raw[i]
        g = _int_or_zero(values.get("group", "0"))
        group = groups.setdefault(g, DayGroup(day=""))
        group.steps.append(StepRow(
            type=values.get("type", "email"), send_option=values.get("send_option", ""),
            send_time=values.get("send_time", "").strip(),
            follow_up=values.get("follow_up") == "on",
            template_id=values.get("template_id", ""), title=values.get("title", "").strip(),
            notes=values.get("notes", "")))
    b.groups = [groups[g] for g in sorted(groups)]
    return b


def _apply_action(b: Builder, action: str) -> None:
    """Add or remove a day or a step: the no-JavaScript path of the builder's buttons."""
    verb, _, arg = action.partition(":")
    if verb == "add_day":
        last = max((_int_or_zero(g.day) for g in b.groups), default=0)
        b.groups.append(DayGroup(day=str(last + 1), steps=[StepRow(type="email")]))
    elif verb == "add_step" and arg.isdigit() and int(arg) < len(b.groups):
        kind = request.form.get(f"groups-{arg}-new_type", "email")
        b.groups[int(arg)].steps.append(StepRow(type=kind if kind in STEP_TYPE_LABELS
                                                else "email"))
    elif verb == "remove_day" and arg.isdigit() and int(arg) < len(b.groups):
        del b.groups[int(arg)]
    elif verb == "remove_step" and arg.isdigit():
        flat = [(g, s) for g in b.groups for s in g.steps]
        if int(arg) < len(flat):
            group, step = flat[int(arg)]
            group.steps.remove(step)


def _step_inputs(b: Builder) -> tuple[list[service.StepInput], list[FieldError]]:
    """The service's steps for a builder, and errors in values the form could not parse."""
    steps: list[service.StepInput] = []
    errors: list[FieldError] = []
    for i, (day, row) in enumerate(b.rows()):
        name = f"steps[{i}]"
        if day < 1:
            errors.append(FieldError(f"{name}.day", "give the day a number of 1 or more (C1)",
                                     "C1"))
        try:
            kind = StepType(row.type)
        except ValueError:
            errors.append(FieldError(f"{name}.type", f"unknown step type {row.type!r}"))
            continue
        option: SendOption | None = None
        send_time: time | None = None
        template_id: int | None = None
        if kind is StepType.EMAIL:
            if row.send_option:
                try:
                    option = SendOption(row.send_option)
                except ValueError:
                    errors.append(FieldError(f"{name}.send_option",
                                             f"unknown send option {row.send_option!r}"))
            if row.send_time:
                send_time = service.parse_hhmm(row.send_time)
                if send_time is None:
                    errors.append(FieldError(f"{name}.send_time", service.HHMM_HINT))
            if row.template_id:
                template_id = _int_or_zero(row.template_id) or None
        if len(row.title) > 200:
            errors.append(FieldError(f"{name}.title", "at most 200 characters"))
        steps.append(service.StepInput(
            day=max(day, 1), type=kind, send_option=option, send_time=send_time,
            follow_up=row.follow_up if kind is StepType.EMAIL else False,
            template_id=template_id, title=row.title if kind is not StepType.EMAIL else "",
            notes=row.notes if kind is not StepType.EMAIL else ""))
    return steps, errors


def _settings(b: Builder) -> tuple[dict[str, Any], list[FieldError]]:
    errors: list[FieldError] = []
    values: dict[str, Any] = {"timezone": b.timezone, "skip_weekends": b.skip_weekends}
    for key, enum_cls in (("late_task_policy", LatePolicy), ("on_reply", OnReply),
                          ("on_bounce", OnBounce)):
        try:
            values[key] = enum_cls(getattr(b, key))
        except ValueError:
            errors.append(FieldError(key, f"unknown value {getattr(b, key)!r} (C3)", "C3"))
    return values, errors


def _attach_errors(b: Builder, errors: list[FieldError]) -> None:
    """Put each error next to what it names: a step (``steps[2].send_option``) or a field."""
    rows = b.rows()
    numbers = service.steps_in_day([service.StepInput(day=d, type=StepType.CALL)
                                    for d, _ in rows])

    def step_name(m: re.Match[str]) -> str:
        i = int(m.group(1))
        return f"step {numbers[i]} of day {rows[i][0]}" if i < len(rows) else m.group(0)

    for e in errors:
        message = _STEP_REF.sub(step_name, e.message)
        m = re.match(r"^steps\[(\d+)\]\.?(\w*)", e.field)
        if m and int(m.group(1)) < len(rows):
            what = m.group(2).replace("_", " ")
            rows[int(m.group(1))][1].errors.append(f"{what}: {message}" if what else message)
        else:
            b.errors.setdefault(e.field.split(".")[0], []).append(message)


@lru_cache(maxsize=1)
def timezones() -> list[str]:
    """Every IANA time zone name, sorted, for the settings select (C3)."""
    return sorted(available_timezones())


def _builder_page(user: User, b: Builder, campaign: Campaign | None, *, status: int = 200,
                  locked: int = 0) -> Any:
    db = get_session()
    rows = b.rows()
    positions = []
    for i, (day, row) in enumerate(rows):
        previous = rows[i - 1][1].type if i else None
        positions.append({"index": i, "options": allowed_options(i, day, row.type),
                          "follow_up": follow_up_offered(i, previous)})
    tz_names = timezones()
    return page("web/campaigns/builder.html", user, status, builder=b, campaign=campaign,
                positions=positions, templates=list_templates(db, user),
                timezones=tz_names if b.timezone in tz_names else [b.timezone, *tz_names],
                option_labels=OPTION_LABELS, type_labels=STEP_TYPE_LABELS,
                policies=[p.value for p in LatePolicy], on_replies=[o.value for o in OnReply],
                on_bounces=[o.value for o in OnBounce], locked=locked,
                proto_row=StepRow(type="email"), proto_group=DayGroup(day=""))


# -- routes -------------------------------------------------------------------------------


@bp.get("/campaigns")
def campaign_list() -> Any:
    """The org's campaigns: name, status, number of steps, people and owner."""
    user = require_signed_in()
    db = get_session()
    campaigns = service.list_campaigns(db, user, None)
    ids = [c.id for c in campaigns]
    people: dict[int, int] = {}
    owners: dict[int, str] = {}
    if ids:
        people = {cid: n for cid, n in db.execute(
            select(Enrollment.campaign_id, func.count())
            .where(Enrollment.campaign_id.in_(ids)).group_by(Enrollment.campaign_id))}
        owner_ids = {c.owner_id for c in campaigns}
        owners = {uid: name for uid, name in db.execute(
            select(User.id, User.name).where(User.id.in_(owner_ids)))}
    return page("web/campaigns/list.html", user, campaigns=campaigns, people=people,
                owners=owners)


@bp.route("/campaigns/new", methods=["GET", "POST"])
def campaign_new() -> Any:
    """The builder for a new campaign; a valid save stores it and opens it."""
    user = require_signed_in()
    if request.method == "GET":
        b = Builder(timezone=user.timezone,
                    groups=[DayGroup(day="1", steps=[StepRow(type="email")])])
        return _builder_page(user, b, None)
    return _save(user, None)


@bp.route("/campaigns/<int:campaign_id>", methods=["GET", "POST"])
def campaign_edit(campaign_id: int) -> Any:
    """The builder for a campaign of the rep's org; steps are read-only once people are in."""
    user = require_signed_in()
    campaign = _campaign(user, campaign_id)
    if request.method == "GET":
        locked = service.people_count(get_session(), campaign)
        return _builder_page(user, builder_from_campaign(campaign), campaign, locked=locked)
    return _save(user, campaign)


def _campaign(user: User, campaign_id: int) -> Campaign:
    campaign = service.get_campaign(get_session(), user, campaign_id)
    if campaign is None:
        abort(404)
    return campaign


def _save(user: User, campaign: Campaign | None) -> Any:
    """Handle a builder post: a structural button re-renders, "save" validates and stores."""
    require_csrf()
    db = get_session()
    locked = service.people_count(db, campaign) if campaign is not None else 0
    b = builder_from_form(request.form)
    if locked and campaign is not None:
        # The steps cannot change any more (they are shown read-only and not posted).
        b.groups = builder_from_campaign(campaign).groups
    action = request.form.get("action", "save")
    if action != "save":
        _apply_action(b, action)
        return _builder_page(user, b, campaign, locked=locked)
    errors: list[FieldError] = []
    if not b.name:
        errors.append(FieldError("name", "give the campaign a name"))
    elif len(b.name) > 200:
        errors.append(FieldError("name", "at most 200 characters"))
    settings, setting_errors = _settings(b)
    errors += setting_errors
    steps, step_errors = _step_inputs(b) if not locked else ([], [])
    errors += step_errors
    if not errors:
        try:
            if campaign is None:
                campaign = service.create_campaign(db, user, name=b.name, settings=settings,
                                                   steps=steps)
            else:
                campaign = service.update_campaign(db, user, campaign, name=b.name,
                                                   settings=settings,
                                                   steps=None if locked else steps)
        except Invalid as exc:
            errors = exc.errors
        except (Conflict, Forbidden) as exc:
            db.rollback()
            errors = [FieldError("form", str(exc))]
    if errors:
        db.rollback()
        _attach_errors(b, errors)
        return _builder_page(user, b, campaign, status=422, locked=locked)
    assert campaign is not None
    db.commit()
    flash(f"Saved “{campaign.name}”.")
    return redirect(url_for("campaign_pages.campaign_edit", campaign_id=campaign.id))


# -- launch dialog --------------------------------------------------------------------------


@dataclass
class LaunchForm:
    """The launch dialog's inputs as typed, and what they mean."""

    contact_ids: list[int] = field(default_factory=list)
    start_date: str = ""
    start_time: str = ""
    send_date: str = ""
    send_time: str = ""
    start_at: datetime | None = None
    send_at: datetime | None = None
    errors: dict[str, list[str]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """What a preview was made for; a confirm with other inputs previews again."""
        key = "|".join([",".join(map(str, sorted(self.contact_ids))), self.start_date,
                        self.start_time, self.send_date, self.send_time])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def send_at_mode(campaign: Campaign) -> str | None:
    """Whether the launch dialog asks for the first email's send moment (S1).

    ``required`` when the first step is a choose_at_launch email, ``optional`` for an at_time
    one (an override), else None.
    """
    first = campaign.steps[0] if campaign.steps else None
    if first is None or first.type is not StepType.EMAIL:
        return None
    if first.send_option is SendOption.CHOOSE_AT_LAUNCH:
        return "required"
    if first.send_option is SendOption.AT_TIME:
        return "optional"
    return None


def _moment(day: str, at: str, tz: str, name: str, errors: list[FieldError]
            ) -> datetime | None:
    """A date and time typed in the campaign's zone, as an aware datetime."""
    if not day and not at:
        return None
    try:
        d = date.fromisoformat(day)
        clock = service.parse_hhmm(at[:5])
        if clock is None:
            raise ValueError
    except ValueError:
        errors.append(FieldError(name, "give both a date and a time (HH:MM)"))
        return None
    return datetime.combine(d, clock, tzinfo=ZoneInfo(tz))


def _launch_form(campaign: Campaign) -> tuple[LaunchForm, list[FieldError]]:
    f = LaunchForm(start_date=request.form.get("start_date", "").strip(),
                   start_time=request.form.get("start_time", "").strip(),
                   send_date=request.form.get("send_date", "").strip(),
                   send_time=request.form.get("send_time", "").strip())
    errors: list[FieldError] = []
    for raw in request.form.getlist("contact_ids"):
        if raw.isdigit() and len(raw) < 19:
            f.contact_ids.append(int(raw))
        else:
            errors.append(FieldError("contact_ids", f"{raw!r} is not a contact"))
    f.contact_ids = list(dict.fromkeys(f.contact_ids))
    f.start_at = _moment(f.start_date, f.start_time, campaign.timezone, "start_at", errors)
    if send_at_mode(campaign) is not None:
        f.send_at = _moment(f.send_date, f.send_time, campaign.timezone, "send_at", errors)
    return f, errors


def _launch_page(user: User, campaign: Campaign, f: LaunchForm, *, status: int = 200,
                 preview: dict[str, Any] | None = None) -> Any:
    q = request.values.get("q", "").strip()
    contacts, total = list_contacts(get_session(), user, q=q or None, page=1,
                                    per_page=LAUNCH_LIST_LIMIT)
    listed = {c.id for c in contacts}
    # Chosen contacts stay in the list (and chosen) whatever the search shows.
    extra = [c for c in _contacts(user, f.contact_ids) if c.id not in listed]
    return page("web/campaigns/launch.html", user, status, campaign=campaign, form=f,
                contacts=extra + contacts, total=total, q=q, limit=LAUNCH_LIST_LIMIT,
                send_mode=send_at_mode(campaign), preview=preview,
                first_step=campaign.steps[0] if campaign.steps else None)


def _contacts(user: User, ids: list[int]) -> list[Contact]:
    if not ids:
        return []
    rows = get_session().scalars(select(Contact).where(
        Contact.id.in_(ids[:LAUNCH_LIST_LIMIT]), Contact.owner_id == user.id))
    by_id = {c.id: c for c in rows}
    return [by_id[i] for i in ids if i in by_id]


#: A rule code in parentheses, "(T2)" or "(T3, T10)": the plan's reasons carry them, pages don't.
_RULE_CODES = re.compile(r"\s*\((?:[A-Z]\d{1,2}(?:\s*\w+)?(?:,\s*)?)+\)")


def _preview(campaign: Campaign, f: LaunchForm, people: list[Contact], now: datetime
             ) -> dict[str, Any]:
    """The plan each chosen person would get (P1).

    It is the same for all of them, as it depends only on the campaign and the start (T1).
    """
    start = f.start_at or now
    planned = plan(service.step_specs(campaign.steps), service.settings_of(campaign), start,
                   send_at=f.send_at)
    numbers = service.steps_in_day(campaign.steps)
    rows = []
    for i, p in enumerate(planned):
        step = campaign.steps[i]
        rows.append({"day": p.day, "number": numbers[i], "type": step.type.value,
                     "send_option": step.send_option.value if step.send_option else None,
                     "follow_up": step.follow_up, "due_local": p.due_local,
                     "due_utc": p.due_at.astimezone(UTC),
                     "explanation": _RULE_CODES.sub("", p.explanation),
                     "depends_on": p.depends_on})
    return {"people": people, "steps": rows, "start": (f.send_at or start).astimezone(UTC),
            "scheduled": start > now, "fingerprint": f.fingerprint()}


@bp.route("/campaigns/<int:campaign_id>/launch", methods=["GET", "POST"])
def campaign_launch(campaign_id: int) -> Any:
    """The launch dialog: choose people and a start, preview their plan, then confirm."""
    user = require_signed_in()
    campaign = _campaign(user, campaign_id)
    if request.method == "GET":
        return _launch_page(user, campaign, LaunchForm())
    require_csrf()
    f, errors = _launch_form(campaign)
    now = utcnow()
    db = get_session()
    if campaign.status is CampaignStatus.ENDED:
        errors.append(FieldError("form", "the campaign has ended; people can no longer be added"))
    if not errors:
        errors = launch_service.check_launch(campaign, f.contact_ids, f.start_at, f.send_at, now)
    people = _contacts(user, f.contact_ids)
    if not errors and len(people) < len(f.contact_ids):
        errors.append(FieldError("contact_ids", "some chosen contacts are not yours any more"))
    if errors:
        for e in errors:
            f.errors.setdefault(e.field, []).append(e.message)
        return _launch_page(user, campaign, f, status=422)
    preview = _preview(campaign, f, people, now)
    action = request.form.get("action", "preview")
    if action != "confirm" or request.form.get("previewed") != f.fingerprint():
        if action == "confirm":
            flash("Your choices changed since the preview: check this plan, then confirm.")
        return _launch_page(user, campaign, f, preview=preview)
    try:
        result = launch_service.launch(db, user, campaign, f.contact_ids, start_at=f.start_at,
                                       send_at=f.send_at, now=now)
    except Invalid as exc:
        db.rollback()
        for e in exc.errors:
            f.errors.setdefault(e.field, []).append(e.message)
        return _launch_page(user, campaign, f, status=422)
    except Conflict as exc:
        db.rollback()
        f.errors["form"] = [str(exc)]
        return _launch_page(user, campaign, f, status=409)
    db.commit()
    names = {c.id: c for c in people}
    return page("web/campaigns/launched.html", user, campaign=campaign,
                enrolled=[names[c] for _, c in result.enrolled],
                already=[names[c] for c in result.already_enrolled],
                start=result.start, scheduled=result.scheduled)
