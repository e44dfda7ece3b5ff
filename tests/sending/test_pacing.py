"""Pure sending policy (server/sending/pacing.py): pace, daily caps, backoff, Retry-After."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from server.sending import pacing
from server.sending.pacing import Backoff, MailboxState, Pace

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
PACE = Pace(count=25, seconds=45)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def sent(times: list[float], pace: Pace = PACE) -> MailboxState:
    state = MailboxState()
    for t in times:
        assert pacing.decide(state, at(t), pace, 10_000).allowed
        state = pacing.record_send(state, at(t), pace)
    return state


def test_pace_allows_25_then_waits_for_the_oldest_to_leave_the_window():
    """After 25 sends at t=0..24, is the 26th refused until t=45 (the first send's exit)?"""
    state = sent([float(i) for i in range(25)])
    assert pacing.free_slots(state, at(25), PACE, 10_000) == 0
    refused = pacing.decide(state, at(30), PACE, 10_000)
    assert not refused.allowed and refused.why == "pace" and refused.not_before == at(45)
    assert pacing.decide(state, at(45), PACE, 10_000).allowed
    assert pacing.free_slots(state, at(46.5), PACE, 10_000) == 2


def test_pace_state_keeps_only_the_window():
    """Does the state keep only the moments inside the window, at most `count` of them?"""
    state = sent([i * 2.0 for i in range(100)])  # one every 2 s: 23 within the last 45 s
    assert len(state.recent) == 23 and max(state.recent) == at(198).timestamp()
    assert state.day_count == 100
    assert len(sent([i / 10 for i in range(25)] + [45.0, 45.1]).recent) == 25


def test_pace_off_counts_only_the_day():
    """With pacing off (count 0), are 1,000 sends in one second allowed and counted?"""
    off = Pace(count=0)
    state = sent([i / 1000 for i in range(1000)], off)
    assert state.recent == () and state.day_count == 1000
    assert pacing.free_slots(state, at(1), off, 1500) == 500


def test_daily_cap_stops_the_day_and_reopens_at_utc_midnight():
    """At the cap, is the next send refused until the next UTC midnight, then allowed?"""
    state = MailboxState(day=date(2026, 11, 24), day_count=3)
    refused = pacing.decide(state, at(0), Pace(count=0), 3)
    assert not refused.allowed and refused.why == "daily cap"
    assert refused.not_before == datetime(2026, 11, 25, tzinfo=UTC)
    assert pacing.decide(state, datetime(2026, 11, 25, 0, 0, 1, tzinfo=UTC), Pace(count=0), 3
                         ).allowed
    assert pacing.free_slots(state, datetime(2026, 11, 25, tzinfo=UTC), PACE, 3) == 3


def test_effective_cap_is_the_orgs_but_never_above_the_providers():
    """Is the cap the org's own (or the default), bounded by the provider's daily limit?"""
    assert pacing.effective_cap(1000, None, None) == 1000
    assert pacing.effective_cap(1000, 200, 2000) == 200
    assert pacing.effective_cap(1000, 5000, 2000) == 2000
    assert pacing.effective_cap(1000, None, 500) == 500


def test_a_pause_blocks_until_its_end():
    """Does a paused mailbox get no slot until paused_until, whatever its pace?"""
    state = MailboxState(paused_until=at(3600))
    refused = pacing.decide(state, at(10), PACE, 1000)
    assert not refused.allowed and refused.not_before == at(3600) and refused.why == "paused"
    assert pacing.free_slots(state, at(10), PACE, 1000) == 0
    assert pacing.decide(state, at(3600), PACE, 1000).allowed


def test_backoff_is_full_jitter_doubling_up_to_the_cap():
    """Is the delay draw × min(cap, base·2^(n-1)): 0 at draw 0, near the ceiling at draw ~1?"""
    policy = Backoff(base=30, cap=3600, max_retries=8)
    assert pacing.backoff_delay(1, policy, lambda: 0.0) == 0.0
    assert pacing.backoff_delay(1, policy, lambda: 0.5) == 15.0
    assert pacing.backoff_delay(3, policy, lambda: 0.5) == 60.0
    assert pacing.backoff_delay(20, policy, lambda: 0.5) == 1800.0
    assert pacing.backoff_delay(200, policy, lambda: 0.999) < 3600


def test_retry_after_is_honoured_and_bounded():
    """Is a provider's Retry-After used as is (no jitter), and capped at one day?"""
    policy = Backoff()
    assert pacing.retry_delay(1, 7.0, policy, lambda: 0.0) == 7.0
    assert pacing.retry_delay(1, 10 ** 9, policy, lambda: 0.0) == 86400.0
    assert pacing.retry_delay(2, None, policy, lambda: 1.0) == 60.0


def test_parse_retry_after_seconds_and_http_dates():
    """Are delta-seconds and HTTP dates both understood, and garbage ignored?"""
    assert pacing.parse_retry_after("120", T0) == 120.0
    assert pacing.parse_retry_after("Tue, 24 Nov 2026 10:01:30 GMT", T0) == 90.0
    assert pacing.parse_retry_after("Tue, 24 Nov 2026 09:00:00 GMT", T0) == 0.0
    assert pacing.parse_retry_after("soon", T0) is None
    assert pacing.parse_retry_after(None, T0) is None


def test_gives_up_after_max_retries():
    """Do transient failures stop being retried at max_retries?"""
    policy = Backoff(max_retries=3)
    assert not pacing.gives_up(2, policy)
    assert pacing.gives_up(3, policy)


def test_max_in_window_counts_half_open_windows():
    """Is a send at t and one at t+45 s never in the same 45 s window?"""
    assert pacing.max_in_window([at(0), at(45)], 45) == 1
    assert pacing.max_in_window([at(0), at(44.9)], 45) == 2
    assert pacing.max_in_window([at(i) for i in range(30)], 45) == 30
    assert pacing.max_in_window([], 45) == 0
