"""A Hypothesis state machine of the outbox: two workers, a clock, crashes and a faulty provider.

Rules enqueue emails, move the clock, claim, step one claimed row, crash a worker at a crash
point (its claims are abandoned, as when a process dies), sweep expired leases, reconcile,
and change what the provider answers. After every step: no scheduled email was delivered
twice, each mailbox's pace was never exceeded, and a delivered email is never back in a
state from which it could be sent again. At the end, with a healthy provider and time
passing, every email is finished and exactly the sent ones were delivered (once).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from server.feed.models import FeedEvent
from server.sending.dispatcher import CRASH_POINTS, Crash, Dispatcher, DispatchSettings
from server.sending.fake import FakeResolver, FakeTransport, ManualClock
from server.sending.models import MailboxPace, ScheduledSend, SendStatus
from server.sending.pacing import Backoff, Pace, max_in_window
from tests.conftest import World, make_contact

PACE = Pace(count=2, seconds=45)
SETTINGS = DispatchSettings(lease=timedelta(seconds=60), margin=timedelta(seconds=10),
                            batch=4, pace=PACE, daily_cap=1000,
                            backoff=Backoff(base=1, cap=30, max_retries=4),
                            daily_limit_pause=timedelta(seconds=120),
                            reauth_pause=timedelta(seconds=90))
#: Where a delivered email may be: never anywhere it could be sent from again.
AFTER_DELIVERY = {SendStatus.SENDING, SendStatus.UNCERTAIN, SendStatus.SENT,
                  SendStatus.NEEDS_ATTENTION}
TERMINAL = {SendStatus.SENT, SendStatus.FAILED, SendStatus.NEEDS_ATTENTION}
#: What the provider does, per operation (see server.sending.fake.FAULTS).
PROVIDER_MODES: dict[str, dict[str, str]] = {
    "healthy": {},
    "rate_limited": {"draft": "429", "send": "429"},
    "unavailable": {"draft": "503", "send": "503", "reconcile": "503"},
    "answers_lost": {"send": "drop"},
    "answers_lost_and_blind": {"send": "drop", "reconcile": "unknown"},
    "timeouts_and_blind": {"send": "timeout", "reconcile": "unknown"},
    "drafts_lost": {"draft": "drop"},
    "refusing": {"send": "permanent"},
    "capped": {"send": "daily"},
    "reauth": {"draft": "reauth"},
}


def outbox_machine(app: Flask, session: Session, world: World, now: datetime
                   ) -> type[RuleBasedStateMachine]:
    """The state machine class, bound to one test database and world."""
    owners = [world.rep, world.rep2]
    contacts = [make_contact(session, o, f"st{i}@example.com").id for i, o in enumerate(owners)]
    session.commit()
    sessions = app.extensions["relay.write_sessionmaker"]

    class Outbox(RuleBasedStateMachine):
        @initialize(mode=st.sampled_from(sorted(PROVIDER_MODES)), n=st.integers(1, 6))
        def start(self, mode: str, n: int) -> None:
            self.setup()
            self.provider_mode(mode)
            self.enqueue(n, 0)

        def setup(self) -> None:
            with sessions.begin() as s:
                for model in (FeedEvent, ScheduledSend, MailboxPace):
                    s.execute(delete(model))
            self.clock = ManualClock(now)
            self.fake = FakeTransport(now=self.clock.now)
            self.crash_at: list[str | None] = [None, None]
            self.held: list[list] = [[], []]
            self.owner_of: dict[int, int] = {}
            self.workers = [self._worker(w) for w in (0, 1)]

        def _worker(self, w: int) -> Dispatcher:
            def hook(point: str) -> None:
                if self.crash_at[w] == point:
                    self.crash_at[w] = None
                    raise Crash(point)

            return Dispatcher(sessions, FakeResolver(self.fake), settings=SETTINGS,
                              clock=self.clock, draw=lambda: 0.5, crash=hook)

        def _rows(self) -> dict[int, SendStatus]:
            with sessions() as s:
                return dict(s.execute(select(ScheduledSend.id, ScheduledSend.status)).all())

        @rule(n=st.integers(1, 8), who=st.sampled_from([0, 1]))
        def enqueue(self, n: int, who: int) -> None:
            with sessions.begin() as s:
                for i in range(n):
                    send = ScheduledSend(org_id=world.org.id, owner_id=owners[who].id,
                                         contact_id=contacts[who], due_at=self.clock.now(),
                                         to_email=f"st{who}.{i}@example.com", subject="Hi",
                                         html="<p>Hi</p>", text="Hi")
                    s.add(send)
                    s.flush()
                    self.owner_of[send.id] = owners[who].id

        @rule(seconds=st.sampled_from([0.5, 5.0, 20.0, 46.0, 61.0, 600.0]))
        def advance_clock(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule(w=st.sampled_from([0, 1]))
        def claim(self, w: int) -> None:
            self.held[w] += self.workers[w].claim_batch()

        @rule(w=st.sampled_from([0, 1]))
        def step(self, w: int) -> None:
            if self.held[w]:
                self.workers[w].process(self.held[w].pop(0))

        @rule(w=st.sampled_from([0, 1]), point=st.sampled_from(CRASH_POINTS))
        def crash(self, w: int, point: str) -> None:
            self.crash_at[w] = point
            try:
                if self.held[w]:
                    self.workers[w].process(self.held[w].pop(0))
                else:
                    self.workers[w].run_once()
            except Crash:
                self.held[w] = []  # the process died with everything it held
            finally:
                self.crash_at[w] = None

        @rule(w=st.sampled_from([0, 1]))
        def run_pass(self, w: int) -> None:
            self.workers[w].run_once()

        @rule(w=st.sampled_from([0, 1]), seconds=st.sampled_from([1.0, 46.0, 61.0]))
        def later_pass(self, w: int, seconds: float) -> None:
            """What a worker does all day: wait a while, then one pass."""
            self.clock.advance(seconds)
            self.workers[w].run_once()

        @rule()
        def sweep(self) -> None:
            self.workers[0].sweep()

        @rule(w=st.sampled_from([0, 1]))
        def reconcile(self, w: int) -> None:
            rows = self._rows()
            for held in self.workers[w].claim_batch():
                if rows.get(held.claim.id) is SendStatus.UNCERTAIN:
                    self.workers[w].process(held)
                else:
                    self.held[w].append(held)

        @rule(mode=st.sampled_from(sorted(PROVIDER_MODES)))
        def provider_mode(self, mode: str) -> None:
            self.fake.mode = dict(PROVIDER_MODES[mode])

        @invariant()
        def at_most_one_send_per_email(self) -> None:
            if not hasattr(self, "fake"):
                return
            assert all(n <= 1 for n in self.fake.deliveries().values()), self.fake.deliveries()

        @invariant()
        def pace_never_exceeded(self) -> None:
            if not hasattr(self, "fake"):
                return
            for owner in {o.id for o in owners}:
                times = [c.at for c in self.fake.calls if c.op == "send"
                         and self.owner_of.get(c.send_id) == owner]
                assert max_in_window(times, PACE.seconds) <= PACE.count, times

        @invariant()
        def delivered_never_sendable_again(self) -> None:
            if not hasattr(self, "fake"):
                return
            rows = self._rows()
            for send_id in self.fake.deliveries():
                assert rows[send_id] in AFTER_DELIVERY, (send_id, rows[send_id])

        def teardown(self) -> None:
            if not hasattr(self, "fake"):
                return
            self.fake.mode.clear()
            self.fake.script.clear()
            self.held = [[], []]
            self.clock.advance(25 * 3600)  # past any pause and into a new day
            for _ in range(len(self.owner_of) + 20):
                self.workers[0].run_once()
                if set(self._rows().values()) <= TERMINAL:
                    break
                self.clock.advance(PACE.seconds + 1)
            rows = self._rows()
            assert set(rows.values()) <= TERMINAL, rows
            delivered = self.fake.deliveries()
            sent = {i for i, s in rows.items() if s is SendStatus.SENT}
            assert sent <= set(delivered)
            assert {i for i in delivered if rows[i] is not SendStatus.NEEDS_ATTENTION} == sent
            assert all(n == 1 for n in delivered.values())

    return Outbox


def test_outbox_state_machine(app: Flask, session: Session, world: World, now: datetime):
    """Is each email sent at most once, and each mailbox's pace respected, always?

    Under any interleaving of claims, steps, crashes, sweeps, clock moves and provider faults.
    """
    run_state_machine_as_test(outbox_machine(app, session, world, now), settings=settings(
        max_examples=80, stateful_step_count=25, deadline=None,
        suppress_health_check=list(HealthCheck)))

