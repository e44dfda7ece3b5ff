"""The per-person plan: when each step of a campaign is due (T1-T7), with reasons (P1).

Pure functions: the caller passes the campaign, the person's start moment and what has already
been done; nothing here reads a clock or a database. All comparisons are made in UTC, because
Python compares two aware datetimes that share a ``tzinfo`` by wall time, ignoring DST folds.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from server.campaigns.spec import CampaignSettings, LatePolicy, SendOption, StepSpec, StepType

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_CHOSEN = frozenset({"choose_at_launch", "at_time_override"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class PlannedStep:
    """When one step is due for one person, and why (P1).

    Attributes:
        position: The step's position in the campaign.
        day: The step's day as written in the campaign (C2).
        effective_day: ``day`` after late steps slid the plan (T7); equal to ``day`` otherwise.
        local_date: The campaign-local date of ``due_local``.
        due_at: The due moment, tz-aware UTC.
        due_local: The same moment in the campaign timezone.
        rule: Machine code of the rule that decided the moment: ``choose_at_launch``,
            ``at_time``, ``at_time_override``, ``same_as_previous``, ``same_as_previous_start``,
            ``task``, ``at_once`` (already past at the start) or ``after_previous`` (gated).
        explanation: The same in words, each clause citing its rule, e.g.
            ``"day 2 (Tue 24 Nov), same time as previous email (day 1, 09:30) (T3)"``.
        depends_on: Position of the unfinished task step before it that gates it (T6).
        done_at: When the step was actually done (UTC), if it has been.
    """

    position: int
    day: int
    effective_day: int
    local_date: date
    due_at: datetime
    due_local: datetime
    rule: str
    explanation: str
    depends_on: int | None
    done_at: datetime | None


def first_day(start_local: date, skip_weekends: bool) -> date:
    """Day 1 of the campaign for a start on ``start_local`` (T1).

    With ``skip_weekends`` a Saturday or Sunday start makes day 1 the following Monday.
    """
    weekday = start_local.weekday()
    if skip_weekends and weekday >= 5:
        return start_local + timedelta(days=7 - weekday)
    return start_local


def day_date(day1: date, n: int, skip_weekends: bool) -> date:
    """The date of day ``n`` of a campaign whose day 1 is ``day1`` (T1, C2).

    Day ``n`` is ``n - 1`` calendar days after day 1, or with ``skip_weekends`` the
    ``(n - 1)``-th weekday after it (a weekend ``day1`` is first moved to Monday).

    Raises:
        ValueError: If ``n`` is less than 1.
    """
    if n < 1:
        raise ValueError(f"day must be 1 or more, got {n}")
    if not skip_weekends:
        return day1 + timedelta(days=n - 1)
    day1 = first_day(day1, True)
    weeks, rest = divmod(n - 1, 5)
    extra = 2 if day1.weekday() + rest >= 5 else 0
    return day1 + timedelta(days=weeks * 7 + rest + extra)


def plan(
    steps: Sequence[StepSpec],
    settings: CampaignSettings,
    start: datetime,
    *,
    send_at: datetime | None = None,
    done: Mapping[int, datetime] | None = None,
    skipped: Collection[int] = (),
) -> list[PlannedStep]:
    """Plan every step of a campaign for one person.

    Args:
        steps: The campaign's steps in order, already valid (see ``rules.validate_steps``).
        settings: Timezone, ``skip_weekends`` and the late-task policy.
        start: When the person was added (or the scheduled start), tz-aware.
        send_at: The launcher's chosen moment for the first email (``choose_at_launch`` or an
            override of an ``at_time`` first step), tz-aware; it becomes the start ``S`` (T1).
        done: Step position -> the UTC moment the step was actually done (sent, completed or
            skipped). Only a prefix of the steps may be done.
        skipped: Positions among ``done`` that were skipped, not sent (T10): they gate the
            next step at the moment they were skipped, but a later ``same_as_previous`` takes
            the time of day they were planned for.

    Returns:
        One ``PlannedStep`` per step, in order. Done steps keep the moment they were planned
        for, with ``done_at`` set; later steps are re-planned from what was done (T5, T7).

    Raises:
        ValueError: On a naive datetime, a ``done`` that is not a prefix of the steps, a
            ``skipped`` position that is not done, or a ``choose_at_launch`` step without
            ``send_at``.
    """
    _require_aware("start", start)
    if send_at is not None:
        _require_aware("send_at", send_at)
    done_utc = _done_prefix(steps, done or {})
    skipped = frozenset(skipped)
    if not skipped <= done_utc.keys():
        raise ValueError(f"skipped steps must be done, got {sorted(skipped - done_utc.keys())}")
    tz = _zone(settings.timezone)
    skip = settings.skip_weekends
    slide_on = settings.late_task_policy is LatePolicy.SLIDE

    s_utc = (send_at if send_at is not None else start).astimezone(UTC)
    s_local = s_utc.astimezone(tz)
    s_time = s_local.time()  # keeps ``fold``, so day 1 of a start inside a DST fold is exact
    day1 = first_day(s_local.date(), skip)

    planned: list[PlannedStep] = []
    slide = 0
    slide_causes: list[str] = []
    gate: StepSpec | None = None  # nearest unfinished task step so far (T6)
    # Per position: the moment whose local time of day same_as_previous copies (T3).
    email_moments: dict[int, datetime] = {}
    for i, step in enumerate(steps):
        effective_day = step.day + slide
        on = day_date(day1, effective_day, skip)
        # S's exact moment on its own date; elsewhere a repeated time is its first one (T8).
        at_start = s_time if on == s_local.date() else s_time.replace(fold=0)
        own, rule, what = _own_moment(
            step, i, on, tz, at_start, send_at, steps, email_moments, done_utc, skipped
        )
        if rule in _CHOSEN:
            # The launcher's explicit moment wins even on a weekend with skip_weekends.
            on = own.astimezone(tz).date()
        clauses = [f"day {step.day} ({_date_label(on)}), {what}"]
        if slide:
            unit = "weekday" if skip else "day"
            plural = "" if slide == 1 else "s"
            causes = " and ".join(slide_causes)
            verb = "was" if len(slide_causes) == 1 else "were"
            clauses.append(
                f"moved {slide} {unit}{plural} later because {causes} {verb} done late (T7 slide)"
            )

        due = own
        if s_utc > due:
            due = s_utc
        if planned:
            prev = planned[-1]
            prev_moment = prev.done_at if prev.done_at is not None else prev.due_at
            if prev_moment > due:
                due = prev_moment
        else:
            prev_moment = None
        due_local = due.astimezone(tz)
        if due != own:
            at = _hm(due_local) if due_local.date() == on else _moment_label(due_local)
            if prev_moment is not None and prev_moment > s_utc:
                rule = "after_previous"
                how = "done" if planned[-1].done_at is not None else "due"
                clauses.append(f"goes right after the previous step, {how} at {at} (T5)")
            else:
                rule = "at_once"
                clauses.append(f"already past at the start, so at once at {at} (T2)")

        done_at = done_utc.get(step.position)
        depends_on = None
        if done_at is None:
            if gate is not None:
                depends_on = gate.position
                clauses.append(f"after task on day {gate.day} is done (T6)")
            if step.makes_task:
                gate = step
        planned.append(
            PlannedStep(
                position=step.position,
                day=step.day,
                effective_day=effective_day,
                local_date=due_local.date(),
                due_at=due,
                due_local=due_local,
                rule=rule,
                explanation="; ".join(clauses),
                depends_on=depends_on,
                done_at=done_at,
            )
        )
        if step.type is StepType.EMAIL:
            # A skipped email was not sent: its planned moment is its time (T10).
            was_sent = done_at is not None and step.position not in skipped
            email_moments[i] = done_at if was_sent and done_at is not None else due

        if done_at is not None and slide_on:
            late = _days_late(due_local.date(), done_at.astimezone(tz).date(), skip)
            if late > 0:
                slide += late
                noun = "task" if step.makes_task else "email"
                slide_causes.append(f"day {step.day}'s {noun}")
    return planned


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")


def _done_prefix(steps: Sequence[StepSpec], done: Mapping[int, datetime]) -> dict[int, datetime]:
    """Check ``done`` covers exactly the first ``len(done)`` steps; return it in UTC."""
    if not done:
        return {}
    expected = {step.position for step in steps[: len(done)]}
    if len(done) > len(steps) or set(done) != expected:
        positions = sorted(step.position for step in steps)
        raise ValueError(
            f"done must cover a prefix of the steps {positions}, got positions {sorted(done)}"
        )
    result = {}
    for position, moment in done.items():
        _require_aware(f"done[{position}]", moment)
        result[position] = moment.astimezone(UTC)
    return result


def _local(on: date, at: time, tz: ZoneInfo) -> datetime:
    """``on`` at local time ``at`` in ``tz`` as UTC, resolving DST as T8 decides.

    With ``fold=0`` zoneinfo applies the offset in force before a transition: a time in a
    spring-forward gap moves forward by the gap (02:30 becomes 03:30) and a time that occurs
    twice is its first occurrence. ``at`` keeps its ``fold`` only for S's own moment.
    """
    return datetime.combine(on, at, tzinfo=tz).astimezone(UTC)


def _dst_note(on: date, at: time, tz: ZoneInfo) -> str:
    """The clause saying how T8 resolved ``at`` on ``on``; empty when that time occurs once.

    A ``fold=1`` time is S's own exact moment (its second occurrence), so it gets no clause.
    """
    wall = datetime.combine(on, at, tzinfo=tz)
    real = wall.astimezone(UTC).astimezone(tz)
    if real.replace(tzinfo=None) != wall.replace(tzinfo=None):
        return f"; {_hm(at)} does not exist that night (clocks go forward), so {_hm(real)} (T8)"
    if at.fold == 0 and wall.replace(fold=1).utcoffset() != wall.utcoffset():
        return f"; {_hm(at)} happens twice that night (clocks go back): the first one (T8)"
    return ""


def _own_moment(
    step: StepSpec,
    i: int,
    on: date,
    tz: ZoneInfo,
    s_time: time,
    send_at: datetime | None,
    steps: Sequence[StepSpec],
    email_moments: Mapping[int, datetime],
    done_utc: Mapping[int, datetime],
    skipped: Collection[int],
) -> tuple[datetime, str, str]:
    """The step's own moment before T2/T5, its rule code and the clause that says why."""
    option = step.send_option if step.type is StepType.EMAIL else None
    if option is SendOption.CHOOSE_AT_LAUNCH:
        if send_at is None:
            raise ValueError(f"steps[{i}] is choose_at_launch: a send_at moment is required")
        moment = send_at.astimezone(UTC)
        return moment, "choose_at_launch", f"at {_hm(moment.astimezone(tz))} chosen at launch (T1)"
    if option is SendOption.AT_TIME and step.send_time is not None:
        # The launcher overrides the first step of day 1 (S1); elsewhere send_at is only S.
        if i == 0 and step.day == 1 and send_at is not None:
            moment = send_at.astimezone(UTC)
            what = (
                f"at {_hm(moment.astimezone(tz))} chosen at launch "
                f"instead of {_hm(step.send_time)} (T1)"
            )
            return moment, "at_time_override", what
        what = f"at {_hm(step.send_time)} (T2){_dst_note(on, step.send_time, tz)}"
        return _local(on, step.send_time, tz), "at_time", what
    if option is SendOption.SAME_AS_PREVIOUS:
        for j in range(i - 1, -1, -1):
            earlier = steps[j]
            if earlier.type is StepType.EMAIL and earlier.day < step.day:
                ref = email_moments[j].astimezone(tz)
                if earlier.position in skipped:
                    source = f"planned time of the skipped email on day {earlier.day}, "
                    codes = "T3, T10"
                else:
                    sent = "sent at " if earlier.position in done_utc else ""
                    source, codes = f"day {earlier.day}, {sent}", "T3"
                # The time of day the previous email really has, first occurrence (T8).
                at = ref.time().replace(fold=0)
                what = (
                    f"same time as previous email ({source}{_hm(ref)}) ({codes})"
                    f"{_dst_note(on, at, tz)}"
                )
                return _local(on, at, tz), "same_as_previous", what
        what = (
            f"same time as the campaign start ({_hm(s_time)}), "
            f"as there is no email on an earlier day (T3){_dst_note(on, s_time, tz)}"
        )
        return _local(on, s_time, tz), "same_as_previous_start", what
    # email ``task`` and call, InMail and custom steps (T4)
    noun = "email task" if step.type is StepType.EMAIL else f"{step.type.value} task"
    what = f"{noun} due at the campaign start time ({_hm(s_time)}) (T4){_dst_note(on, s_time, tz)}"
    return _local(on, s_time, tz), "task", what


def _days_late(due: date, done: date, skip_weekends: bool) -> int:
    """How many (week)days after ``due`` the step was done: strictly after, up to ``done``."""
    if done <= due:
        return 0
    if not skip_weekends:
        return (done - due).days
    return _weekdays_through(done) - _weekdays_through(due)


def _weekdays_through(d: date) -> int:
    """Number of weekdays from 1 Jan 1 (a Monday) up to and including ``d``."""
    weeks, rest = divmod(d.toordinal() - 1, 7)
    return weeks * 5 + min(rest + 1, 5)


def _hm(value: datetime | time) -> str:
    return f"{value.hour:02d}:{value.minute:02d}"


def _date_label(d: date) -> str:
    return f"{_WEEKDAYS[d.weekday()]} {d.day} {_MONTHS[d.month - 1]}"


def _moment_label(local: datetime) -> str:
    return f"{_date_label(local.date())} {_hm(local)}"
