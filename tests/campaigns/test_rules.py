"""Campaign validation rules C1 and S1-S5, tested as pure functions (no database)."""

# Test docstrings are the question the test answers (CONVENTIONS, CTFd), so they end in "?".

from __future__ import annotations

from datetime import time

import pytest

from server.campaigns.rules import RuleError, validate_steps
from server.campaigns.spec import SendOption, StepSpec, StepType

EMAIL, CALL, INMAIL, CUSTOM = StepType.EMAIL, StepType.CALL, StepType.INMAIL, StepType.CUSTOM
CHOOSE = SendOption.CHOOSE_AT_LAUNCH
AT_TIME = SendOption.AT_TIME
SAME = SendOption.SAME_AS_PREVIOUS
TASK = SendOption.TASK


def email(position: int, day: int, option: SendOption | None, **kw: object) -> StepSpec:
    if option is AT_TIME and "send_time" not in kw:
        kw["send_time"] = time(9, 30)
    return StepSpec(position=position, day=day, type=EMAIL, send_option=option, **kw)


def other(position: int, day: int, kind: StepType = CALL, **kw: object) -> StepSpec:
    return StepSpec(position=position, day=day, type=kind, **kw)


def messages(errors: list[RuleError]) -> list[str]:
    return [str(e) for e in errors]


# --- C1: shape -------------------------------------------------------------------------------


def test_C1_valid_campaign_has_no_errors():
    """Does a well-formed campaign mixing every step type pass validation?"""
    steps = [
        email(0, 1, AT_TIME),
        other(1, 1, CALL),
        email(2, 2, SAME, follow_up=False),
        email(3, 2, TASK, follow_up=True),
        other(4, 3, INMAIL),
        other(5, 5, CUSTOM),
        email(6, 6, AT_TIME, send_time=time(8, 0)),
    ]
    assert validate_steps(steps) == []


def test_C1_empty_campaign_is_rejected():
    """Is a campaign with no steps at all rejected?"""
    assert messages(validate_steps([])) == ["steps: a campaign needs at least one step (C1)"]


def test_C1_day_zero_is_rejected():
    """Is day 0 rejected, since days count from 1?"""
    errors = validate_steps([other(0, 0)])
    assert messages(errors) == ["steps[0].day: day must be 1 or more (C1)"]
    assert errors[0].rule == "C1"


def test_C1_days_out_of_order_are_rejected():
    """Is a step listed after a later-day step rejected, naming both days?"""
    errors = validate_steps([email(0, 1, TASK), other(1, 3), other(2, 2)])
    assert messages(errors) == [
        "steps[2].day: day 2 comes after day 3; list steps in day order (C1)"
    ]


def test_C1_steps_may_share_a_day():
    """May several steps share the same day?"""
    assert validate_steps([email(0, 1, TASK), other(1, 1), email(2, 1, TASK)]) == []


@pytest.mark.parametrize("kind", [CALL, INMAIL, CUSTOM])
def test_C1_non_email_steps_have_no_send_settings(kind: StepType):
    """Does a call, InMail or custom step get one C1 error per email-only field it sets?"""
    steps = [
        email(0, 1, TASK),
        other(1, 2, kind, send_option=AT_TIME, send_time=time(9, 0), follow_up=True),
    ]
    errors = validate_steps(steps)
    assert [e.field for e in errors] == [
        "steps[1].send_option",
        "steps[1].send_time",
        "steps[1].follow_up",
    ]
    assert {e.rule for e in errors} == {"C1"}
    assert all(e.message.endswith("(C1)") for e in errors)


# --- S1, S2: the options on offer --------------------------------------------------------------


@pytest.mark.parametrize("option", [CHOOSE, AT_TIME, TASK])
def test_S1_first_step_accepts_its_three_options(option: SendOption):
    """Does the first email step accept choose_at_launch, at_time and task?"""
    assert validate_steps([email(0, 1, option)]) == []


def test_S1_first_email_needs_a_send_option():
    """Is a first email step without a send option rejected, listing the S1 choices?"""
    errors = validate_steps([email(0, 1, None)])
    assert messages(errors) == [
        "steps[0].send_option: an email step needs a send option: "
        "choose_at_launch, at_time, task (S1)"
    ]


def test_S1_at_time_first_step_needs_a_send_time():
    """Is an at_time first step without a time of day rejected under S1?"""
    errors = validate_steps([email(0, 1, AT_TIME, send_time=None)])
    assert messages(errors) == ["steps[0].send_time: at_time needs a send_time (S1)"]


def test_S1_send_time_only_with_at_time():
    """Is a send_time on a task first step rejected, since only at_time uses it?"""
    errors = validate_steps([email(0, 1, TASK, send_time=time(10, 0))])
    assert messages(errors) == [
        "steps[0].send_time: send_time is only used with at_time, not task (S1)"
    ]


@pytest.mark.parametrize("option", [SAME, AT_TIME, TASK])
def test_S2_later_email_accepts_its_three_options(option: SendOption):
    """Does a later email step accept same_as_previous, at_time and task?"""
    assert validate_steps([email(0, 1, TASK), email(1, 3, option)]) == []


def test_S2_later_email_needs_a_send_option():
    """Is a later email step without a send option rejected, listing the S2 choices?"""
    errors = validate_steps([email(0, 1, TASK), email(1, 2, None)])
    assert messages(errors) == [
        "steps[1].send_option: an email step needs a send option: "
        "at_time, same_as_previous, task (S2)"
    ]


def test_S2_at_time_later_step_needs_a_send_time():
    """Is an at_time later step without a time of day rejected under S2?"""
    errors = validate_steps([email(0, 1, TASK), email(1, 2, AT_TIME, send_time=None)])
    assert messages(errors) == ["steps[1].send_time: at_time needs a send_time (S2)"]


def test_S2_same_as_previous_with_send_time_is_rejected():
    """Is a send_time on a same_as_previous step rejected under S2?"""
    errors = validate_steps([email(0, 1, TASK), email(1, 2, SAME, send_time=time(7, 0))])
    assert [(e.field, e.rule) for e in errors] == [("steps[1].send_time", "S2")]


def test_S2_email_after_a_first_call_step_gets_later_options():
    """When the campaign opens with a call, is the day-1 email a later step (S2, not S1)?"""
    assert validate_steps([other(0, 1), email(1, 1, SAME)]) == []
    errors = validate_steps([other(0, 1), email(1, 1, CHOOSE)])
    assert [(e.field, e.rule) for e in errors] == [("steps[1].send_option", "S3")]


# --- S3: options in the wrong place ------------------------------------------------------------


def test_S3_same_as_previous_on_first_step_is_rejected():
    """Is same_as_previous rejected on the first step, where there is no previous email?"""
    errors = validate_steps([email(0, 1, SAME)])
    assert errors == [
        RuleError(
            field="steps[0].send_option",
            message="same_as_previous is not allowed on the first step (S3)",
            rule="S3",
        )
    ]


def test_S3_choose_at_launch_on_later_step_is_rejected():
    """Is choose_at_launch rejected on any step but the first?"""
    errors = validate_steps([email(0, 1, TASK), email(1, 1, CHOOSE)])
    assert messages(errors) == [
        "steps[1].send_option: choose_at_launch is only allowed on the first step (S3)"
    ]


# --- S4: follow-ups --------------------------------------------------------------------------


def test_S4_follow_up_after_email_is_valid():
    """Is a follow-up accepted right after an email step, with any send option?"""
    for option in (SAME, AT_TIME, TASK):
        assert validate_steps([email(0, 1, TASK), email(1, 2, option, follow_up=True)]) == []


def test_S4_follow_up_after_call_step_is_rejected():
    """Is a follow-up rejected when the step just before it is a call, naming that step?"""
    steps = [email(0, 1, AT_TIME), other(1, 2, CALL), email(2, 3, SAME, follow_up=True)]
    assert messages(validate_steps(steps)) == [
        "steps[2].follow_up: a follow-up needs an email step immediately before it; "
        "steps[1] is a call step (S4)"
    ]


@pytest.mark.parametrize(("kind", "article"), [(INMAIL, "an inmail"), (CUSTOM, "a custom")])
def test_S4_follow_up_after_inmail_or_custom_is_rejected(kind: StepType, article: str):
    """Is a follow-up rejected after an InMail or custom step, with the right article?"""
    errors = validate_steps(
        [email(0, 1, TASK), other(1, 1, kind), email(2, 1, TASK, follow_up=True)]
    )
    assert len(errors) == 1
    assert errors[0].message.endswith(f"steps[1] is {article} step (S4)")


def test_S4_follow_up_on_first_step_is_rejected():
    """Is a follow-up on the very first step rejected, as there is no earlier step?"""
    assert messages(validate_steps([email(0, 1, TASK, follow_up=True)])) == [
        "steps[0].follow_up: a follow-up needs an email step immediately before it; "
        "there is no earlier step (S4)"
    ]


def test_S4_follow_up_only_looks_at_the_immediately_preceding_step():
    """Is a follow-up rejected even when an email exists further back than the previous step?"""
    steps = [email(0, 1, TASK), other(1, 1), email(2, 2, TASK, follow_up=True)]
    assert [e.rule for e in validate_steps(steps)] == ["S4"]


# --- S5: errors name the step and the rule ----------------------------------------------------


def test_S5_every_error_names_the_step_and_the_rule():
    """Does each error of a badly broken campaign name its step field and end with its rule?"""
    steps = [
        email(0, 1, SAME, follow_up=True),
        other(1, 0, CALL, send_option=TASK),
        email(2, 2, CHOOSE, send_time=time(9, 0)),
        email(3, 2, AT_TIME, send_time=None),
        email(4, 1, TASK),
    ]
    errors = validate_steps(steps)
    assert [(e.field, e.rule) for e in errors] == [
        ("steps[0].send_option", "S3"),
        ("steps[0].follow_up", "S4"),
        ("steps[1].day", "C1"),
        ("steps[1].send_option", "C1"),
        ("steps[2].send_option", "S3"),
        ("steps[2].send_time", "S2"),
        ("steps[3].send_time", "S2"),
        ("steps[4].day", "C1"),
    ]
    for error in errors:
        assert error.field.startswith("steps[")
        assert error.message.endswith(f"({error.rule})")
        assert str(error) == f"{error.field}: {error.message}"


def test_S5_at_most_one_error_per_field():
    """Is a field that breaks several rules reported only once, by the most specific rule?"""
    # day 0 is both below 1 and before the previous day 1: only "1 or more" is reported.
    steps = [email(0, 1, TASK), other(1, 0)]
    errors = validate_steps(steps)
    assert messages(errors) == ["steps[1].day: day must be 1 or more (C1)"]
    fields = [e.field for e in validate_steps([email(0, 1, SAME, send_time=time(1, 0))])]
    assert len(fields) == len(set(fields))


def test_S3_choose_at_launch_on_a_first_step_after_day_1_is_rejected():
    """Is choose_at_launch rejected on a first step placed on day 2 (S1's "first step of day 1")?

    The day itself is refused too: the first step is on day 1 (C1).
    """
    errors = validate_steps([email(0, 2, CHOOSE)])
    assert messages(errors) == [
        "steps[0].day: the first step is on day 1, not day 2 (C1)",
        "steps[0].send_option: choose_at_launch is only allowed on a first step on day 1, "
        "not day 2 (S3)"
    ]
    day_error = "steps[0].day: the first step is on day 1, not day 2 (C1)"
    assert messages(validate_steps([email(0, 2, AT_TIME)])) == [day_error]
    assert messages(validate_steps([email(0, 2, None)])) == [
        day_error,
        "steps[0].send_option: an email step needs a send option: at_time, task (S1)",
    ]
