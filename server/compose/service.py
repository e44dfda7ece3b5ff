"""Template operations (the dynamic-field language arrives with the compose issue)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.accounts.models import User
from server.api.errors import FieldError
from server.compose.models import Template
from server.errors import Invalid


def get_template(session: Session, user: User, template_id: int) -> Template | None:
    """A template of the user's org, or None."""
    return session.scalar(
        select(Template).where(Template.id == template_id, Template.org_id == user.org_id)
    )


def list_templates(session: Session, user: User) -> list[Template]:
    """Every template of the user's org, by name."""
    return list(session.scalars(
        select(Template).where(Template.org_id == user.org_id).order_by(Template.name, Template.id)
    ))


def create_template(session: Session, user: User, *, name: str, subject: str,
                    body_html: str) -> Template:
    """Store a template as written."""
    template = Template(org_id=user.org_id, created_by_id=user.id, name=name, subject=subject,
                        body_html=body_html)
    session.add(template)
    session.flush()
    return template


def update_template(session: Session, template: Template, values: dict[str, Any]) -> Template:
    """Change the given fields; null is not a value for any of them (nothing changes then)."""
    errors = [FieldError(name, 'may not be null; send "" to clear it')
              for name, value in values.items() if value is None]
    if errors:
        raise Invalid(errors)
    for key, value in values.items():
        setattr(template, key, value)
    session.flush()
    return template
