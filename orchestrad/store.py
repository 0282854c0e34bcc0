"""The event store: the log, the snapshots, the history, and the state they rebuild.

Read, decide, append: the store is where appended events are encoded into log records and
folded into the state, in log order. It opens by loading the newest snapshot and replaying
only the records after it, so start-up time does not grow with history. `verify` replays
from the beginning and compares with the live state.

Memory does not grow with history either: when it writes a snapshot, the store moves the
finished tasks past the newest `history_in_memory` out of the state, into the history
(`orchestrad.history`, SQLite), and the state keeps only how each ended. A task needed in
memory again (a fact about it is to be folded, a command names it) is taken back first
(`take_back`), so the pure core only ever sees tasks in memory; what only reads a task
(`show`, `logs`, listing) reads it from wherever it is (`task`, `listing`) and leaves it
there. Tasks of a workflow still running, or waiting to merge, stay in memory together.

The writes go in the snapshot writer's thread, in this order: the rows of the tasks moved
out (committed), the snapshot that no longer holds them, then the release of rows that
snapshot no longer needs. Until their rows are committed, tasks moved out are served from
`_moving`.
"""

from __future__ import annotations

import asyncio
import gc
import heapq
import logging
import math
from pathlib import Path
from typing import Callable, Iterator, Sequence

from orchestra.shared.protocol import Status
from orchestra.shared.vocab import FINISHED
from orchestrad import events as ev
from orchestrad.commit import GroupCommit
from orchestrad.history import Filter, History, HistoryError, Row, frozen, thawed
from orchestrad.log import Log
from orchestrad.snapshots import SnapshotStore
from orchestrad.state import (OutputRef, State, Task, evolve, from_snapshot, history_counts, in_history, move_out, output_count,
                              output_ref, output_refs, replay_decoded, status_of, take_back, to_snapshot, whole)

log = logging.getLogger(__name__)

Item = ev.Event | tuple[ev.Event, bytes]


class StoreError(Exception):
    pass


HISTORY_FILE = "history.db"  # in the snapshots' directory: like them, derived from the log


class Store:
    def __init__(self, log_: Log, snapshots: SnapshotStore, state: State, notes: list[str], history: History,
                 moving: dict[int, Row] | None = None) -> None:
        self.log = log_
        self.snapshots = snapshots
        self.state = state
        self.notes = notes  # what opening found and did, for the daemon's log
        self.history = history
        self._moving: dict[int, Row] = moving or {}  # moved out of memory, rows not committed yet
        self._releasing: list[int] = []  # released by the snapshot being written
        self._counts = history_counts(state)  # tasks in the history by how they ended, kept as they come and go
        self._commit: GroupCommit | None = None
        self._since_snapshot = 0
        self._snapshot_task: asyncio.Future | None = None

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, log_dir: Path, snapshot_dir: Path, *, segment_bytes: int = 64 << 20, readonly: bool = False) -> "Store":
        """Open the log (cutting a torn tail) and rebuild the state. LogCorrupt if damaged.
        `readonly` changes nothing on disk: for checking a home a daemon may be using."""
        log_ = Log.open(log_dir, segment_bytes=segment_bytes, readonly=readonly)
        notes = [
            f"cut a torn record at the end of {path} (offset {offset}, {cut} bytes): {why}"
            for path, offset, cut, why in log_.report.truncated
        ]
        snapshots = SnapshotStore(snapshot_dir)
        history = History(Path(snapshot_dir) / HISTORY_FILE, readonly=readonly)
        # Loading allocates many long-lived objects and no cycles: the cyclic collector
        # would only rescan them again and again. Pause it, then freeze what was loaded.
        gc.disable()
        try:
            state = _restore(log_, snapshots, history, notes, readonly)
        finally:
            gc.freeze()
            gc.enable()
        notes.extend(snapshots.warnings)
        return cls(log_, snapshots, state, notes, history)

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start group commit on the running loop (appends need it)."""
        self._commit = GroupCommit(self.log)

    async def close(self) -> None:
        if self._commit is not None:
            await self._commit.close()
        if self._snapshot_task is not None:
            await asyncio.shield(self._snapshot_task)
        self.log.close()  # the history stays open for the snapshot written after: `history.close()` then

    # -- appending ----------------------------------------------------------------------

    def append(self, ts: float, items: Sequence[Item]) -> asyncio.Future:
        """Write `items` to the log, fold them into the state now, and return a future that
        is done once they are durable. Nothing is folded if the write itself fails."""
        assert self._commit is not None, "Store.attach() first"
        pairs: list[tuple[ev.Event, bytes]] = [
            item if isinstance(item, tuple) else (item, b"") for item in items
        ]
        records = [(ev.encode(ts, event), data) for event, data in pairs]
        if self.state.cold:
            self.take_back([t for event, _ in pairs for t in _touched(event)])
        # Output alone is waited on by no one: its fsync may wait a moment for company.
        lazy = all(type(event) is ev.OutputAppended for event, _ in pairs)
        results, durable = self._commit.append_nowait(records, lazy=lazy)
        for (event, _), (seq, _position, data_ref) in zip(pairs, results):
            if type(event) is ev.TasksPurged and self.state.cold:
                for task_id in event.tasks:
                    if in_history(self.state, task_id):
                        self._count(status_of(self.state, task_id), -1)
            evolve(self.state, event, seq=seq, ts=ts, data=data_ref)
            if self._moving and type(event) is ev.TasksPurged:
                for task_id in event.tasks:  # gone from the history before its row was written
                    self._moving.pop(task_id, None)
        self._since_snapshot += len(pairs)
        if self._since_snapshot >= self.state.config.snapshot_every:
            durable.add_done_callback(lambda f: f.exception() or self.snapshot_soon())
        return durable

    # -- snapshots ----------------------------------------------------------------------

    def snapshot_soon(self) -> None:
        """Move old finished tasks out of memory and encode the state now (consistent);
        write the history's rows and the snapshot in a thread (fsync off the loop)."""
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        self._since_snapshot = 0
        job = self._prepare()
        loop = asyncio.get_running_loop()
        self._snapshot_task = task = loop.run_in_executor(None, self._write, *job)
        task.add_done_callback(lambda f: self._written(f, *job))

    async def snapshot_settled(self) -> None:
        """Wait for a snapshot being written in the background, if any."""
        if self._snapshot_task is not None:
            await asyncio.shield(self._snapshot_task)

    def snapshot_now(self) -> None:
        """Synchronously (at shutdown, after the log is flushed)."""
        job = self._prepare()
        try:
            self._write(*job)
        except BaseException as exc:
            self._written(exc, *job)
            raise
        self._written(None, *job)
        self._since_snapshot = 0

    def _prepare(self) -> tuple[int, bytes, list[Row], list[int], list[int]]:
        """What a snapshot writes: its seq and payload, the rows of every task moved out
        whose row is not committed yet, and the tasks taken back since the last one (with
        those of them in the history again)."""
        state = self.state
        for task, outputs in move_out(state, self._movable()):
            self._moving[task.id] = frozen(task, outputs)
            self._count(task.status, 1)
        released = state.released
        payload = to_snapshot(state)
        state.released = []
        self._releasing = released
        still = [t for t in released if in_history(state, t)]
        return state.last_seq, payload, list(self._moving.values()), released, still

    def _write(self, seq: int, payload: bytes, rows: list[Row], released: list[int], still: list[int]) -> None:
        if rows:
            self.history.put(seq, ((row, _first_segment(row.outputs)) for row in rows))
        self.snapshots.write(seq, payload)
        if released:
            self.history.release(seq, released, still)

    def _written(self, outcome, seq: int, payload: bytes, rows: list[Row], released: list[int], still: list[int]) -> None:
        """On the loop, once the writer is done: committed rows leave `_moving`; if it
        failed, the released tasks wait for the next snapshot."""
        failed = outcome if isinstance(outcome, BaseException) else (outcome.exception() if outcome is not None else None)
        self._releasing = []
        if failed is None:
            for task, *_ in rows:
                if self._moving.get(task.id) is not None and self._moving[task.id].task is task:
                    del self._moving[task.id]
        else:
            log.error("could not write a snapshot: %s", failed)
            # Rows it did commit may be written again by the next one: let those go too.
            self.state.released = released + [row.task.id for row in rows] + self.state.released

    def crowded(self) -> bool:
        """More finished tasks are in memory than `history_in_memory` keeps, by a margin:
        a snapshot would move them out (at start-up, after a log written by an older
        version, or with the setting lowered)."""
        finished = sum(1 for t in self.state.tasks.values() if t.status.finished)
        return finished > self.state.config.history_in_memory + 100

    def _movable(self) -> list[int]:
        """The finished tasks past the newest `history_in_memory`, oldest first, but those of
        a workflow still at work or waiting to merge, and those a merge still names."""
        state = self.state
        keep = state.config.history_in_memory
        finished = [t for t in state.tasks.values() if t.status.finished]
        if len(finished) <= keep:
            return []
        named = {m.task for m in map(state.merges.get, state.merge_queue) if m is not None and m.task is not None}
        settled: dict[int, bool] = {}

        def pinned(t: Task) -> bool:
            workflow = t.spec.workflow
            if workflow is None:
                return t.id in named
            if workflow not in settled:
                wf = state.workflows.get(workflow)
                settled[workflow] = wf is None or (
                    workflow not in state.merge_pending
                    and all((status_of(state, x) or Status.CANCELLED).finished for x in wf.steps.values())
                )
            return not settled[workflow] or t.id in named

        finished.sort(key=lambda t: t.id)
        return [t.id for t in finished[: len(finished) - keep] if not pinned(t)]

    # -- the history --------------------------------------------------------------------

    def take_back(self, task_ids: list[int]) -> None:
        """Bring the tasks among `task_ids` that are in the history back into memory (with
        the other steps of their workflows), before a fact or a command concerns them."""
        _bring_back(self.state, task_ids, self._row)

    def _row(self, task_id: int) -> Row:
        """The row to take task `task_id` back from: one being moved out, or the history's."""
        self._count(status_of(self.state, task_id), -1)
        moving = self._moving.pop(task_id, None)
        return Row(thawed(moving), moving.outputs) if moving is not None else self.history.get(task_id)

    def task(self, task_id: int) -> Task | None:
        """Task `task_id`, in memory or in the history (where it stays); None if none."""
        task = self.state.tasks.get(task_id)
        if task is not None or not in_history(self.state, task_id):
            return task
        row = self._moving.get(task_id)
        return row.task if row is not None else self.history.get(task_id).task

    def _count(self, status: Status | None, by: int) -> None:
        if status is not None:
            self._counts[status] = self._counts.get(status, 0) + by

    def history_counts(self) -> dict[Status, int]:
        """How many tasks in the history ended each way."""
        return {status: n for status, n in self._counts.items() if n}

    def history_cost(self) -> float:
        """What the tasks in the history cost together."""
        return self.history.cost(self._candidates(), self._current) + sum(r.task.cost_usd for r in self._moving.values())

    def _candidates(self) -> set[int]:
        """The tasks that may have rows that are not their current one: those being moved
        out, and those taken back or purged whose rows are not released yet (a task in
        memory with rows was taken back since the last snapshot: it is among these)."""
        return {*self.state.released, *self._releasing, *self._moving}

    def _current(self, task_id: int) -> bool:
        """Task `task_id`'s newest row is the task as it is now."""
        return in_history(self.state, task_id) and task_id not in self._moving

    def listing(self, status: list[Status], role: str | None, since: float | None, grep: str, before: int | None,
                active_only: bool, limit: int = 100) -> tuple[Iterator[Task], int]:
        """Tasks matching every filter given, newest first and below `before`, from memory
        and the history alike, and how many match in all, below `before` or not (`grep`
        casefolded; `active_only`: none finished); `limit`: about how many will be read."""
        state = self.state
        wanted = set(status)
        low = -math.inf if since is None else since

        def matches(t: Task) -> bool:
            return ((not wanted or t.status in wanted) and (role is None or t.role == role) and t.submitted_at >= low
                    and (not active_only or not t.status.finished)
                    and (not grep or grep in t.spec.title.casefold() or grep in (t.result or "").casefold()))

        near = [t for t in [*state.tasks.values(), *(r.task for r in self._moving.values())] if matches(t)]
        total = len(near)
        near = sorted((t for t in near if before is None or t.id < before), key=lambda t: -t.id)
        ended = [s for s in (wanted or FINISHED) if s.finished]
        if active_only or not ended:
            return iter(near), total
        want = Filter(status=ended, role=role, since=since, grep=grep)
        if role is None and since is None and not grep:  # the state counts the history's tasks by how they ended
            moving = sum(1 for r in self._moving.values() if r.task.status in ended)
            total += sum(self._counts.get(s, 0) for s in ended) - moving
        else:
            total += self.history.count(want, self._candidates(), self._current)
        return _newest_first(near, self.history.page(want._replace(before=before), self._candidates(), self._current, limit)), total

    def compact(self) -> tuple[int, int]:
        """Drop the oldest segments that nothing needs any more: every record in them is
        covered by the newest snapshot, and no task still in the state has output there.
        Call right after `snapshot_now`. Returns (segments removed, bytes freed)."""
        if len(self.log.segments()) < 2:
            return 0, 0
        keep_from = self.state.last_seq + 1
        for task_id in self.state.outputs:
            for ref in output_refs(self.state, task_id):
                keep_from = min(keep_from, ref.segment)
                break  # a task's first chunk is its oldest
        for _, outputs, _ in self._moving.values():
            keep_from = min(keep_from, _first_segment(outputs) or keep_from)
        keep_from = min(keep_from, self.history.first_segment() or keep_from)
        before = _size(self.log.directory)
        removed = self.log.drop_segments_before(keep_from)
        return len(removed), before - _size(self.log.directory)

    # -- reading ------------------------------------------------------------------------

    def output(self, task_id: int, start: int = 0) -> Iterator[tuple[str, bytes]]:
        """The task's output chunks from the `start`-th on, read straight from their places."""
        for ref in output_refs(self._places(task_id), task_id, start):
            yield ref.stream, self.read_output(ref)

    def output_place(self, task_id: int, index: int) -> OutputRef:
        """Where the task's `index`-th output chunk lies (IndexError if it has none)."""
        return output_ref(self._places(task_id), task_id, index)

    def _places(self, task_id: int) -> State:
        """A state holding the output places of task `task_id`: the live one, or for a
        task in the history, one made of its row."""
        if not in_history(self.state, task_id):
            return self.state
        row = self._moving.get(task_id) or self.history.get(task_id)
        return State(outputs={task_id: bytearray(row.outputs)} if row.outputs else {})

    def read_output(self, ref: OutputRef) -> bytes:
        """An output chunk, whole, its checksum checked."""
        return self.log.read_data(ref)

    def check_output(self, ref: OutputRef) -> None:
        """Check an output chunk against its checksum (LogCorrupt if damaged), never holding
        more than a small part of it."""
        self.log.check_data(ref)

    def read_output_part(self, ref: OutputRef, start: int, length: int) -> bytes:
        """Bytes `start` to `start + length` of an output chunk, unchecked: for a reader that
        has just checked the whole chunk, and sends it on part by part."""
        return self.log.read_data_part(ref, start, length)

    def output_count(self, task_id: int) -> int:
        return output_count(self._places(task_id), task_id)

    def verify(self) -> list[str]:
        """Replay the whole log from its first record and compare with the live state."""
        base = State()
        first = self.log.segments()[0] if self.log.segments() else 1
        notes = []
        if first > 1:
            snap = _oldest_covering(self.snapshots, first)
            if snap is None:
                return [f"cannot verify: records before {first} were compacted and no snapshot covers them"]
            base = snap
            notes.append(f"replayed from the snapshot at record {base.last_seq} (older records were compacted)")
        replayed = replay_log(self.log, base, history=self.history)
        moving = set(self._moving)
        live = whole(self.state, [*self._moving.values(), *self.history.all_current(lambda t: in_history(self.state, t) and t not in moving)])
        replayed = whole(replayed, self.history.all_current(lambda t: in_history(replayed, t)))
        if replayed != live:
            notes.append(f"MISMATCH: a replay differs from the live state ({_differences(replayed, live)})")
        else:
            notes.append(f"ok: replaying {replayed.last_seq} records gives the live state")
        return notes


def _differences(replayed: State, live: State) -> str:
    """Where two states differ: which tasks, and which tasks' output places."""
    def differing(a: dict, b: dict) -> list[int]:
        return sorted(t for t in set(a) | set(b) if a.get(t) != b.get(t))[:20]

    found = []
    if tasks := differing(replayed.tasks, live.tasks):
        found.append(f"tasks {tasks}")
    if outputs := differing(replayed.outputs, live.outputs):
        found.append(f"the output places of tasks {outputs}")
    return "; ".join(found) or "outside the tasks and their output"


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.suffix in (".seg", ".dat"))


def replay_log(log_: Log, state: State, history: History | None = None) -> State:
    """Fold every record after the state's last into it, taking tasks back from the
    `history` as facts about them come."""
    def back(task_id: int) -> None:
        if history is None:
            raise HistoryError(f"task {task_id} is in the history, and no history was given to replay with")
        _bring_back(state, [task_id], history.get)

    return replay_decoded(log_.replay_decoded(ev.Body, after_seq=state.last_seq), state, back)


def _restore(log_: Log, snapshots: SnapshotStore, history: History, notes: list[str], readonly: bool = False) -> State:
    """The newest snapshot the log can continue from, plus the records after it."""
    first = log_.segments()[0] if log_.segments() else 1
    if not readonly:
        moved = snapshots.discard_after(log_.last_seq)
        if moved:
            notes.append(f"set aside {len(moved)} snapshot(s) newer than the log's last record {log_.last_seq}")
    latest = snapshots.latest()
    if latest is not None and latest.seq > log_.last_seq:
        latest = None  # ahead of the log (its tail was cut): replay instead
    if latest is not None:
        state = from_snapshot(latest.payload, latest.version)
        if first == 1 and history.empty() and any(state.cold):
            notes.append(f"the history database {history.path} has none of the tasks the snapshot at record {state.last_seq} "
                         "moved there (it was removed?): replaying the whole log instead")
            latest = None
    if latest is not None:
        if readonly:
            history.upto = state.last_seq  # a running daemon may have written rows for its next snapshot
        else:
            _settle(history, state, notes)
        return replay_log(log_, state, history=history)
    if first > 1:
        raise StoreError(
            f"the log starts at record {first} and no usable snapshot covers what came before; "
            "restore the snapshots directory or start over with an empty state directory"
        )
    if readonly:
        history.upto = 0
    else:
        _settle(history, State(), notes)
    return replay_log(log_, State(), history=history)


def _settle(history: History, state: State, notes: list[str]) -> None:
    """Make the history agree with the snapshot the daemon starts from: rows written for a
    later snapshot that never became durable go, and so do those its snapshot released."""
    dropped = history.discard_after(state.last_seq)
    if dropped:
        notes.append(f"dropped {dropped} history row(s) newer than the snapshot at record {state.last_seq}")
    if state.released:
        history.release(state.last_seq, state.released, [t for t in state.released if in_history(state, t)])
        state.released = []


def _oldest_covering(snapshots: SnapshotStore, first: int) -> State | None:
    latest = snapshots.latest()
    if latest is not None and latest.seq >= first - 1:
        return from_snapshot(latest.payload, latest.version)
    return None


def _bring_back(state: State, task_ids: list[int], row: Callable[[int], Row]) -> None:
    """Take the tasks among `task_ids` that are in the history back into memory, each with
    the other steps of its workflow (what looks at a workflow sees all of its steps)."""
    wanted = [t for t in task_ids if in_history(state, t)]
    while wanted:
        task_id = wanted.pop()
        if not in_history(state, task_id):
            continue
        found = row(task_id)
        take_back(state, found.task, found.outputs)
        workflow = state.workflows.get(found.task.spec.workflow) if found.task.spec.workflow is not None else None
        if workflow is not None:
            wanted += [t for t in workflow.steps.values() if in_history(state, t)]


def _touched(event: ev.Event) -> list[int]:
    """The tasks a fact may change, that must be in memory before it is folded."""
    task = getattr(event, "task", None)
    return [task] if type(task) is int else []


def _first_segment(outputs: bytes) -> int | None:
    """The log segment of the first of these packed output places (None: none)."""
    return output_ref(State(outputs={0: bytearray(outputs)}), 0, 0).segment if outputs else None


def _newest_first(near: list[Task], far: Iterator[Task]) -> Iterator[Task]:
    """Two lists of tasks, each newest first, as one."""
    return heapq.merge(near, far, key=lambda t: -t.id)
