"""Contacts over the API: CRUD, ownership between reps and orgs, and CSV import."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.contacts.models import Contact
from tests.conftest import World, make_contact


def _stored(session: Session) -> list[Contact]:
    """Every contact in the database (the session's read transaction is closed again)."""
    rows = list(session.scalars(select(Contact).order_by(Contact.id)))
    session.commit()  # ends the read; commit (unlike rollback) leaves the rows loaded
    return rows


def _count(session: Session) -> int:
    n = session.scalar(select(func.count()).select_from(Contact)) or 0
    session.commit()
    return n


# -- CRUD ------------------------------------------------------------------------------------


def test_create_read_update_delete_contact(client: FlaskClient, session: Session, world: World):
    """Can a rep create a contact, read it back, change one field and delete it?"""
    h = world.auth(world.rep)
    r = client.post("/api/contacts", headers=h, json={
        "email": "Ada@Example.COM", "first_name": "Ada", "last_name": "Lovelace",
        "title": "CTO", "company": "Engines Inc.", "timezone": "Europe/London",
        "custom_fields": {"industry": "computing"}})
    assert r.status_code == 201, r.json
    cid = r.json["id"]
    assert r.json["email"] == "ada@example.com"
    assert r.json["owner_id"] == world.rep.id
    assert r.json["custom_fields"] == {"industry": "computing"}

    r = client.get(f"/api/contacts/{cid}", headers=h)
    assert r.status_code == 200
    assert (r.json["first_name"], r.json["company"]) == ("Ada", "Engines Inc.")

    r = client.patch(f"/api/contacts/{cid}", headers=h, json={"title": "CEO"})
    assert r.status_code == 200, r.json
    assert (r.json["title"], r.json["first_name"]) == ("CEO", "Ada")
    assert _stored(session)[0].title == "CEO"

    r = client.delete(f"/api/contacts/{cid}", headers=h)
    assert r.status_code == 200 and r.json == {"deleted": cid}
    assert client.get(f"/api/contacts/{cid}", headers=h).status_code == 404
    assert _count(session) == 0


def test_list_contacts_searches_and_pages(client: FlaskClient, session: Session, world: World):
    """Does the contact list search by name, email and company, and page with a total?"""
    for i in range(5):
        make_contact(session, world.rep, f"p{i}@example.com", first_name=f"Pat{i}",
                     company="Globex" if i % 2 else "Initech")
    make_contact(session, world.rep2, "other@example.com", company="Globex")
    session.commit()
    h = world.auth(world.rep)
    r = client.get("/api/contacts?per_page=2&page=2", headers=h)
    assert r.status_code == 200
    assert r.json["total"] == 5 and r.json["page"] == 2
    assert [c["email"] for c in r.json["items"]] == ["p2@example.com", "p3@example.com"]
    r = client.get("/api/contacts?q=globex", headers=h)
    assert sorted(c["email"] for c in r.json["items"]) == ["p1@example.com", "p3@example.com"]
    r = client.get("/api/contacts?q=PAT4", headers=h)
    assert [c["email"] for c in r.json["items"]] == ["p4@example.com"]


def test_contact_without_email_can_be_stored(client: FlaskClient, world: World):
    """May a contact be saved without an email (a call-only prospect)?"""
    r = client.post("/api/contacts", headers=world.auth(world.rep),
                    json={"first_name": "Lin", "company": "Hooli"})
    assert r.status_code == 201, r.json
    assert r.json["email"] is None


def test_duplicate_email_for_same_rep_is_rejected(client: FlaskClient, session: Session,
                                                  world: World):
    """Is a second contact with the same email (any case) for one rep refused, by field?"""
    make_contact(session, world.rep, "dup@example.com")
    session.commit()
    r = client.post("/api/contacts", headers=world.auth(world.rep),
                    json={"email": "DUP@example.com"})
    assert r.status_code == 422
    assert r.json["errors"][0]["field"] == "email"
    assert "already have a contact" in r.json["errors"][0]["message"]
    assert _count(session) == 1


def test_same_email_is_allowed_for_two_reps(client: FlaskClient, session: Session,
                                            world: World):
    """Can two reps each own a contact with the same address?"""
    make_contact(session, world.rep, "shared@example.com")
    session.commit()
    r = client.post("/api/contacts", headers=world.auth(world.rep2),
                    json={"email": "shared@example.com"})
    assert r.status_code == 201, r.json


def test_update_to_duplicate_email_is_rejected(client: FlaskClient, session: Session,
                                               world: World):
    """Is changing a contact's email to one the rep already has refused, leaving it unchanged?"""
    make_contact(session, world.rep, "one@example.com")
    two = make_contact(session, world.rep, "two@example.com")
    session.commit()
    r = client.patch(f"/api/contacts/{two.id}", headers=world.auth(world.rep),
                     json={"email": "one@example.com"})
    assert r.status_code == 422
    assert r.json["errors"][0]["field"] == "email"
    assert [c.email for c in _stored(session)] == ["one@example.com", "two@example.com"]


def test_update_with_null_for_a_required_field_is_a_422(client: FlaskClient, session: Session,
                                                        world: World):
    """Is `"first_name": null` (a field that cannot be empty-null) refused by name, not a 500?"""
    contact = make_contact(session, world.rep, "n@example.com", first_name="Nia")
    session.commit()
    h = world.auth(world.rep)
    for field in ("first_name", "last_name", "title", "company", "custom_fields"):
        r = client.patch(f"/api/contacts/{contact.id}", headers=h, json={field: None})
        assert r.status_code == 422, (field, r.json)
        assert r.json["errors"][0]["field"] == field
    assert _stored(session)[0].first_name == "Nia"


def test_update_can_clear_email_and_timezone(client: FlaskClient, session: Session,
                                             world: World):
    """Can the optional email and timezone be cleared with null?"""
    contact = make_contact(session, world.rep, "c@example.com", timezone="Europe/Paris")
    session.commit()
    r = client.patch(f"/api/contacts/{contact.id}", headers=world.auth(world.rep),
                     json={"email": None, "timezone": None})
    assert r.status_code == 200, r.json
    assert (r.json["email"], r.json["timezone"]) == (None, None)


def test_invalid_contact_fields_each_named(client: FlaskClient, session: Session, world: World):
    """Are a bad address, an unknown time zone and a bad custom field name each reported?"""
    r = client.post("/api/contacts", headers=world.auth(world.rep), json={
        "email": "ada@example.com", "timezone": "Mars/Olympus",
        "custom_fields": {"bad name": "x"}})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json["errors"]}
    assert fields == {"timezone", "custom_fields.bad name"}
    r = client.post("/api/contacts", headers=world.auth(world.rep), json={"email": "not-an-email"})
    assert r.status_code == 422
    assert r.json["errors"][0]["field"] == "email"
    assert _count(session) == 0


# -- ownership ---------------------------------------------------------------------------------


def test_another_reps_contact_is_not_found(client: FlaskClient, session: Session, world: World):
    """Is a contact of another rep in the same org a 404 for reading, changing and deleting?"""
    theirs = make_contact(session, world.rep2, "theirs@example.com")
    session.commit()
    h = world.auth(world.rep)
    assert client.get(f"/api/contacts/{theirs.id}", headers=h).status_code == 404
    assert client.patch(f"/api/contacts/{theirs.id}", headers=h,
                        json={"title": "x"}).status_code == 404
    assert client.delete(f"/api/contacts/{theirs.id}", headers=h).status_code == 404
    assert client.get("/api/contacts", headers=h).json["total"] == 0
    assert _stored(session)[0].title == ""


def test_another_orgs_contact_is_not_found(client: FlaskClient, session: Session, world: World):
    """Is a contact of another org a 404 for its reps and for this org's admin?"""
    theirs = make_contact(session, world.outsider, "b@example.com")
    session.commit()
    for user in (world.rep, world.admin):
        r = client.get(f"/api/contacts/{theirs.id}", headers=world.auth(user))
        assert r.status_code == 404
        assert r.json == {"error": "not_found", "message": "contact not found"}


def test_contacts_need_a_valid_token(client: FlaskClient, world: World):
    """Is the contacts API a 401 without a token and with a wrong one?"""
    assert client.get("/api/contacts").status_code == 401
    r = client.get("/api/contacts", headers={"Authorization": "Bearer rly_wrong"})
    assert r.status_code == 401
    assert "not valid" in r.json["message"]


def test_deleting_a_contact_removes_their_campaign_history(client: FlaskClient,
                                                           session: Session, world: World):
    """Can a contact who is in a campaign be deleted, taking their tasks with them?"""
    contact = make_contact(session, world.rep, "gone@example.com")
    session.commit()
    h = world.auth(world.rep)
    cid = client.post("/api/campaigns", headers=h, json={
        "name": "C", "timezone": "UTC", "steps": [{"day": 1, "type": "call"}]}).json["id"]
    r = client.post(f"/api/campaigns/{cid}/launch", headers=h, json={"contact_ids": [contact.id]})
    assert r.status_code == 201, r.json
    assert client.get("/api/tasks", headers=h).json["total"] == 1
    r = client.delete(f"/api/contacts/{contact.id}", headers=h)
    assert r.status_code == 200, r.json
    assert client.get("/api/tasks", headers=h).json["total"] == 0


# -- CSV import ------------------------------------------------------------------------------

GOOD_CSV = (
    "first_name,last_name,email,title,company,timezone,custom_field_industry\n"
    "Ada,Lovelace,ada@example.com,CTO,Engines,Europe/London,computing\n"
    "Alan,Turing,alan@example.com,,Bletchley,,cryptography\n"
)


def _import(client: FlaskClient, world: World, body: str, query: str = ""):
    return client.post(f"/api/contacts/import{query}", headers=world.auth(world.rep),
                       data=body.encode(), content_type="text/csv")


def test_csv_import_stores_rows_with_custom_fields(client: FlaskClient, session: Session,
                                                   world: World):
    """Does a clean CSV import every row, with custom_field_<name> columns as custom fields?"""
    r = _import(client, world, GOOD_CSV)
    assert r.status_code == 200, r.json
    assert r.json == {"created": 2, "duplicates": 0, "stored": True, "errors": []}
    rows = _stored(session)
    assert [(c.email, c.owner_id) for c in rows] == [
        ("ada@example.com", world.rep.id), ("alan@example.com", world.rep.id)]
    assert rows[0].custom_fields == {"industry": "computing"}
    assert rows[0].timezone == "Europe/London" and rows[1].timezone is None


def test_csv_import_reports_every_bad_row_and_stores_nothing(client: FlaskClient,
                                                             session: Session, world: World):
    """Does a CSV with several broken rows name each one and store none of the good rows?"""
    body = (
        "email,first_name,timezone\n"
        "good@example.com,Good,\n"
        "not-an-address,Bad,\n"
        "ok@example.com,Zone,Nowhere/Land\n"
        ",NoEmail,\n"
        "short@example.com\n"
        "also-good@example.com,Fine,UTC\n"
    )
    r = _import(client, world, body)
    assert r.status_code == 422
    fields = [e["field"] for e in r.json["errors"]]
    assert fields == ["line 3.email", "line 4.timezone", "line 5.email", "line 6"]
    assert "nothing was imported" in r.json["message"]
    assert "skip_errors" in r.json["message"]
    assert _count(session) == 0


def test_csv_import_skip_errors_stores_good_rows(client: FlaskClient, session: Session,
                                                 world: World):
    """With skip_errors=true, are the good rows stored and the bad ones still reported?"""
    body = "email,first_name\ngood@example.com,Good\nbroken,Bad\nfine@example.com,Fine\n"
    r = _import(client, world, body, "?skip_errors=true")
    assert r.status_code == 200, r.json
    assert r.json["created"] == 2 and r.json["stored"] is True
    assert [e["field"] for e in r.json["errors"]] == ["line 3.email"]
    assert [c.email for c in _stored(session)] == ["good@example.com", "fine@example.com"]


def test_csv_import_counts_duplicates_without_storing_twice(client: FlaskClient,
                                                            session: Session, world: World):
    """Are rows for contacts the rep already has, or repeated in the file, counted not added?"""
    make_contact(session, world.rep, "ada@example.com", first_name="Existing")
    session.commit()
    body = "email,first_name\nADA@example.com,Ada\nnew@example.com,New\nnew@example.com,Again\n"
    r = _import(client, world, body)
    assert r.status_code == 200, r.json
    assert (r.json["created"], r.json["duplicates"]) == (1, 2)
    rows = _stored(session)
    assert [(c.email, c.first_name) for c in rows] == [
        ("ada@example.com", "Existing"), ("new@example.com", "New")]


def test_csv_import_rejects_bad_header(client: FlaskClient, session: Session, world: World):
    """Is a header without an email column, or with unknown columns, reported as line 1?"""
    r = _import(client, world, "name,phone\nAda,123\n")
    assert r.status_code == 422
    err = r.json["errors"][0]
    assert err["field"] == "line 1"
    assert "no email column" in err["message"] and "unknown columns name, phone" in err["message"]
    assert _count(session) == 0


def test_csv_import_of_empty_file_is_a_422(client: FlaskClient, world: World):
    """Is an empty upload answered with an error that says a header row is expected?"""
    r = _import(client, world, "")
    assert r.status_code == 422
    assert "header row" in r.json["errors"][0]["message"]


def test_csv_import_rejects_non_utf8(client: FlaskClient, world: World):
    """Is a file that is not UTF-8 refused with a message saying so?"""
    r = client.post("/api/contacts/import", headers=world.auth(world.rep),
                    data="email\nrené@example.com\n".encode("latin-1"), content_type="text/csv")
    assert r.status_code == 400
    assert "UTF-8" in r.json["message"]


def test_csv_import_needs_csv_content_type(client: FlaskClient, session: Session, world: World):
    """Is a JSON body sent to the import endpoint refused as the wrong media type?"""
    r = client.post("/api/contacts/import", headers=world.auth(world.rep),
                    json={"email": "ada@example.com"})
    assert r.status_code == 415
    assert "text/csv" in r.json["message"]
    assert _count(session) == 0
