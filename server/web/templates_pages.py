"""Templates pages: the list, and the editor with a live preview for a chosen contact.

Errors are shown at the line and column the template language reports (E4-E7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for

from server.accounts.auth import csrf_token
from server.accounts.models import User
from server.api.errors import FieldError
from server.compose import service
from server.compose.models import Template
from server.contacts.models import Contact
from server.contacts.service import get_contact, list_contacts
from server.db import get_session
from server.errors import Invalid
from server.web.views import page, require_csrf, require_signed_in

bp = Blueprint("template_pages", __name__)

#: The largest body the editor accepts, as the API does (E7: bounded work).
MAX_BODY = 256 * 1024
#: Contacts offered in the preview's contact select.
PREVIEW_CONTACTS = 200
_AT = re.compile(r"line (\d+)(?:, column (\d+))?")


@dataclass
class Problem:
    """One error in a template, placed at its line and column when the message gives them."""

    field: str
    message: str
    line: int | None = None
    column: int | None = None

    def excerpt(self, source: str) -> list[tuple[int, str, bool]]:
        """The lines around the problem: (number, text, is the problem's line)."""
        if self.line is None:
            return []
        lines = source.splitlines() or [""]
        first, last = max(self.line - 2, 1), min(self.line + 2, len(lines))
        return [(n, lines[n - 1], n == self.line) for n in range(first, last + 1)]


def problem_from(field: str, message: str) -> Problem:
    """A problem from a field error such as ``line 3, column 5: unknown field 'x'``."""
    m = _AT.search(message)
    if m is None:
        return Problem(field, message)
    return Problem(field, message, int(m.group(1)), int(m.group(2)) if m.group(2) else None)


def _load(user: User, template_id: int) -> Template:
    template = service.get_template(get_session(), user, template_id)
    if template is None:
        abort(404)
    return template


def _form() -> tuple[dict[str, str], list[FieldError]]:
    """The editor's values as typed, and the errors the page itself finds first."""
    values = {"name": request.form.get("name", "").strip(),
              "subject": request.form.get("subject", ""),
              "body_html": request.form.get("body_html", "").replace("\r\n", "\n")}
    errors: list[FieldError] = []
    if not values["name"]:
        errors.append(FieldError("name", "give the template a name"))
    elif len(values["name"]) > 200:
        errors.append(FieldError("name", "at most 200 characters"))
    if len(values["subject"]) > 998:
        errors.append(FieldError("subject", "at most 998 characters"))
    if len(values["body_html"].encode()) > MAX_BODY:
        errors.append(FieldError("body_html", f"the body is over {MAX_BODY // 1024} KB (E7)"))
    return values, errors


def _preview_contacts(user: User) -> list[Contact]:
    rows, _ = list_contacts(get_session(), user, q=None, page=1, per_page=PREVIEW_CONTACTS)
    return rows


def sample_contact(user: User) -> Contact:
    """A made-up contact (never stored) for previews by a rep who has no contacts yet."""
    return Contact(org_id=user.org_id, owner_id=user.id, email="alex.sample@example.com",
                   first_name="Alex", last_name="Sample", title="Head of Sales",
                   company="Example Inc.", custom_fields={})


def preview_context(user: User, subject: str, body_html: str, contact_id: str | None
                    ) -> dict[str, Any]:
    """What the preview shows for the values typed.

    Problems at their lines, or the email rendered for a contact with the signed-in rep as
    sender, naming missing fields and prompts (E5, E6).
    """
    from server.compose.render import OutputTooLarge, check_template, render_email

    contact: Contact | None = None
    if contact_id and contact_id.isdigit() and len(contact_id) < 19:
        contact = get_contact(get_session(), user, int(contact_id))
    if contact is None:
        contact = sample_contact(user) if not contact_id else None
    problems = [Problem(name, p.message, p.line, p.column)
                for name, source in (("subject", subject), ("body_html", body_html))
                for p in check_template(source)]
    if contact is None:
        return {"problems": problems, "rendered": None, "contact": None,
                "source": body_html, "subject_source": subject}
    rendered, too_large = None, None
    if not problems:
        try:
            rendered = render_email(subject, body_html, contact, user)
        except OutputTooLarge as exc:
            too_large = str(exc)
    return {"problems": problems, "rendered": rendered, "too_large": too_large,
            "contact": contact, "source": body_html, "subject_source": subject,
            "sample": contact.id is None}


def _editor(user: User, template: Template | None, values: dict[str, str], *,
            errors: list[FieldError] | None = None, status: int = 200,
            preview: dict[str, Any] | None = None) -> Any:
    problems = [problem_from(e.field, e.message) for e in errors or []]
    by_field: dict[str, list[Problem]] = {}
    for p in problems:
        by_field.setdefault(p.field.split(".")[0].split("[")[0], []).append(p)
    contact_id = request.values.get("contact_id", "")
    return page("web/templates/edit.html", user, status, template=template, values=values,
                errors=by_field, contacts=_preview_contacts(user), contact_id=contact_id,
                preview=preview)


@bp.get("/templates")
def template_list() -> Any:
    """The org's templates, by name."""
    user = require_signed_in()
    return page("web/templates/list.html", user,
                templates=service.list_templates(get_session(), user))


@bp.route("/templates/new", methods=["GET", "POST"])
def template_new() -> Any:
    """A new template; saving validates it (errors at their line) and opens it."""
    user = require_signed_in()
    if request.method == "GET":
        return _editor(user, None, {"name": "", "subject": "", "body_html": ""})
    return _save(user, None)


@bp.route("/templates/<int:template_id>", methods=["GET", "POST"])
def template_edit(template_id: int) -> Any:
    """Edit a template of the rep's org."""
    user = require_signed_in()
    template = _load(user, template_id)
    if request.method == "GET":
        return _editor(user, template, {"name": template.name, "subject": template.subject,
                                        "body_html": template.body_html})
    return _save(user, template)


def _save(user: User, template: Template | None) -> Any:
    require_csrf()
    values, errors = _form()
    if (request.form.get("action") != "preview" and template is not None
            and not service.may_change_template(user, template)):
        abort(403, "only the template's owner or an admin can change it")
    if request.form.get("action") == "preview":
        preview = None if errors else preview_context(
            user, values["subject"], values["body_html"], request.form.get("contact_id"))
        return _editor(user, template, values, errors=errors, preview=preview,
                       status=422 if errors or (preview and preview["problems"]) else 200)
    db = get_session()
    if not errors:
        try:
            if template is None:
                template = service.create_template(db, user, **values)
            else:
                template = service.update_template(db, template, values)
        except Invalid as exc:
            errors = exc.errors
    if errors:
        db.rollback()
        return _editor(user, template, values, errors=errors, status=422)
    assert template is not None
    db.commit()
    flash(f"Saved “{template.name}”.")
    return redirect(url_for("template_pages.template_edit", template_id=template.id))


@bp.post("/templates/preview")
def template_preview() -> Any:
    """The live preview (an HTML fragment the editor fetches as the rep types)."""
    user = require_signed_in()
    require_csrf()
    values, errors = _form()
    if any(e.field == "body_html" for e in errors):
        return render_template("web/templates/_preview.html", preview=None,
                               too_big=True), 413
    preview = preview_context(user, values["subject"], values["body_html"],
                              request.form.get("contact_id"))
    # A template with problems is answered 422, as saving it would be.
    return render_template("web/templates/_preview.html", preview=preview,
                           csrf=csrf_token()), 422 if preview["problems"] else 200
