"""Finding and killing what agents leave behind, after their task has ended.

When a task's process exits, the supervisor has already killed its process group and its
cgroup (where there is one). What can remain: processes that carry the task's mark but
left the group (setsid), and, without cgroups, processes that also scrubbed the mark. The
`Sweeper` finds both, off the event loop:

* a scan of /proc (in a worker thread; the exits of SWEEP_DELAY seconds share one scan)
  kills every process carrying the mark of a task that just ended (`orphans`);
* the same scan lists every process, and back on the loop the sweeper judges the ones the
  daemon adopted as child subreaper (`containment`): it reaps the dead, and kills a
  detached one once no task that may have started it is still running. A stray whose mark
  names its task waits for that task alone; one with no mark waits for every task that was
  running when it was first seen, since any of them may own it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Callable

from orchestrad import containment, orphans

log = logging.getLogger(__name__)

SWEEP_DELAY = 0.05  # seconds: task exits this close together share one scan for leftovers


class Sweeper:
    def __init__(self, home_mark: str, own_pids: Callable[[], set[int]], active: Callable[[], set[int]]) -> None:
        self.home_mark = home_mark
        self.own_pids = own_pids  # the task processes the supervisor still waits for
        self.active = active  # the ids of the tasks still running
        self._marks: dict[str, int] = {}  # mark -> task, of tasks that ended since the last sweep
        self._next: asyncio.TimerHandle | asyncio.Future | None = None  # the next sweep, or the one running
        self._strays: dict[int, set[int]] = {}  # adopted stray -> the tasks that may own it

    def task_ended(self, task_id: int, attempt: int) -> None:
        """Sweep for what this attempt left, soon."""
        self._marks[orphans.mark(self.home_mark, task_id, attempt)] = task_id
        self._soon(SWEEP_DELAY)

    def _soon(self, delay: float) -> None:
        if self._next is None:
            self._next = asyncio.get_running_loop().call_later(delay, self._now)

    def _now(self) -> asyncio.Future:
        marks, self._marks = self._marks, {}
        job = asyncio.get_running_loop().run_in_executor(None, _scan, set(marks))
        job.add_done_callback(functools.partial(self._swept, marks))
        self._next = job
        return job

    def _swept(self, marks: dict[str, int], job: asyncio.Future) -> None:
        self._next = None
        if job.cancelled():
            return
        if job.exception() is not None:
            log.error("could not look for processes that tasks left running: %s", job.exception())
        else:
            killed, table = job.result()
            for mark, pids in killed.items():
                log.warning("task %s: killed %d process(es) it left running: %s", marks[mark], len(pids), pids)
            if self._tidy_adopted(table, set(marks.values())):
                self._soon(SWEEP_DELAY * 4)  # once they are dead, reap them
        if self._marks:
            self._soon(SWEEP_DELAY)

    def _tidy_adopted(self, table: dict[int, containment.Stat], ended: set[int]) -> bool:
        """Reap the dead among the processes the daemon adopted; kill the detached ones no
        running task may own. True if anything was killed."""
        me = os.getpid()
        own = self.own_pids() | containment.OWN
        containment.reap([pid for pid in containment.adopted_zombies(me, table) if pid not in own])
        found = set(containment.strays(me, table, own))
        for pid in list(self._strays):
            if pid not in found:
                del self._strays[pid]
        active = self.active()
        killed = False
        for pid in sorted(found):
            if pid not in self._strays:
                self._strays[pid] = self._owners(pid, active | ended)
            if not self._strays[pid] & active:
                hit = containment.kill_tree(pid, table)
                log.warning("killed %d process(es) an agent left running detached: %s", len(hit), hit)
                killed = True
        return killed

    def _owners(self, pid: int, candidates: set[int]) -> set[int]:
        """The tasks that may have started `pid`: the one its mark names, else all of them."""
        home, _, rest = (orphans.mark_of(pid) or "").partition(":")
        task = rest.split(":")[0] if home == self.home_mark else ""
        return {int(task)} if task.isdigit() else candidates

    async def settle(self) -> None:
        """At shutdown: the sweeps still due, now."""
        if isinstance(self._next, asyncio.Future):
            await asyncio.wait([self._next])  # its callback may set a timer for the next one
        if isinstance(self._next, asyncio.TimerHandle):
            self._next.cancel()
            self._next = None
        if self._marks:
            await asyncio.wait([self._now()])


def _scan(marks: set[str]) -> tuple[dict[str, list[int]], dict[int, containment.Stat]]:
    """In a worker thread: kill what carries the marks of tasks that ended, then list every
    process (for the loop to reap and judge the ones the daemon adopted)."""
    killed = orphans.kill_marked(marks) if marks else {}
    return killed, containment.processes()
