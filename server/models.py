"""Import every table so that ``Base.metadata`` is complete (Alembic and tests use this)."""

from server.accounts.models import ApiToken, Org, Role, User
from server.campaigns.models import Campaign, CampaignStep, Enrollment, EnrollmentStep
from server.compose.models import Template
from server.contacts.models import Contact
from server.db import Base
from server.feed.models import EventKind, FeedEvent
from server.mail.mailboxes import Mailbox, MailboxCursor, MailMatch, OAuthState
from server.mail.models import ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus

__all__ = [
    "ApiToken", "Base", "Campaign", "CampaignStep", "Contact", "Enrollment", "EnrollmentStep",
    "EventKind", "FeedEvent", "MailMatch", "Mailbox", "MailboxCursor", "OAuthState", "Org",
    "Role", "ScheduledSend", "SendStatus", "Task", "TaskStatus", "Template", "User",
]
