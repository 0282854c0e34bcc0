"""How much CPU each running task uses: an observation of the shell, never a fact in the log.

A task's CPU time is read from its attempt's cgroup (`cpu.stat`'s `usage_usec`: everything
its processes ever used, the exited ones too) where it has one, else summed over its
process tree from /proc (`utime + stime + cutime + cstime` of the task's process and its
descendants: a child that exits and is reaped inside the tree moves its time into its
parent's `cutime`, so the sum does not drop when it goes).

`Meter` keeps, per running task, the CPU seconds seen so far and `cpu_at`, the last time
it was seen busy: using more than `BUSY_SHARE` of a CPU over the window since the reading
it is compared with (0.05 s in a 5 s window; at least `NOISE`, so a sleeping process's
odd clock tick does not count as work). A window is at least `MIN_WINDOW` long: readings
closer together than that are compared with the same older one. The scheduler's idle
timeout and the views use it. The engine reads every running task each `SAMPLE_EVERY`
seconds (less if `silent_after` is short: `every`), on one timer armed only while tasks
run, and reads them again just before it would stop one for a timeout, so a stop is never
decided on a reading up to `SAMPLE_EVERY` old. The process table is
`containment.processes()`, the one the sweep for adopted processes reads.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from orchestrad import containment

SAMPLE_EVERY = 5.0  # seconds between readings while tasks run
BUSY_SHARE = 0.01  # the share of one CPU a task must use over a window to count as busy ...
NOISE = 0.02  # ... and at least these many CPU seconds (two clock ticks)
MIN_WINDOW = 1.0  # seconds: readings closer than this are compared with an older one

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def every(silent_after: float) -> float:
    """Seconds between readings: SAMPLE_EVERY, or less where clients call a task silent
    sooner (the `silent_after` setting), so that a busy task is never shown silent for want
    of a fresh reading."""
    return max(0.25, min(SAMPLE_EVERY, silent_after / 4))


class Target(NamedTuple):
    """What to read for one task: its attempt, its process, its cgroup directory (None if
    it has none), and when the attempt started (its first window begins there, from 0)."""

    attempt: int
    pid: int
    cgroup: Path | None
    since: float


def available() -> bool:
    """Whether CPU use can be read here at all (Linux's /proc)."""
    return os.path.exists("/proc/self/stat")


def cgroup_seconds(path: Path) -> float | None:
    """The CPU seconds every process of the cgroup at `path` has used, or None if it is
    gone (or has no cpu.stat)."""
    try:
        with open(path / "cpu.stat", "rb") as f:
            for line in f:
                key, _, value = line.partition(b" ")
                if key == b"usage_usec":
                    return int(value) / 1e6
    except (OSError, ValueError):
        return None
    return None


def tree_seconds(root: int, table: dict[int, containment.Stat]) -> float | None:
    """The CPU seconds `root` and its descendants in `table` have used, or None if `root`
    is not in it (gone)."""
    if root not in table:
        return None
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st.ppid, []).append(pid)
    ticks, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        ticks += table[pid].ticks
        todo.extend(children.get(pid, ()))
    return ticks / _TICK


class Reading(NamedTuple):
    seconds: float  # CPU seconds used in this attempt, as far as seen
    at: float | None  # the last time it was seen using CPU (None: not yet)


class _Entry:
    __slots__ = ("attempt", "base", "base_at", "last", "seconds", "at", "told")

    def __init__(self, attempt: int, since: float) -> None:
        self.attempt = attempt
        self.base, self.base_at = 0.0, since  # the reading a window is measured from
        self.last = 0.0  # the latest reading
        self.seconds = 0.0  # growth seen, summed: never goes back
        self.at: float | None = None  # the last time it was seen busy
        self.told: float | None = None  # the `at` clients were last told of


class Meter:
    """CPU use per running task, in memory: what `plan` and the views are given."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def sample(self, targets: dict[int, Target], now: float) -> set[int]:
        """Read each task of `targets`; the tasks seen busy (their `cpu_at` moved to `now`)."""
        table: dict[int, tuple[int, int]] | None = None
        moved: set[int] = set()
        for task, target in targets.items():
            total = cgroup_seconds(target.cgroup) if target.cgroup is not None else None
            if total is None:
                if table is None:
                    table = containment.processes()
                total = tree_seconds(target.pid, table)
            if total is None:
                continue  # it is exiting
            entry = self._entries.get(task)
            if entry is None or entry.attempt != target.attempt:
                entry = self._entries[task] = _Entry(target.attempt, target.since)
            entry.seconds += max(0.0, total - entry.last)
            entry.last = total
            if total < entry.base:  # a process reaped from outside the tree took its time away
                entry.base, entry.base_at = total, now
                continue
            window = now - entry.base_at
            if total - entry.base > max(BUSY_SHARE * window, NOISE):
                entry.at = now
                moved.add(task)
            if window >= MIN_WINDOW or task in moved:
                entry.base, entry.base_at = total, now
        return moved

    def reading(self, task: int) -> Reading | None:
        entry = self._entries.get(task)
        return Reading(entry.seconds, entry.at) if entry is not None else None

    def busy(self) -> dict[int, float]:
        """Task -> the last time it was seen using CPU (for `scheduler.plan`)."""
        return {task: e.at for task, e in self._entries.items() if e.at is not None}

    def to_tell(self, tasks: Iterable[int], every: float) -> set[int]:
        """Of `tasks`, those whose `cpu_at` clients last heard of is `every` seconds older
        than it is now (or never heard of): a busy task is re-announced that often, not on
        every reading, and a client's view of it is never that stale."""
        due = set()
        for task in tasks:
            entry = self._entries.get(task)
            if entry is not None and entry.at is not None and (entry.told is None or entry.at - entry.told >= every):
                entry.told = entry.at
                due.add(task)
        return due

    def forget(self, tasks: Iterable[int]) -> None:
        for task in tasks:
            self._entries.pop(task, None)


class Sampler:
    """The engine's readings: a `Meter`, and the one timer that reads every running task
    each `every(silent_after)` seconds, armed only while tasks run. `targets(None)` gives
    what to read of every running task (`targets(tasks)`: of those); `on_busy(moved, told)`
    hears of the tasks seen busy, and of those clients should be told of (`to_tell`)."""

    def __init__(self, targets: Callable[[set[int] | None], dict[int, Target]], clock: Callable[[], float],
                 on_busy: Callable[[set[int], set[int]], None]) -> None:
        self.meter = Meter()
        self.readable = available()
        self._targets, self._clock, self._on_busy = targets, clock, on_busy
        self._timer: asyncio.TimerHandle | None = None
        self._silent_after = 60.0

    def busy(self) -> dict[int, float] | None:
        """For `scheduler.plan`: None where CPU use cannot be read (then only output counts)."""
        return self.meter.busy() if self.readable else None

    def fresh(self, tasks: set[int], now: float) -> bool:
        """Read `tasks` now (before a timeout stops them); whether any was seen busy."""
        return self.readable and bool(self.meter.sample(self._targets(tasks), now))

    def arm(self, silent_after: float) -> None:
        self._silent_after = silent_after
        if self._timer is None and self.readable and self._targets(None):
            self._timer = asyncio.get_running_loop().call_later(every(silent_after), self._tick)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        moved = self.meter.sample(self._targets(None), self._clock())  # the engine forgets a task once it stops
        if moved:
            self._on_busy(moved, self.meter.to_tell(moved, self._silent_after / 2))  # so no client shows it silent
        self.arm(self._silent_after)
