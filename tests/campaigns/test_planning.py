"""The per-person plan (T1-T7, P1), tested as pure functions with literal dates (no database)."""

# Test docstrings are the question the test answers (CONVENTIONS, CTFd), so they end in "?".

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.campaigns.planning import PlannedStep, day_date, first_day, plan
from server.campaigns.rules import validate_steps
from server.campaigns.spec import CampaignSettings, LatePolicy, SendOption, StepSpec, StepType

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
EMAIL, CALL, INMAIL, CUSTOM = StepType.EMAIL, StepType.CALL, StepType.INMAIL, StepType.CUSTOM
CHOOSE = SendOption.CHOOSE_AT_LAUNCH
AT_TIME = SendOption.AT_TIME
SAME = SendOption.SAME_AS_PREVIOUS
TASK = SendOption.TASK


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


def in_paris(skip_weekends: bool = False, policy: LatePolicy = LatePolicy.SLIDE):
    return CampaignSettings("Europe/Paris", skip_weekends=skip_weekends, late_task_policy=policy)


def local(p: PlannedStep) -> datetime:
    """The due moment as a naive Paris wall-clock time, for readable assertions."""
    return p.due_local.replace(tzinfo=None)


# --- T1: day dates -----------------------------------------------------------------------------


def test_T1_day_n_is_n_minus_1_calendar_days_after_day_1():
    """Without skip_weekends, is day 3 of a Friday start the Sunday?"""
    assert day_date(date(2020, 11, 20), 1, False) == date(2020, 11, 20)
    assert day_date(date(2020, 11, 20), 3, False) == date(2020, 11, 22)


def test_T1_skip_weekends_counts_weekdays_only():
    """With skip_weekends, which dates are days 1-7 of a campaign starting Thursday?"""
    got = [day_date(date(2020, 11, 19), n, True) for n in range(1, 8)]
    assert got == [
        date(2020, 11, 19),
        date(2020, 11, 20),
        date(2020, 11, 23),
        date(2020, 11, 24),
        date(2020, 11, 25),
        date(2020, 11, 26),
        date(2020, 11, 27),
    ]
    assert day_date(date(2020, 11, 20), 11, True) == date(2020, 12, 4)


def test_T1_weekend_start_makes_day_1_the_following_monday():
    """With skip_weekends, does a Saturday or Sunday start make day 1 the next Monday?"""
    assert first_day(date(2020, 11, 21), True) == date(2020, 11, 23)
    assert first_day(date(2020, 11, 22), True) == date(2020, 11, 23)
    assert first_day(date(2020, 11, 21), False) == date(2020, 11, 21)
    assert first_day(date(2020, 11, 20), True) == date(2020, 11, 20)


def test_T1_day_date_rejects_day_zero():
    """Is day 0 refused, since days count from 1 (C1)?"""
    with pytest.raises(ValueError, match="1 or more"):
        day_date(date(2020, 11, 20), 0, False)


def test_T1_friday_afternoon_launch_with_skip_weekends():
    """Launched Friday 16:30 with skip_weekends, does day 2 land on Monday and day 3 on Tuesday?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 0)), (2, EMAIL, SAME), (3, CALL))
    result = plan(steps, in_paris(skip_weekends=True), paris(2020, 11, 20, 16, 30))
    assert [local(p) for p in result] == [
        datetime(2020, 11, 20, 16, 30),
        datetime(2020, 11, 23, 16, 30),
        datetime(2020, 11, 24, 16, 30),
    ]
    assert [p.rule for p in result] == ["at_once", "same_as_previous", "task"]
    assert result[1].explanation == (
        "day 2 (Mon 23 Nov), same time as previous email (day 1, 16:30) (T3)"
    )
    assert result[2].explanation == (
        "day 3 (Tue 24 Nov), call task due at the campaign start time (16:30) (T4)"
    )


def test_T1_friday_afternoon_launch_without_skip_weekends_uses_the_weekend():
    """Launched Friday 16:30 without skip_weekends, do days 2 and 3 fall on Saturday and Sunday?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 0)), (2, EMAIL, SAME), (3, CALL))
    result = plan(steps, in_paris(), paris(2020, 11, 20, 16, 30))
    assert [p.local_date for p in result] == [
        date(2020, 11, 20),
        date(2020, 11, 21),
        date(2020, 11, 22),
    ]


def test_T1_saturday_start_with_skip_weekends_plans_from_monday():
    """Added on a Saturday with skip_weekends, is a day-1 09:00 email sent Monday at 09:00?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 0)), (1, CALL))
    result = plan(steps, in_paris(skip_weekends=True), paris(2020, 11, 21, 11, 0))
    assert [local(p) for p in result] == [
        datetime(2020, 11, 23, 9, 0),
        datetime(2020, 11, 23, 11, 0),
    ]
    assert [p.rule for p in result] == ["at_time", "task"]


def test_T1_day_1_is_the_local_date_in_the_campaign_timezone():
    """Is day 1 the start's date in the campaign timezone, not in the zone it was given in?"""
    steps = campaign((1, EMAIL, TASK))
    # Sunday 22 Nov 20:00 in New York is Monday 23 Nov 02:00 in Paris.
    result = plan(steps, in_paris(), datetime(2020, 11, 22, 20, 0, tzinfo=NEW_YORK))
    assert result[0].local_date == date(2020, 11, 23)
    assert result[0].due_at == utc(2020, 11, 23, 1, 0)
    assert result[0].due_at.tzinfo is UTC
    assert result[0].due_local.tzinfo is PARIS


def test_T1_choose_at_launch_moment_is_the_campaign_start():
    """When the launcher picks Wednesday 10:15 for the first email, is that day 1 for the plan?"""
    steps = campaign((1, EMAIL, CHOOSE), (2, CALL), (3, EMAIL, SAME))
    result = plan(steps, in_paris(), utc(2020, 11, 2, 8, 0), send_at=paris(2020, 11, 4, 10, 15))
    assert [local(p) for p in result] == [
        datetime(2020, 11, 4, 10, 15),
        datetime(2020, 11, 5, 10, 15),
        datetime(2020, 11, 6, 10, 15),
    ]
    assert result[0].rule == "choose_at_launch"
    assert result[0].explanation == "day 1 (Wed 4 Nov), at 10:15 chosen at launch (T1)"


def test_T1_choose_at_launch_without_send_at_is_an_error():
    """Is planning a choose_at_launch campaign without a chosen moment refused?"""
    with pytest.raises(ValueError, match="send_at"):
        plan(campaign((1, EMAIL, CHOOSE)), in_paris(), paris(2020, 11, 4, 10, 15))


def test_T1_at_time_override_replaces_time_and_start():
    """When the launcher overrides a 09:00 first email with Tuesday 14:00, is that used as S?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 0)), (2, CUSTOM))
    result = plan(steps, in_paris(), paris(2020, 11, 2, 8, 0), send_at=paris(2020, 11, 3, 14, 0))
    assert [local(p) for p in result] == [
        datetime(2020, 11, 3, 14, 0),
        datetime(2020, 11, 4, 14, 0),
    ]
    assert result[0].rule == "at_time_override"
    assert result[0].explanation == (
        "day 1 (Tue 3 Nov), at 14:00 chosen at launch instead of 09:00 (T1)"
    )


def test_T1_chosen_weekend_moment_is_kept_with_skip_weekends():
    """With skip_weekends, is a launcher-chosen Saturday moment kept, and day 2 the Tuesday?"""
    steps = campaign((1, EMAIL, CHOOSE), (2, CALL))
    result = plan(
        steps,
        in_paris(skip_weekends=True),
        paris(2020, 11, 20, 9, 0),
        send_at=paris(2020, 11, 21, 10, 0),
    )
    assert [local(p) for p in result] == [
        datetime(2020, 11, 21, 10, 0),
        datetime(2020, 11, 24, 10, 0),
    ]
    assert result[0].explanation == "day 1 (Sat 21 Nov), at 10:00 chosen at launch (T1)"


# --- T2: at_time, at once --------------------------------------------------------------------


def test_T2_at_time_is_the_days_local_time():
    """Is an at_time 09:00 day-1 email sent at 09:00 when the campaign starts at 08:00?"""
    result = plan(campaign((1, EMAIL, AT_TIME, time(9, 0))), in_paris(), paris(2020, 11, 20, 8, 0))
    assert result[0].due_at == utc(2020, 11, 20, 8, 0)
    assert result[0].rule == "at_time"
    assert result[0].explanation == "day 1 (Fri 20 Nov), at 09:00 (T2)"


def test_T2_past_time_goes_at_once_never_before_start():
    """Started at 14:05, does a 09:00 day-1 email go at once at 14:05 while day 2 keeps 09:00?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 0)), (2, EMAIL, AT_TIME, time(9, 0)))
    result = plan(steps, in_paris(), paris(2020, 11, 23, 14, 5))
    assert [local(p) for p in result] == [
        datetime(2020, 11, 23, 14, 5),
        datetime(2020, 11, 24, 9, 0),
    ]
    assert [p.rule for p in result] == ["at_once", "at_time"]
    assert result[0].explanation == (
        "day 1 (Mon 23 Nov), at 09:00 (T2); already past at the start, so at once at 14:05 (T2)"
    )


# --- T3: same_as_previous ----------------------------------------------------------------------


def test_T3_same_as_previous_takes_earlier_days_time():
    """Does a day-2 same_as_previous email take the day-1 email's 09:30 (the P1 example)?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 30)), (2, EMAIL, SAME))
    result = plan(steps, in_paris(), paris(2020, 11, 23, 8, 0))
    assert local(result[1]) == datetime(2020, 11, 24, 9, 30)
    assert result[1].explanation == (
        "day 2 (Tue 24 Nov), same time as previous email (day 1, 09:30) (T3)"
    )


def test_T3_same_as_previous_skips_same_day_email():
    """Does a same_as_previous email that shares day 2 with an 08:00 email use day 1's 09:30?"""
    steps = campaign(
        (1, EMAIL, AT_TIME, time(9, 30)),
        (2, EMAIL, AT_TIME, time(8, 0)),
        (2, EMAIL, SAME),
    )
    result = plan(steps, in_paris(), paris(2020, 11, 23, 8, 0))
    assert local(result[1]) == datetime(2020, 11, 24, 8, 0)
    assert local(result[2]) == datetime(2020, 11, 24, 9, 30)
    assert result[2].rule == "same_as_previous"
    assert "(day 1, 09:30)" in result[2].explanation


def test_T3_same_as_previous_on_day_1_goes_at_the_start():
    """Is a day-1 same_as_previous email that is not the first step sent at S's time?"""
    steps = campaign((1, CALL), (1, EMAIL, SAME))
    result = plan(steps, in_paris(), paris(2020, 11, 23, 14, 5))
    assert local(result[1]) == datetime(2020, 11, 23, 14, 5)
    assert result[1].rule == "same_as_previous_start"
    assert result[1].explanation == (
        "day 1 (Mon 23 Nov), same time as the campaign start (14:05), "
        "as there is no email on an earlier day (T3); after task on day 1 is done (T6)"
    )


def test_T3_same_as_previous_on_day_1_still_waits_for_the_email_before_it():
    """Does a day-1 same_as_previous email wait for a 16:00 email before it (T5)?"""
    steps = campaign((1, EMAIL, AT_TIME, time(16, 0)), (1, EMAIL, SAME))
    result = plan(steps, in_paris(), paris(2020, 11, 23, 14, 5))
    assert local(result[1]) == datetime(2020, 11, 23, 16, 0)
    assert result[1].rule == "after_previous"


def test_T3_no_earlier_day_email_uses_start_time_on_later_day():
    """With only a call before it, does a day-3 same_as_previous email use S's time of day?"""
    steps = campaign((1, CALL), (3, EMAIL, SAME))
    result = plan(steps, in_paris(), paris(2020, 11, 23, 14, 5))
    assert local(result[1]) == datetime(2020, 11, 25, 14, 5)
    assert result[1].rule == "same_as_previous_start"


def test_T3_uses_the_previous_emails_final_planned_time():
    """When the day-1 09:00 email went at once at 14:05, does day 2 copy 14:05, not 09:00?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 0)), (2, EMAIL, SAME), (3, EMAIL, SAME))
    result = plan(steps, in_paris(), paris(2020, 11, 23, 14, 5))
    assert [local(p) for p in result] == [
        datetime(2020, 11, 23, 14, 5),
        datetime(2020, 11, 24, 14, 5),
        datetime(2020, 11, 25, 14, 5),
    ]


def test_T3_task_email_time_is_when_the_rep_sent_it():
    """Does a same_as_previous email copy the time the rep actually sent a task email?"""
    steps = campaign((1, EMAIL, TASK), (3, EMAIL, SAME))
    start = paris(2020, 11, 23, 9, 0)
    preview = plan(steps, in_paris(), start)
    assert local(preview[1]) == datetime(2020, 11, 25, 9, 0)
    sent = plan(steps, in_paris(), start, done={0: paris(2020, 11, 23, 11, 47)})
    assert local(sent[1]) == datetime(2020, 11, 25, 11, 47)
    assert "(day 1, sent at 11:47)" in sent[1].explanation
    assert sent[0].done_at == utc(2020, 11, 23, 10, 47)


# --- T4: tasks ----------------------------------------------------------------------------------


def test_T4_tasks_are_due_at_the_start_time_of_day():
    """Are call, InMail, custom and email tasks due on their day at S's time of day?"""
    steps = campaign((1, EMAIL, TASK), (2, CALL), (2, INMAIL), (3, CUSTOM))
    result = plan(steps, in_paris(), paris(2020, 11, 23, 14, 5))
    assert [local(p) for p in result] == [
        datetime(2020, 11, 23, 14, 5),
        datetime(2020, 11, 24, 14, 5),
        datetime(2020, 11, 24, 14, 5),
        datetime(2020, 11, 25, 14, 5),
    ]
    assert {p.rule for p in result} == {"task"}
    assert result[3].explanation.startswith(
        "day 3 (Wed 25 Nov), custom task due at the campaign start time (14:05) (T4)"
    )


# --- T5: gating ---------------------------------------------------------------------------------


def test_T5_step_planned_before_its_predecessor_goes_right_after_it():
    """Does a day-1 10:00 email listed after a 16:00 email wait and go at 16:00?"""
    steps = campaign((1, EMAIL, AT_TIME, time(16, 0)), (1, EMAIL, AT_TIME, time(10, 0)))
    result = plan(steps, in_paris(), paris(2020, 11, 23, 8, 0))
    assert local(result[1]) == datetime(2020, 11, 23, 16, 0)
    assert result[1].rule == "after_previous"
    assert result[1].explanation == (
        "day 1 (Mon 23 Nov), at 10:00 (T2); goes right after the previous step, due at 16:00 (T5)"
    )


def test_T5_email_waits_for_a_task_completed_later_the_same_day():
    """Is a 09:00 email after a call completed at 17:00 the same day sent at 17:00?"""
    steps = campaign((1, CALL), (2, EMAIL, AT_TIME, time(9, 0)))
    start = paris(2020, 11, 23, 8, 0)
    result = plan(steps, in_paris(), start, done={0: paris(2020, 11, 24, 17, 0)})
    # done a day late: slide moves the email to day 3, so no gating there
    assert local(result[1]) == datetime(2020, 11, 25, 9, 0)
    same_day = campaign((1, CALL), (1, EMAIL, AT_TIME, time(9, 0)))
    result = plan(same_day, in_paris(), start, done={0: paris(2020, 11, 23, 17, 0)})
    assert local(result[1]) == datetime(2020, 11, 23, 17, 0)
    assert result[1].rule == "after_previous"
    assert result[1].explanation.endswith("goes right after the previous step, done at 17:00 (T5)")


# --- T6: lazy materialisation, depends_on -----------------------------------------------------


def test_T6_steps_after_an_unfinished_task_depend_on_it():
    """Which unfinished task gates each later step, before and after the first is done?"""
    steps = campaign(
        (1, CALL),
        (2, EMAIL, AT_TIME, time(9, 0)),
        (3, EMAIL, TASK),
        (4, EMAIL, SAME),
    )
    start = paris(2020, 11, 23, 8, 0)
    preview = plan(steps, in_paris(), start)
    assert [p.depends_on for p in preview] == [None, 0, 0, 2]
    assert preview[1].explanation == (
        "day 2 (Tue 24 Nov), at 09:00 (T2); after task on day 1 is done (T6)"
    )
    assert preview[3].explanation.endswith("after task on day 3 is done (T6)")
    later = plan(steps, in_paris(), start, done={0: paris(2020, 11, 23, 8, 30)})
    assert [p.depends_on for p in later] == [None, None, None, 2]


def test_T6_done_steps_depend_on_nothing():
    """Once every step is done, is no step marked as depending on another?"""
    steps = campaign((1, CALL), (1, CUSTOM))
    done = {0: paris(2020, 11, 23, 8, 30), 1: paris(2020, 11, 23, 8, 45)}
    result = plan(steps, in_paris(), paris(2020, 11, 23, 8, 0), done=done)
    assert [p.depends_on for p in result] == [None, None]
    assert [p.done_at for p in result] == [utc(2020, 11, 23, 7, 30), utc(2020, 11, 23, 7, 45)]


# --- T7: late steps -----------------------------------------------------------------------------

LATE_CAMPAIGN = ((1, CALL), (3, EMAIL, AT_TIME, time(9, 0)), (5, EMAIL, SAME))


def test_T7_task_two_days_late_with_slide_moves_later_steps():
    """With slide, does a day-1 call completed two days late move days 3 and 5 two days later?"""
    steps = campaign(*LATE_CAMPAIGN)
    result = plan(
        steps,
        in_paris(policy=LatePolicy.SLIDE),
        paris(2020, 11, 2, 10, 0),
        done={0: paris(2020, 11, 4, 15, 0)},
    )
    assert [local(p) for p in result] == [
        datetime(2020, 11, 2, 10, 0),
        datetime(2020, 11, 6, 9, 0),
        datetime(2020, 11, 8, 9, 0),
    ]
    assert [p.effective_day for p in result] == [1, 5, 7]
    assert [p.rule for p in result] == ["task", "at_time", "same_as_previous"]
    assert result[1].explanation == (
        "day 3 (Fri 6 Nov), at 09:00 (T2); "
        "moved 2 days later because day 1's task was done late (T7 slide)"
    )


def test_T7_task_two_days_late_with_keep_sends_passed_steps_at_once():
    """With keep, does the passed day-3 email go as soon as the late call is done?"""
    steps = campaign(*LATE_CAMPAIGN)
    result = plan(
        steps,
        in_paris(policy=LatePolicy.KEEP),
        paris(2020, 11, 2, 10, 0),
        done={0: paris(2020, 11, 4, 15, 0)},
    )
    assert [local(p) for p in result] == [
        datetime(2020, 11, 2, 10, 0),
        datetime(2020, 11, 4, 15, 0),
        datetime(2020, 11, 6, 15, 0),
    ]
    assert [p.effective_day for p in result] == [1, 3, 5]
    assert [p.rule for p in result] == ["task", "after_previous", "same_as_previous"]
    assert "T7" not in result[1].explanation


def test_T7_slide_with_skip_weekends_counts_weekdays():
    """With skip_weekends, is a Thursday task done on Monday two weekdays late, not four days?"""
    steps = campaign((1, CALL), (2, EMAIL, AT_TIME, time(9, 0)))
    result = plan(
        steps,
        in_paris(skip_weekends=True),
        paris(2020, 11, 5, 10, 0),
        done={0: paris(2020, 11, 9, 12, 0)},
    )
    assert local(result[1]) == datetime(2020, 11, 10, 9, 0)
    assert result[1].effective_day == 4
    assert "moved 2 weekdays later" in result[1].explanation


def test_T7_slides_accumulate():
    """Do two late tasks (1 day, then 2 days) slide the last step 3 days in total?"""
    steps = campaign((1, CALL), (2, CUSTOM), (4, EMAIL, TASK))
    done = {0: paris(2020, 11, 3, 10, 0), 1: paris(2020, 11, 6, 10, 0)}
    result = plan(steps, in_paris(), paris(2020, 11, 2, 10, 0), done=done)
    assert [p.effective_day for p in result] == [1, 3, 7]
    assert local(result[2]) == datetime(2020, 11, 8, 10, 0)
    assert result[2].explanation == (
        "day 4 (Sun 8 Nov), email task due at the campaign start time (10:00) (T4); "
        "moved 3 days later because day 1's task and day 2's task were done late (T7 slide)"
    )


def test_T7_late_hour_on_the_due_date_does_not_slide():
    """Is a task done at 23:00 on its own due date not late, so nothing slides?"""
    steps = campaign((1, CALL), (2, EMAIL, AT_TIME, time(9, 0)))
    result = plan(steps, in_paris(), paris(2020, 11, 2, 10, 0), done={0: paris(2020, 11, 2, 23, 0)})
    assert result[1].effective_day == 2
    assert local(result[1]) == datetime(2020, 11, 3, 9, 0)


# --- DST ---------------------------------------------------------------------------------------


def test_T1_T3_dst_end_in_paris_keeps_local_time_of_day():
    """Across the end of DST (25 Oct 2020), do later steps keep 09:30 local, moving in UTC?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 30)), (3, CALL), (4, EMAIL, SAME))
    result = plan(steps, in_paris(), paris(2020, 10, 23, 9, 30))
    assert [p.due_at for p in result] == [
        utc(2020, 10, 23, 7, 30),  # CEST, UTC+2
        utc(2020, 10, 25, 8, 30),  # CET, UTC+1
        utc(2020, 10, 26, 8, 30),
    ]
    assert [local(p).time() for p in result] == [time(9, 30)] * 3


def test_T2_ambiguous_time_on_dst_end_takes_the_first_occurrence():
    """Is an at_time 02:30 on 25 Oct 2020 (which happens twice in Paris) the first 02:30?"""
    steps = campaign((1, CALL), (3, EMAIL, AT_TIME, time(2, 30)))
    result = plan(steps, in_paris(), paris(2020, 10, 23, 1, 0))
    assert result[1].due_at == utc(2020, 10, 25, 0, 30)


def test_T4_nonexistent_time_on_dst_start_moves_forward():
    """Is a task due at 02:30 on 29 Mar 2020 (skipped in Paris) due at 03:30 CEST instead?"""
    steps = campaign((1, CALL), (3, CALL))
    result = plan(steps, in_paris(), paris(2020, 3, 27, 2, 30))
    assert result[1].due_at == utc(2020, 3, 29, 1, 30)
    assert local(result[1]) == datetime(2020, 3, 29, 3, 30)


# --- argument checks ---------------------------------------------------------------------------


def test_plan_rejects_naive_datetimes():
    """Is a naive start, send_at or done moment refused?"""
    steps = campaign((1, EMAIL, AT_TIME, time(9, 0)))
    with pytest.raises(ValueError, match="start"):
        plan(steps, in_paris(), datetime(2020, 11, 23, 8, 0))
    with pytest.raises(ValueError, match="send_at"):
        plan(steps, in_paris(), paris(2020, 11, 23, 8, 0), send_at=datetime(2020, 11, 23, 9))
    with pytest.raises(ValueError, match="done"):
        plan(steps, in_paris(), paris(2020, 11, 23, 8, 0), done={0: datetime(2020, 11, 23, 9)})


def test_plan_rejects_done_that_is_not_a_prefix():
    """Is a plan refused when a later step is done but an earlier one is not (T5)?"""
    steps = campaign((1, CALL), (2, CALL), (3, CALL))
    with pytest.raises(ValueError, match="prefix"):
        plan(steps, in_paris(), paris(2020, 11, 23, 8, 0), done={1: paris(2020, 11, 24, 9, 0)})
    with pytest.raises(ValueError, match="prefix"):
        plan(steps, in_paris(), paris(2020, 11, 23, 8, 0), done={7: paris(2020, 11, 24, 9, 0)})


def test_plan_of_no_steps_is_empty():
    """Does an empty campaign plan to an empty list?"""
    assert plan([], in_paris(), paris(2020, 11, 23, 8, 0)) == []


# --- properties ---------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "Europe/Paris",
    "America/New_York",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
]
STARTS = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=datetime(2030, 12, 31),
    timezones=st.sampled_from([ZoneInfo(z) for z in ZONES]),
)
TIMES = st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45, 59]))


@st.composite
def valid_campaigns(draw: st.DrawFn) -> list[StepSpec]:
    steps: list[StepSpec] = []
    day = 1  # C1: the first step is on day 1
    for position in range(draw(st.integers(1, 10))):
        if position:
            day += draw(st.sampled_from([0, 0, 1, 1, 2, 4]))
        kind = draw(st.sampled_from(list(StepType)))
        option = send_time = None
        follow_up = False
        if kind is EMAIL:
            if position:
                options = [SAME, AT_TIME, TASK]
            else:  # S1, S3: choose_at_launch only on a first step on day 1
                options = [CHOOSE, AT_TIME, TASK] if day == 1 else [AT_TIME, TASK]
            option = draw(st.sampled_from(options))
            send_time = draw(TIMES) if option is AT_TIME else None
            follow_up = bool(steps) and steps[-1].type is EMAIL and draw(st.booleans())
        steps.append(StepSpec(position, day, kind, option, send_time, follow_up))
    return steps


@st.composite
def planning_inputs(draw: st.DrawFn):
    steps = draw(valid_campaigns())
    cfg = CampaignSettings(
        draw(st.sampled_from(ZONES)),
        skip_weekends=draw(st.booleans()),
        late_task_policy=draw(st.sampled_from(list(LatePolicy))),
    )
    start = draw(STARTS)
    send_at = None
    first = steps[0]
    if first.send_option is CHOOSE or (first.send_option is AT_TIME and draw(st.booleans())):
        send_at = start + draw(st.timedeltas(timedelta(0), timedelta(days=10)))
    return steps, cfg, start, send_at


def _s_local(cfg: CampaignSettings, start: datetime, send_at: datetime | None) -> datetime:
    return (send_at or start).astimezone(ZoneInfo(cfg.timezone))


PROPERTY = settings(max_examples=200, deadline=None, database=None)


@PROPERTY
@given(valid_campaigns())
def test_S1_S2_S3_S4_generated_campaigns_are_valid(steps: list[StepSpec]):
    """Does every campaign built only from the allowed options pass validation?"""
    assert validate_steps(steps) == []


@PROPERTY
@given(planning_inputs())
def test_T2_T5_due_moments_never_go_backwards(inputs):
    """Is each step due no earlier than S and no earlier than the step before it?"""
    steps, cfg, start, send_at = inputs
    result = plan(steps, cfg, start, send_at=send_at)
    s_utc = (send_at or start).astimezone(UTC)
    assert len(result) == len(steps)
    for p in result:
        assert p.due_at >= s_utc
        assert p.due_at.utcoffset() == timedelta(0)
        # In UTC: Python says False for == across zones when one side is a repeated
        # local time (PEP 495), e.g. 01:30 on Lord Howe's fall-back night.
        assert p.due_local.astimezone(UTC) == p.due_at
        assert str(p.due_local.tzinfo) == cfg.timezone
    for before, after in zip(result, result[1:], strict=False):
        assert after.due_at >= before.due_at


@PROPERTY
@given(planning_inputs())
def test_T1_each_step_falls_on_its_day_date(inputs):
    """With nothing done, is every step due on day_date(first_day, day) (a weekday if skipping)?"""
    steps, cfg, start, send_at = inputs
    skip = cfg.skip_weekends
    day1 = first_day(_s_local(cfg, start, send_at).date(), skip)
    for step, p in zip(steps, plan(steps, cfg, start, send_at=send_at), strict=True):
        assert p.effective_day == p.day == step.day
        if p.rule in ("choose_at_launch", "at_time_override"):
            # the launcher's explicit moment is kept, even on a weekend (T1)
            assert p.due_at == send_at
            assert p.local_date == _s_local(cfg, start, send_at).date()
            continue
        assert p.local_date == day_date(day1, step.day, skip)
        assert p.local_date == p.due_local.date()
        if skip:
            assert p.local_date.weekday() < 5
        assert p.explanation.endswith(")")
        assert p.explanation.startswith(f"day {step.day} (")


@PROPERTY
@given(planning_inputs())
def test_P1_planning_is_deterministic(inputs):
    """Does planning the same inputs twice give exactly the same plan?"""
    steps, cfg, start, send_at = inputs
    assert plan(steps, cfg, start, send_at=send_at) == plan(steps, cfg, start, send_at=send_at)


@PROPERTY
@given(planning_inputs(), st.data())
def test_T5_T6_T7_replanning_after_done_steps(inputs, data):
    """As steps are done (on time or late), do later steps wait for them and slide consistently?"""
    steps, cfg, start, send_at = inputs
    done: dict[int, datetime] = {}
    n_done = data.draw(st.integers(0, len(steps)))
    for step in steps[:n_done]:
        current = plan(steps, cfg, start, send_at=send_at, done=done)
        delay = data.draw(st.timedeltas(timedelta(0), timedelta(days=4)))
        done[step.position] = current[step.position].due_at + delay
    result = plan(steps, cfg, start, send_at=send_at, done=done)
    slides = [p.effective_day - p.day for p in result]
    assert slides == sorted(slides)
    if cfg.late_task_policy is LatePolicy.KEEP:
        assert set(slides) <= {0}
    for before, after in zip(result, result[1:], strict=False):
        assert after.due_at >= before.due_at
        if before.done_at is not None:
            assert after.due_at >= before.done_at
    unfinished_tasks = [s.position for s in steps[n_done:] if s.makes_task]
    for step, p in zip(steps, result, strict=True):
        assert (p.done_at is not None) == (step.position in done)
        if p.done_at is not None:
            assert p.depends_on is None
        else:
            gates = [q for q in unfinished_tasks if q < step.position]
            assert p.depends_on == (gates[-1] if gates else None)
