"""Contact endpoints: CRUD and CSV import."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request
from pydantic import EmailStr, Field

from server.accounts.auth import api_user
from server.api.errors import ApiError, not_found
from server.api.operations import Model, Out, Query, operation
from server.contacts import service
from server.contacts.models import Contact
from server.db import get_session

#: The largest CSV file an import accepts (bytes); about 200,000 rows of a few columns.
MAX_IMPORT_BYTES = 32 * 1024 * 1024

bp = Blueprint("contacts", __name__, url_prefix="/api/contacts")


class ContactIn(Model):
    """A new contact."""

    email: EmailStr | None = None
    first_name: str = Field("", max_length=200)
    last_name: str = Field("", max_length=200)
    title: str = Field("", max_length=200)
    company: str = Field("", max_length=200)
    timezone: str | None = Field(None, description="IANA time zone, e.g. Europe/Paris")
    custom_fields: dict[str, str] = Field(default_factory=dict)


class ContactPatch(Model):
    """Fields to change on a contact; omitted fields stay as they are."""

    email: EmailStr | None = None
    first_name: str | None = Field(None, max_length=200)
    last_name: str | None = Field(None, max_length=200)
    title: str | None = Field(None, max_length=200)
    company: str | None = Field(None, max_length=200)
    timezone: str | None = None
    custom_fields: dict[str, str] | None = None


class ContactOut(Out):
    """A contact."""

    id: int
    email: str | None
    first_name: str
    last_name: str
    title: str
    company: str
    timezone: str | None
    custom_fields: dict[str, Any]
    owner_id: int


class ContactList(Out):
    """A page of contacts."""

    items: list[ContactOut]
    total: int
    page: int
    per_page: int


class ContactListQuery(Query):
    """Search and paging."""

    q: str | None = None
    page: int = Field(1, ge=1)
    per_page: int = Field(50, ge=1, le=200)


class ImportError_(Out):
    """One bad row of an import."""

    field: str
    message: str


class ImportOut(Out):
    """What an import did. Nothing is stored when ``stored`` is false."""

    created: int
    duplicates: int
    stored: bool
    errors: list[ImportError_]


class ImportQuery(Query):
    """Import options."""

    skip_errors: bool = False


class Deleted(Out):
    """The id of a deleted object."""

    deleted: int


def _load(contact_id: int) -> Contact:
    contact = service.get_contact(get_session(), api_user(), contact_id)
    if contact is None:
        raise not_found("contact")
    return contact


@operation(bp, "", "POST", body=ContactIn, response=ContactOut, status=201)
def create(body: ContactIn) -> ContactOut:
    """Create a contact owned by the caller."""
    contact = service.create_contact(get_session(), api_user(), body.model_dump())
    get_session().commit()
    return ContactOut.model_validate(contact)


@operation(bp, "", "GET", query=ContactListQuery, response=ContactList)
def list_(query: ContactListQuery) -> ContactList:
    """List the caller's contacts."""
    rows, total = service.list_contacts(get_session(), api_user(), q=query.q, page=query.page,
                                        per_page=query.per_page)
    return ContactList(items=[ContactOut.model_validate(c) for c in rows], total=total,
                       page=query.page, per_page=query.per_page)


@operation(bp, "/<int:contact_id>", "GET", response=ContactOut)
def read(contact_id: int) -> ContactOut:
    """Read one of the caller's contacts."""
    return ContactOut.model_validate(_load(contact_id))


@operation(bp, "/<int:contact_id>", "PATCH", body=ContactPatch, response=ContactOut)
def update(contact_id: int, body: ContactPatch) -> ContactOut:
    """Change fields of one of the caller's contacts."""
    contact = service.update_contact(get_session(), _load(contact_id),
                                     body.model_dump(exclude_unset=True))
    get_session().commit()
    return ContactOut.model_validate(contact)


@operation(bp, "/<int:contact_id>", "DELETE", response=Deleted)
def delete(contact_id: int) -> Deleted:
    """Delete one of the caller's contacts (and their campaign history)."""
    contact = _load(contact_id)
    session = get_session()
    session.delete(contact)
    session.commit()
    return Deleted(deleted=contact_id)


@operation(bp, "/import", "POST", query=ImportQuery, response=ImportOut,
           raw_body="text/csv")
def import_csv(query: ImportQuery) -> ImportOut:
    """Import contacts from a CSV body (text/csv).

    Every bad row is reported; nothing is stored from a file with errors unless
    ``skip_errors=true``.
    """
    # A CSV file may be larger than other bodies (MAX_CONTENT_LENGTH); its rows are bounded.
    request.max_content_length = max(MAX_IMPORT_BYTES,
                                     current_app.config.get("MAX_CONTENT_LENGTH") or 0)
    if request.mimetype not in ("text/csv", "text/plain"):
        raise ApiError(415, "unsupported_media_type",
                       "send the CSV file as the request body with Content-Type: text/csv")
    raw = request.get_data()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_encoding", "the CSV file must be UTF-8") from None
    report = service.import_csv(get_session(), api_user(), text, skip_errors=query.skip_errors)
    if report.stored:
        get_session().commit()
    out = ImportOut.model_validate(report.as_dict())
    if report.errors and not report.stored:
        raise ApiError(422, "validation_failed",
                       f"{len(report.errors)} bad rows; nothing was imported "
                       "(fix them, or send skip_errors=true to import the good rows)",
                       report.errors)
    return out
