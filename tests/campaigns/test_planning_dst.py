"""T8: local times that don't exist or occur twice, tested on the pure planner (no database).

Europe/Paris in 2027: clocks go forward on Sunday 28 March (02:00 CET -> 03:00 CEST, so 02:30
does not exist) and back on Sunday 31 October (03:00 CEST -> 02:00 CET, so 02:30 happens twice:
00:30 UTC, then 01:30 UTC). Nothing here reads a clock.
"""

# Test docstrings are the question the test answers (CONVENTIONS), so they end in "?".

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

from server.campaigns.planning import PlannedStep, plan
from server.campaigns.rules import validate_steps
from server.campaigns.spec import CampaignSettings, SendOption, StepSpec, StepType

PARIS = ZoneInfo("Europe/Paris")
EMAIL, CALL = StepType.EMAIL, StepType.CALL
AT_TIME, SAME, TASK = SendOption.AT_TIME, SendOption.SAME_AS_PREVIOUS, SendOption.TASK
IN_PARIS = CampaignSettings("Europe/Paris")


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def campaign(*specs: tuple) -> list[StepSpec]:
    """Steps from ``(day, type[, option[, send_time]])`` tuples, positions in order."""
    steps = []
    for position, spec in enumerate(specs):
        day, kind, *rest = spec
        option = rest[0] if rest else None
        send_time = rest[1] if len(rest) > 1 else None
        steps.append(StepSpec(position, day, kind, option, send_time))
    assert validate_steps(steps) == []
    return steps


def local(p: PlannedStep) -> datetime:
    """The due moment as a naive Paris wall-clock time, for readable assertions."""
    return p.due_local.replace(tzinfo=None)


# --- spring forward: 02:30 does not exist on 28 March 2027 ---------------------------------------


def test_T8_at_time_in_the_spring_forward_gap_moves_forward_by_the_gap():
    """Is an at_time 02:30 email on 28 Mar 2027 sent at 03:30 CEST (01:30 UTC), not 01:30 CET?"""
    steps = campaign((1, EMAIL, AT_TIME, time(2, 30)))
    result = plan(steps, IN_PARIS, paris(2027, 3, 28, 0, 30))  # 23:30 UTC the day before
    assert result[0].due_at == utc(2027, 3, 28, 1, 30)
    assert local(result[0]) == datetime(2027, 3, 28, 3, 30)
    assert result[0].rule == "at_time"
    assert result[0].explanation == (
        "day 1 (Sun 28 Mar), at 02:30 (T2); "
        "02:30 does not exist that night (clocks go forward), so 03:30 (T8)"
    )


def test_T8_same_as_previous_copies_the_0330_the_gap_email_really_has():
    """After the 02:30 email went at 03:30 on 28 Mar, is the day-2 same_as_previous at 03:30?"""
    steps = campaign((1, EMAIL, AT_TIME, time(2, 30)), (2, EMAIL, SAME))
    result = plan(steps, IN_PARIS, paris(2027, 3, 28, 0, 30))
    assert local(result[1]) == datetime(2027, 3, 29, 3, 30)
    assert result[1].due_at == utc(2027, 3, 29, 1, 30)
    assert result[1].rule == "same_as_previous"
    assert result[1].explanation == (
        "day 2 (Mon 29 Mar), same time as previous email (day 1, 03:30) (T3)"
    )


def test_T8_same_as_previous_landing_in_the_gap_moves_forward_and_is_copied_on():
    """A 02:30 on Sat 27 Mar copied to Sun 28 Mar becomes 03:30; does Mon 29 Mar copy 03:30?"""
    steps = campaign((1, EMAIL, AT_TIME, time(2, 30)), (2, EMAIL, SAME), (3, EMAIL, SAME))
    result = plan(steps, IN_PARIS, paris(2027, 3, 27, 0, 0))
    assert [p.due_at for p in result] == [
        utc(2027, 3, 27, 1, 30),  # 02:30 CET
        utc(2027, 3, 28, 1, 30),  # 02:30 does not exist: 03:30 CEST
        utc(2027, 3, 29, 1, 30),  # 03:30 CEST, the time day 2 really has
    ]
    assert [local(p).time() for p in result] == [time(2, 30), time(3, 30), time(3, 30)]
    assert result[1].explanation == (
        "day 2 (Sun 28 Mar), same time as previous email (day 1, 02:30) (T3); "
        "02:30 does not exist that night (clocks go forward), so 03:30 (T8)"
    )
    assert result[2].explanation == (
        "day 3 (Mon 29 Mar), same time as previous email (day 2, 03:30) (T3)"
    )


def test_T8_task_due_in_the_gap_moves_forward_by_the_gap():
    """Started Fri 26 Mar at 02:30, is a day-3 call (Sun 28 Mar) due at 03:30 CEST?"""
    steps = campaign((1, CALL), (3, CALL))
    result = plan(steps, IN_PARIS, paris(2027, 3, 26, 2, 30))
    assert result[1].due_at == utc(2027, 3, 28, 1, 30)
    assert local(result[1]) == datetime(2027, 3, 28, 3, 30)


# --- fall back: 02:30 happens twice on 31 October 2027 ------------------------------------------


def test_T8_at_time_that_occurs_twice_takes_the_first_occurrence():
    """Is an at_time 02:30 email on 31 Oct 2027 sent at the first 02:30 (00:30 UTC, CEST)?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 0)), (2, EMAIL, AT_TIME, time(2, 30)))
    result = plan(steps, IN_PARIS, paris(2027, 10, 30, 8, 0))
    assert result[1].due_at == utc(2027, 10, 31, 0, 30)
    assert result[1].due_local.utcoffset().total_seconds() == 2 * 3600
    assert result[1].rule == "at_time"
    assert result[1].explanation == (
        "day 2 (Sun 31 Oct), at 02:30 (T2); "
        "02:30 happens twice that night (clocks go back): the first one (T8)"
    )


def test_T8_same_as_previous_landing_on_a_repeated_time_takes_the_first_occurrence():
    """A 02:30 on Sat 30 Oct copied to Sun 31 Oct: the first 02:30, and 02:30 CET on Mon 1 Nov?"""
    steps = campaign((1, EMAIL, AT_TIME, time(2, 30)), (2, EMAIL, SAME), (3, EMAIL, SAME))
    result = plan(steps, IN_PARIS, paris(2027, 10, 30, 0, 0))
    assert [p.due_at for p in result] == [
        utc(2027, 10, 30, 0, 30),  # 02:30 CEST
        utc(2027, 10, 31, 0, 30),  # the first of the two 02:30s (CEST)
        utc(2027, 11, 1, 1, 30),  # 02:30 CET
    ]
    assert [p.rule for p in result] == ["at_time", "same_as_previous", "same_as_previous"]


def test_T8_copying_an_email_sent_at_the_second_0230_still_takes_the_first_occurrence():
    """Task email sent at the second 02:30 of 31 Oct 2027: is day 365 (29 Oct 2028) the first?"""
    steps = campaign((1, EMAIL, TASK), (365, EMAIL, SAME))
    start = paris(2027, 10, 31, 0, 0)
    sent_second_0230 = utc(2027, 10, 31, 1, 30)  # 02:30 CET, after the clocks went back
    assert sent_second_0230.astimezone(PARIS).fold == 1
    result = plan(steps, IN_PARIS, start, done={0: sent_second_0230})
    # 29 Oct 2028 is the next fall-back night: 02:30 happens twice again.
    assert result[1].due_at == utc(2028, 10, 29, 0, 30)
    assert "(day 1, sent at 02:30)" in result[1].explanation


def test_T8_a_start_at_the_second_0230_keeps_its_exact_moment_on_day_1_only():
    """Start at the second 02:30 of 31 Oct 2027: day-1 call at that moment, day 365 the first?"""
    steps = campaign((1, CALL), (365, CALL))
    start = utc(2027, 10, 31, 1, 30)  # the second 02:30 (CET)
    result = plan(steps, IN_PARIS, start)
    assert result[0].due_at == start
    assert result[0].rule == "task"
    assert "T8" not in result[0].explanation  # S itself: nothing to resolve
    assert result[1].due_at == utc(2028, 10, 29, 0, 30)
    assert (
        "(T4); 02:30 happens twice that night (clocks go back): the first one (T8)"
        in result[1].explanation
    )
