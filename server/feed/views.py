"""Live Feed endpoints: a cursor-paged list and a Server-Sent Events stream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context
from pydantic import Field

from server.accounts.auth import api_user
from server.api.operations import Out, Query, operation
from server.db import get_session
from server.feed import service
from server.feed.models import EventKind

bp = Blueprint("feed", __name__, url_prefix="/api/feed")

HEARTBEAT_SECONDS = 15.0


class EventOut(Out):
    """One Live Feed event."""

    id: int
    kind: EventKind
    summary: str
    data: dict[str, Any]
    owner_id: int
    created_at: datetime


class FeedPage(Out):
    """Events after a cursor, oldest first; pass ``cursor`` as ``after`` to get the next ones."""

    items: list[EventOut]
    cursor: int


class FeedQuery(Query):
    """Where to start and how many events to return."""

    after: int = Field(0, ge=0, description="the cursor of the last event already seen")
    limit: int = Field(100, ge=1, le=500)


class StreamQuery(Query):
    """Where the stream starts; Last-Event-ID takes precedence (browser reconnects)."""

    after: int | None = Field(None, ge=0, description="default: only new events")


@operation(bp, "", "GET", query=FeedQuery, response=FeedPage)
def list_(query: FeedQuery) -> FeedPage:
    """Feed events after a cursor (tasks created/completed/skipped, sends, people in and out)."""
    events = service.events_after(get_session(), api_user(), query.after, query.limit)
    get_session().commit()
    return FeedPage(items=[EventOut.model_validate(e) for e in events],
                    cursor=events[-1].id if events else query.after)


@operation(bp, "/stream", "GET", query=StreamQuery, content_type="text/event-stream")
def stream(query: StreamQuery) -> Response:
    """The Live Feed as Server-Sent Events: one ``id``/``event``/``data`` block per event.

    The stream ends after ``FEED_STREAM_SECONDS``; EventSource reconnects with Last-Event-ID
    and misses nothing.
    """
    user = api_user()
    session = get_session()
    last = request.headers.get("Last-Event-ID", "")
    cursor = int(last) if last.isdigit() else query.after
    if cursor is None:
        cursor = service.latest_cursor(session, user)
    session.commit()
    seconds = float(current_app.config["FEED_STREAM_SECONDS"])
    poll = float(current_app.config.get("FEED_POLL_SECONDS", 1.0))

    def generate() -> Iterator[str]:
        nonlocal cursor
        yield f"retry: 2000\n: connected, cursor {cursor}\n\n"
        deadline = time.monotonic() + seconds
        beat = time.monotonic() + HEARTBEAT_SECONDS
        while True:
            events = service.events_after(session, user, cursor, 200)
            session.commit()  # short transactions: never hold a lock between polls
            for event in events:
                cursor = event.id
                payload = json.dumps(service.as_dict(event), separators=(",", ":"))
                yield f"id: {event.id}\nevent: {event.kind.value}\ndata: {payload}\n\n"
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= beat:
                beat = now + HEARTBEAT_SECONDS
                yield ": keep-alive\n\n"
            if not events:
                time.sleep(min(poll, max(0.0, deadline - now)))

    return Response(stream_with_context(generate()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
