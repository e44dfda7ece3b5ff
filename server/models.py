"""Import every table so that ``Base.metadata`` is complete (Alembic and tests use this)."""

from server.accounts.models import ApiToken, Org, Role, User
from server.addins.gmail.models import GmailReplyDraft
from server.addins.outlook.models import MicrosoftIdentity, TaskSendReport
from server.addins.versions import ManifestBuild
from server.campaigns.models import Campaign, CampaignStep, Enrollment, EnrollmentStep
from server.compose.models import Template
from server.contacts.models import Contact
from server.db import Base
from server.feed.models import EventKind, FeedEvent
from server.mailboxes.lifecycle import Mailbox, MailboxCursor, MailboxSync, MailMatch, OAuthState
from server.salesforce.models import SalesforceConnection, SyncItem
from server.sending.models import ScheduledSend, SendStatus
from server.tasks.models import Task, TaskStatus
from server.tasks.tags import TaskTag

__all__ = [
    "ApiToken", "Base", "Campaign", "CampaignStep", "Contact", "Enrollment", "EnrollmentStep",
    "EventKind", "FeedEvent", "GmailReplyDraft", "MailMatch", "Mailbox", "MailboxCursor",
    "MailboxSync", "ManifestBuild",
    "MicrosoftIdentity", "OAuthState", "Org", "Role", "SalesforceConnection", "ScheduledSend",
    "SendStatus", "SyncItem", "Task", "TaskSendReport", "TaskTag", "TaskStatus", "Template", "User",
]
