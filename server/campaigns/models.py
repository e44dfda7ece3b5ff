"""Campaigns, their steps, enrollments (a person in a campaign) and their planned steps."""

from __future__ import annotations

import enum
from datetime import datetime, time

from sqlalchemy import ForeignKey, Index, String, Text, Time, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from server.campaigns.spec import LatePolicy, SendOption, StepType
from server.db import Base, enum_column, utcnow


class OnReply(enum.StrEnum):
    """What a reply does to the person's campaign (C3)."""

    END = "end"
    END_SUCCESS = "end_success"
    CONTINUE = "continue"


class OnBounce(enum.StrEnum):
    """What a bounce does to the person's campaign (C3)."""

    REMOVE = "remove"
    CONTINUE = "continue"


class CampaignStatus(enum.StrEnum):
    """A campaign is active until someone ends it (X1)."""

    ACTIVE = "active"
    ENDED = "ended"


class EnrollmentStatus(enum.StrEnum):
    """Where a person is in a campaign. Allowed moves are in ``ENROLLMENT_TRANSITIONS``."""

    SCHEDULED = "scheduled"  # start_at is in the future
    ACTIVE = "active"
    FINISHED = "finished"  # every step done
    REMOVED = "removed"  # removed by hand
    ENDED = "ended"  # the campaign was ended
    REPLIED = "replied"
    BOUNCED = "bounced"


ENROLLMENT_TRANSITIONS: dict[EnrollmentStatus, frozenset[EnrollmentStatus]] = {
    EnrollmentStatus.SCHEDULED: frozenset(
        {EnrollmentStatus.ACTIVE, EnrollmentStatus.REMOVED, EnrollmentStatus.ENDED}
    ),
    EnrollmentStatus.ACTIVE: frozenset(
        {
            EnrollmentStatus.FINISHED,
            EnrollmentStatus.REMOVED,
            EnrollmentStatus.ENDED,
            EnrollmentStatus.REPLIED,
            EnrollmentStatus.BOUNCED,
        }
    ),
}


class StepStatus(enum.StrEnum):
    """A person's step: pending until active (T5), then done, skipped or cancelled (X1)."""

    PENDING = "pending"
    ACTIVE = "active"
    DONE = "done"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class Campaign(Base):
    """A sales campaign: ordered steps plus the settings of C3; visible across its org."""

    __tablename__ = "campaign"

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"), index=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    skip_weekends: Mapped[bool] = mapped_column(default=False)
    late_task_policy: Mapped[LatePolicy] = mapped_column(
        enum_column(LatePolicy), default=LatePolicy.SLIDE
    )
    on_reply: Mapped[OnReply] = mapped_column(enum_column(OnReply), default=OnReply.END)
    on_bounce: Mapped[OnBounce] = mapped_column(enum_column(OnBounce), default=OnBounce.REMOVE)
    status: Mapped[CampaignStatus] = mapped_column(
        enum_column(CampaignStatus), default=CampaignStatus.ACTIVE
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)

    steps: Mapped[list[CampaignStep]] = relationship(
        order_by="CampaignStep.position",
        cascade="all, delete-orphan",
        lazy="selectin",
    )


class CampaignStep(Base):
    """One step of a campaign (C1); email steps carry a send option (S1, S2)."""

    __tablename__ = "campaign_step"
    __table_args__ = (UniqueConstraint("campaign_id", "position", name="uq_step_position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    position: Mapped[int]
    day: Mapped[int]
    type: Mapped[StepType] = mapped_column(enum_column(StepType))
    send_option: Mapped[SendOption | None] = mapped_column(enum_column(SendOption), default=None)
    send_time: Mapped[time | None] = mapped_column(Time, default=None)
    follow_up: Mapped[bool] = mapped_column(default=False)
    template_id: Mapped[int | None] = mapped_column(
        ForeignKey("template.id", ondelete="RESTRICT"), default=None
    )
    title: Mapped[str] = mapped_column(String(200), default="")
    notes: Mapped[str] = mapped_column(Text, default="")
    priority: Mapped[str] = mapped_column(String(8), default="normal")


class Enrollment(Base):
    """A person in a campaign, owned by the rep whose contact it is."""

    __tablename__ = "enrollment"
    __table_args__ = (
        UniqueConstraint("campaign_id", "contact_id", name="uq_enrollment_person"),
        Index("ix_enrollment_due_start", "status", "start_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("org.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contact.id", ondelete="CASCADE"))
    owner_id: Mapped[int] = mapped_column(ForeignKey("user.id", ondelete="CASCADE"), index=True)
    start_at: Mapped[datetime]
    send_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[EnrollmentStatus] = mapped_column(enum_column(EnrollmentStatus))
    end_reason: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class EnrollmentStep(Base):
    """A person's copy of a step: its planned moment and where it stands.

    The step is the campaign's step at the same ``position`` (steps cannot change once anyone
    is in the campaign), so no foreign key to ``campaign_step`` is kept: that check cost a
    third of a 10,000-person launch on PostgreSQL.
    """

    __tablename__ = "enrollment_step"
    __table_args__ = (UniqueConstraint("enrollment_id", "position", name="uq_enrollment_step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollment.id", ondelete="CASCADE"))
    position: Mapped[int]
    status: Mapped[StepStatus] = mapped_column(enum_column(StepStatus))
    planned_at: Mapped[datetime]
    done_at: Mapped[datetime | None] = mapped_column(default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
