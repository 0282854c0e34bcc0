"""The words the daemon and every client share that need no encoder: task statuses, how
long text is shortened, how an amount of money is written, the version.

Kept apart from `orchestra.shared.protocol` so that `orchestra.quick` and `orchestra.render` can use
them without importing msgspec; `orchestra.shared.protocol` re-exports them.
"""

from __future__ import annotations

import enum

ELLIPSIS = "…"


def shorten(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and an ellipsis: `limit` characters at most."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + ELLIPSIS


_VERSION: list[str] = []


def version() -> str:
    """orchestra's version, as installed (looked up once)."""
    if not _VERSION:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            _VERSION.append(installed("orchestra"))
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            _VERSION.append("0+unknown")
    return _VERSION[0]


LIVELY = 60.0
"""Seconds: a running task that wrote output, used a tool or used CPU this recently is
"working"; past that it is "silent" (for how long is shown). The default of the
`silent_after` setting, and what clients assume of a daemon whose views do not say."""


class Status(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # the agent asked something and waits for a person
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the daemon went away while it ran
    CHECKING = "checking"  # its agent ended well; its acceptance checks run (orchestrad.verify)
    REVIEW = "review"  # its checks passed; it waits for a person to approve or reject it (no process)

    @property
    def finished(self) -> bool:
        return self in FINISHED

    @property
    def active(self) -> bool:
        return self in (Status.RUNNING, Status.WAITING, Status.CHECKING)


FINISHED = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED, Status.INTERRUPTED}
)


def usd(amount: float) -> str:
    """Dollars as people read them everywhere (`ps`, `show`, the dashboard, workflows, the
    transcript, budgets): cents, and four places under a cent, so that a cost of a few
    tenths of a cent does not read as nothing: $12.30, $0.42, $0.0030."""
    if 0 < abs(amount) < 0.01:
        return f"${amount:.4f}"
    return f"${amount:.2f}"


def size(n: int | None) -> str:
    """Bytes in words: 1536 -> "1.5 KiB", 3 -> "3 B", None -> "-"."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
