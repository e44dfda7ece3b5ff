"""The outbox dispatcher: claims due sends under a lease and sends each at most once.

States (``SEND_TRANSITIONS`` in :mod:`server.mail.models`)::

    scheduled → claimed → drafted → sending → sent
                   ↘ (transient)  ↘ (unknown outcome) uncertain → sent | scheduled | needs_attention
    any step → failed (permanent error, or too many transient ones)

**The send protocol.** A claimed row is drafted at the provider and the draft id is committed
(fenced by the lease, renewing it); the row is marked ``sending`` and committed in the same
transaction that takes its slot of the mailbox's pace; only then is the draft sent, and the
result committed as ``sent`` together with what follows from it (the campaign moves on through
:func:`server.campaigns.progress.send_finished`, a task email completes its task). Every
provider call happens only after a committed fenced write and only while at least
``margin`` of that lease remains, so a worker that stalled past its lease calls nothing and,
since every write is fenced by the lease token, writes nothing either.

**Unknown outcomes are reconciled, never guessed.** A send whose answer was lost (timeout,
dropped connection, 5xx or 429 after the request left, a worker killed while ``sending``)
becomes ``uncertain``; before anything is retried the transport is asked: the draft still
exists → not sent → ``scheduled`` again (reusing the draft); found in Sent → ``sent``; not
known → ``needs_attention``.

**Expired leases** (a worker died): ``claimed`` → ``scheduled`` (sweep); ``drafted`` →
claimed again and resumed from its draft; ``sending`` → ``uncertain`` (sweep).

**Claiming** takes reconcilable rows first, then, per mailbox, at most as many sendable rows
as its pace and daily cap allow right now (its ``mailbox_pace`` row is locked with
``SKIP LOCKED`` on PostgreSQL, so two workers never claim for the same mailbox at once).

Time comes from a clock object and randomness from an injected draw, so tests drive both.
``RELAY_CRASH_AT`` (tests only) kills the process with SIGKILL at a named crash point.
"""

from __future__ import annotations

import logging
import os
import random
import signal
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from email.utils import formataddr
from typing import Any, Protocol, TypeVar

from sqlalchemy import and_, case, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from server.accounts.models import User
from server.campaigns.models import CampaignStep, Enrollment, EnrollmentStep, StepStatus
from server.campaigns.progress import contact_name, send_finished
from server.compose.models import Template
from server.compose.prefill import (
    PreviousEmail,
    TemplateText,
    previous_moment,
    quote_block,
    reply_subject,
)
from server.compose.render import OutputTooLarge, TemplateInvalid, render_email
from server.contacts.models import Contact
from server.db import is_lock_timeout, utcnow
from server.feed.models import EventKind
from server.feed.service import record, record_many
from server.mail import pacing
from server.mail.headers import RELAY_MESSAGE_ID, HeaderError, build_message
from server.mail.models import (
    SEND_TRANSITIONS,
    MailboxPace,
    OrgSendPolicy,
    ScheduledSend,
    SendStatus,
)
from server.mail.transport import (
    DailyLimitError,
    Draft,
    OutboundMessage,
    Outcome,
    OutcomeUnknown,
    PermanentError,
    ReauthRequired,
    Reconciled,
    Sent,
    TransientError,
    Transport,
    TransportError,
    TransportResolver,
)
from server.outbox.leases import (
    Claim,
    claim,
    expired,
    fenced_update,
    fenced_update_many,
    release,
)
from server.outbox.leases import sweep as sweep_expired
from server.tasks.models import CompletedVia, Task, TaskStatus

log = logging.getLogger("relay.dispatch")

#: Where a test may kill (``RELAY_CRASH_AT``) or stop (``RELAY_STOP_AT``) a worker: inside the
#: claim transaction before its commit, after the claim is committed, after the draft id is
#: committed, after ``sending`` is committed, and after the provider accepted the email but
#: before ``sent`` is committed; and inside (holding its row locks, before the commit) the
#: transaction that sweeps expired leases, records draft ids, marks rows ``sending`` with
#: their pace slots, or records them ``sent``.
CRASH_POINTS = ("in_claim", "after_claim", "after_draft", "after_sending",
                "after_provider_send", "in_sweep_tx", "in_draft_tx", "in_sending_tx",
                "in_sent_tx")

SS = ScheduledSend
_T = TypeVar("_T")

#: How long an email waits when its mailbox's pace row is held by another worker.
LOCKED_RETRY = timedelta(seconds=1)


class Clock(Protocol):
    """Where the dispatcher's time comes from."""

    def now(self) -> datetime:
        """The current moment, timezone-aware UTC."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """The current moment (``server.db.utcnow``)."""
        return utcnow()


class Crash(BaseException):
    """Raised by an in-process crash hook (the stateful test): the worker stops dead.

    A ``BaseException`` so that nothing in the dispatcher handles it: uncommitted work is
    rolled back exactly as if the process had died.
    """


def no_crash(point: str) -> None:
    """The crash hook of production: does nothing."""


def env_crash_hook(environ: Mapping[str, str] | None = None) -> Callable[[str], None]:
    """The crash hook tests set through the environment (never set in production).

    ``RELAY_CRASH_AT=<point>`` kills this process with SIGKILL the ``RELAY_CRASH_AFTER``-th
    time (default 1st) the dispatcher reaches ``<point>``; ``RELAY_STOP_AT=<point>`` stops it
    with SIGSTOP there once (a stalled worker; the test resumes it with SIGCONT).
    """
    env = os.environ if environ is None else environ
    crash_at, stop_at = env.get("RELAY_CRASH_AT"), env.get("RELAY_STOP_AT")
    if not crash_at and not stop_at:
        return no_crash
    for point in (crash_at, stop_at):
        if point and point not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {point!r}; use one of {CRASH_POINTS}")
    after = int(env.get("RELAY_CRASH_AFTER", "1"))
    seen = {"crash": 0, "stopped": False}

    def hook(point: str) -> None:
        if point == crash_at:
            seen["crash"] += 1
            if seen["crash"] >= after:
                log.warning("RELAY_CRASH_AT=%s: killing this worker (test hook)", point)
                os.kill(os.getpid(), signal.SIGKILL)
        if point == stop_at and not seen["stopped"]:
            seen["stopped"] = True
            log.warning("RELAY_STOP_AT=%s: stopping this worker (test hook)", point)
            os.kill(os.getpid(), signal.SIGSTOP)

    return hook


@dataclass(frozen=True)
class DispatchSettings:
    """How the dispatcher behaves (``from_config`` reads the ``SEND_*`` variables).

    ``margin`` is how much of a lease must remain for a provider call to start; it must be
    longer than the transport's own timeout, so a call that starts also ends inside the lease.
    """

    lease: timedelta = timedelta(seconds=120)
    margin: timedelta = timedelta(seconds=30)
    batch: int = 50
    group: int = 10
    pace: pacing.Pace = field(default_factory=pacing.Pace)
    daily_cap: int = 1000
    backoff: pacing.Backoff = field(default_factory=pacing.Backoff)
    daily_limit_pause: timedelta = timedelta(hours=24)
    reauth_pause: timedelta = timedelta(hours=1)
    max_batches: int = 1000

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> DispatchSettings:
        """Settings from the app configuration (missing keys keep their defaults)."""
        d = cls()

        def get(name: str, default: float) -> float:
            value = config.get(name)
            return default if value in (None, "") else float(value)

        return cls(
            lease=timedelta(seconds=get("SEND_LEASE_SECONDS", d.lease.total_seconds())),
            margin=timedelta(seconds=get("SEND_LEASE_MARGIN_SECONDS",
                                         d.margin.total_seconds())),
            batch=int(get("SEND_BATCH", d.batch)),
            group=int(get("SEND_GROUP", d.group)),
            pace=pacing.Pace(count=int(get("SEND_PACE_COUNT", d.pace.count)),
                             seconds=get("SEND_PACE_SECONDS", d.pace.seconds)),
            daily_cap=int(get("SEND_DAILY_CAP", d.daily_cap)),
            backoff=pacing.Backoff(base=get("SEND_BACKOFF_BASE_SECONDS", d.backoff.base),
                                   cap=get("SEND_BACKOFF_CAP_SECONDS", d.backoff.cap),
                                   max_retries=int(get("SEND_MAX_RETRIES",
                                                       d.backoff.max_retries))),
        )


@dataclass
class DispatchResult:
    """What one pass of the dispatcher did, by outcome."""

    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    uncertain: int = 0
    rescheduled: int = 0
    needs_attention: int = 0
    deferred: int = 0
    lost: int = 0
    swept: int = 0
    waiting: int = 0

    def add(self, outcome: str) -> None:
        """Count one row's outcome."""
        setattr(self, outcome, getattr(self, outcome) + 1)


@dataclass(frozen=True)
class Content:
    """The email of a send as it will be built: body, threading and the sender."""

    sender: str
    subject: str
    html: str
    text: str
    in_reply_to: str | None = None
    thread_hint: str | None = None


class Problem(Exception):
    """A send that can never be built as it is (missing field, bad address): it fails."""


@dataclass
class _Job:
    """A row on its way through the send protocol within a group."""

    held: _Held
    row: ScheduledSend
    transport: Transport
    message: OutboundMessage
    draft: Draft
    status: SendStatus
    values: dict[str, Any] | None = None


def _sent_values(row: ScheduledSend, message_id: str, sent: Sent, draft: Draft | None,
                 sent_at: datetime, now: datetime) -> dict[str, Any]:
    return {"status": SendStatus.SENT, "sent_at": sent_at,
            "provider_message_id": sent.provider_id,
            "thread_id": sent.thread_id or (draft.thread_id if draft else None)
            or row.thread_id,
            "message_id": message_id, "reason": None, "last_error": None,
            "next_attempt_at": None, "updated_at": now}


@dataclass(frozen=True)
class _Box:
    """What the dispatcher needs of a rep's mailbox row: its address, name and pause."""

    address: str | None = None
    name: str | None = None
    paused_until: datetime | None = None


@dataclass
class _Held:
    """A claim being worked on, with the lease expiry as last committed."""

    claim: Claim
    expires_at: datetime


def _check(old: SendStatus, new: SendStatus) -> None:
    if new not in SEND_TRANSITIONS.get(old, frozenset()):
        raise AssertionError(f"send status {old.value} -> {new.value} is not allowed")


class Dispatcher:
    """Claims due sends and moves each through the send protocol (see the module docstring)."""

    def __init__(self, sessions: sessionmaker[Session], resolver: TransportResolver, *,
                 settings: DispatchSettings | None = None, clock: Clock | None = None,
                 draw: Callable[[], float] | None = None,
                 crash: Callable[[str], None] | None = None) -> None:
        self.sessions = sessions
        self.resolver = resolver
        self.settings = settings or DispatchSettings()
        self.clock = clock or SystemClock()
        self.draw = draw or random.random
        self.crash = crash or no_crash
        self._transports: dict[int, Transport | None] = {}
        self._boxes: dict[int, _Box] = {}
        self._caps: dict[int, int | None] = {}
        self._senders: dict[int, str] = {}
        bind = sessions.kw.get("bind")
        self._postgres = bind is not None and bind.dialect.name == "postgresql"

    # -- transactions --------------------------------------------------------------------

    @contextmanager
    def _tx(self, durable: bool = False) -> Iterator[Session]:
        """One transaction. Only ``durable`` ones wait for the WAL flush on PostgreSQL.

        The one commit that must survive a database crash before the provider is called is
        the one that marks a send ``sending`` (losing it would let the email be sent again).
        Losing any other commit of the dispatcher's is harmless — a lost claim or draft id
        means the row is claimed or drafted again, a lost ``sent`` leaves the row
        ``sending`` and reconciliation finds the email — so those commit without waiting
        for the flush (``synchronous_commit = off``: never corruption, at worst the last
        few milliseconds of such commits lost in a database crash). A durable commit also
        flushes every earlier one.
        """
        session = self.sessions()
        try:
            if self._postgres and not durable:
                session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _transport(self, owner_id: int) -> Transport | None:
        if owner_id not in self._transports:
            self._transports[owner_id] = self.resolver.transport_for(owner_id)
        return self._transports[owner_id]

    def _box(self, owner_id: int) -> _Box:
        """The rep's connected mailbox as the resolver shows it (address, name, pause)."""
        if owner_id not in self._boxes:
            view = None
            lookup = getattr(self.resolver, "mailbox_for", None)
            if lookup is not None:
                view = lookup(owner_id)
            self._boxes[owner_id] = _Box(
                address=getattr(view, "email", None) or None,
                name=getattr(view, "display_name", None) or None,
                paused_until=getattr(view, "paused_until", None))
        return self._boxes[owner_id]

    def _state(self, pace_row: MailboxPace) -> pacing.MailboxState:
        """The pace state of a mailbox, with the pause shown on the mailbox itself too."""
        state = _state(pace_row)
        other = self._box(pace_row.owner_id).paused_until
        if other is not None and (state.paused_until is None or other > state.paused_until):
            state = replace(state, paused_until=other)
        return state

    # -- the pass ------------------------------------------------------------------------

    def run_once(self) -> DispatchResult:
        """Sweep expired leases, then claim and process batches until nothing is ready.

        Transports are looked up afresh on every pass (a rep may have connected or
        disconnected their mailbox since the last one).
        """
        self._transports = {}
        self._boxes = {}
        self._caps = {}
        self._senders = {}
        result = DispatchResult()
        result.swept = self._or_later(self.sweep, 0)
        for _ in range(self.settings.max_batches):
            held = self._or_later(self.claim_batch, [])
            if not held:
                break
            result.claimed += len(held)
            self.crash("after_claim")
            size = max(self.settings.group, 1)
            for i in range(0, len(held), size):
                group = held[i:i + size]
                for outcome in self._or_later(lambda g=group: self.process_group(g),
                                              ["deferred"] * len(group)):
                    result.add(outcome)
        return result

    def _or_later(self, step: Callable[[], _T], later: _T) -> _T:
        """Run ``step``; a lock wait that timed out means "try later", not a failed pass.

        Nothing the dispatcher does waits on another worker's rows (those statements skip
        locked rows), but a worker's database session also sets ``lock_timeout``
        (``DB_LOCK_TIMEOUT_SECONDS``) for anything else that might; when it fires, the
        step's transaction is rolled back, its rows keep their lease and are taken up again
        when it runs out (claimed ones swept back, ``sending`` ones reconciled).
        """
        try:
            return step()
        except OperationalError as exc:
            if not is_lock_timeout(exc):
                raise
            log.warning("a database lock wait timed out (%s); trying again later",
                        str(exc.orig).strip().splitlines()[0] if exc.orig else exc)
            return later

    def sweep(self) -> int:
        """Expired leases: ``claimed`` → ``scheduled``, ``sending`` → ``uncertain``.

        Rows another transaction holds locked are skipped (:func:`server.outbox.leases.sweep`):
        a worker stopped in the middle of writing its rows never makes this one wait.
        """
        now = self.clock.now()
        with self._tx() as s:
            back = sweep_expired(s, SS, where=SS.status == SendStatus.CLAIMED, now=now,
                                 values={"status": SendStatus.SCHEDULED, "updated_at": now})
            unknown = sweep_expired(
                s, SS, where=SS.status == SendStatus.SENDING, now=now,
                values={"status": SendStatus.UNCERTAIN, "updated_at": now,
                        "last_error": "the worker's lease ran out while sending"})
            if back or unknown:
                self.crash("in_sweep_tx")
        if back or unknown:
            log.info("swept expired leases: %d claimed back to scheduled, %d sending to "
                     "uncertain", back, unknown)
        return back + unknown

    # -- claiming ------------------------------------------------------------------------

    @staticmethod
    def _free(now: datetime) -> Any:
        """Not held by a live lease, and past its retry moment."""
        return and_(or_(SS.lease_token.is_(None), expired(SS, now)),
                    or_(SS.next_attempt_at.is_(None), SS.next_attempt_at <= now))

    def _sendable(self, now: datetime) -> Any:
        return or_(
            and_(SS.status == SendStatus.SCHEDULED, SS.due_at <= now,
                 or_(SS.next_attempt_at.is_(None), SS.next_attempt_at <= now)),
            and_(SS.status == SendStatus.DRAFTED, self._free(now)),
        )

    def claim_batch(self, limit: int | None = None) -> list[_Held]:
        """Claim up to ``limit`` rows: uncertain ones, then each mailbox's fair share.

        Uncertain rows are claimed in one transaction, then each mailbox's due rows in a
        transaction of its own (:meth:`_claim_paced`), so a worker stalled inside a claim
        holds the pace row of one mailbox at most.
        """
        limit = limit or self.settings.batch
        now = self.clock.now()
        with self._tx() as s:
            claims = claim(s, SS, ready=and_(SS.status == SendStatus.UNCERTAIN, self._free(now)),
                           order_by=SS.id, now=now, lease=self.settings.lease, limit=limit,
                           values={})
            if claims:
                self.crash("in_claim")
        claims += self._claim_paced(now, limit - len(claims))
        return [_Held(c, c.expires_at) for c in claims]

    def _due(self, now: datetime) -> Any:
        """A scheduled row whose moment (and retry moment) has come."""
        return and_(SS.status == SendStatus.SCHEDULED, SS.due_at <= now,
                    or_(SS.next_attempt_at.is_(None), SS.next_attempt_at <= now))

    def _claim_paced(self, now: datetime, limit: int) -> list[Claim]:
        """Claim due rows across mailboxes fairly, each up to what its pace allows now.

        First the mailboxes with due rows are found (one index probe per rep, however many
        rows are due), then the batch is split between them round-robin
        (:func:`pacing.fair_shares`), least recently claimed mailbox first, and each share
        is claimed in a short transaction of its own under the mailbox's ``mailbox_pace`` row
        lock (``SKIP LOCKED``: a mailbox another worker is claiming for or sending from
        right now is left to it). What a mailbox cannot use is shared again among the others.
        """
        if limit <= 0:
            return []
        # One index probe per rep: the rep's first row in (owner_id, status, due_at) order
        # (the ORDER BY makes the planner use that index, never a scan of every due row,
        # however large the backlog after a bulk launch).
        def probe(*where: Any) -> Any:
            return select(SS.id).where(SS.owner_id == User.id, *where)\
                .order_by(SS.due_at).limit(1).scalar_subquery()

        with self._tx() as s:  # reads only: nothing here waits on another worker
            found = [r for r in s.execute(
                select(User.id, User.org_id, probe(self._due(now)).label("due"),
                       probe(SS.status == SendStatus.DRAFTED, self._free(now))
                       .label("drafted")).order_by(User.id)).all()
                     if r.due is not None or r.drafted is not None]
            ids = [r.id for r in found]
            paces = {p.owner_id: p for p in s.scalars(
                select(MailboxPace).where(MailboxPace.owner_id.in_(ids)))} if ids else {}
            in_flight = self._in_flight(s, ids, now) if ids else {}
            caps = self._org_caps(s, {r.org_id for r in found})
            s.expunge_all()
        # Transports are looked up outside any transaction (a resolver may call out).
        owners = [r for r in found if self._transport(r.id) is not None]
        missing = [r.id for r in owners if r.id not in paces]
        if missing:
            # Committed on their own, first: an uncommitted insert would make every other
            # worker's insert of the same row wait for this transaction.
            with self._tx() as s:
                self._ensure_pace_rows(s, missing)
            for owner_id in missing:
                paces[owner_id] = MailboxPace(owner_id=owner_id, recent=[], day_count=0)
        epoch = datetime.min.replace(tzinfo=now.tzinfo)
        owners.sort(key=lambda r: (paces[r.id].claimed_at or epoch, r.id))
        rooms = {r.id: self._room(paces[r.id], r.org_id, caps, in_flight.get(r.id, 0), now)
                 for r in owners}
        claims: list[Claim] = []
        active = [r for r in owners if rooms[r.id] > 0]
        # One mailbox per claim transaction: a worker stalled inside a claim holds the pace
        # row of that one mailbox (claiming a group's worth of mailboxes per transaction
        # costs fewer round trips, but measured: one worker stopped there took 27% of the
        # others' throughput, tests/test_dispatch_stall.py).
        chunk = 1
        while len(claims) < limit and active:
            shares = pacing.fair_shares([rooms[r.id] for r in active], limit - len(claims))
            wanted = [(r, share) for r, share in zip(active, shares, strict=True) if share > 0]
            again = []
            for i in range(0, len(wanted), chunk):
                part = wanted[i:i + chunk]
                got = self._claim_owners([(r.id, r.org_id, share, r.drafted is not None)
                                          for r, share in part], now)
                for r, share in part:
                    n = len(got.get(r.id, ()))
                    claims += got.get(r.id, [])
                    rooms[r.id] -= n
                    if n == share and rooms[r.id] > 0:
                        again.append(r)
            active = again
        return claims

    def _room(self, pace_row: MailboxPace, org_id: int, caps: Mapping[int, int | None],
              in_flight: int, now: datetime) -> int:
        """How many more rows of this mailbox may be claimed now (its pace and cap)."""
        transport = self._transport(pace_row.owner_id)
        cap = pacing.effective_cap(self.settings.daily_cap, caps.get(org_id),
                                   getattr(transport, "daily_limit", None))
        return pacing.free_slots(self._state(pace_row), now, self.settings.pace,
                                 cap) - in_flight

    @staticmethod
    def _in_flight(s: Session, owner_ids: list[int], now: datetime) -> dict[int, int]:
        """Rows of these mailboxes claimed or drafted under a live lease (not yet paced)."""
        found = s.execute(
            select(SS.owner_id, func.count()).where(
                SS.owner_id.in_(owner_ids),
                SS.status.in_((SendStatus.CLAIMED, SendStatus.DRAFTED)),
                SS.lease_expires_at > now).group_by(SS.owner_id)).all()
        return {owner: int(n) for owner, n in found}

    def _claim_owners(self, wanted: list[tuple[int, int, int, bool]],
                      now: datetime) -> dict[int, list[Claim]]:
        """Claim up to its share of each of a few mailboxes' oldest due rows, in one transaction.

        ``wanted`` holds (owner, org, share, has drafted rows to resume). A mailbox whose
        pace row another worker holds (claiming for it or marking its emails ``sending``
        right now) is skipped, never waited for.
        """
        out: dict[int, list[Claim]] = {}
        values = {"status": case((SS.status == SendStatus.SCHEDULED, SendStatus.CLAIMED.value),
                                 else_=SS.status), "updated_at": now}
        with self._tx() as s:
            locked = {p.owner_id: p for p in s.scalars(
                select(MailboxPace).where(MailboxPace.owner_id.in_([w[0] for w in wanted]))
                .order_by(MailboxPace.owner_id).with_for_update(skip_locked=True)
                .execution_options(populate_existing=True))}
            if not locked:
                return out
            in_flight = self._in_flight(s, list(locked), now)
            caps = self._org_caps(s, {w[1] for w in wanted})
            for owner_id, org_id, share, drafted in wanted:
                pace_row = locked.get(owner_id)
                if pace_row is None:
                    continue
                room = min(share, self._room(pace_row, org_id, caps,
                                             in_flight.get(owner_id, 0), now))
                if room <= 0:
                    continue
                ready = self._sendable(now) if drafted else self._due(now)
                got = claim(s, SS, ready=and_(SS.owner_id == owner_id, ready),
                            order_by=SS.due_at, now=now, lease=self.settings.lease,
                            limit=room, values=values)
                if got:
                    out[owner_id] = got
            if out:
                s.execute(update(MailboxPace).where(MailboxPace.owner_id.in_(list(out)))
                          .values(claimed_at=now))
                self.crash("in_claim")
        return out

    @staticmethod
    def _ensure_pace_rows(s: Session, owner_ids: list[int]) -> None:
        have = set(s.scalars(select(MailboxPace.owner_id)
                             .where(MailboxPace.owner_id.in_(owner_ids))))
        missing = [{"owner_id": o, "recent": [], "day_count": 0}
                   for o in owner_ids if o not in have]
        if not missing:
            return
        dialect = s.get_bind().dialect.name
        if dialect == "postgresql":
            stmt: Any = postgresql.insert(MailboxPace).on_conflict_do_nothing()
        else:
            stmt = sqlite.insert(MailboxPace).on_conflict_do_nothing()
        s.execute(stmt, missing)

    def _org_caps(self, s: Session, org_ids: set[int]) -> dict[int, int | None]:
        """Each org's own daily cap (None: the default), read once per pass."""
        missing = org_ids - set(self._caps)
        if missing:
            found = dict(s.execute(select(OrgSendPolicy.org_id, OrgSendPolicy.daily_cap)
                                   .where(OrgSendPolicy.org_id.in_(missing))).all())
            for org in missing:
                self._caps[org] = found.get(org)
        return {org: self._caps[org] for org in org_ids}

    # -- one row -------------------------------------------------------------------------

    def process(self, held: _Held) -> str:
        """Move one claimed row as far as it can go now; returns the outcome's name."""
        return self.process_group([held])[0]

    def process_group(self, helds: list[_Held]) -> list[str]:
        """Move a group of claimed rows through the send protocol together.

        The protocol is the same as for one row — the draft ids are committed before anyone
        is marked ``sending``, ``sending`` is committed (durably, with the pace slots)
        before any provider send, and ``sent`` is committed after — but each step's writes
        for the whole group share one transaction. A crash in the middle leaves each row in
        a state the sweep and reconciliation already handle. Returns one outcome per row.
        """
        outcomes: dict[int, str] = {}
        jobs: list[_Job] = []
        for held, row, transport, content in self._load(helds):
            key = held.claim.id
            if row is None:
                outcomes[key] = "lost"
            elif transport is None:
                # The mailbox went away since the claim: put the row back to wait.
                back = (SendStatus.SCHEDULED if row.status is SendStatus.CLAIMED
                        else row.status)
                self._write(held, {"status": back}, finish=True)
                outcomes[key] = "waiting"
            elif row.status is SendStatus.UNCERTAIN:
                outcomes[key] = self._reconcile(held, row, transport, content)
            else:
                job = self._draft(held, row, transport, content)
                if isinstance(job, str):
                    outcomes[key] = job
                else:
                    jobs.append(job)
        fresh = [j for j in jobs if j.values is not None]
        if fresh:
            kept = self._write_many([(j.held, j.values or {}) for j in fresh])
            for job in fresh:
                if job.held.claim.id in kept:
                    job.status = SendStatus.DRAFTED
                else:
                    outcomes[job.held.claim.id] = "lost"
            jobs = [j for j in jobs if j.held.claim.id not in outcomes]
            self.crash("after_draft")
        sending = self._mark_sending(jobs)
        for job in jobs:
            marked = sending[job.held.claim.id]
            if marked == "lost":
                outcomes[job.held.claim.id] = "lost"
            elif isinstance(marked, datetime):
                # No slot now: wait, still drafted, until the pace or the cap allows it.
                if job.status is SendStatus.CLAIMED:
                    _check(job.status, SendStatus.DRAFTED)
                ok = self._write(job.held, {"status": SendStatus.DRAFTED,
                                            "next_attempt_at": marked}, finish=True)
                outcomes[job.held.claim.id] = "deferred" if ok else "lost"
        jobs = [j for j in jobs if j.held.claim.id not in outcomes]
        if jobs:
            self.crash("after_sending")
        done: list[tuple[_Job, Sent]] = []
        refused: dict[int, TransportError] = {}
        for job in jobs:
            key = job.held.claim.id
            if job.row.owner_id in refused:
                # The mailbox refused a moment ago (daily limit, credential): not sent.
                outcomes[key] = self._pause(job.held, job.row, SendStatus.SENDING,
                                            refused[job.row.owner_id])
                continue
            if not self._fresh(job.held):
                # Stalled past the margin: no call; the sweep makes it uncertain,
                # reconciliation finds the draft and schedules it again.
                log.warning("send %d: too little of the lease is left to send; not sending",
                            key)
                outcomes[key] = "lost"
                continue
            try:
                sent = job.transport.send_draft(job.draft, job.message)
            except (TransientError, OutcomeUnknown) as exc:
                outcomes[key] = self._unsure(job.held, job.row, exc)
                continue
            except PermanentError as exc:
                outcomes[key] = self._fail(job.held, job.row, SendStatus.SENDING, exc.reason)
                continue
            except (DailyLimitError, ReauthRequired) as exc:
                # Refused before anything left: back to drafted, the mailbox paused.
                refused[job.row.owner_id] = exc
                outcomes[key] = self._pause(job.held, job.row, SendStatus.SENDING, exc)
                continue
            self.crash("after_provider_send")
            done.append((job, sent))
        if done:
            marked_sent = self._mark_sent_many(done)
            for job, _sent in done:
                key = job.held.claim.id
                outcomes[key] = "sent" if key in marked_sent else "lost"
        return [outcomes[h.claim.id] for h in helds]

    def _load(self, helds: list[_Held]) -> list[tuple[_Held, ScheduledSend | None,
                                                       Transport | None,
                                                       Content | Problem | None]]:
        """The claimed rows still ours, with their transport and email (one transaction)."""
        now = self.clock.now()
        live = [h for h in helds if now < h.expires_at]
        out: dict[int, tuple[_Held, ScheduledSend | None, Transport | None,
                             Content | Problem | None]] = {
            h.claim.id: (h, None, None, None) for h in helds}
        if not live:
            return list(out.values())  # known to be gone: not even a fenced statement
        with self._tx() as s:
            for held in live:
                # Renew first when half the lease is gone, so the row starts with enough
                # lease however long its batch has taken so far.
                if held.expires_at - now < self.settings.lease / 2 and fenced_update(
                        s, SS, held.claim, now=now, values={}, extend=self.settings.lease):
                    held.expires_at = now + self.settings.lease
            by_id = {h.claim.id: h for h in live}
            found = s.execute(
                select(SS, Contact.first_name, Contact.last_name)
                .join(Contact, Contact.id == SS.contact_id, isouter=True)
                .where(SS.id.in_(list(by_id)), SS.lease_expires_at > now)
                .execution_options(populate_existing=True)).all()
            for r in found:
                row = r[0]
                held = by_id[row.id]
                if row.lease_token != held.claim.token:
                    continue
                content: Content | Problem | None = None
                transport = self._transport(row.owner_id)
                if transport is not None and (row.status is not SendStatus.UNCERTAIN
                                              or row.message_id is not None):
                    try:
                        content = _content(s, row, transport, self._box(row.owner_id),
                                           self._senders)
                    except Problem as exc:
                        content = exc
                s.expunge(row)
                row.contact_name = (  # type: ignore[attr-defined]
                    f"{r.first_name or ''} {r.last_name or ''}".strip() or row.to_email)
                out[row.id] = (held, row, transport, content)
        return [out[h.claim.id] for h in helds]

    def _draft(self, held: _Held, row: ScheduledSend, transport: Transport,
               content: Content | Problem | None) -> _Job | str:
        """Build the email and create its draft (unless it has one); or the row's outcome."""
        status = row.status
        try:
            if not isinstance(content, Content):
                raise content or Problem("no content")
            message = self._message(row, content)
        except Problem as exc:
            return self._fail(held, row, status, str(exc))
        if row.draft_id is not None:
            return _Job(held, row, transport, message, Draft(row.draft_id, row.thread_id),
                        status)
        if not self._fresh(held):
            return "lost"
        try:
            draft = transport.create_draft(message)
        except (TransientError, OutcomeUnknown) as exc:
            # Nothing was sent: at worst an orphan draft exists. Retry later.
            return self._retry(held, row, status, exc, back_to=SendStatus.SCHEDULED)
        except TransportError as exc:
            return self._refused(held, row, status, exc)
        if status is not SendStatus.DRAFTED:
            _check(status, SendStatus.DRAFTED)
        values: dict[str, Any] = {"status": SendStatus.DRAFTED, "draft_id": draft.id,
                                  "message_id": message.message_id,
                                  "thread_id": draft.thread_id or row.thread_id}
        if row.subject is None:  # rendered now: kept, so a rebuild is the same email
            values.update(subject=content.subject, html=content.html, text=content.text)
        return _Job(held, row, transport, message, draft, status, values)

    def _write_many(self, items: list[tuple[_Held, Mapping[str, Any]]]) -> set[int]:
        """Fenced writes (renewing each lease) in one statement; the ids still ours."""
        now = self.clock.now()
        with self._tx() as s:
            kept = fenced_update_many(
                s, SS, [(held.claim, {**values, "updated_at": now}) for held, values in items],
                now=now, extend=self.settings.lease)
            if kept:
                self.crash("in_draft_tx")
        for held, _values in items:
            if held.claim.id in kept:
                held.expires_at = now + self.settings.lease
            else:
                log.warning("send %d: lease lost, leaving it to its new holder",
                            held.claim.id)
        return kept

    def _fresh(self, held: _Held) -> bool:
        """Whether enough of the lease remains to start a provider call now."""
        return self.clock.now() < held.expires_at - self.settings.margin

    def _write(self, held: _Held, values: Mapping[str, Any], *, finish: bool = False,
               then: Callable[[Session, datetime], None] | None = None) -> bool:
        """One fenced write (and ``then``, in the same transaction); False if the lease is lost.

        ``finish`` releases the lease; otherwise the lease is renewed from now.
        """
        now = self.clock.now()
        with self._tx() as s:
            vals = {**values, "updated_at": now}
            if finish:
                ok = release(s, SS, held.claim, now=now, values=vals)
            else:
                ok = fenced_update(s, SS, held.claim, now=now, values=vals,
                                   extend=self.settings.lease)
            if not ok:
                s.rollback()
                log.warning("send %d: lease lost, leaving it to its new holder",
                            held.claim.id)
                return False
            if then is not None:
                then(s, now)
        if not finish:
            held.expires_at = now + self.settings.lease
        return True

    def _mark_sending(self, jobs: list[_Job]) -> dict[int, str | datetime | None]:
        """Mark rows ``sending`` and take their pace slots in one durable transaction.

        Per row: None when marked, the moment a slot opens when the pace or the cap is full
        (nothing written for it), or ``"lost"`` when its lease is gone. Pace rows are
        locked in owner order, so concurrent workers cannot deadlock on them; each mailbox's
        pace row is read and written once for all its rows of the group, and the rows are
        marked by one fenced statement.
        """
        out: dict[int, str | datetime | None] = {}
        if not jobs:
            return out
        now = self.clock.now()
        by_owner: dict[int, list[_Job]] = {}
        for job in sorted(jobs, key=lambda j: (j.row.owner_id, j.row.id)):
            _check(job.status, SendStatus.SENDING)
            by_owner.setdefault(job.row.owner_id, []).append(job)
        with self._tx(durable=True) as s:
            reserved: list[_Job] = []
            for owner_jobs in by_owner.values():
                slots = self._reserve(s, owner_jobs, now)
                for job, until in zip(owner_jobs, slots, strict=True):
                    if until is not None:
                        out[job.held.claim.id] = until
                    else:
                        reserved.append(job)
            kept = fenced_update_many(
                s, SS, [(job.held.claim, {"status": SendStatus.SENDING, "updated_at": now})
                        for job in reserved], now=now, extend=self.settings.lease)
            for job in reserved:
                if job.held.claim.id in kept:
                    out[job.held.claim.id] = None
                else:
                    out[job.held.claim.id] = "lost"
                    log.warning("send %d: lease lost before sending", job.held.claim.id)
            if kept:
                self.crash("in_sending_tx")
            if all(v == "lost" or isinstance(v, datetime) for v in out.values()):
                s.rollback()  # nothing to keep (the slots of lost rows are given back)
        for job in jobs:
            if out[job.held.claim.id] is None:
                job.held.expires_at = now + self.settings.lease
        return out

    def _reserve(self, s: Session, jobs: list[_Job], now: datetime) -> list[datetime | None]:
        """Take one slot of the mailbox's pace and cap at ``now`` for each of one rep's rows.

        The mailbox's pace row is locked and read once, the slots are taken in order (None)
        while the pace and the cap allow, a row that gets none gets the moment one opens, and
        the pace row is written once. A pace row another worker holds locked (it is sending
        from this mailbox right now, or stalled in the middle of it) is skipped, never waited
        for: no slot now, every row tries again ``LOCKED_RETRY`` later.
        """
        first = jobs[0].row
        owner_id = first.owner_id
        lock = (select(MailboxPace.recent, MailboxPace.day, MailboxPace.day_count,
                       MailboxPace.paused_until)
                .where(MailboxPace.owner_id == owner_id).with_for_update(skip_locked=True))
        found = s.execute(lock).first()
        if found is None and s.get(MailboxPace, owner_id) is None:
            with self._tx() as own:  # committed at once (see _claim_paced)
                self._ensure_pace_rows(own, [owner_id])
            found = s.execute(lock).first()
        if found is None:
            log.info("mailbox of user %d is busy in another worker; %d emails wait %.0f s",
                     owner_id, len(jobs), LOCKED_RETRY.total_seconds())
            return [now + LOCKED_RETRY] * len(jobs)
        state = pacing.MailboxState(recent=tuple(float(t) for t in found.recent or ()),
                                    day=found.day, day_count=found.day_count,
                                    paused_until=found.paused_until)
        other = self._box(owner_id).paused_until
        if other is not None and (state.paused_until is None or other > state.paused_until):
            state = replace(state, paused_until=other)
        out: list[datetime | None] = []
        taken = False
        for job in jobs:
            cap = pacing.effective_cap(self.settings.daily_cap,
                                       self._org_caps(s, {job.row.org_id})[job.row.org_id],
                                       getattr(job.transport, "daily_limit", None))
            decision = pacing.decide(state, now, self.settings.pace, cap)
            if not decision.allowed:
                out.append(decision.not_before)
                continue
            state = pacing.record_send(state, now, self.settings.pace)
            taken = True
            out.append(None)
        if taken:
            s.execute(update(MailboxPace).where(MailboxPace.owner_id == owner_id)
                      .values(recent=list(state.recent), day=state.day,
                              day_count=state.day_count))
        return out

    def _mark_sent_many(self, done: list[tuple[_Job, Sent]]) -> set[int]:
        """Record several sent emails (and what each causes) in one transaction.

        The rows are released as ``sent`` by one fenced statement; the Live Feed events of
        plain sends go in with one ``INSERT``; campaign and task sends move their campaign or
        task on one by one, each in a savepoint.
        """
        now = self.clock.now()
        with self._tx() as s:
            kept = fenced_update_many(s, SS, [
                (job.held.claim, {**_sent_values(job.row, job.message.message_id, sent,
                                                 job.draft, sent.sent_at or now, now),
                                  "lease_token": None, "lease_expires_at": None})
                for job, sent in done], now=now)
            if kept:
                self.crash("in_sent_tx")
            events: list[dict[str, Any]] = []
            for job, sent in done:
                row = job.row
                sent_at = sent.sent_at or now
                if row.id not in kept:
                    log.warning("send %d: lease lost before recording it sent; "
                                "reconciliation will", row.id)
                    continue
                if row.enrollment_step_id is None and row.task_id is None:
                    events.append(_sent_event(row, sent_at))
                    continue
                # A campaign or task that cannot take the news must not undo the "sent".
                try:
                    with s.begin_nested():
                        self._after_sent(s, row, sent_at, job.message.message_id, now)
                except Exception as exc:  # reported on the row and logged, not swallowed
                    log.exception("send %d was sent but its campaign or task could not "
                                  "be moved on", row.id)
                    s.execute(update(SS).where(SS.id == row.id).values(
                        last_error=f"sent; moving the campaign on failed: {exc}"[:2000]))
            record_many(s, events)
        return kept

    def _mark_sent(self, held: _Held, row: ScheduledSend, message_id: str, sent: Sent,
                   draft: Draft | None) -> str:
        sent_at = sent.sent_at or self.clock.now()

        def follow_on(s: Session, now: datetime) -> None:
            self._after_sent(s, row, sent_at, message_id, now)

        ok = self._write(held, {"status": SendStatus.SENT, "sent_at": sent_at,
                                "provider_message_id": sent.provider_id,
                                "thread_id": sent.thread_id or (draft.thread_id if draft else None)
                                or row.thread_id,
                                "message_id": message_id, "reason": None, "last_error": None,
                                "next_attempt_at": None},
                         finish=True, then=follow_on)
        return "sent" if ok else "lost"

    def _after_sent(self, s: Session, row: ScheduledSend, sent_at: datetime, message_id: str,
                    now: datetime) -> None:
        """What a sent email causes, in the transaction that records it."""
        if row.enrollment_step_id is not None:
            send_finished(s, row.id, now)
            return
        record_many(s, [_sent_event(row, sent_at)])
        if row.task_id is not None:
            from server.tasks.service import complete_task

            task = s.get(Task, row.task_id, populate_existing=True)
            user = s.get(User, row.owner_id)
            if task is not None and user is not None and task.status is TaskStatus.OPEN:
                complete_task(s, user, row.task_id, now=now, sent_at=sent_at,
                              message_id=message_id, via=CompletedVia.WEB)

    # -- failures ------------------------------------------------------------------------

    def _fail(self, held: _Held, row: ScheduledSend, status: SendStatus, reason: str) -> str:
        _check(status, SendStatus.FAILED)
        reason = reason[:2000]

        def feed(s: Session, now: datetime) -> None:
            _failed_event(s, row, reason, SendStatus.FAILED)

        ok = self._write(held, {"status": SendStatus.FAILED, "reason": f"failed: {reason}",
                                "last_error": reason}, finish=True, then=feed)
        return "failed" if ok else "lost"

    def _retry(self, held: _Held, row: ScheduledSend, status: SendStatus,
               exc: TransportError, *, back_to: SendStatus) -> str:
        retries = row.retries + 1
        if pacing.gives_up(retries, self.settings.backoff):
            return self._fail(held, row, status,
                              f"gave up after {retries} attempts: {exc.reason}")
        delay = pacing.retry_delay(retries, getattr(exc, "retry_after", None),
                                   self.settings.backoff, self.draw)
        if back_to is not status:
            _check(status, back_to)
        ok = self._write(held, {"status": back_to, "retries": retries,
                                "last_error": exc.reason[:2000],
                                "next_attempt_at": self.clock.now() + timedelta(seconds=delay)},
                         finish=True)
        return "retried" if ok else "lost"

    def _unsure(self, held: _Held, row: ScheduledSend, exc: TransportError) -> str:
        """The send's answer is not known (or came after the request left): reconcile first."""
        retries = row.retries + 1
        delay = pacing.retry_delay(retries, getattr(exc, "retry_after", None),
                                   self.settings.backoff, self.draw)
        _check(SendStatus.SENDING, SendStatus.UNCERTAIN)
        ok = self._write(held, {"status": SendStatus.UNCERTAIN, "retries": retries,
                                "last_error": exc.reason[:2000],
                                "next_attempt_at": self.clock.now() + timedelta(seconds=delay)},
                         finish=True)
        return "uncertain" if ok else "lost"

    def _refused(self, held: _Held, row: ScheduledSend, status: SendStatus,
                 exc: TransportError) -> str:
        if isinstance(exc, DailyLimitError | ReauthRequired):
            return self._pause(held, row, status, exc)
        return self._fail(held, row, status, exc.reason)

    def _pause(self, held: _Held, row: ScheduledSend, status: SendStatus,
               exc: TransportError) -> str:
        daily = isinstance(exc, DailyLimitError)
        span = self.settings.daily_limit_pause if daily else self.settings.reauth_pause
        back = SendStatus.SCHEDULED if status is SendStatus.CLAIMED else SendStatus.DRAFTED
        if back is not status:
            _check(status, back)
        what = "daily sending limit reached" if daily else "the mailbox must be reconnected"

        def pause(s: Session, now: datetime) -> None:
            until = now + span
            self._ensure_pace_rows(s, [row.owner_id])
            s.execute(update(MailboxPace).where(MailboxPace.owner_id == row.owner_id)
                      .values(paused_until=until, pause_reason=f"{what}: {exc.reason}"[:2000]))
            _pause_mailbox(s, row.owner_id, f"{what}: {exc.reason}", now, span, daily)
            log.warning("mailbox of user %d paused until %s: %s", row.owner_id,
                        until.isoformat(), exc.reason)

        ok = self._write(held, {"status": back, "last_error": exc.reason[:2000],
                                "next_attempt_at": self.clock.now() + span},
                         finish=True, then=pause)
        return "deferred" if ok else "lost"

    # -- reconciliation ------------------------------------------------------------------

    def _reconcile(self, held: _Held, row: ScheduledSend, transport: Transport,
                   content: Content | Problem | None) -> str:
        if row.message_id is None:
            # Never got as far as a built message: it cannot have left.
            return self._rescheduled(held)
        try:
            if not isinstance(content, Content):
                raise content or Problem("no content")
            message = self._message(row, content)
        except Problem as exc:
            return self._attention(held, row, f"the email can no longer be rebuilt to check "
                                              f"it: {exc}")
        draft = Draft(row.draft_id, row.thread_id) if row.draft_id else None
        if not self._fresh(held):
            return "lost"
        try:
            answer: Reconciled = transport.reconcile(message, draft)
        except (TransientError, OutcomeUnknown) as exc:
            delay = pacing.retry_delay(row.retries + 1, getattr(exc, "retry_after", None),
                                       self.settings.backoff, self.draw)
            ok = self._write(held, {"last_error": f"reconcile: {exc.reason}"[:2000],
                                    "next_attempt_at": self.clock.now()
                                    + timedelta(seconds=delay)}, finish=True)
            return "retried" if ok else "lost"
        except TransportError as exc:
            return self._attention(held, row, f"could not check whether the email left: "
                                              f"{exc.reason}")
        if answer.outcome is Outcome.SENT:
            sent = answer.sent or Sent(provider_id=row.provider_message_id or "",
                                       thread_id=row.thread_id)
            return self._mark_sent(held, row, message.message_id, sent, draft)
        if answer.outcome is Outcome.NOT_SENT:
            return self._rescheduled(held)
        return self._attention(held, row, "could not tell whether the email left; check the "
                                          "mailbox's Sent folder before sending it again")

    def _rescheduled(self, held: _Held) -> str:
        _check(SendStatus.UNCERTAIN, SendStatus.SCHEDULED)
        # The draft (if any) is kept and reused; the backoff already waited is not repeated.
        ok = self._write(held, {"status": SendStatus.SCHEDULED, "next_attempt_at": None},
                         finish=True)
        return "rescheduled" if ok else "lost"

    def _attention(self, held: _Held, row: ScheduledSend, reason: str) -> str:
        _check(SendStatus.UNCERTAIN, SendStatus.NEEDS_ATTENTION)

        def feed(s: Session, now: datetime) -> None:
            _failed_event(s, row, reason, SendStatus.NEEDS_ATTENTION)

        ok = self._write(held, {"status": SendStatus.NEEDS_ATTENTION,
                                "reason": f"needs attention: {reason}"[:2000]},
                         finish=True, then=feed)
        return "needs_attention" if ok else "lost"

    # -- the email -----------------------------------------------------------------------

    def _message(self, row: ScheduledSend, content: Content) -> OutboundMessage:
        """Build the MIME; a send that has a Message-ID already keeps it (same email)."""
        domain = nonce = None
        if row.message_id:
            m = RELAY_MESSAGE_ID.match(row.message_id)
            if m is None:
                raise Problem(f"stored Message-ID {row.message_id!r} is not one of ours")
            nonce, domain = m.group(2), m.group(3)
        try:
            return build_message(
                send_id=row.id, sender=content.sender, to=[row.to_email],
                subject=content.subject, html=content.html or None, text=content.text,
                date=self.clock.now(), task_id=row.task_id, in_reply_to=content.in_reply_to,
                thread_id=content.thread_hint, domain=domain, nonce=nonce)
        except HeaderError as exc:
            raise Problem(str(exc)) from None


def _state(pace_row: MailboxPace) -> pacing.MailboxState:
    return pacing.MailboxState(recent=tuple(float(t) for t in pace_row.recent or ()),
                               day=pace_row.day, day_count=pace_row.day_count,
                               paused_until=pace_row.paused_until)


def _sent_event(row: ScheduledSend, sent_at: datetime) -> dict[str, Any]:
    """The Live Feed entry of a sent email (for ``record_many``)."""
    who = getattr(row, "contact_name", None) or row.to_email
    return {"org_id": row.org_id, "owner_id": row.owner_id, "kind": EventKind.SEND_SENT,
            "summary": f"Email to {who} sent",
            "data": {"send_id": row.id, "task_id": row.task_id,
                     "campaign_id": row.campaign_id, "contact_id": row.contact_id,
                     "sent_at": sent_at.isoformat()}}


def _failed_event(s: Session, row: ScheduledSend, reason: str, status: SendStatus) -> None:
    """The Live Feed entry of a send that failed or needs the rep's attention."""
    contact = s.get(Contact, row.contact_id)
    who = contact_name(contact) if contact is not None else row.to_email
    verb = "failed" if status is SendStatus.FAILED else "needs attention"
    record(s, org_id=row.org_id, owner_id=row.owner_id, kind=EventKind.SEND_FAILED,
           summary=f"Email to {who} {verb}: {reason}"[:500],
           data={"send_id": row.id, "task_id": row.task_id, "campaign_id": row.campaign_id,
                 "contact_id": row.contact_id, "status": status.value, "reason": reason})


def _pause_mailbox(s: Session, owner_id: int, reason: str, now: datetime, span: timedelta,
                   daily: bool) -> None:
    """Show the pause (or the lost credential) on the rep's connected mailbox, if any."""
    try:
        from server.mail import mailboxes
    except ImportError:  # the mailbox tables are not part of this build
        return
    if daily:
        mailboxes.pause_owner_mailbox(s, owner_id, reason, now,
                                      hours=span.total_seconds() / 3600)
    else:
        mailboxes.mark_needs_reauth_for_owner(s, owner_id, reason, now)


def _sender_of(user: User, box: _Box) -> str:
    return formataddr((box.name or user.name or "", box.address or user.email))


def _previous_email(s: Session, step: EnrollmentStep) -> tuple[EnrollmentStep | None,
                                                                ScheduledSend | None,
                                                                Task | None]:
    prev = s.scalar(select(EnrollmentStep).where(
        EnrollmentStep.enrollment_id == step.enrollment_id,
        EnrollmentStep.position == step.position - 1))
    if prev is None:
        return None, None, None
    send = s.scalar(select(SS).where(SS.enrollment_step_id == prev.id))
    task = s.scalar(select(Task).where(Task.enrollment_step_id == prev.id))
    return prev, send, task


def _content(s: Session, row: ScheduledSend, transport: Transport, box: _Box,
             senders: dict[int, str]) -> Content:
    """The email of a send: stored (task emails, or rendered once before), or rendered."""
    step_id = row.enrollment_step_id
    plain = row.subject is not None and step_id is None and row.task_id is None
    if plain and row.owner_id in senders:
        return Content(senders[row.owner_id], row.subject or "", row.html or "",
                       row.text or "")
    user = s.get(User, row.owner_id)
    if user is None:
        raise Problem("the sending rep no longer exists")
    sender = senders[row.owner_id] = _sender_of(user, box)
    if step_id is None and row.task_id is not None:
        step_id = s.scalar(select(Task.enrollment_step_id).where(Task.id == row.task_id))
    step = s.get(EnrollmentStep, step_id) if step_id is not None else None
    cstep = prev_cstep = None
    if step is not None:
        enrollment = s.get(Enrollment, step.enrollment_id)
        assert enrollment is not None
        cstep = s.scalar(select(CampaignStep).where(
            CampaignStep.campaign_id == enrollment.campaign_id,
            CampaignStep.position == step.position))
        if cstep is not None and cstep.follow_up:
            prev_cstep = s.scalar(select(CampaignStep).where(
                CampaignStep.campaign_id == enrollment.campaign_id,
                CampaignStep.position == step.position - 1))
    in_reply_to = hint = None
    prev_send = prev_task = prev_step = None
    if step is not None and prev_cstep is not None:
        prev_step, prev_send, prev_task = _previous_email(s, step)
        if prev_send is not None and prev_send.status is SendStatus.SENT:
            in_reply_to = prev_send.message_id
            kind = getattr(transport, "kind", "")
            hint = prev_send.provider_message_id if kind == "graph" else prev_send.thread_id
        elif prev_task is not None and prev_task.status is TaskStatus.DONE:
            in_reply_to = prev_task.message_id
    if row.subject is not None:
        return Content(sender, row.subject, row.html or "", row.text or "", in_reply_to, hint)
    # An automatic campaign email: its step's template rendered for the contact (E4–E6),
    # with the previous email's template quoted below for a follow-up (E2, E3).
    contact = s.get(Contact, row.contact_id)
    if contact is None or cstep is None or cstep.template_id is None:
        raise Problem("the campaign step has no template to send")
    template = s.get(Template, cstep.template_id)
    if template is None:
        raise Problem("the step's template was deleted")
    fields = {"first_name": contact.first_name, "last_name": contact.last_name,
              "title": contact.title, "company": contact.company, "email": contact.email,
              "custom_fields": contact.custom_fields or {}}
    me = {"name": user.name, "title": user.title, "email": user.email}
    try:
        own = render_email(template.subject, template.body_html, fields, me)
        missing = list(own.missing)
        subject, html, text = own.subject, own.html, own.text
        if prev_cstep is not None and prev_cstep.template_id is not None and prev_step:
            prev_tpl = s.get(Template, prev_cstep.template_id)
            if prev_tpl is not None:
                earlier = render_email(prev_tpl.subject, prev_tpl.body_html, fields, me)
                missing += earlier.missing
                prev = PreviousEmail(
                    template=TemplateText(prev_tpl.subject, prev_tpl.body_html),
                    done=prev_step.status is StepStatus.DONE,
                    sent_at=prev_send.sent_at if prev_send is not None else (
                        prev_task.sent_at if prev_task is not None else None),
                    done_at=prev_step.done_at, planned_at=prev_step.planned_at)
                quoted_html, quoted_text = quote_block(earlier, previous_moment(prev, utcnow()),
                                                       me, user.timezone)
                if not subject.strip():
                    subject = reply_subject(earlier.subject)
                html = f"{html}\n{quoted_html}" if html else quoted_html
                text = f"{text.rstrip()}\n\n{quoted_text}" if text.strip() else quoted_text
    except (TemplateInvalid, OutputTooLarge) as exc:
        raise Problem(f"the template cannot be rendered: {exc}") from None
    if missing:
        raise Problem(f"missing field {', '.join(dict.fromkeys(missing))}")
    if own.prompts:
        raise Problem("the template has a field prompt {{! …}}; an automatic email cannot "
                      "fill it in")
    return Content(sender, subject, html, text, in_reply_to, hint)


def with_settings(dispatcher: Dispatcher, **changes: Any) -> Dispatcher:
    """A copy of ``dispatcher`` with some settings changed (tests and the benchmark)."""
    return Dispatcher(dispatcher.sessions, dispatcher.resolver,
                      settings=replace(dispatcher.settings, **changes),
                      clock=dispatcher.clock, draw=dispatcher.draw, crash=dispatcher.crash)
