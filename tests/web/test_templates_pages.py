"""Templates pages: list, editor, errors at their line, live preview for a contact (E4-E7)."""

from __future__ import annotations

import html
import re

from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy.orm import Session

from server.compose.models import Template
from tests.conftest import World, make_contact, make_template
from tests.web.test_campaigns import csrf_of, sign_in

BAD_BODY = ("<p>Hi {{first_name}},</p>\n<p>We met at the fair.</p>\n"
            "<p>Regards, {{ favourite_colour }}</p>")


def test_pages_need_a_signed_in_rep(client: FlaskClient, world: World):
    """Are the templates pages sent to the sign-in page for a visitor?"""
    for path in ("/templates", "/templates/new", "/templates/1"):
        r = client.get(path)
        assert r.status_code == 302 and r.headers["Location"] == "/sign-in", path


def test_list_shows_the_orgs_templates(client: FlaskClient, session: Session, world: World):
    """Does the list show the org's templates (any rep's) and not another org's?"""
    make_template(session, world.rep2, "Intro by rep2")
    make_template(session, world.outsider, "Their secret")
    session.commit()
    sign_in(client)
    page = client.get("/templates").get_data(as_text=True)
    assert "Intro by rep2" in page and "Hello {{first_name}}" in page
    assert "Their secret" not in page


def test_new_template_is_saved(client: FlaskClient, session: Session, world: World):
    """Does the editor store a valid template as written and open it?"""
    token = sign_in(client)
    body = '<p>Hi {{first_name | default: "there"}},</p>'
    r = client.post("/templates/new", data={"csrf": token, "name": "Intro", "action": "save",
                                            "subject": "About {{company}}", "body_html": body})
    assert r.status_code == 302
    session.rollback()
    template = session.query(Template).one()
    assert (template.name, template.subject, template.body_html) == (
        "Intro", "About {{company}}", body)
    assert r.headers["Location"] == f"/templates/{template.id}"
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Saved “Intro”." in page and str(escape(body)) in page


def test_edit_errors_are_shown_at_their_line(client: FlaskClient, session: Session,
                                             world: World):
    """Is an unknown field on line 3 refused with its line and column, pointed at, unsaved?"""
    template = make_template(session, world.rep)
    session.commit()
    token = sign_in(client)
    r = client.post(f"/templates/{template.id}", data={
        "csrf": token, "name": "Intro", "subject": "Hi", "body_html": BAD_BODY,
        "action": "save"})
    assert r.status_code == 422
    page = r.get_data(as_text=True)
    errors = re.search(r'role="alert" id="body_html-errors">(.*?)</div>\s*</li>', page, re.S)
    assert errors, page
    block = errors.group(1)
    assert re.search(r"<strong>Line 3, column \d+</strong>", block)
    assert "favourite_colour" in block
    assert 'data-goto-line="3"' in block
    bad = re.search(r'<div class="bad" aria-current="true"><span class="ln">(\d+)</span>'
                    r"(.*?)</div>", block)
    assert bad and bad.group(1) == "3" and "favourite_colour" in bad.group(2)
    assert 'class="caret"' in block
    assert 'aria-invalid="true"' in page
    session.rollback()
    assert session.get(Template, template.id).body_html == "<p>Hi</p>"


def test_preview_renders_for_the_chosen_contact(client: FlaskClient, session: Session,
                                                world: World):
    """Does the live preview render the subject and body for a contact, sent by the rep?"""
    ada = make_contact(session, world.rep, "ada@example.com", first_name="Ada",
                       company="Engines Inc.")
    session.commit()
    token = sign_in(client)
    r = client.post("/templates/preview", data={
        "csrf": token, "contact_id": str(ada.id), "subject": "Hello {{first_name}}",
        "body_html": "<p>Hi {{first_name}} at {{company_friendly}}, {{my_name}} here.</p>"
                     "{{! Mention the fair}}"})
    assert r.status_code == 200
    fragment = r.get_data(as_text=True)
    assert '<div id="preview-subject">Hello Ada</div>' in fragment
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', fragment).group(1))
    assert "Hi Ada at Engines, Rep here." in srcdoc
    assert re.search(r'id="preview-prompts".*Mention the fair', fragment, re.S)
    assert 'sandbox=""' in fragment
    assert "For Ada Doe" in fragment


def test_preview_names_missing_fields(client: FlaskClient, session: Session, world: World):
    """Does the preview say which field blocks the email for this contact (E5)?"""
    bob = make_contact(session, world.rep, "bob@example.com", first_name="Bob")
    session.commit()
    token = sign_in(client)
    fragment = client.post("/templates/preview", data={
        "csrf": token, "contact_id": str(bob.id), "subject": "Hi",
        "body_html": "<p>Call {{custom_field_phone}}</p>"}).get_data(as_text=True)
    assert re.search(r'id="preview-blocked".*custom_field_phone', fragment, re.S)
    assert "srcdoc" not in fragment


def test_preview_points_at_the_bad_line(client: FlaskClient, world: World):
    """Does the live preview show a template problem at its line instead of rendering?"""
    token = sign_in(client)
    fragment = client.post("/templates/preview", data={
        "csrf": token, "subject": "Hi", "body_html": BAD_BODY}).get_data(as_text=True)
    assert "Not valid" in fragment and re.search(r"Line 3, column \d+", fragment)
    assert 'data-goto-line="3"' in fragment and "srcdoc" not in fragment


def test_preview_uses_only_the_reps_contacts(client: FlaskClient, session: Session,
                                             world: World):
    """Is another rep's contact not rendered; without contacts, a sample one is used?"""
    theirs = make_contact(session, world.rep2, "t@example.com", first_name="Theirs")
    session.commit()
    token = sign_in(client)
    fragment = client.post("/templates/preview", data={
        "csrf": token, "contact_id": str(theirs.id), "subject": "Hi {{first_name}}",
        "body_html": "<p>x</p>"}).get_data(as_text=True)
    assert "That contact was not found among yours." in fragment and "Theirs" not in fragment
    fragment = client.post("/templates/preview", data={
        "csrf": token, "subject": "Hi {{first_name}}", "body_html": "<p>x</p>"}
    ).get_data(as_text=True)
    assert "Hi Alex" in fragment and "(a sample contact)" in fragment


def test_preview_needs_the_csrf_token(client: FlaskClient, world: World):
    """Is a preview request without the session's CSRF token refused?"""
    sign_in(client)
    r = client.post("/templates/preview", data={"subject": "Hi", "body_html": "<p>x</p>"})
    assert r.status_code == 400


def test_editor_previews_without_javascript(client: FlaskClient, session: Session,
                                            world: World):
    """Does the editor's Preview button re-render the page with the preview, saving nothing?"""
    ada = make_contact(session, world.rep, "ada@example.com", first_name="Ada")
    template = make_template(session, world.rep)
    session.commit()
    token = sign_in(client)
    page = client.get(f"/templates/{template.id}").get_data(as_text=True)
    assert csrf_of(page) == token and f'<option value="{ada.id}"' in page
    r = client.post(f"/templates/{template.id}", data={
        "csrf": token, "name": "Intro", "subject": "Yo {{first_name}}",
        "body_html": "<p>changed</p>", "contact_id": str(ada.id), "action": "preview"})
    assert r.status_code == 200
    assert '<div id="preview-subject">Yo Ada</div>' in r.get_data(as_text=True)
    session.rollback()
    assert session.get(Template, template.id).subject == "Hello {{first_name}}"


def test_another_orgs_template_is_not_found(client: FlaskClient, session: Session,
                                            world: World):
    """Is another org's template a 404 for reading and for saving?"""
    theirs = make_template(session, world.outsider, "Theirs")
    session.commit()
    token = sign_in(client)
    assert client.get(f"/templates/{theirs.id}").status_code == 404
    r = client.post(f"/templates/{theirs.id}", data={"csrf": token, "name": "Mine",
                                                     "subject": "", "body_html": ""})
    assert r.status_code == 404
    session.rollback()
    assert session.get(Template, theirs.id).name == "Theirs"


def test_a_body_over_256_kb_is_refused(client: FlaskClient, session: Session, world: World):
    """Is a body over 256 KB refused inline by the editor and with 413 by the preview (E7)?"""
    token = sign_in(client)
    big = "<p>" + "x" * (256 * 1024) + "</p>"
    r = client.post("/templates/new", data={"csrf": token, "name": "Big", "subject": "",
                                            "body_html": big, "action": "save"})
    assert r.status_code == 422 and "the body is over 256 KB" in r.get_data(as_text=True)
    r = client.post("/templates/preview", data={"csrf": token, "subject": "", "body_html": big})
    assert r.status_code == 413
    session.rollback()
    assert session.query(Template).count() == 0
