"""Sending policy as pure functions: per-mailbox pace, daily caps, retries and backoff.

Nothing here reads a clock, a database or a random source of its own: every moment and every
random draw is passed in, so each rule is tested with literal inputs. The dispatcher
(:mod:`server.sending.dispatcher`) keeps the state these functions read and return in the
``mailbox_pace`` table, under a row lock, so every worker process sees the same pace.

- **Pace** is a sliding window: at most ``count`` sends in any ``seconds``-long window
  (default 25 every 45 s). The state keeps the moments of the latest ``count`` sends; the
  next send may go when the oldest of them is ``seconds`` old.
- **Daily cap**: at most ``cap`` sends per mailbox per UTC day, where the cap is the org's
  (default 1,000) but never above the provider's own daily limit.
- **Retries**: transient errors only; the provider's ``Retry-After`` when it gave one,
  otherwise exponential backoff with full jitter (a uniform draw in ``[0, min(cap, base·2ⁿ)]``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class Pace:
    """At most ``count`` sends in any window of ``seconds``; ``count`` 0 turns pacing off."""

    count: int = 25
    seconds: float = 45.0

    @property
    def off(self) -> bool:
        """True when the mailbox is not paced at all."""
        return self.count <= 0 or self.seconds <= 0


@dataclass(frozen=True)
class MailboxState:
    """What the pace and the cap depend on: the latest send moments and today's count."""

    recent: tuple[float, ...] = ()
    day: date | None = None
    day_count: int = 0
    paused_until: datetime | None = None


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: ``base`` seconds doubled per retry, up to ``cap``."""

    base: float = 30.0
    cap: float = 3600.0
    max_retries: int = 8


@dataclass(frozen=True)
class Decision:
    """Whether a send may go now, and if not, the earliest moment it may."""

    allowed: bool
    not_before: datetime | None = None
    why: str = field(default="")


def epoch(moment: datetime) -> float:
    """A moment as UTC epoch seconds (how the pace state stores it)."""
    return moment.timestamp()


def effective_cap(default_cap: int, org_cap: int | None, provider_limit: int | None) -> int:
    """The daily cap of a mailbox: the org's cap (or the default), never above the provider's."""
    cap = org_cap if org_cap is not None else default_cap
    if provider_limit is not None and provider_limit >= 0:
        cap = min(cap, provider_limit)
    return max(cap, 0)


def _today_count(state: MailboxState, now: datetime) -> int:
    return state.day_count if state.day == now.astimezone(UTC).date() else 0


def _in_window(state: MailboxState, now: datetime, pace: Pace) -> list[float]:
    start = epoch(now) - pace.seconds
    return sorted(t for t in state.recent if t > start)


def next_day(now: datetime) -> datetime:
    """Midnight UTC after ``now`` (when a daily cap opens again)."""
    day = now.astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def decide(state: MailboxState, now: datetime, pace: Pace, cap: int) -> Decision:
    """May one more email leave this mailbox at ``now``? If not, from when.

    Checked in order: a pause, the daily cap (reopens at the next UTC midnight), then the
    sliding-window pace (reopens when the oldest send of the full window leaves it).
    """
    if state.paused_until is not None and state.paused_until > now:
        return Decision(False, state.paused_until, "paused")
    if _today_count(state, now) >= cap:
        return Decision(False, next_day(now), "daily cap")
    if pace.off:
        return Decision(True)
    window = _in_window(state, now, pace)
    if len(window) < pace.count:
        return Decision(True)
    oldest = window[-pace.count]
    return Decision(False, datetime.fromtimestamp(oldest + pace.seconds, UTC), "pace")


def free_slots(state: MailboxState, now: datetime, pace: Pace, cap: int) -> int:
    """How many emails could leave this mailbox at ``now`` (what a claim may take for it)."""
    if state.paused_until is not None and state.paused_until > now:
        return 0
    left = max(cap - _today_count(state, now), 0)
    if pace.off:
        return left
    return min(left, max(pace.count - len(_in_window(state, now, pace)), 0))


def fair_shares(rooms: Sequence[int], limit: int) -> list[int]:
    """Split a claim of at most ``limit`` rows between mailboxes, round-robin.

    ``rooms[i]`` is what mailbox ``i`` may take now (its free pace slots); the result gives
    each at most its room. While the limit binds every mailbox with room gets an equal share
    (one more each, in the given order, for what does not divide evenly); what a mailbox
    cannot use goes to the others. The order is the rotation: the first mailboxes get the
    remainder, so callers put the least recently served first.
    """
    shares = [0] * len(rooms)
    left = max(limit, 0)
    active = [i for i, room in enumerate(rooms) if room > 0]
    while left > 0 and active:
        each = max(left // len(active), 1)
        still = []
        for i in active:
            if left == 0:
                break
            give = min(each, rooms[i] - shares[i], left)
            shares[i] += give
            left -= give
            if shares[i] < rooms[i]:
                still.append(i)
        active = still
    return shares


def record_send(state: MailboxState, now: datetime, pace: Pace) -> MailboxState:
    """The state after one more email left at ``now`` (keeps only what the pace needs)."""
    today = now.astimezone(UTC).date()
    count = _today_count(state, now) + 1
    if pace.off:
        recent: tuple[float, ...] = ()
    else:
        recent = tuple([*_in_window(state, now, pace), epoch(now)][-pace.count:])
    return MailboxState(recent=recent, day=today, day_count=count,
                        paused_until=state.paused_until)


def backoff_delay(retries: int, policy: Backoff, draw: Callable[[], float]) -> float:
    """Seconds to wait before retry number ``retries`` (1-based): full jitter.

    ``draw`` returns a uniform float in ``[0, 1)`` (``random.random`` in production, a fixed
    sequence in tests).
    """
    exponent = min(max(retries - 1, 0), 62)
    ceiling = min(policy.cap, policy.base * math.pow(2, exponent))
    return draw() * ceiling


def retry_delay(retries: int, retry_after: float | None, policy: Backoff,
                draw: Callable[[], float]) -> float:
    """Seconds to wait before the next attempt: the provider's ``Retry-After`` when given.

    A ``Retry-After`` is honoured as it is (never shortened by jitter), capped at one day
    so a nonsensical value cannot park an email for ever.
    """
    if retry_after is not None and retry_after >= 0:
        return min(float(retry_after), 86400.0)
    return backoff_delay(retries, policy, draw)


def gives_up(retries: int, policy: Backoff) -> bool:
    """True when ``retries`` transient failures are enough to stop retrying."""
    return retries >= policy.max_retries


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds or an HTTP date; None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def max_in_window(moments: Sequence[datetime], seconds: float) -> int:
    """The largest number of ``moments`` inside any half-open window ``[t, t + seconds)``.

    What the pace promises never to exceed; tests check sends against it.
    """
    times = sorted(epoch(m) for m in moments)
    best = 0
    lo = 0
    for hi, t in enumerate(times):
        while times[lo] <= t - seconds:
            lo += 1
        best = max(best, hi - lo + 1)
    return best
