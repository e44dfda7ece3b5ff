"""Plain data describing a campaign for the pure rule modules (no I/O, no ORM)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import time


class StepType(enum.StrEnum):
    """What a step does (C1)."""

    EMAIL = "email"
    CALL = "call"
    INMAIL = "inmail"
    CUSTOM = "custom"


class SendOption(enum.StrEnum):
    """How an email step is sent (S1, S2)."""

    CHOOSE_AT_LAUNCH = "choose_at_launch"
    AT_TIME = "at_time"
    SAME_AS_PREVIOUS = "same_as_previous"
    TASK = "task"


class LatePolicy(enum.StrEnum):
    """What happens to later steps when a step is done late (T7)."""

    SLIDE = "slide"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step as the rules see it. ``position`` is its 0-based index in campaign order."""

    position: int
    day: int
    type: StepType
    send_option: SendOption | None = None
    send_time: time | None = None
    follow_up: bool = False

    @property
    def is_automatic_email(self) -> bool:
        """True for an email the system sends itself (anything but the ``task`` option)."""
        return self.type is StepType.EMAIL and self.send_option is not SendOption.TASK

    @property
    def makes_task(self) -> bool:
        """True when the step creates a task for the rep (T4)."""
        return not self.is_automatic_email


@dataclass(frozen=True, slots=True)
class CampaignSettings:
    """The settings that affect timing (C3)."""

    timezone: str
    skip_weekends: bool = False
    late_task_policy: LatePolicy = LatePolicy.SLIDE
