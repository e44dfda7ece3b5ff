"""Processing the sync outbox (``relay worker``) and reading completions back from Salesforce.

A pass claims a batch of ready items under a lease (:mod:`server.leases`), calls
Salesforce for each with no database transaction open, and writes each outcome with a
lease-fenced release. A worker killed at any point leaves its items claimed; when the lease
runs out another pass claims them again, and a retried create first looks for the Task the
dead worker may have made (by the org's external-id field, or by the ``CallObject`` marker),
so a Salesforce Task is never created twice.

Failures: 5xx, timeouts and dropped connections put the item back with a doubling delay;
REQUEST_LIMIT_EXCEEDED pauses the whole org (status ``api_limit``); an expired session is
refreshed once per pass, and when that does not help the org becomes ``needs_reauth``.
In every one of these cases the items wait in the outbox; nothing is dropped. A record
Salesforce refuses (400) is ``failed`` with its reason; a person with no Contact or Lead is
``unmatched``; both are shown on the admin page and retried only by an admin.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from server import leases
from server.accounts.models import User
from server.campaigns.models import Campaign
from server.contacts.models import Contact
from server.crypto import KeyConfigError, KeyRing, app_keyring
from server.db import session_scope
from server.errors import Conflict
from server.salesforce import mapping
from server.salesforce.auth import TokenError
from server.salesforce.client import (
    RateLimited,
    Rejected,
    SalesforceApi,
    SessionExpired,
    Unavailable,
)
from server.salesforce.models import (
    ConnectionStatus,
    SalesforceConnection,
    SyncItem,
    SyncKind,
    SyncStatus,
)
from server.salesforce.service import LIMIT_PAUSE, api_for, fresh_tokens, set_status, store_tokens
from server.tasks.models import CompletedVia, Task, TaskStatus

log = logging.getLogger("relay.salesforce.sync")

LEASE = timedelta(minutes=2)
#: How long an item that waits for its task's own Task to sync is put back for.
WAIT_FOR_TASK = timedelta(seconds=30)
#: Completions are read again this far behind the cursor (Salesforce commits are not ordered).
POLL_OVERLAP = timedelta(minutes=2)

ClientFactory = Callable[[Mapping[str, Any], SalesforceConnection, KeyRing],
                         SalesforceApi]


@dataclass
class SyncResult:
    """What one pass did."""

    claimed: int = 0
    done: int = 0
    retried: int = 0
    unmatched: int = 0
    failed: int = 0
    skipped: int = 0
    completed_back: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    """How an item ends this attempt."""

    status: SyncStatus
    sf_id: str | None = None
    who_id: str | None = None
    reason: str | None = None
    due_at: datetime | None = None


class _Stop(Exception):
    """Stop the org's batch: its connection cannot be used now (the items are put back)."""

    def __init__(self, reason: str, due_at: datetime) -> None:
        super().__init__(reason)
        self.reason = reason
        self.due_at = due_at


def _syncing_orgs(now: datetime) -> Any:
    return select(SalesforceConnection.org_id).where(
        SalesforceConnection.status.in_([ConnectionStatus.CONNECTED, ConnectionStatus.API_LIMIT]),
        or_(SalesforceConnection.paused_until.is_(None),
            SalesforceConnection.paused_until <= now))


def ready(now: datetime) -> Any:
    """Items a pass may claim: due and pending, or claimed by a worker whose lease ran out."""
    return (((SyncItem.status == SyncStatus.PENDING) & (SyncItem.due_at <= now))
            | ((SyncItem.status == SyncStatus.CLAIMED) & leases.expired(SyncItem, now))) \
        & SyncItem.org_id.in_(_syncing_orgs(now))


class _Org:
    """One org's connection during a pass: the client, refreshed at most once."""

    def __init__(self, app: Flask, org_id: int, now: datetime, factory: ClientFactory) -> None:
        self.app, self.org_id, self.now, self.factory = app, org_id, now, factory
        self.ring = app_keyring(app)
        self.refreshed = False
        self.whos: dict[str, str | None] = {}
        self.users: dict[str, str | None] = {}
        with session_scope(app) as s:
            conn = s.scalar(select(SalesforceConnection)
                            .where(SalesforceConnection.org_id == org_id))
        assert conn is not None
        self.conn = conn
        try:
            self.api = factory(app.config, conn, self.ring)
        except (TokenError, KeyConfigError) as exc:
            self._needs_reauth(f"cannot use the stored session: {exc}")

    def _needs_reauth(self, reason: str) -> None:
        with session_scope(self.app) as s:
            conn = s.get(SalesforceConnection, self.conn.id, with_for_update=True)
            assert conn is not None
            set_status(conn, ConnectionStatus.NEEDS_REAUTH, reason, self.now)
        log.warning("Salesforce for org %s needs re-authorisation: %s", self.org_id, reason)
        raise _Stop(reason, self.now)

    def _refresh(self) -> None:
        try:
            tokens = fresh_tokens(self.app.config, self.conn, self.ring, self.now)
        except KeyConfigError as exc:
            self._needs_reauth(f"the stored refresh token cannot be opened: {exc}")
        except TokenError as exc:
            if exc.transient:
                raise _Stop(f"token refresh failed: {exc}", self.now + mapping.backoff(1)) \
                    from None
            self._needs_reauth(f"the session expired and could not be refreshed: {exc}")
        with session_scope(self.app) as s:
            conn = s.get(SalesforceConnection, self.conn.id, with_for_update=True)
            assert conn is not None
            assert self.conn.auth_kind is not None
            store_tokens(s, conn, self.ring, tokens, kind=self.conn.auth_kind,
                         username=self.conn.username, now=self.now)
            self.conn = conn
        self.api = self.factory(self.app.config, self.conn, self.ring)
        log.info("refreshed the Salesforce session of org %s", self.org_id)

    def call(self, fn: Callable[[SalesforceApi], Any], attempts: int = 1) -> Any:
        """Run ``fn`` with the client; an expired session is refreshed once, then reauth."""
        try:
            try:
                return fn(self.api)
            except SessionExpired:
                if self.refreshed:
                    raise
                self.refreshed = True
                self._refresh()
                return fn(self.api)
        except SessionExpired as exc:
            self._needs_reauth(f"Salesforce refused the refreshed session: {exc}")
        except RateLimited as exc:
            with session_scope(self.app) as s:
                conn = s.get(SalesforceConnection, self.conn.id, with_for_update=True)
                assert conn is not None
                set_status(conn, ConnectionStatus.API_LIMIT, f"API limit reached: {exc}",
                           self.now, paused_until=self.now + LIMIT_PAUSE)
            raise _Stop(f"API limit reached: {exc}", self.now) from None
        except Unavailable as exc:
            raise _Stop(str(exc), self.now + mapping.backoff(attempts)) from None

    def who(self, email: str | None) -> str | None:
        """The Contact or Lead Id for an email, looked up once per pass."""
        if not email:
            return None
        key = email.lower()
        if key not in self.whos:
            self.whos[key] = self.call(lambda api: api.find_person(email))
        return self.whos[key]

    def owner(self, email: str | None) -> str | None:
        """The rep's own Salesforce User Id (the Task's OwnerId), looked up once per pass.

        None when the rep has no active Salesforce user: the Task then belongs to the user
        who connected the org.
        """
        if not email:
            return None
        key = email.lower()
        if key not in self.users:
            self.users[key] = self.call(lambda api: api.find_user(email))
        return self.users[key]

    def limited_back_to_connected(self) -> None:
        """After a successful call, an org paused for its API limit is connected again."""
        if self.conn.status is ConnectionStatus.API_LIMIT:
            with session_scope(self.app) as s:
                s.execute(update(SalesforceConnection)
                          .where(SalesforceConnection.id == self.conn.id,
                                 SalesforceConnection.status == ConnectionStatus.API_LIMIT)
                          .values(status=ConnectionStatus.CONNECTED, status_reason=None,
                                  paused_until=None))
            self.conn.status = ConnectionStatus.CONNECTED


def _create(org: _Org, item: SyncItem, fields: dict[str, Any]) -> str:
    """Create the item's Task exactly once, whatever happened on earlier attempts."""
    ext = org.conn.external_id_field
    key = item.external_key
    if ext:
        if item.attempts > 1:
            found = org.call(lambda api: api.find_task(ext, key), item.attempts)
            if found:
                return str(found)
        return str(org.call(lambda api: api.upsert_task(ext, key, fields), item.attempts))
    tagged = dict(fields, CallObject=mapping.marker(key))
    if item.attempts > 1:
        # An earlier attempt may have created it and died before storing the Id.
        found = org.call(lambda api: api.find_task("CallObject", mapping.marker(key)),
                         item.attempts)
        if found:
            return str(found)
    return str(org.call(lambda api: api.create_task(tagged), item.attempts))


def _linked_task_item(s: Session, task_id: int | None) -> SyncItem | None:
    if task_id is None:
        return None
    return s.scalar(select(SyncItem).where(SyncItem.task_id == task_id,
                                           SyncItem.kind == SyncKind.TASK))


def _attempt(org: _Org, claim: leases.Claim, now: datetime) -> Outcome | None:
    """Do one item; None when its lease is no longer ours (another worker has it)."""
    with session_scope(org.app) as s:
        item = s.get(SyncItem, claim.id)
        if item is None or item.lease_token != claim.token:
            return None
        template = org.conn.subject_template
        linked = _linked_task_item(s, item.task_id) if item.kind is not SyncKind.TASK else None
        payload = dict(item.payload or {})
        task = s.get(Task, item.task_id) if item.task_id is not None else None
        if item.kind is SyncKind.TASK:
            if task is None:
                return Outcome(SyncStatus.SKIPPED, reason="the task no longer exists")
            if task.status in (TaskStatus.CANCELLED, TaskStatus.SKIPPED) and item.sf_id is None:
                # Skipped or cancelled before it reached Salesforce: an open Task there would
                # never be closed.
                return Outcome(SyncStatus.SKIPPED,
                               reason=f"the task was {task.status.value} before it synced")
            contact = s.get(Contact, task.contact_id)
            owner = s.get(User, task.owner_id)
            campaign = s.get(Campaign, task.campaign_id)
            assert owner is not None and campaign is not None
            email = contact.email if contact is not None else None
            activity = mapping.Activity(
                activity_type=mapping.ACTIVITY_TYPES[task.type.value],
                activity_subject=task.title, sales_campaign_name=campaign.name,
                sales_campaign_day=task.day, sales_campaign_step=task.step_in_day)
            details, priority, due_at, tz = task.notes, task.priority, task.due_at, owner.timezone
            rep_email: str | None = owner.email
        else:
            contact_id = payload.get("contact_id") or (task.contact_id if task else None)
            owner_id = payload.get("owner_id") or (task.owner_id if task else None)
            contact = s.get(Contact, contact_id) if contact_id else None
            owner = s.get(User, owner_id) if owner_id else None
            email = contact.email if contact is not None else None
            tz = owner.timezone if owner is not None else "UTC"
            rep_email = owner.email if owner is not None else None
            campaign_id = payload.get("campaign_id") or (task.campaign_id if task else None)
            campaign = s.get(Campaign, campaign_id) if campaign_id else None
        linked_state = (linked.status, linked.sf_id, linked.remote_completed_at) \
            if linked is not None else None

    if item.kind is SyncKind.COMPLETE:
        if linked_state is None:
            return Outcome(SyncStatus.SKIPPED, reason="the task was never queued to sync")
        status, sf_id, remote = linked_state
        if remote is not None:
            return Outcome(SyncStatus.SKIPPED, reason="completed in Salesforce first")
        if status in (SyncStatus.PENDING, SyncStatus.CLAIMED):
            return Outcome(SyncStatus.PENDING, reason="waiting for the task to sync",
                           due_at=now + WAIT_FOR_TASK)
        if status is not SyncStatus.DONE or sf_id is None:
            return Outcome(SyncStatus.SKIPPED, reason=f"the task did not sync ({status.value})")
        org.call(lambda api: api.update_task(sf_id, {"Status": "Completed"}), item.attempts)
        return Outcome(SyncStatus.DONE, sf_id=sf_id)

    who = org.who(email)
    if who is None:
        return Outcome(SyncStatus.UNMATCHED,
                       reason=f"no Salesforce Contact or Lead has the email {email or '(none)'}")
    owner_sf_id = org.owner(rep_email)
    owned = {"OwnerId": owner_sf_id} if owner_sf_id else {}
    if item.kind is SyncKind.TASK:
        fields = mapping.task_fields(template=template, activity=activity, details=details,
                                     priority=priority, due_at=due_at, tz=tz, who_id=who)
        fields.update(owned)
        return Outcome(SyncStatus.DONE, sf_id=_create(org, item, fields), who_id=who)

    at = datetime.fromisoformat(payload["at"])
    if item.kind is SyncKind.REPLY:
        fields = mapping.reply_fields(subject=payload.get("subject") or "",
                                      body_text=payload.get("excerpt"), received_at=at, tz=tz,
                                      who_id=who)
        fields.update(owned)
        return Outcome(SyncStatus.DONE, sf_id=_create(org, item, fields), who_id=who)

    activity = mapping.Activity(
        activity_type="Email", activity_subject=payload.get("subject") or "",
        sales_campaign_name=campaign.name if campaign is not None else "",
        sales_campaign_day=payload.get("day"), sales_campaign_step=payload.get("step"))
    fields = mapping.email_fields(template=template, activity=activity,
                                  body_text=payload.get("excerpt"), sent_at=at, tz=tz,
                                  who_id=who)
    fields.update(owned)
    if linked_state is not None:
        status, sf_id, _remote = linked_state
        if status in (SyncStatus.PENDING, SyncStatus.CLAIMED):
            return Outcome(SyncStatus.PENDING, reason="waiting for the task to sync",
                           due_at=now + WAIT_FOR_TASK)
        if status is SyncStatus.DONE and sf_id is not None:
            # The email task's own Salesforce Task becomes the email activity.
            changes = {k: v for k, v in fields.items() if k not in ("WhoId", "OwnerId")}
            org.call(lambda api: api.update_task(sf_id, changes), item.attempts)
            return Outcome(SyncStatus.DONE, sf_id=sf_id, who_id=who)
    return Outcome(SyncStatus.DONE, sf_id=_create(org, item, fields), who_id=who)


def _write(app: Flask, claim: leases.Claim, outcome: Outcome, now: datetime) -> bool:
    values: dict[str, Any] = {"status": outcome.status, "reason": outcome.reason,
                              "updated_at": now}
    if outcome.sf_id is not None:
        values["sf_id"] = outcome.sf_id
    if outcome.who_id is not None:
        values["who_id"] = outcome.who_id
    if outcome.due_at is not None:
        values["due_at"] = outcome.due_at
    with session_scope(app) as s:
        kept = leases.release(s, SyncItem, claim, now=now, values=values)
    if not kept:
        log.warning("sync item %s: lease lost before its outcome (%s) was stored", claim.id,
                    outcome.status.value)
    return kept


def _put_back(app: Flask, held: list[leases.Claim], reason: str, due_at: datetime,
              now: datetime) -> None:
    with session_scope(app) as s:
        for claim in held:
            leases.release(s, SyncItem, claim, now=now,
                           values={"status": SyncStatus.PENDING, "reason": reason,
                                   "due_at": due_at, "updated_at": now})


def process(app: Flask, now: datetime, *, batch: int = 50,
            factory: ClientFactory = api_for) -> SyncResult:
    """Claim up to ``batch`` ready items and write them to Salesforce."""
    result = SyncResult()
    started = time.monotonic()
    with session_scope(app) as s:
        lease = timedelta(seconds=float(app.config.get("SALESFORCE_LEASE_SECONDS")
                                        or LEASE.total_seconds()))
        claims = leases.claim(s, SyncItem, ready=ready(now), order_by=SyncItem.id, now=now,
                              lease=lease, limit=batch,
                              values={"status": SyncStatus.CLAIMED, "updated_at": now})
        orgs: dict[int, int] = {
            row_id: org_id for row_id, org_id in s.execute(
                select(SyncItem.id, SyncItem.org_id)
                .where(SyncItem.id.in_([c.id for c in claims])))} if claims else {}
    result.claimed = len(claims)
    by_org: dict[int, list[leases.Claim]] = {}
    for claim in claims:
        by_org.setdefault(orgs[claim.id], []).append(claim)
    for org_id, held in by_org.items():
        _process_org(app, org_id, held, now, factory, result, lease, started)
    return result


def _renew(app: Flask, claim: leases.Claim, now: datetime, lease: timedelta,
           started: float) -> bool:
    """Extend an item's lease just before working on it; False if it is no longer ours.

    The pass's ``now`` is advanced by the time the pass has spent so far, so a slow batch
    never starts an item whose lease has run out (another worker may hold it by then), and
    every item starts with a whole lease ahead of its Salesforce calls.
    """
    current = now + timedelta(seconds=time.monotonic() - started)
    with session_scope(app) as s:
        return leases.fenced_update(s, SyncItem, claim, now=current, values={}, extend=lease)


def _process_org(app: Flask, org_id: int, held: list[leases.Claim], now: datetime,
                 factory: ClientFactory, result: SyncResult, lease: timedelta,
                 started: float) -> None:
    try:
        org = _Org(app, org_id, now, factory)
    except _Stop as stop:
        _put_back(app, held, stop.reason, stop.due_at, now)
        result.retried += len(held)
        result.errors.append(stop.reason)
        return
    for i, claim in enumerate(held):
        if not _renew(app, claim, now, lease, started):
            log.warning("sync item %s: lease lost before it was worked on", claim.id)
            continue
        try:
            outcome = _attempt(org, claim, now)
        except _Stop as stop:
            _put_back(app, held[i:], stop.reason, stop.due_at, now)
            result.retried += len(held) - i
            result.errors.append(stop.reason)
            return
        except Rejected as exc:
            outcome = Outcome(SyncStatus.FAILED, reason=f"Salesforce refused it: {exc}")
        if outcome is None:
            continue
        if _write(app, claim, outcome, now):
            counter = {SyncStatus.DONE: "done", SyncStatus.PENDING: "retried",
                       SyncStatus.UNMATCHED: "unmatched", SyncStatus.FAILED: "failed",
                       SyncStatus.SKIPPED: "skipped"}[outcome.status]
            setattr(result, counter, getattr(result, counter) + 1)
        if outcome.status is SyncStatus.DONE:
            org.limited_back_to_connected()


def poll_completions(app: Flask, now: datetime, *, factory: ClientFactory = api_for,
                     every: timedelta | None = None) -> int:
    """Complete in Relay the synced tasks completed in Salesforce since each org's cursor.

    Only Status "Completed" flows back; other statuses are left alone. Each org is polled at
    most every ``SALESFORCE_POLL_SECONDS``. Returns how many Relay tasks were completed.
    """
    every = every if every is not None else timedelta(
        seconds=float(app.config.get("SALESFORCE_POLL_SECONDS", 60)))
    with session_scope(app) as s:
        org_ids = list(s.scalars(
            select(SalesforceConnection.org_id).where(
                SalesforceConnection.org_id.in_(_syncing_orgs(now)),
                or_(SalesforceConnection.polled_at.is_(None),
                    SalesforceConnection.polled_at <= now - every))))
    completed = 0
    for org_id in org_ids:
        try:
            org = _Org(app, org_id, now, factory)
            cursor = org.conn.modstamp_cursor or now
            since = cursor - POLL_OVERLAP
            records: list[tuple[str, datetime]] = org.call(
                lambda api, since=since: api.completed_since(since))
        except _Stop as stop:
            log.warning("completions of org %s not read: %s", org_id, stop.reason)
            continue
        completed += _complete_locally(app, org_id, records, cursor, now)
    return completed


def _complete_locally(app: Flask, org_id: int, records: list[tuple[str, datetime]],
                      cursor: datetime, now: datetime) -> int:
    from server.tasks.service import complete_task

    done = 0
    stamps = {sf_id: stamp for sf_id, stamp in records}
    with session_scope(app) as s:
        items = list(s.scalars(select(SyncItem).where(
            SyncItem.org_id == org_id, SyncItem.kind == SyncKind.TASK,
            SyncItem.sf_id.in_(list(stamps))))) if stamps else []
        for item in items:
            task = s.get(Task, item.task_id) if item.task_id is not None else None
            if task is None or task.status is not TaskStatus.OPEN:
                continue
            item.remote_completed_at = stamps[str(item.sf_id)]
            s.flush()
            owner = s.get(User, task.owner_id)
            assert owner is not None
            try:
                with s.begin_nested():
                    if complete_task(s, owner, task.id, now=now, via=CompletedVia.SALESFORCE):
                        done += 1
            except Conflict as exc:
                log.info("task %s completed in Salesforce but not in Relay: %s", task.id, exc)
        conn = s.scalar(select(SalesforceConnection)
                        .where(SalesforceConnection.org_id == org_id).with_for_update())
        assert conn is not None
        newest = max([cursor, *stamps.values()])
        conn.modstamp_cursor = newest
        conn.polled_at = now
    return done


def run(app: Flask, now: datetime, *, batch: int = 50,
        factory: ClientFactory = api_for) -> SyncResult:
    """One worker pass: drain ready items in batches, then poll completions when due."""
    total = SyncResult()
    while True:
        part = process(app, now, batch=batch, factory=factory)
        for name in ("claimed", "done", "retried", "unmatched", "failed", "skipped"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.errors += part.errors
        # Stop when a batch came back short or everything claimed went back to wait.
        if part.claimed < batch or part.retried == part.claimed:
            break
    total.completed_back = poll_completions(app, now, factory=factory)
    return total
