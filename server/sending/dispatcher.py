"""The outbox dispatcher: claims due sends under a lease and sends each at most once.

States (``SEND_TRANSITIONS`` in :mod:`server.sending.models`)::

    scheduled → claimed → drafted → sending → sent
                   ↘ (refused: retried)  ↖ (refused, or never started)
                                          ↘ (unknown outcome) uncertain → sent | scheduled
                                                                         | needs_attention
    any step → failed (permanent error, or too many transient ones)

**The send protocol.** The Message-ID of a claimed row is committed before its first draft
is made, so every draft of the email carries the same one (an earlier attempt's draft is
found by it and removed before drafting again). The draft id is committed (fenced by the
lease, renewing it). Then the rows of a group are sent **one at a time**: the group's pace
slots are taken in one durable transaction that also marks its first row ``sending``; each
provider answer is recorded in the durable transaction that also marks the next row
``sending`` — ``sent`` together with what follows from it (the campaign moves on through
:func:`server.campaigns.progress.send_finished`, a task email completes its task). So an
email the provider accepted is recorded at once, and at most one row per worker is ever
``sending``. Every provider call happens only after a committed fenced write and only while
at least ``margin`` of that lease remains, so a worker that stalled past its lease calls
nothing and, since every write is fenced by the lease token, writes nothing either.

**Refusals are retried, unknown outcomes reconciled.** A refusal after which the provider
cannot have taken the email (``TransientError``: an SMTP 4xx to any command or to the end of
the data, a connection lost before the end of the data, a Gmail/Graph 429, or a 5xx whose
draft is provably still there) sends the row back to ``drafted`` (its draft kept) with a
backoff, up to ``SEND_MAX_RETRIES``; a ``PermanentError`` fails it. Only an answer lost after
the request may have been acted on (``OutcomeUnknown``: a connection lost after the end of
the data, a worker killed while ``sending``) makes it ``uncertain``; before anything is
retried the transport is asked: the draft still exists → not sent → ``scheduled`` again
(reusing the draft); found in Sent → ``sent``; not known → ``needs_attention``, with a
reason that fits the mailbox (an SMTP-only mailbox has no Sent folder to check).

**Never started means given back.** Rows of a group whose provider call never started — a
stop was requested (``stop_requested``), the mailbox refused (daily limit, credential), too
little lease was left — go back with their lease released: ``drafted`` rows stay
``drafted`` (their draft kept), ``claimed`` ones become ``scheduled``; never ``uncertain``.

Each outcome is logged on ``relay.dispatch`` as one line: ``send outcome send=<id>
mailbox=<owner id> provider=<smtp|google|microsoft|outbox|sink> outcome=<sent|retried|failed|
uncertain|needs_attention|deferred|returned|lost> reason="<short>" attempt=<n>`` (INFO;
WARNING for failures).

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
from email.utils import formataddr, parseaddr
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
from server.leases import (
    Claim,
    claim,
    expired,
    fenced_update,
    fenced_update_many,
    release,
)
from server.leases import sweep as sweep_expired
from server.sending import pacing
from server.sending.headers import (
    RELAY_MESSAGE_ID,
    HeaderError,
    build_message,
    new_message_id,
)
from server.sending.models import (
    SEND_TRANSITIONS,
    MailboxPace,
    OrgSendPolicy,
    ScheduledSend,
    SendStatus,
)
from server.sending.providers.smtp import imap_scope
from server.sending.transport import (
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
from server.tasks.models import CompletedVia, Task, TaskStatus
from server.tasks.tags import tag_for_task

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


def _never() -> bool:
    return False


#: Outcome names as the ``send outcome`` log line says them, and the ones logged as WARNING.
_LOGGED = {"rescheduled": "retried", "waiting": "returned"}
_WARN = frozenset({"failed", "uncertain", "needs_attention", "lost", "retried"})
_PROVIDERS = {"gmail": "google", "graph": "microsoft"}
#: What the sweep writes on a row whose worker's lease ran out while it was ``sending``.
_SWEPT = "the worker's lease ran out while sending"


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
    returned: int = 0
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
    task_tag: str | None = None


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
                 crash: Callable[[str], None] | None = None,
                 stop_requested: Callable[[], bool] | None = None,
                 on_outcome: Callable[[str, str], None] | None = None) -> None:
        self.sessions = sessions
        self.resolver = resolver
        self.settings = settings or DispatchSettings()
        self.clock = clock or SystemClock()
        self.draw = draw or random.random
        self.crash = crash or no_crash
        #: Asked before each provider call and between groups: when it says True, nothing
        #: new starts, unstarted rows go back, and ``run_once`` returns (``relay worker`` on
        #: SIGTERM).
        self.stop_requested: Callable[[], bool] = stop_requested or _never
        #: Told ``(outcome, provider kind)`` of every row processed (metrics).
        self.on_outcome = on_outcome
        self._kinds: dict[int, str] = {}
        self._joined: tuple[Session, datetime] | None = None
        self._why: dict[int, str] = {}
        self._rows: dict[int, tuple[ScheduledSend, Transport | None]] = {}
        self._minted: set[int] = set()
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
        self._kinds = {}
        result = DispatchResult()
        result.swept = self._or_later(self.sweep, 0)
        for _ in range(self.settings.max_batches):
            if self._stopping():
                break
            held = self._or_later(self.claim_batch, [])
            if not held:
                break
            result.claimed += len(held)
            self.crash("after_claim")
            size = max(self.settings.group, 1)
            for i in range(0, len(held), size):
                if self._stopping():
                    # A stop between groups: the rest of the batch goes back unstarted.
                    back: dict[int, str] = {}
                    self._give_back(held[i:], back)
                    for outcome in back.values():
                        result.add(outcome)
                    return result
                group = held[i:i + size]
                outcomes = self._or_later(lambda g=group: self._process_group_scoped(g),
                                          ["deferred"] * len(group))
                for outcome in outcomes:
                    result.add(outcome)
                self._count(group, outcomes)
        return result

    def _count(self, helds: list[_Held], outcomes: list[str]) -> None:
        """Tell ``on_outcome`` each processed row's outcome and its transport's kind."""
        if self.on_outcome is None:
            return
        for held, outcome in zip(helds, outcomes, strict=True):
            self.on_outcome(outcome, self._kinds.get(held.claim.id, "none"))

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

        Rows another transaction holds locked are skipped (:func:`server.leases.sweep`):
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
        # others' throughput, tests/sending/test_dispatcher_stall.py).
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

    def _process_group_scoped(self, helds: list[_Held]) -> list[str]:
        """:meth:`process_group` with one IMAP connection per SMTP+IMAP mailbox of the group.

        Its drafts, filing in Sent and reconciliation lookups all go over that connection
        (``imap_scope``), closed at the end of the group, instead of one or two per email.
        """
        with imap_scope():
            return self.process_group(helds)

    def process_group(self, helds: list[_Held]) -> list[str]:
        """Move a group of claimed rows through the send protocol; one outcome per row.

        The draft ids of the group are committed together before anything is sent. Then the
        group's pace slots are taken in one durable transaction that also marks the first row
        ``sending``; each later row is marked ``sending`` in the durable transaction that
        records the outcome of the one before it, so at most one row of a worker is ever
        ``sending`` and an email the provider accepted is recorded at once. Rows whose
        provider call never started (a stop was requested, the mailbox refused, too little
        lease was left) go back to ``drafted`` (or ``scheduled``) with their lease released.
        A crash in the middle leaves each row in a state the sweep and reconciliation handle.
        """
        outcomes: dict[int, str] = {}
        jobs: list[_Job] = []
        back: list[_Held] = []
        self._minted = set()
        for held, row, transport, content in self._load(helds):
            key = held.claim.id
            if row is None:
                self._why[key] = "the lease was lost"
                self._record(outcomes, held, None, None, "lost")
            elif transport is None:
                # The mailbox went away since the claim: put the row back to wait.
                back_to = (SendStatus.SCHEDULED if row.status is SendStatus.CLAIMED
                           else row.status)
                self._write(held, {"status": back_to}, finish=True)
                self._why[key] = "no connected mailbox"
                self._record(outcomes, held, row, None, "waiting")
            elif self._stopping():
                back.append(held)
                self._rows[key] = (row, transport)
            elif row.status is SendStatus.UNCERTAIN:
                self._record(outcomes, held, row, transport,
                             self._reconcile(held, row, transport, content))
            else:
                job = self._draft(held, row, transport, content)
                if job == "back":
                    back.append(held)
                    self._rows[key] = (row, transport)
                elif isinstance(job, str):
                    self._record(outcomes, held, row, transport, job)
                else:
                    jobs.append(job)
        fresh = [j for j in jobs if j.values is not None]
        if fresh:
            kept = self._write_many([(j.held, j.values or {}) for j in fresh])
            for job in fresh:
                if job.held.claim.id in kept:
                    job.status = SendStatus.DRAFTED
                else:
                    self._why[job.held.claim.id] = "the lease was lost after drafting"
                    self._record(outcomes, job.held, job.row, job.transport, "lost")
            jobs = [j for j in jobs if j.held.claim.id not in outcomes]
            self.crash("after_draft")
        self._send_group(jobs, outcomes)
        if back:
            self._give_back(back, outcomes)
        return [outcomes[h.claim.id] for h in helds]

    def _stopping(self) -> bool:
        """Whether the worker was asked to stop (nothing new is started then)."""
        return bool(self.stop_requested())

    def _record(self, outcomes: dict[int, str], held: _Held, row: ScheduledSend | None,
                transport: Transport | None, outcome: str) -> None:
        """Keep a row's outcome and write its ``send outcome`` log line."""
        key = held.claim.id
        outcomes[key] = outcome
        reason = self._why.pop(key, "") or ""
        if row is None and key in self._rows:
            row, transport = self._rows[key]
        self._rows.pop(key, None)
        word = _LOGGED.get(outcome, outcome)
        level = logging.WARNING if word in _WARN else logging.INFO
        kind = getattr(transport, "kind", None)
        provider = _PROVIDERS.get(kind, kind) if kind else "-"
        short = " ".join(reason.split())[:200].replace("\\", "\\\\").replace('"', '\\"')
        log.log(level, 'send outcome send=%d mailbox=%s provider=%s outcome=%s reason="%s" '
                'attempt=%s', key, row.owner_id if row is not None else "-", provider, word,
                short, row.attempts if row is not None else "-")

    def _send_group(self, jobs: list[_Job], outcomes: dict[int, str]) -> None:
        """Send the drafted rows of a group one at a time (see :meth:`process_group`)."""
        if not jobs:
            return
        for job in jobs:
            self._rows[job.held.claim.id] = (job.row, job.transport)
        if self._stopping():
            self._give_back([j.held for j in jobs], outcomes)
            return
        queue: list[_Job] = []
        refused: dict[int, TransportError] = {}
        now = self.clock.now()
        with self._joined_tx(now, durable=True) as s:
            by_owner: dict[int, list[_Job]] = {}
            for job in sorted(jobs, key=lambda j: (j.row.owner_id, j.row.id)):
                _check(job.status, SendStatus.SENDING)
                by_owner.setdefault(job.row.owner_id, []).append(job)
            waits: dict[int, datetime] = {}
            for owner_jobs in by_owner.values():
                slots = self._reserve(s, owner_jobs, now)
                for job, until in zip(owner_jobs, slots, strict=True):
                    if until is not None:
                        waits[job.held.claim.id] = until
            for job in jobs:
                until = waits.get(job.held.claim.id)
                if until is None:
                    queue.append(job)
                    continue
                # No slot now: wait, still drafted, until the pace or the cap allows it.
                ok = self._write(job.held, {"status": SendStatus.DRAFTED,
                                            "next_attempt_at": until}, finish=True)
                self._why[job.held.claim.id] = f"pace or daily cap: next slot at {until}"
                self._record(outcomes, job.held, job.row, job.transport,
                             "deferred" if ok else "lost")
            current = self._next_sending(s, now, queue, refused, outcomes)
            if current is not None:
                self.crash("in_sending_tx")  # inside the transaction that marks it sending
        while current is not None:
            current = self._send_one(current, queue, refused, outcomes)

    def _send_one(self, job: _Job, queue: list[_Job], refused: dict[int, TransportError],
                  outcomes: dict[int, str]) -> _Job | None:
        """Send the row marked ``sending``; returns the next row marked ``sending``, if any.

        Its outcome and the marking of the next row are committed in one transaction.
        """
        key = job.held.claim.id
        self.crash("after_sending")
        result: Sent | TransportError | None = None
        if not self._fresh(job.held):
            # Stalled past the margin: no call. Back to drafted while the lease is ours
            # (else the sweep makes it uncertain and reconciliation finds the draft).
            log.warning("send %d: too little of the lease is left to send; not sending", key)
        else:
            try:
                result = job.transport.send_draft(job.draft, job.message)
            except TransportError as exc:
                result = exc
            else:
                self.crash("after_provider_send")
                # A send made just now is dated by the dispatcher's clock (the transport's
                # own reading is the same wall clock in production, not the pass's moment).
                result = replace(result, sent_at=None)
        now = self.clock.now()
        with self._joined_tx(now, durable=bool(queue)) as s:
            if (isinstance(result, Sent) and queue and not self._stopping()
                    and queue[0].row.owner_id not in refused):
                # The common case in one statement: this row sent, the next one sending.
                nxt: _Job | None = self._sent_and_next(s, now, job, result, queue, outcomes)
            else:
                outcome = self._settle(job, result, refused)
                self._record(outcomes, job.held, job.row, job.transport, outcome)
                nxt = None
            if nxt is None:
                nxt = self._next_sending(s, now, queue, refused, outcomes)
            if isinstance(result, Sent):
                self.crash("in_sent_tx")  # inside the transaction that records it sent
        if isinstance(result, Sent):
            after = getattr(job.transport, "after_sent", None)
            if after is not None:
                try:
                    after(job.message)
                except Exception:  # noqa: BLE001 - the email left; filing it is best effort
                    log.exception("send %d: sent, but filing it afterwards failed", key)
        return nxt

    def _settle(self, job: _Job, result: Sent | TransportError | None,
                refused: dict[int, TransportError]) -> str:
        """Record what the provider answered for a ``sending`` row (in the joined transaction)."""
        held, row = job.held, job.row
        if result is None:
            _check(SendStatus.SENDING, SendStatus.DRAFTED)
            self._why[held.claim.id] = "too little of the lease was left to send"
            ok = self._write(held, {"status": SendStatus.DRAFTED}, finish=True)
            return "returned" if ok else "lost"
        if isinstance(result, Sent):
            return self._mark_sent(held, row, job.message.message_id, result, job.draft)
        if isinstance(result, TransientError):
            # Refused before it could have been taken: retried from its draft.
            return self._retry(held, row, SendStatus.SENDING, result,
                               back_to=SendStatus.DRAFTED)
        if isinstance(result, PermanentError):
            return self._fail(held, row, SendStatus.SENDING, result.reason)
        if isinstance(result, DailyLimitError | ReauthRequired):
            # Refused before anything left: back to drafted, the mailbox paused.
            refused[row.owner_id] = result
            return self._pause(held, row, SendStatus.SENDING, result)
        return self._unsure(held, row, result)

    def _sent_and_next(self, s: Session, now: datetime, job: _Job, sent: Sent,
                       queue: list[_Job], outcomes: dict[int, str]) -> _Job | None:
        """Record ``job`` sent and mark the next row of ``queue`` ``sending`` (one statement).

        Returns that next row when it is still ours.
        """
        nxt = queue.pop(0)
        _check(nxt.status, SendStatus.SENDING)
        row, message_id = job.row, job.message.message_id
        sent_at = sent.sent_at or now
        kept = fenced_update_many(s.connection(), SS, [  # type: ignore[arg-type]
            (job.held.claim, {**_sent_values(row, message_id, sent, job.draft, sent_at, now),
                              "lease_token": None, "lease_expires_at": None}),
            (nxt.held.claim, {"status": SendStatus.SENDING, "updated_at": now,
                              "lease_expires_at": now + self.settings.lease})], now=now)
        self._why[job.held.claim.id] = f"accepted by the provider as {sent.provider_id}"
        if row.id in kept:
            self._sent_follow_on(s, now, row, sent_at, message_id)
            self._record(outcomes, job.held, row, job.transport, "sent")
        else:
            log.warning("send %d: lease lost, leaving it to its new holder", row.id)
            self._record(outcomes, job.held, row, job.transport, "lost")
        if nxt.held.claim.id not in kept:
            log.warning("send %d: lease lost before sending", nxt.held.claim.id)
            self._why[nxt.held.claim.id] = "the lease was lost before sending"
            self._record(outcomes, nxt.held, nxt.row, nxt.transport, "lost")
            return None
        nxt.held.expires_at = now + self.settings.lease
        nxt.status = SendStatus.SENDING
        self._renew([j.held for j in queue], s, now, outcomes)
        queue[:] = [j for j in queue if j.held.claim.id not in outcomes]
        return nxt

    def _next_sending(self, s: Session, now: datetime, queue: list[_Job],
                      refused: dict[int, TransportError], outcomes: dict[int, str]
                      ) -> _Job | None:
        """Mark the next row of ``queue`` ``sending`` (fenced, renewing its lease).

        Rows of a mailbox that refused a moment ago wait for its pause; when a stop is
        requested, every row left goes back. The leases of the rows still waiting are
        renewed when half of them is gone. Runs in the caller's transaction.
        """
        while queue:
            if self._stopping():
                self._give_back([j.held for j in queue], outcomes)
                queue.clear()
                return None
            job = queue.pop(0)
            key = job.held.claim.id
            if job.row.owner_id in refused:
                # The mailbox refused a moment ago (daily limit, credential): not sent.
                self._record(outcomes, job.held, job.row, job.transport,
                             self._pause(job.held, job.row, job.status,
                                         refused[job.row.owner_id], quiet=True))
                continue
            if fenced_update(s.connection(), SS, job.held.claim, now=now,  # type: ignore[arg-type]
                             values={"status": SendStatus.SENDING, "updated_at": now},
                             extend=self.settings.lease):
                job.held.expires_at = now + self.settings.lease
                job.status = SendStatus.SENDING
                self._renew([j.held for j in queue], s, now, outcomes)
                queue[:] = [j for j in queue if j.held.claim.id not in outcomes]
                return job
            log.warning("send %d: lease lost before sending", key)
            self._why[key] = "the lease was lost before sending"
            self._record(outcomes, job.held, job.row, job.transport, "lost")
        return None

    def _renew(self, helds: list[_Held], s: Session, now: datetime,
               outcomes: dict[int, str]) -> None:
        """Renew the leases of waiting rows of which half is gone (one statement)."""
        due = [h for h in helds if h.expires_at - now < self.settings.lease / 2]
        if not due:
            return
        kept = fenced_update_many(s, SS, [(h.claim, {}) for h in due], now=now,
                                  extend=self.settings.lease)
        for held in due:
            if held.claim.id in kept:
                held.expires_at = now + self.settings.lease
            else:
                self._why[held.claim.id] = "the lease was lost while waiting to send"
                self._record(outcomes, held, None, None, "lost")

    def _give_back(self, helds: list[_Held], outcomes: dict[int, str]) -> None:
        """Unstarted claimed rows go back with their lease released (one fenced statement).

        ``claimed`` → ``scheduled``; ``drafted`` and ``uncertain`` keep their state (and
        their draft). Runs in the joined transaction when there is one.
        """
        if not helds:
            return
        back = case((SS.status == SendStatus.CLAIMED, SendStatus.SCHEDULED.value),
                    else_=SS.status)

        # The claim's attempt is not counted: the row was never started. (One expression
        # object for every row, so the statement sets it as a shared value.)
        uncounted = SS.attempts - 1

        def run(s: Session, now: datetime) -> set[int]:
            return fenced_update_many(s, SS, [
                (h.claim, {"status": back, "lease_token": None, "lease_expires_at": None,
                           "attempts": uncounted, "updated_at": now}) for h in helds], now=now)

        if self._joined is not None:
            kept = run(*self._joined)
        else:
            now = self.clock.now()
            with self._tx() as s:
                kept = run(s, now)
        for held in helds:
            key = held.claim.id
            self._why[key] = ("a stop was requested" if key in kept
                              else "the lease was lost before it could be given back")
            self._record(outcomes, held, None, None, "returned" if key in kept else "lost")

    @contextmanager
    def _joined_tx(self, now: datetime, *, durable: bool) -> Iterator[Session]:
        """One transaction that every ``_write`` inside joins (one commit for all of them)."""
        with self._tx(durable=durable) as s:
            self._joined = (s, now)
            try:
                yield s
            finally:
                self._joined = None

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
                self._kinds[row.id] = getattr(transport, "kind", None) or "none"
                if transport is not None and (row.status is not SendStatus.UNCERTAIN
                                              or row.message_id is not None):
                    try:
                        content = _content(s, row, transport, self._box(row.owner_id),
                                           self._senders)
                        if row.task_id is not None:  # X-Relay-Task: the opaque tag
                            content = replace(
                                content, task_tag=tag_for_task(s, row.task_id))
                    except Problem as exc:
                        content = exc
                s.expunge(row)
                row.contact_name = (  # type: ignore[attr-defined]
                    f"{r.first_name or ''} {r.last_name or ''}".strip() or row.to_email)
                out[row.id] = (held, row, transport, content)
            self._mint(s, now, [(out[i][0], out[i][1], out[i][3]) for i in by_id])
        return [out[h.claim.id] for h in helds]

    def _mint(self, s: Session, now: datetime,
              items: list[tuple[_Held, ScheduledSend | None, Content | Problem | None]]
              ) -> None:
        """Give each row about to be drafted for the first time its Message-ID.

        It is committed before any draft exists: every later draft of the email (after a
        crash or a retry) carries the same one, so an earlier draft can always be found by it
        and removed.
        """
        minted: list[tuple[_Held, ScheduledSend, str]] = []
        for held, row, content in items:
            if (row is None or not isinstance(content, Content) or row.message_id
                    or row.draft_id or row.status is not SendStatus.CLAIMED):
                continue
            domain = parseaddr(content.sender)[1].rpartition("@")[2]
            try:
                minted.append((held, row, new_message_id(row.id, domain)))
            except HeaderError:
                continue  # building the email fails later, with its reason
        if not minted:
            return
        kept = fenced_update_many(s, SS, [(h.claim, {"message_id": mid})
                                          for h, _row, mid in minted], now=now)
        for _held, row, mid in minted:
            if row.id in kept:
                row.message_id = mid
                self._minted.add(row.id)

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
            return "back"  # too little lease left to start a call: given back unstarted
        cleanup = getattr(transport, "delete_drafts", None)
        if cleanup is not None and row.id not in self._minted:
            # An earlier attempt may have created a draft and died before recording it:
            # it carries this same Message-ID, so it is found and removed first.
            try:
                cleanup(message.message_id)
            except (TransientError, OutcomeUnknown) as exc:
                return self._retry(held, row, status, exc, back_to=SendStatus.SCHEDULED)
            except TransportError as exc:
                return self._refused(held, row, status, exc)
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

        ``finish`` releases the lease; otherwise the lease is renewed from now. Inside
        :meth:`_joined_tx` the write joins that transaction instead of committing its own.
        """
        if self._joined is not None:
            return self._apply(*self._joined, held, values, finish, then)
        now = self.clock.now()
        with self._tx() as s:
            return self._apply(s, now, held, values, finish, then)

    def _apply(self, s: Session, now: datetime, held: _Held, values: Mapping[str, Any],
               finish: bool, then: Callable[[Session, datetime], None] | None) -> bool:
        vals = {**values, "updated_at": now}
        conn: Any = s.connection()  # Core execution: no ORM bookkeeping for one UPDATE
        if finish:
            ok = release(conn, SS, held.claim, now=now, values=vals)
        else:
            ok = fenced_update(conn, SS, held.claim, now=now, values=vals,
                               extend=self.settings.lease)
        if not ok:
            log.warning("send %d: lease lost, leaving it to its new holder", held.claim.id)
            return False
        if then is not None:
            then(s, now)
        if not finish:
            held.expires_at = now + self.settings.lease
        return True

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

    def _mark_sent(self, held: _Held, row: ScheduledSend, message_id: str, sent: Sent,
                   draft: Draft | None) -> str:
        """Record a sent email and what it causes.

        A campaign or task that cannot take the news is reported on the row, never undoing
        the "sent".
        """
        now = self._joined[1] if self._joined is not None else self.clock.now()
        sent_at = sent.sent_at or now

        def follow_on(s: Session, now: datetime) -> None:
            self._sent_follow_on(s, now, row, sent_at, message_id)

        self._why[held.claim.id] = f"accepted by the provider as {sent.provider_id}"
        ok = self._write(held, _sent_values(row, message_id, sent, draft, sent_at, now),
                         finish=True, then=follow_on)
        return "sent" if ok else "lost"

    def _sent_follow_on(self, s: Session, now: datetime, row: ScheduledSend,
                        sent_at: datetime, message_id: str) -> None:
        """What a sent email causes; a campaign or task that cannot take it never undoes it."""
        if row.enrollment_step_id is None and row.task_id is None:
            record_many(s, [_sent_event(row, sent_at)])  # a plain send: its feed event
            return
        try:
            with s.begin_nested():
                self._after_sent(s, row, sent_at, message_id, now)
        except Exception as exc:  # reported on the row and logged, not swallowed
            log.exception("send %d was sent but its campaign or task could not be moved on",
                          row.id)
            s.execute(update(SS).where(SS.id == row.id).values(
                last_error=f"sent; moving the campaign on failed: {exc}"[:2000]))

    def _after_sent(self, s: Session, row: ScheduledSend, sent_at: datetime, message_id: str,
                    now: datetime) -> None:
        """What a sent email causes, in the transaction that records it (:func:`after_sent`)."""
        after_sent(s, row, sent_at, message_id, now)

    # -- failures ------------------------------------------------------------------------

    def _fail(self, held: _Held, row: ScheduledSend, status: SendStatus, reason: str) -> str:
        _check(status, SendStatus.FAILED)
        reason = reason[:2000]
        self._why[held.claim.id] = reason

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
        self._why[held.claim.id] = f"{exc.reason} (retry {retries} in {delay:.0f} s)"
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
        self._why[held.claim.id] = exc.reason
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
               exc: TransportError, *, quiet: bool = False) -> str:
        """Back to wait (drafted, or scheduled when not drafted yet) while the mailbox rests.

        ``quiet`` when the pause itself was already recorded for this mailbox.
        """
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

        self._why[held.claim.id] = f"{what}: {exc.reason}"
        ok = self._write(held, {"status": back, "last_error": exc.reason[:2000],
                                "next_attempt_at": self.clock.now() + span},
                         finish=True, then=None if quiet else pause)
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
            self._why[held.claim.id] = f"reconcile: {exc.reason}"
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
        return self._attention(held, row, _unknown_reason(row, transport))

    def _rescheduled(self, held: _Held) -> str:
        _check(SendStatus.UNCERTAIN, SendStatus.SCHEDULED)
        # The draft (if any) is kept and reused; the backoff already waited is not repeated.
        self._why[held.claim.id] = "reconciled: it did not leave; sent again from its draft"
        ok = self._write(held, {"status": SendStatus.SCHEDULED, "next_attempt_at": None},
                         finish=True)
        return "rescheduled" if ok else "lost"

    def _attention(self, held: _Held, row: ScheduledSend, reason: str) -> str:
        _check(SendStatus.UNCERTAIN, SendStatus.NEEDS_ATTENTION)
        self._why[held.claim.id] = reason

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
                date=self.clock.now(), task_tag=content.task_tag, in_reply_to=content.in_reply_to,
                thread_id=content.thread_hint, domain=domain, nonce=nonce)
        except HeaderError as exc:
            raise Problem(str(exc)) from None


def _unknown_reason(row: ScheduledSend, transport: Transport) -> str:
    """Why an email whose outcome stays unknown needs a person, said for its mailbox."""
    if getattr(transport, "checks_sent", True):
        return ("could not tell whether the email left; check the mailbox's Sent folder "
                "before sending it again")
    if row.last_error == "the worker's lease ran out while sending":
        return ("Relay was interrupted while handing the email to the mail server; it "
                "cannot tell whether it was delivered (this mailbox has no Sent folder "
                "Relay can check)")
    return ("the connection to the mail server was lost after the email was handed over; "
            "Relay cannot tell whether it was delivered (this mailbox has no Sent folder "
            "Relay can check)")


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


def after_sent(s: Session, row: ScheduledSend, sent_at: datetime, message_id: str,
               now: datetime) -> None:
    """What a sent email causes, in the transaction that records it ``sent``.

    A campaign email moves its person on (:func:`server.campaigns.progress.send_finished`,
    which records the Live Feed event); any other email gets its ``send.sent`` event, and a
    task email completes its task if it is still open. Also used when a person confirms that
    an email whose outcome was unknown did leave (:mod:`server.sending.resolve`).
    """
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
        from server.mailboxes import lifecycle as mailboxes
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
                      clock=dispatcher.clock, draw=dispatcher.draw, crash=dispatcher.crash,
                      stop_requested=dispatcher.stop_requested,
                      on_outcome=dispatcher.on_outcome)
