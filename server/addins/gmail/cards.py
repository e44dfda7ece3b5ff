"""Cards and response envelopes of the Gmail add-on, as pure functions of plain data.

Cards are Google's card_v1 JSON (``sections``, ``widgets``, ``decoratedText``,
``buttonList``, ``onClick.action.function`` with ``parameters``). For an HTTP add-on an
action's ``function`` is the full URL of the endpoint that handles it. Every text that comes
from a contact, a campaign or a task is HTML-escaped, because card text fields accept a
small HTML subset. No card has more than :data:`MAX_WIDGETS` widgets.

Envelopes: a trigger (homepage, compose, contextual, universal action) answers
``{"action": {"navigations": [{"pushCard": card}]}}``; a button's action answers
``{"renderActions": {...}}`` with a navigation, or a ``hostAppAction`` for Gmail (update the
open draft, open a created draft); missing consent is ``{"requesting_google_scopes": ...}``.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

#: Google's limit is 100 widgets per card; the cards stay well under it.
MAX_WIDGETS = 100
#: Tasks on one page of the home card.
PAGE_SIZE = 20
#: Tasks offered on a compose or message card.
PICKER_SIZE = 20

DUE_LABELS = {"overdue": "Overdue", "today": "Today", "tomorrow": "Tomorrow",
              "next7": "Next 7 days", "all": "All"}


@dataclass(frozen=True)
class TaskItem:
    """One email task as the cards show it."""

    id: int
    title: str
    due_at: datetime
    campaign: str
    contact_name: str
    contact_email: str
    company: str
    opened: bool = False


@dataclass(frozen=True)
class Urls:
    """The endpoint URLs the cards' buttons call, and Relay's public URL."""

    public: str
    home_list: str
    compose_fill: str
    message_reply: str


def esc(text: Any) -> str:
    """Card-safe text: HTML-escaped (card text fields render a small HTML subset)."""
    return html.escape(str(text or ""), quote=True)


def _when(moment: datetime, tz: str) -> str:
    local = moment.astimezone(ZoneInfo(tz))
    return local.strftime("%a %d %b %H:%M")


def _action(function: str, **params: Any) -> dict[str, Any]:
    action: dict[str, Any] = {"function": function}
    if params:
        action["parameters"] = [{"key": k, "value": str(v)} for k, v in params.items()]
    return {"action": action}


def _button(text: str, on_click: dict[str, Any]) -> dict[str, Any]:
    return {"text": text, "onClick": on_click}


def _open_link(url: str) -> dict[str, Any]:
    return {"openLink": {"url": url}}


def _text(text: str) -> dict[str, Any]:
    return {"textParagraph": {"text": text}}


def card(title: str, sections: Sequence[dict[str, Any]], subtitle: str = "",
         name: str = "") -> dict[str, Any]:
    """A card with a header and sections; raises ValueError past :data:`MAX_WIDGETS`."""
    widgets = sum(len(s.get("widgets", [])) for s in sections)
    if widgets > MAX_WIDGETS:
        raise ValueError(f"a card holds at most {MAX_WIDGETS} widgets, not {widgets}")
    header: dict[str, Any] = {"title": esc(title)}
    if subtitle:
        header["subtitle"] = esc(subtitle)
    out: dict[str, Any] = {"header": header, "sections": [s for s in sections if s["widgets"]]}
    if name:
        out["name"] = name
    return out


def _section(widgets: list[dict[str, Any]], header: str = "") -> dict[str, Any]:
    section: dict[str, Any] = {"widgets": widgets}
    if header:
        section["header"] = esc(header)
    return section


def task_widget(item: TaskItem, tz: str, button: dict[str, Any] | None) -> dict[str, Any]:
    """One task as a decorated text: who, the campaign and when it is due, and a button."""
    who = item.contact_name or item.contact_email
    bottom = f"{item.campaign} · due {_when(item.due_at, tz)}"
    if item.opened:
        bottom += " · opened"
    widget: dict[str, Any] = {
        "topLabel": esc(item.company),
        "text": esc(who),
        "bottomLabel": esc(bottom),
        "wrapText": True,
    }
    if button is not None:
        widget["button"] = button
    return {"decoratedText": widget}


def home_card(items: Sequence[TaskItem], *, total: int, due: str, page: int, tz: str,
              urls: Urls) -> dict[str, Any]:
    """The homepage card: one page of the rep's open email tasks, a due filter and "More"."""
    filters = [_button(("▸ " if key == due else "") + label,
                       _action(urls.home_list, due=key, page=1))
               for key, label in DUE_LABELS.items()]
    widgets = [task_widget(i, tz, _button("Open", _open_link(f"{urls.public}/tasks/{i.id}"
                                                            "/compose")))
               for i in items]
    if not items:
        widgets = [_text("No open email tasks here. Pick another filter, or open a compose "
                         "window and choose Relay to fill an email.")]
    shown_to = (page - 1) * PAGE_SIZE + len(items)
    more: list[dict[str, Any]] = []
    if shown_to < total:
        more = [{"buttonList": {"buttons": [
            _button("More", _action(urls.home_list, due=due, page=page + 1))]}}]
    start = (page - 1) * PAGE_SIZE + 1 if items else 0
    return card("Email tasks", [
        _section([{"buttonList": {"buttons": filters}}], "Due"),
        _section(widgets, f"{DUE_LABELS.get(due, due)}: {start}–{shown_to} of {total}"),
        _section(more),
    ], subtitle="Open one in a compose window to fill it", name=f"home-{due}-{page}")


def compose_card(matching: Sequence[TaskItem], others: Sequence[TaskItem], *, tz: str,
                 urls: Urls, recipients: Sequence[str]) -> dict[str, Any]:
    """The compose picker: tasks for the recipients already typed first, then the rest."""

    def fill(item: TaskItem) -> dict[str, Any]:
        return task_widget(item, tz, _button("Fill", _action(urls.compose_fill,
                                                             task_id=item.id)))

    sections = []
    if recipients:
        sections.append(_section(
            [fill(i) for i in matching] or [_text("No open email task for "
                                                  + esc(", ".join(recipients)) + ".")],
            "For these recipients"))
    sections.append(_section([fill(i) for i in others] or
                             [_text("No other open email tasks.")], "Due soonest"))
    return card("Fill from a Relay task", sections,
                subtitle="Pick a task: recipient, subject and email are filled in")


def message_card(sender: str, items: Sequence[TaskItem], *, tz: str,
                 urls: Urls) -> dict[str, Any]:
    """The contextual card of an opened message: the open email tasks of its sender."""
    widgets = [task_widget(i, tz, _button("Reply with this task",
                                          _action(urls.message_reply, task_id=i.id)))
               for i in items]
    if not widgets:
        widgets = [_text(f"No open email task for {esc(sender)}.")]
    return card("Relay tasks", [_section(widgets, f"For {sender}")],
                subtitle="Reply in this thread with a task's email")


def blocked_card(title: str, fields: Sequence[str]) -> dict[str, Any]:
    """A task that cannot be filled: which fields have no value (E5); nothing is filled."""
    listed = "".join(f"<br>• {esc(f)}" for f in fields)
    return card("Cannot fill this email", [_section([
        _text(f"<b>{esc(title)}</b> is missing a value for:{listed}"),
        _text("Add the value to the contact (or a default to the template) in Relay, "
              "then pick the task again."),
    ])])


def notice_card(title: str, text: str) -> dict[str, Any]:
    """A card with one paragraph (``text`` is escaped)."""
    return card(title, [_section([_text(esc(text))])])


def unknown_user_card(email: str, public_url: str) -> dict[str, Any]:
    """For a Google account with no Relay user: how to get access."""
    return card("No Relay account", [_section([
        _text(f"{esc(email)} has no Relay account. Ask your Relay admin to create a user "
              "with this exact email address, then reopen the add-on."),
        {"buttonList": {"buttons": [_button("Open Relay", _open_link(public_url + "/"))]}},
    ])])


# -- envelopes ------------------------------------------------------------------------------


def push(card_json: Mapping[str, Any]) -> dict[str, Any]:
    """A trigger's answer: show ``card_json``."""
    return {"action": {"navigations": [{"pushCard": dict(card_json)}]}}


def render_update(card_json: Mapping[str, Any]) -> dict[str, Any]:
    """An action's answer that replaces the current card."""
    return {"renderActions": {"action": {"navigations": [{"updateCard": dict(card_json)}]}}}


def render_push(card_json: Mapping[str, Any]) -> dict[str, Any]:
    """An action's answer that shows ``card_json`` on top of the current card."""
    return {"renderActions": {"action": {"navigations": [{"pushCard": dict(card_json)}]}}}


def update_draft(to: Sequence[str], subject: str, body_html: str) -> dict[str, Any]:
    """Fill the open draft: To, Subject, and the body inserted at the cursor as HTML."""
    return {"renderActions": {"hostAppAction": {"gmailAction": {"updateDraftActionMarkup": {
        "updateToRecipients": {"toRecipients": [{"email": e} for e in to]},
        "updateSubject": {"subject": subject},
        "updateBody": {"type": "IN_PLACE_INSERT",
                       "insertContents": [{"content": body_html,
                                           "contentType": "MUTABLE_HTML"}]},
    }}}}}


def open_created_draft(draft_id: str, thread_id: str) -> dict[str, Any]:
    """Open a draft just created through the Gmail API in Gmail's compose window."""
    return {"renderActions": {"hostAppAction": {"gmailAction": {"openCreatedDraftActionMarkup": {
        "draftId": draft_id, "draftThreadId": thread_id,
    }}}}}


def request_scopes(scopes: Sequence[str]) -> dict[str, Any]:
    """Ask Google to get the user's consent to ``scopes``, then replay the request."""
    return {"requesting_google_scopes": {"scopes": list(scopes)}}
