"""What `orchestra ps` asks the daemon for, and how it reads the pages back.

`ps` shows every task at work (running, waiting, checking, in review), the newest queued
ones (20: a long queue is `orchestra queue`'s, in the order it starts) and the newest
finished ones: `--limit N` of them, 20 unless said; all of both with `--all`. The daemon answers
`ListTasks` a page at a time (newest first, at most PAGE_MAX tasks, with a cursor), so a
history of any length is read in bounded replies.

Shared by the quick path (`orchestra.quick`) and the full command (`orchestra.main`), so that
both print the same thing; it works on plain maps and imports neither click nor msgspec.
"""

from __future__ import annotations

from orchestra.shared.vocab import FINISHED, Status

TYPE_CHECKING = False  # typing is not imported: `orchestra.quick` lists with this module
if TYPE_CHECKING:
    from collections.abc import Callable

RECENT = 20  # finished tasks `ps` shows unless --limit or --all says otherwise
QUEUED = 20  # queued tasks it shows unless --all says otherwise
from orchestra.shared.framing import PAGE_MAX  # noqa: E402 - pure Python, like this module
ACTIVE = [Status.QUEUED.value, Status.RUNNING.value, Status.WAITING.value, Status.CHECKING.value, Status.REVIEW.value]
WORKING = [s for s in ACTIVE if s != Status.QUEUED.value]
ENDED = [s.value for s in Status if s in FINISHED]


class Part:
    """One `ListTasks` query of `ps`: its fields, and how many of its tasks to show (None: all)."""

    def __init__(self, fields: dict, want: int | None, kind: str = "") -> None:
        self.fields = fields
        self.want = want
        self.kind = kind  # "queued" or "finished": what the note counts when some are left out


def parts(statuses: list[str], role: str | None, active_only: bool, limit: int | None, everything: bool,
          since: float | None = None, grep: str = "") -> list[Part]:
    """The queries `ps` makes: the tasks at work (all), the queued ones (the newest QUEUED;
    all of them when `everything`) and the finished ones (the newest `limit`; without it,
    RECENT, or all of them when `everything`); each of them submitted
    at or after `since`, with `grep` in its title or result, when given."""
    working = [s for s in WORKING if not statuses or s in statuses]
    queued = not statuses or Status.QUEUED.value in statuses
    ended = [] if active_only else [s for s in ENDED if not statuses or s in statuses]
    narrow = {**({"since": since} if since is not None else {}), **({"grep": grep} if grep else {})}
    found = []
    if working:
        found.append(Part({"status": working, "role": role, **narrow}, None))
    if queued:
        found.append(Part({"status": [Status.QUEUED.value], "role": role, **narrow}, None if everything else QUEUED, "queued"))
    if ended:
        newest = limit if limit is not None else None if everything else RECENT
        found.append(Part({"status": ended, "role": role, **narrow}, newest, "finished"))
    return [part for part in found if part.want != 0]


class Listing:
    def __init__(self, tasks: list[dict], shown_finished: int, left_out: int, shown_queued: int = 0, queued_left_out: int = 0) -> None:
        self.tasks = tasks  # in id order
        self.shown_finished = shown_finished  # of the finished tasks that match
        self.left_out = left_out  # finished tasks that match but are not shown
        self.shown_queued = shown_queued  # ... and the same of the queued ones
        self.queued_left_out = queued_left_out


def gather(call: Callable[[list[dict]], list[dict]], queries: list[Part]) -> Listing:
    """Every task the queries want. `call` sends a list of ListTasks field maps (pipelined)
    and returns their pages, as maps; the first page of every query goes in one round trip."""
    tasks: dict[int, dict] = {}
    shown = {"queued": 0, "finished": 0}
    left = {"queued": 0, "finished": 0}
    pending = [(part, None, 0) for part in queries]  # (query, cursor, tasks it has so far)
    while pending:
        pages = call([_fields(part, cursor, have) for part, cursor, have in pending])
        follow = []
        for (part, _, have), page in zip(pending, pages):
            for task in page["tasks"]:
                tasks[task["id"]] = task
            have += len(page["tasks"])
            if page["more"] and (part.want is None or have < part.want):
                follow.append((part, page["next"], have))
            elif part.want is not None:
                shown[part.kind] += have
                left[part.kind] += max(0, page["total"] - have)
        pending = follow
    return Listing([tasks[i] for i in sorted(tasks)], shown["finished"], left["finished"], shown["queued"], left["queued"])


def _fields(part: Part, cursor: int | None, have: int) -> dict:
    limit = PAGE_MAX if part.want is None else min(PAGE_MAX, part.want - have)
    return {**part.fields, "limit": limit, "before": cursor}


def note(listing: Listing) -> str:
    """What `ps` says on stderr when it leaves queued or finished tasks out ("" when not)."""
    lines = []
    if listing.queued_left_out:
        total = listing.shown_queued + listing.queued_left_out
        lines.append(f"the newest {listing.shown_queued:,} of {total:,} queued tasks are shown; "
                     "`orchestra queue` lists them in the order they start")
    if listing.left_out:
        total = listing.shown_finished + listing.left_out
        lines.append(f"the newest {listing.shown_finished:,} of {total:,} finished tasks are shown; "
                     "`orchestra ps --all` lists every task, `--limit N` the newest N finished")
    return "\n".join(lines)
