"""Campaign shape and send-option rules (C1, S1-S5), as pure functions.

``validate_steps`` is what a save calls before anything is stored (S5): it returns every problem
at once, one per offending field, each naming the step (``steps[2].send_option``) and the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.campaigns.spec import SendOption, StepSpec, StepType

#: The last day a step may have: about three years, far past any sales campaign, and small
#: enough that every day's date exists and fits the database.
MAX_DAY = 1000
#: The most steps a campaign may have: far more than any sales sequence, small enough that
#: saving, planning and previewing a campaign stay quick.
MAX_STEPS = 100

_FIRST_STEP_OPTIONS = frozenset({SendOption.CHOOSE_AT_LAUNCH, SendOption.AT_TIME, SendOption.TASK})
_LATER_STEP_OPTIONS = frozenset({SendOption.SAME_AS_PREVIOUS, SendOption.AT_TIME, SendOption.TASK})


@dataclass(frozen=True)
class RuleError:
    """One thing wrong with a campaign: the field, a sentence a person can act on, the rule.

    ``message`` always ends with the rule in parentheses, e.g. ``"... first step (S3)"``.
    """

    field: str
    message: str
    rule: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def validate_steps(steps: Sequence[StepSpec]) -> list[RuleError]:
    """Check a campaign's steps against C1 and S1-S4.

    Args:
        steps: The steps in campaign order; ``steps[i]`` is named ``steps[i]`` in errors.

    Returns:
        Every problem found, in step order, at most one per field (the most specific rule
        wins). An empty list means the campaign may be saved (S5).
    """
    if not steps:
        return [_error("steps", "a campaign needs at least one step", "C1")]
    if len(steps) > MAX_STEPS:
        return [_error("steps", f"a campaign has at most {MAX_STEPS} steps, not {len(steps)}",
                       "C1")]
    errors: list[RuleError] = []
    for i, step in enumerate(steps):
        errors.extend(_check_day(steps, i))
        if step.type is StepType.EMAIL:
            errors.extend(_check_email(steps, i))
        else:
            errors.extend(_check_non_email(step, i))
    return errors


def _error(field: str, text: str, rule: str) -> RuleError:
    return RuleError(field=field, message=f"{text} ({rule})", rule=rule)


def _a(kind: StepType) -> str:
    """The step type with its article: "a call", "an inmail"."""
    return f"an {kind.value}" if kind.value[0] in "aeiou" else f"a {kind.value}"


def _check_day(steps: Sequence[StepSpec], i: int) -> list[RuleError]:
    day = steps[i].day
    field = f"steps[{i}].day"
    if day < 1:
        return [_error(field, "day must be 1 or more", "C1")]
    if day > MAX_DAY:
        return [_error(field, f"day must be {MAX_DAY} or less", "C1")]
    if i == 0 and day != 1:
        return [_error(field, f"the first step is on day 1, not day {day}", "C1")]
    if i > 0 and day < steps[i - 1].day:
        text = f"day {day} comes after day {steps[i - 1].day}; list steps in day order"
        return [_error(field, text, "C1")]
    return []


def _check_non_email(step: StepSpec, i: int) -> list[RuleError]:
    kind = _a(step.type)
    errors: list[RuleError] = []
    if step.send_option is not None:
        text = f"{kind} step has no send option; only email steps do"
        errors.append(_error(f"steps[{i}].send_option", text, "C1"))
    if step.send_time is not None:
        text = f"{kind} step has no send time; only email steps do"
        errors.append(_error(f"steps[{i}].send_time", text, "C1"))
    if step.follow_up:
        text = f"{kind} step cannot be a follow-up; only email steps can"
        errors.append(_error(f"steps[{i}].follow_up", text, "C1"))
    return errors


def _check_email(steps: Sequence[StepSpec], i: int) -> list[RuleError]:
    step = steps[i]
    first = i == 0
    # S1 lists the options of the first step, S2 those of every later email step.
    rule = "S1" if first else "S2"
    option = step.send_option
    errors: list[RuleError] = []

    option_field = f"steps[{i}].send_option"
    allowed = _FIRST_STEP_OPTIONS if first else _LATER_STEP_OPTIONS
    # S1's first step is "the first step of day 1": a launch moment chosen for a step on a later
    # day would contradict that day (T1 makes the chosen moment day 1), so it is not offered.
    late_first = first and step.day > 1
    if late_first:
        allowed = allowed - {SendOption.CHOOSE_AT_LAUNCH}
    if option is None:
        choices = ", ".join(o.value for o in SendOption if o in allowed)
        errors.append(_error(option_field, f"an email step needs a send option: {choices}", rule))
    elif option not in allowed:
        if option is SendOption.SAME_AS_PREVIOUS:
            text = "same_as_previous is not allowed on the first step"
        elif late_first:
            text = f"{option.value} is only allowed on a first step on day 1, not day {step.day}"
        else:
            text = f"{option.value} is only allowed on the first step"
        errors.append(_error(option_field, text, "S3"))

    time_field = f"steps[{i}].send_time"
    if option is SendOption.AT_TIME and step.send_time is None:
        errors.append(_error(time_field, "at_time needs a send_time", rule))
    elif option is not None and option is not SendOption.AT_TIME and step.send_time is not None:
        text = f"send_time is only used with at_time, not {option.value}"
        errors.append(_error(time_field, text, rule))

    if step.follow_up:
        follow_field = f"steps[{i}].follow_up"
        head = "a follow-up needs an email step immediately before it"
        if first:
            errors.append(_error(follow_field, f"{head}; there is no earlier step", "S4"))
        elif steps[i - 1].type is not StepType.EMAIL:
            previous = f"steps[{i - 1}] is {_a(steps[i - 1].type)} step"
            errors.append(_error(follow_field, f"{head}; {previous}", "S4"))
    return errors
