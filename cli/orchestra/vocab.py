"""The words the daemon and every client share that need no encoder: task statuses.

Kept apart from `orchestra.protocol` so that `orchestra.quick` and `orchestra.render` can use
them without importing msgspec; `orchestra.protocol` re-exports them.
"""

from __future__ import annotations

import enum


class Status(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # the agent asked something and waits for a person
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the daemon went away while it ran

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def active(self) -> bool:
        return self in (Status.RUNNING, Status.WAITING)


FINISHED = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED, Status.INTERRUPTED}
)
