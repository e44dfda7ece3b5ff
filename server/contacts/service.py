"""Contact operations: create, update, delete, list and CSV import."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from server.accounts.models import Role, User
from server.accounts.service import valid_timezone
from server.api.errors import FieldError
from server.contacts.models import Contact
from server.errors import Invalid

#: The most data rows one import may hold; a larger file is refused as a whole.
MAX_IMPORT_ROWS = 200_000
#: Rows written per transaction: each commit is short, so other writers (on SQLite, which has
#: one write lock) never wait long for an import.
IMPORT_BATCH = 250
#: The pause between two batches on SQLite. A writer waiting for the lock polls (SQLite's busy
#: handler) at least every 100 ms: a longer pause always lets it in; without one the import
#: takes the lock back at once and the writer waits for the whole import.
IMPORT_PAUSE_SECONDS = 0.15

STANDARD_FIELDS = ("first_name", "last_name", "email", "title", "company", "timezone")
CUSTOM_PREFIX = "custom_field_"


def normalise_email(value: str) -> str:
    """Check an address strictly (no DNS lookups) and return it normalised, or raise ValueError."""
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None


def check_contact_fields(values: dict[str, Any], prefix: str = "") -> list[FieldError]:
    """Errors in a contact's values (email syntax, time zone, custom field names)."""
    errors: list[FieldError] = []
    email = values.get("email")
    if email:
        try:
            values["email"] = normalise_email(email)
        except ValueError as exc:
            errors.append(FieldError(f"{prefix}email", f"{email!r} is not a valid address: {exc}"))
    tz = values.get("timezone")
    if tz and not valid_timezone(tz):
        errors.append(FieldError(f"{prefix}timezone", f"unknown time zone {tz!r}"))
    for name in (values.get("custom_fields") or {}):
        if not name.isidentifier():
            errors.append(FieldError(f"{prefix}custom_fields.{name}",
                                     "custom field names use letters, digits and _"))
    return errors


def _duplicate(session: Session, owner: User, email: str | None, exclude: int | None) -> bool:
    if not email:
        return False
    q = select(Contact.id).where(Contact.owner_id == owner.id, Contact.email == email)
    if exclude is not None:
        q = q.where(Contact.id != exclude)
    return session.scalar(q) is not None


def create_contact(session: Session, owner: User, values: dict[str, Any]) -> Contact:
    """Create a contact owned by ``owner``; raises a list of FieldError on bad input."""
    errors = check_contact_fields(values)
    if not errors and _duplicate(session, owner, values.get("email"), None):
        errors.append(FieldError("email", f"you already have a contact with {values['email']}"))
    if errors:
        raise Invalid(errors)
    contact = Contact(org_id=owner.org_id, owner_id=owner.id, **values)
    session.add(contact)
    session.flush()
    return contact


#: Fields a contact always has; "" clears the text ones, null is not a value for them.
NOT_NULL_FIELDS = ("first_name", "last_name", "title", "company", "custom_fields")


def update_contact(session: Session, contact: Contact, values: dict[str, Any]) -> Contact:
    """Change the given fields of a contact; null clears only ``email`` and ``timezone``."""
    errors = [
        FieldError(name, "may not be null; send \"\" (or {} for custom_fields) to clear it")
        for name in NOT_NULL_FIELDS if name in values and values[name] is None
    ]
    errors += check_contact_fields(values)
    owner = session.get(User, contact.owner_id)
    assert owner is not None
    if not errors and _duplicate(session, owner, values.get("email"), contact.id):
        errors.append(FieldError("email", f"you already have a contact with {values['email']}"))
    if errors:
        raise Invalid(errors)
    for key, value in values.items():
        setattr(contact, key, value)
    session.flush()
    return contact


def get_contact(session: Session, user: User, contact_id: int) -> Contact | None:
    """A contact the user owns (an admin: any of the org's), or None.

    Another rep's contact is not found; lists stay the caller's own (README, Security).
    """
    mine = (Contact.org_id == user.org_id if user.role is Role.ADMIN
            else Contact.owner_id == user.id)
    return session.scalar(select(Contact).where(Contact.id == contact_id, mine))


def list_contacts(
    session: Session, user: User, *, q: str | None, page: int, per_page: int
) -> tuple[list[Contact], int]:
    """The user's contacts, optionally filtered by a search string, and the total count."""
    stmt = select(Contact).where(Contact.owner_id == user.id)
    if q:
        like = f"%{q.lower()}%"
        stmt = stmt.where(
            func.lower(Contact.email).like(like)
            | func.lower(Contact.first_name).like(like)
            | func.lower(Contact.last_name).like(like)
            | func.lower(Contact.company).like(like)
        )
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    rows = session.scalars(
        stmt.order_by(Contact.id).limit(per_page).offset((page - 1) * per_page)
    ).all()
    return list(rows), total


@dataclass
class ImportReport:
    """What a CSV import did: rows created, rows already present, and every bad row."""

    created: int = 0
    duplicates: int = 0
    errors: list[FieldError] = field(default_factory=list)
    stored: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "created": self.created,
            "duplicates": self.duplicates,
            "stored": self.stored,
            "errors": [e.as_dict() for e in self.errors],
        }


def _row_values(header: list[str], row: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    custom: dict[str, str] = {}
    for name, cell in zip(header, row, strict=False):
        cell = cell.strip()
        if name in STANDARD_FIELDS:
            if name in ("email", "timezone") and not cell:
                continue
            values[name] = cell
        elif name.startswith(CUSTOM_PREFIX) and cell:
            custom[name[len(CUSTOM_PREFIX):]] = cell
    values["custom_fields"] = custom
    return values


def import_csv(
    session: Session,
    owner: User,
    data: str | Iterable[str],
    *,
    skip_errors: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import contacts from CSV text with a header row.

    Columns: first_name, last_name, email, title, company, timezone and ``custom_field_<name>``.
    Every bad row is reported (``line N``). A file with any error stores nothing unless
    ``skip_errors`` is set, in which case the good rows are stored and the bad ones reported.
    Contacts the owner already has (same email) are counted as duplicates and left alone.
    A file of more than ``MAX_IMPORT_ROWS`` rows is refused; the good rows are committed
    ``IMPORT_BATCH`` at a time.
    """
    # End the caller's transaction (a request's authentication, a CLI's user lookup): on
    # SQLite it would hold the write lock while the whole file is read and checked.
    session.commit()
    text = io.StringIO(data) if isinstance(data, str) else data
    # strict: an unclosed quote is an error, not a cell that swallows the rest of the file.
    reader = csv.reader(text, strict=True)
    report = ImportReport()
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        report.errors.append(FieldError("line 1", "the file is empty; expected a header row"))
        return report
    except csv.Error as exc:
        report.errors.append(FieldError("line 1", f"unreadable CSV: {exc}"))
        return report
    unknown = [h for h in header if h not in STANDARD_FIELDS and not h.startswith(CUSTOM_PREFIX)]
    if unknown or "email" not in header:
        msg = (f"unknown columns {', '.join(unknown)}; " if unknown else "") + (
            "columns are " + ", ".join(STANDARD_FIELDS) + " and custom_field_<name>"
        )
        if "email" not in header:
            msg = "the header has no email column; " + msg
        report.errors.append(FieldError("line 1", msg))
        return report

    seen: set[str] = set()
    good: list[dict[str, Any]] = []
    line, rows = 1, 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            hint = " (a quote that is never closed?)" if "end of data" in str(exc) else ""
            report.errors.append(FieldError(f"line {line + 1}", f"unreadable CSV: {exc}{hint}"))
            line = reader.line_num
            continue
        line = reader.line_num
        if progress is not None:
            progress(1)
        if not any(cell.strip() for cell in row):
            continue
        rows += 1
        if rows > MAX_IMPORT_ROWS:
            report.errors = [FieldError(f"line {line}", f"the file has more than "
                                        f"{MAX_IMPORT_ROWS} rows; split it into smaller files")]
            return report
        if any("\x00" in cell for cell in row):
            report.errors.append(FieldError(f"line {line}", "contains a NUL character"))
            continue
        if len(row) != len(header):
            report.errors.append(FieldError(
                f"line {line}", f"has {len(row)} cells; the header has {len(header)}"))
            continue
        values = _row_values(header, row)
        if not values.get("email"):
            report.errors.append(FieldError(f"line {line}.email", "an email address is required"))
            continue
        errs = check_contact_fields(values, prefix=f"line {line}.")
        if errs:
            report.errors.extend(errs)
            continue
        if values["email"] in seen:
            report.duplicates += 1
            continue
        seen.add(values["email"])
        good.append(values)
    if report.errors and not skip_errors:
        return report
    # Every row is checked before the first is written; then they are written in batches,
    # each its own short transaction (an import is not all-or-nothing once it starts
    # writing). On SQLite a writing transaction holds the one write lock, so none is open
    # while the file is read and checked, and each batch holds it for a moment only.
    owner_id, org_id = owner.id, owner.org_id
    pause = IMPORT_PAUSE_SECONDS if session.get_bind().dialect.name == "sqlite" else 0.0
    for i in range(0, len(good), IMPORT_BATCH):
        if i and pause:
            time.sleep(pause)
        batch = good[i:i + IMPORT_BATCH]
        existing = set(session.scalars(select(Contact.email).where(
            Contact.owner_id == owner_id, Contact.email.in_([v["email"] for v in batch]))))
        new = [{"org_id": org_id, "owner_id": owner_id, **v}
               for v in batch if v["email"] not in existing]
        if new:
            # One executemany (no unit of work): the batch's transaction stays short.
            session.execute(insert(Contact), new)
        session.commit()
        report.created += len(new)
        report.duplicates += len(batch) - len(new)
    report.stored = True
    return report
