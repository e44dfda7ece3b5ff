"""Pure decisions: the activity subject template and the Salesforce Task fields of an item.

Nothing here does I/O; time and every value come in as arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

SUBJECT_MAX = 255
DESCRIPTION_MAX = 32_000
EXCERPT_MAX = 1_000

#: The fields an activity subject template may use.
TEMPLATE_FIELDS = ("activity_type", "activity_subject", "sales_campaign_name",
                   "sales_campaign_day", "sales_campaign_step")

_FIELD = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.S)
_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")

#: How each Relay step type is named in ``{{activity_type}}``.
ACTIVITY_TYPES = {"email": "Email", "call": "Call", "inmail": "InMail", "custom": "Custom"}


@dataclass(frozen=True)
class Activity:
    """The values a subject template can show."""

    activity_type: str
    activity_subject: str
    sales_campaign_name: str = ""
    sales_campaign_day: int | None = None
    sales_campaign_step: int | None = None


def template_errors(template: str) -> list[str]:
    """Problems with a subject template: each unknown field, by name (empty when valid)."""
    errors = []
    for name in _FIELD.findall(template):
        if name not in TEMPLATE_FIELDS:
            errors.append(f"unknown field {{{{{name}}}}}; use one of "
                          + ", ".join("{{" + f + "}}" for f in TEMPLATE_FIELDS))
    if not errors and ("{{" in _FIELD.sub("", template) or "}}" in _FIELD.sub("", template)):
        errors.append("a '{{' or '}}' is not part of a {{field}}")
    return errors


def one_line(text: str, limit: int = SUBJECT_MAX) -> str:
    """``text`` with line breaks removed (each run becomes one space), cut to ``limit``."""
    return _BREAKS.sub(" ", text).strip()[:limit]


def render_subject(template: str, activity: Activity) -> str:
    """The Salesforce Subject of an activity: the template filled, on one line, ≤255 chars."""
    values = {
        "activity_type": activity.activity_type,
        "activity_subject": activity.activity_subject,
        "sales_campaign_name": activity.sales_campaign_name,
        "sales_campaign_day": "" if activity.sales_campaign_day is None
        else str(activity.sales_campaign_day),
        "sales_campaign_step": "" if activity.sales_campaign_step is None
        else str(activity.sales_campaign_step),
    }
    return one_line(_FIELD.sub(lambda m: values.get(m.group(1), ""), template))


def preview_activity() -> Activity:
    """The sample activity the settings preview renders."""
    return Activity(activity_type="Email", activity_subject="Quick question about your Q3 plans",
                    sales_campaign_name="Q3 outreach", sales_campaign_day=2,
                    sales_campaign_step=1)


def local_date(moment: datetime, tz: str) -> str:
    """``moment``'s date in the time zone ``tz`` as Salesforce's ActivityDate (YYYY-MM-DD)."""
    return moment.astimezone(ZoneInfo(tz)).date().isoformat()


def excerpt(text: str | None, limit: int = EXCERPT_MAX) -> str:
    """The start of an email's plain-text body, blank lines squeezed, at most ``limit`` chars."""
    body = re.sub(r"\n\s*\n+", "\n\n", (text or "").replace("\r\n", "\n")).strip()
    if len(body) <= limit:
        return body
    return body[:limit - 1].rstrip() + "…"


def marker(external_key: str) -> str:
    """The value written to ``CallObject`` so a retry can find a Task it already created.

    Used only when the org has no external-id field on Task: ``CallObject`` is a standard,
    filterable text field of Task that campaign activities leave empty.
    """
    return f"relay:{external_key}"


def task_fields(*, template: str, activity: Activity, details: str, priority: str,
                due_at: datetime, tz: str, who_id: str) -> dict[str, str]:
    """A campaign task as a Salesforce Task: Not Started, due on its day in the rep's zone."""
    return {
        "Subject": render_subject(template, activity),
        "Status": "Not Started",
        "Priority": "High" if priority.lower() == "high" else "Normal",
        "ActivityDate": local_date(due_at, tz),
        "Description": details[:DESCRIPTION_MAX],
        "WhoId": who_id,
    }


def email_fields(*, template: str, activity: Activity, body_text: str | None,
                 sent_at: datetime, tz: str, who_id: str) -> dict[str, str]:
    """A sent email as a completed Salesforce Task of Type Email with an excerpt of the body."""
    return {
        "Subject": render_subject(template, activity),
        "Status": "Completed",
        "Priority": "Normal",
        "Type": "Email",
        "ActivityDate": local_date(sent_at, tz),
        "Description": excerpt(body_text),
        "WhoId": who_id,
    }


def reply_fields(*, subject: str, body_text: str | None, received_at: datetime, tz: str,
                 who_id: str) -> dict[str, str]:
    """A detected reply as a completed Task of Type Email named ``Reply: <subject>``."""
    return {
        "Subject": one_line(f"Reply: {subject}"),
        "Status": "Completed",
        "Priority": "Normal",
        "Type": "Email",
        "ActivityDate": local_date(received_at, tz),
        "Description": excerpt(body_text),
        "WhoId": who_id,
    }


def backoff(attempts: int, base: timedelta = timedelta(seconds=30),
            cap: timedelta = timedelta(hours=1)) -> timedelta:
    """How long to wait before retrying after a transient failure (doubling, capped)."""
    return min(base * (2 ** max(0, attempts - 1)), cap)

