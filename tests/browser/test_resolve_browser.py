"""In a real browser: resolving emails on the Command Center's Failed tab."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db import utcnow
from server.sending.models import Resolution, ScheduledSend, SendStatus
from tests.browser.test_compose_flow import sign_in
from tests.conftest import World, make_contact


def waiting_sends(session: Session, world: World) -> tuple[int, int]:
    """An email of rep@a.test that needs attention and one that failed; their ids."""
    moment = utcnow() - timedelta(hours=1)
    ids = []
    for email, status, reason in (
            ("ada@example.com", SendStatus.NEEDS_ATTENTION,
             "needs attention: could not tell whether the email left"),
            ("bob@example.com", SendStatus.FAILED, "failed: send: 550 recipient rejected")):
        contact = make_contact(session, world.rep, email)
        send = ScheduledSend(org_id=world.org.id, owner_id=world.rep.id, contact_id=contact.id,
                             to_email=email, subject=f"Hello {email}", html="<p>Hi</p>",
                             text="Hi", status=status, due_at=moment, reason=reason,
                             message_id=f"<relay.x{email}@a.test>", updated_at=moment)
        session.add(send)
        session.flush()
        ids.append(send.id)
    session.commit()
    return ids[0], ids[1]


def test_rep_resolves_emails_from_the_failed_tab(page: Any, session: Session, world: World,
                                                 artifacts: Path):
    """Can a rep mark one email as sent and send a failed one again, staying on the tab?"""
    unknown, failed = waiting_sends(session, world)
    sign_in(page)
    page.get_by_role("link", name="Failed").click()
    page.wait_for_url("**/?tab=failed")
    row = page.locator(f"#send-{unknown}")
    assert "We cannot tell whether the email to" in row.inner_text()
    assert page.locator(f"#send-{failed}").get_by_role("button", name="It was sent").count() == 0
    page.screenshot(path=str(artifacts / "failed-tab.png"), full_page=True)

    row.get_by_role("button", name="It was sent").click()
    page.wait_for_url("**/?tab=failed")
    page.get_by_role("status").filter(has_text="Marked as sent").wait_for()
    assert page.locator(f"#send-{unknown}").count() == 0

    page.locator(f"#send-{failed}").get_by_role("button", name="Send it again").click()
    page.wait_for_url("**/?tab=failed")
    page.get_by_role("status").filter(has_text="Sending it again").wait_for()
    assert page.get_by_text("Nothing has failed.").is_visible()
    got = {s.id: s for s in session.scalars(select(ScheduledSend)
                                            .execution_options(populate_existing=True))}
    session.commit()
    assert got[unknown].status is SendStatus.SENT
    assert got[unknown].resolution is Resolution.SENT
    assert got[failed].status is SendStatus.RESENT
    [new] = [s for s in got.values() if s.resend_of_id == failed]
    assert new.status is SendStatus.SCHEDULED
