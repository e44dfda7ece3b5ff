"""Launching a campaign for a list of contacts: one enrollment per person, planned in bulk."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import JSON, ColumnElement, Integer, Table, any_, bindparam, insert, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.api.errors import FieldError
from server.campaigns.models import (
    Campaign,
    CampaignStatus,
    Enrollment,
    EnrollmentStatus,
    EnrollmentStep,
    StepStatus,
)
from server.campaigns.planning import plan
from server.campaigns.progress import contact_name, queue_rows
from server.campaigns.service import settings_of, step_specs, steps_in_day
from server.campaigns.spec import SendOption, StepType
from server.contacts.models import Contact
from server.db import utcnow
from server.errors import Conflict, Invalid
from server.feed.models import EventKind, FeedEvent
from server.feed.service import record_many
from server.salesforce import enqueue as salesforce
from server.sending.models import ScheduledSend
from server.tasks.models import Task

MAX_CONTACTS = 50_000
#: How far ahead a launch may be scheduled: a campaign of 1000 days (C1) planned from there
#: stays far from the last date Python and the databases can hold.
MAX_AHEAD = timedelta(days=2 * 366)
_CHUNK = 5_000


@dataclass
class LaunchResult:
    """Who was added (enrollment id per contact id) and who was already in the campaign."""

    enrolled: list[tuple[int, int]] = field(default_factory=list)
    already_enrolled: list[int] = field(default_factory=list)
    start: datetime | None = None
    scheduled: bool = False


def check_launch(campaign: Campaign, contact_ids: Sequence[int], start_at: datetime | None,
                 send_at: datetime | None, now: datetime) -> list[FieldError]:
    """Errors in a launch request that can be found without the database (S1, T1, T2)."""
    errors: list[FieldError] = []
    if not contact_ids:
        errors.append(FieldError("contact_ids", "give at least one contact"))
    elif len(contact_ids) > MAX_CONTACTS:
        errors.append(FieldError("contact_ids", f"at most {MAX_CONTACTS} contacts per launch"))
    first = campaign.steps[0] if campaign.steps else None
    option = first.send_option if first is not None and first.type is StepType.EMAIL else None
    if send_at is None and option is SendOption.CHOOSE_AT_LAUNCH:
        errors.append(FieldError("send_at", "the first email is sent at a moment you choose: "
                                 "give send_at (S1)", "S1"))
    if send_at is not None:
        if option not in (SendOption.CHOOSE_AT_LAUNCH, SendOption.AT_TIME):
            errors.append(FieldError("send_at", "send_at only applies when the first step is a "
                                     "choose_at_launch or at_time email (S1)", "S1"))
        elif send_at < now:
            errors.append(FieldError("send_at", f"{send_at.isoformat()} is in the past; choose a "
                                     "moment from now on (T2)", "T2"))
        elif campaign.skip_weekends:
            local = send_at.astimezone(ZoneInfo(campaign.timezone))
            if local.weekday() >= 5:
                errors.append(FieldError(
                    "send_at", f"{local:%A %d %B %H:%M} ({campaign.timezone}) is on a weekend and "
                    "this campaign skips weekends; choose a weekday (T9)", "T9"))
        if start_at is not None:
            errors.append(FieldError("start_at", "give start_at or send_at, not both: the chosen "
                                     "send moment is the campaign start (T1)", "T1"))
    if start_at is not None and start_at < now:
        errors.append(FieldError("start_at", f"{start_at.isoformat()} is in the past; leave it "
                                 "out to start now"))
    for name, moment in (("start_at", start_at), ("send_at", send_at)):
        if moment is not None and moment - now > MAX_AHEAD:
            errors.append(FieldError(name, f"{moment.isoformat()} is too far ahead; choose a "
                                     f"moment within {MAX_AHEAD.days} days (T9)", "T9"))
    return errors


def launch(session: Session, user: User, campaign: Campaign, contact_ids: Sequence[int], *,
           start_at: datetime | None = None, send_at: datetime | None = None,
           now: datetime | None = None) -> LaunchResult:
    """Add the user's contacts to a campaign and activate each person's first step.

    Raises Invalid when anything is wrong (nothing stored); contacts already in the campaign
    are reported, not added twice. The plan is computed once and shared, since it depends
    only on the campaign and the start (T1), never on who else is launched.
    """
    now = now or utcnow()
    if campaign.status is CampaignStatus.ENDED:
        raise Conflict("the campaign has ended; people can no longer be added")
    ids = list(dict.fromkeys(contact_ids))
    errors = check_launch(campaign, ids, start_at, send_at, now)
    if errors:
        raise Invalid(errors)

    pg = session.get_bind().dialect.name == "postgresql"
    contacts: dict[int, Contact] = {}
    for among in _among(Contact.id, ids, pg):
        contacts.update((c.id, c) for c in session.execute(
            select(Contact.id, Contact.email, Contact.first_name, Contact.last_name)
            .where(among, Contact.owner_id == user.id)))
    unknown = [c for c in ids if c not in contacts]
    if unknown:
        errors.append(FieldError("contact_ids", "unknown contacts: " + _list(unknown)))
    has_email_step = any(s.type is StepType.EMAIL for s in campaign.steps)
    no_email = [c for c in ids if c in contacts and not contacts[c].email]
    if has_email_step and no_email:
        errors.append(FieldError("contact_ids", "these contacts have no email address, which "
                                 "the campaign's email steps need: " + _list(no_email)))
    if errors:
        raise Invalid(errors)

    already: set[int] = set()
    for among in _among(Enrollment.contact_id, ids, pg):
        already.update(session.scalars(select(Enrollment.contact_id).where(
            Enrollment.campaign_id == campaign.id, among)))
    new_ids = [c for c in ids if c not in already]
    start = start_at or now
    result = LaunchResult(already_enrolled=[c for c in ids if c in already],
                          start=send_at or start, scheduled=start > now)
    if not new_ids:
        return result

    specs = step_specs(campaign.steps)
    planned = plan(specs, settings_of(campaign), start, send_at=send_at)
    status = EnrollmentStatus.SCHEDULED if start > now else EnrollmentStatus.ACTIVE
    first_status = StepStatus.ACTIVE if status is EnrollmentStatus.ACTIVE else StepStatus.PENDING
    queued = status is EnrollmentStatus.ACTIVE
    model: type[Task] | type[ScheduledSend] = Task if specs[0].makes_task else ScheduledSend
    enrollment_rows = [dict(org_id=user.org_id, campaign_id=campaign.id, contact_id=c,
                            owner_id=user.id, start_at=start, send_at=send_at, status=status,
                            created_at=now) for c in new_ids]
    later = campaign.steps[1:]
    queue_ids: Sequence[int] = []

    def first_step_rows() -> list[dict[str, Any]]:
        return [dict(enrollment_id=e, position=0, status=first_status,
                     planned_at=planned[0].due_at) for e, _ in result.enrolled]

    def events() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The first-step queue rows (when starting now) and every feed event, ids to come."""
        feed = [dict(org_id=user.org_id, owner_id=user.id, kind=EventKind.PERSON_ADDED,
                     summary=f"{contact_name(contacts[c])} added to {campaign.name}",
                     data={"campaign_id": campaign.id, "enrollment_id": e, "contact_id": c,
                           "start": result.start.isoformat() if result.start else None})
                for e, c in result.enrolled]
        rows: list[dict[str, Any]] = []
        if queued:
            rows, queue_feed = _queue_first_steps(campaign, specs, result.enrolled, first_rows,
                                                  contacts, user, planned[0].due_at)
            feed += queue_feed
        return rows, feed

    if pg:
        # PostgreSQL: ids come from the sequences up front, rows go in by COPY, and the
        # enrollments x later-steps grid is made by the server while Python builds the
        # queue rows and feed events (10,000 people in about two seconds, not minutes).
        bulk = _PgBulk(session)
        ids = bulk.allocate({Enrollment.__table__: len(new_ids),
                             EnrollmentStep.__table__: len(new_ids),
                             model.__table__: len(new_ids) if queued else 0})
        result.enrolled = list(zip(ids[Enrollment.__table__], new_ids, strict=True))
        first_rows = ids[EnrollmentStep.__table__]
        bulk.copy(Enrollment.__table__, enrollment_rows, ids[Enrollment.__table__])
        bulk.copy(EnrollmentStep.__table__, first_step_rows(), first_rows)
        with bulk.pipeline():
            bulk.later_steps([e for e, _ in result.enrolled], later,
                             [planned[s.position].due_at for s in later])
            rows, feed = events()
            queue_ids = ids[model.__table__]
            _attach_ids(model, feed, queue_ids)
            queue_copy = bulk.prepare(model.__table__, rows, queue_ids)
            feed_copy = bulk.prepare(FeedEvent.__table__, _feed_rows(feed), None)
        bulk.write(*queue_copy)
        bulk.write(*feed_copy)
    else:
        result.enrolled = [(r[0], r[1]) for r in session.execute(
            insert(Enrollment).returning(Enrollment.id, Enrollment.contact_id,
                                         sort_by_parameter_order=True),
            enrollment_rows).all()]
        first_rows = list(session.execute(
            insert(EnrollmentStep).returning(EnrollmentStep.id, sort_by_parameter_order=True),
            first_step_rows()).scalars().all())
        later_rows = [dict(enrollment_id=e, position=step.position,
                           status=StepStatus.PENDING, planned_at=planned[step.position].due_at)
                      for e, _ in result.enrolled for step in later]
        if later_rows:
            session.execute(insert(EnrollmentStep), later_rows)
        rows, feed = events()
        if rows:
            queue_ids = session.execute(
                insert(model).returning(model.id, sort_by_parameter_order=True),
                rows).scalars().all()
            _attach_ids(model, feed, queue_ids)
        record_many(session, feed)
    if model is Task and queue_ids:
        salesforce.tasks_created(session, queue_ids, now, org_id=user.org_id)  # issue 7
    session.flush()
    return result


def _among(column: Any, ids: list[int], pg: bool) -> list[ColumnElement[bool]]:
    """``column`` among ``ids``: one array parameter on PostgreSQL, IN chunks elsewhere."""
    if pg:
        return [column == any_(bindparam(None, ids, type_=ARRAY(Integer)))]
    return [column.in_(ids[i:i + _CHUNK]) for i in range(0, len(ids), _CHUNK)]


def _queue_first_steps(campaign: Campaign, specs: list, enrolled: list,
                       first_rows: Sequence[int], contacts: dict, user: User,
                       due_at: datetime) -> tuple[list[dict], list[dict]]:
    """Everyone's first-step queue row (task or outbox) and its feed event, ids to come."""
    step_no = steps_in_day(campaign.steps)[0]
    rows, feed = [], []
    for (enrollment_id, contact_id), es_id in zip(enrolled, first_rows, strict=True):
        _, row, event = queue_rows(
            campaign, campaign.steps[0], specs[0], step_no,
            {"id": enrollment_id, "owner_id": user.id}, contacts[contact_id], es_id, due_at)
        rows.append(row)
        feed.append(event)
    return rows, feed


def _attach_ids(model: type, feed: list[dict], ids: Sequence[int]) -> None:
    """Name each queue row's id in its feed event (the queue events follow the others)."""
    if not ids:
        return
    key = "task_id" if model is Task else "send_id"
    for event, row_id in zip(feed[len(feed) - len(ids):], ids, strict=True):
        event["data"][key] = row_id


def _feed_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feed events as ``server.feed.service.record_many`` stores them."""
    now = utcnow()
    return [{"created_at": now, **e} for e in events]


def _list(ids: Sequence[int], limit: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


class _PgBulk:
    """PostgreSQL bulk writes for launch, giving the rows and ids executemany would give.

    Ids are taken from the tables' sequences first, so they ascend in row order as with
    executemany and nothing needs ``RETURNING``; rows go in by ``COPY``, values through the
    columns' own bind processing (enums by value, UTC timestamps, JSON documents).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect
        # The psycopg connection of the session's transaction.
        self.conn = session.connection().connection.driver_connection

    def allocate(self, counts: dict[Table, int]) -> dict[Table, list[int]]:
        """``n`` new ids from each table's sequence, ascending, in one round trip."""
        tables = list(counts)
        out: dict[Table, list[int]] = {t: [] for t in tables}
        with self.conn.cursor() as cur:
            # The sequence is looked up once: per row, pg_get_serial_sequence costs ~2.5 µs.
            parts = " UNION ALL ".join(
                f"SELECT {i}, nextval(s) FROM (SELECT pg_get_serial_sequence(%s, 'id')::regclass"
                " AS s OFFSET 0) AS seq, generate_series(1, %s)" for i in range(len(tables)))
            params: list[Any] = []
            for t in tables:
                params += [t.name, counts[t]]
            for i, value in cur.execute(parts, params):
                out[tables[i]].append(value)
        return {t: sorted(v) for t, v in out.items()}

    def pipeline(self) -> Any:
        """A block in which statements run on the server while Python carries on."""
        return self.conn.pipeline()

    def later_steps(self, enrollments: list[int], steps: Sequence[Any],
                    planned_at: list[datetime]) -> None:
        """The pending row of every later step for every enrollment, made server-side."""
        if not steps:
            return
        table = EnrollmentStep.__table__
        ts = table.c.planned_at.type.compile(dialect=self.dialect)
        self.conn.cursor().execute(
            "INSERT INTO enrollment_step (enrollment_id, position, status, planned_at) "
            "SELECT e.id, s.position, %s, s.planned_at "
            "FROM unnest(%s::INTEGER[]) WITH ORDINALITY AS e(id, n) "
            f"CROSS JOIN unnest(%s::INTEGER[], %s::{ts}[]) "
            "AS s(position, planned_at) ORDER BY e.n, s.position",
            (self._process(table.c.status, [StepStatus.PENDING])[0], enrollments,
             [s.position for s in steps],
             self._process(table.c.planned_at, planned_at)))

    def copy(self, table: Table, rows: list[dict[str, Any]], ids: list[int] | None) -> None:
        """COPY ``rows`` (with their ``ids``, if given) into ``table``."""
        self.write(*self.prepare(table, rows, ids))

    def prepare(self, table: Table, rows: list[dict[str, Any]],
                ids: list[int] | None) -> tuple[Table, list[str], list[tuple[Any, ...]]]:
        """The column names and value tuples a COPY of ``rows`` writes."""
        if not rows:
            return table, [], []
        names = list(rows[0])
        columns = [self._process(table.c[n], [r[n] for r in rows]) for n in names]
        for col in table.columns:
            # Client-side defaults the ORM would apply (created_at, nullable fields...).
            default = col.default
            if col.name in names or default is None or not (default.is_scalar
                                                            or default.is_callable):
                continue
            value = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
            names.append(col.name)
            columns.append(self._process(col, [value]) * len(rows))
        if ids is not None:
            names.insert(0, "id")
            columns.insert(0, ids)
        return table, names, list(zip(*columns, strict=True))

    def write(self, table: Table, names: list[str], rows: list[tuple[Any, ...]]) -> None:
        """COPY prepared rows into ``table``."""
        if not rows:
            return
        quote = self.dialect.identifier_preparer.quote
        with self.conn.cursor() as cur, cur.copy(
                f"COPY {self.dialect.identifier_preparer.format_table(table)} "
                f"({', '.join(quote(n) for n in names)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _process(self, col: Any, values: list[Any]) -> list[Any]:
        impl = col.type.dialect_impl(self.dialect)
        if isinstance(impl, JSON):
            return [None if v is None else json.dumps(v) for v in values]
        processor = impl.bind_processor(self.dialect)
        return values if processor is None else [processor(v) for v in values]
