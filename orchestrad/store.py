"""The event store: the log, the snapshots, and the state they rebuild.

Read, decide, append: the store is where appended events are encoded into log records and
folded into the state, in log order. It opens by loading the newest snapshot and replaying
only the records after it, so start-up time does not grow with history. `verify` replays
from the beginning and compares with the live state.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path
from typing import Iterator, Sequence

from orchestrad import events as ev
from orchestrad.commit import GroupCommit
from orchestrad.log import Log
from orchestrad.snapshots import SnapshotStore
from orchestrad.state import (OutputRef, State, evolve, from_snapshot, output_count, output_ref, output_refs,
                              replay_decoded, to_snapshot)

log = logging.getLogger(__name__)

Item = ev.Event | tuple[ev.Event, bytes]


class StoreError(Exception):
    pass


class Store:
    def __init__(self, log_: Log, snapshots: SnapshotStore, state: State, notes: list[str]) -> None:
        self.log = log_
        self.snapshots = snapshots
        self.state = state
        self.notes = notes  # what opening found and did, for the daemon's log
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
        # Loading allocates many long-lived objects and no cycles: the cyclic collector
        # would only rescan them again and again. Pause it, then freeze what was loaded.
        gc.disable()
        try:
            state = _restore(log_, snapshots, notes, readonly)
        finally:
            gc.freeze()
            gc.enable()
        notes.extend(snapshots.warnings)
        return cls(log_, snapshots, state, notes)

    def attach(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start group commit on the running loop (appends need it)."""
        self._commit = GroupCommit(self.log)

    async def close(self) -> None:
        if self._commit is not None:
            await self._commit.close()
        if self._snapshot_task is not None:
            await asyncio.shield(self._snapshot_task)
        self.log.close()

    # -- appending ----------------------------------------------------------------------

    def append(self, ts: float, items: Sequence[Item]) -> asyncio.Future:
        """Write `items` to the log, fold them into the state now, and return a future that
        is done once they are durable. Nothing is folded if the write itself fails."""
        assert self._commit is not None, "Store.attach() first"
        pairs: list[tuple[ev.Event, bytes]] = [
            item if isinstance(item, tuple) else (item, b"") for item in items
        ]
        records = [(ev.encode(ts, event), data) for event, data in pairs]
        results, durable = self._commit.append_nowait(records)
        for (event, _), (seq, _position, data_ref) in zip(pairs, results):
            evolve(self.state, event, seq=seq, ts=ts, data=data_ref)
        self._since_snapshot += len(pairs)
        if self._since_snapshot >= self.state.config.snapshot_every:
            durable.add_done_callback(lambda f: f.exception() or self.snapshot_soon())
        return durable

    # -- snapshots ----------------------------------------------------------------------

    def snapshot_soon(self) -> None:
        """Encode the state now (consistent), write it in a thread (fsync off the loop)."""
        if self._snapshot_task is not None and not self._snapshot_task.done():
            return
        self._since_snapshot = 0
        seq, payload = self.state.last_seq, to_snapshot(self.state)
        loop = asyncio.get_running_loop()
        self._snapshot_task = loop.run_in_executor(None, self.snapshots.write, seq, payload)

    async def snapshot_settled(self) -> None:
        """Wait for a snapshot being written in the background, if any."""
        if self._snapshot_task is not None:
            await asyncio.shield(self._snapshot_task)

    def snapshot_now(self) -> None:
        """Synchronously (at shutdown, after the log is flushed)."""
        self.snapshots.write(self.state.last_seq, to_snapshot(self.state))
        self._since_snapshot = 0

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
        before = _size(self.log.directory)
        removed = self.log.drop_segments_before(keep_from)
        return len(removed), before - _size(self.log.directory)

    # -- reading ------------------------------------------------------------------------

    def output(self, task_id: int, start: int = 0) -> Iterator[tuple[str, bytes]]:
        """The task's output chunks from the `start`-th on, read straight from their places."""
        for ref in output_refs(self.state, task_id, start):
            yield ref.stream, self.read_output(ref)

    def output_place(self, task_id: int, index: int) -> OutputRef:
        """Where the task's `index`-th output chunk lies (IndexError if it has none)."""
        return output_ref(self.state, task_id, index)

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
        return output_count(self.state, task_id)

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
        replayed = replay_log(self.log, base)
        if replayed != self.state:
            notes.append(f"MISMATCH: a replay differs from the live state ({_differences(replayed, self.state)})")
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


def replay_log(log_: Log, state: State) -> State:
    """Fold every record after the state's last into it."""
    return replay_decoded(log_.replay_decoded(ev.Body, after_seq=state.last_seq), state)


def _restore(log_: Log, snapshots: SnapshotStore, notes: list[str], readonly: bool = False) -> State:
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
        return replay_log(log_, from_snapshot(latest.payload, latest.version))
    if first > 1:
        raise StoreError(
            f"the log starts at record {first} and no usable snapshot covers what came before; "
            "restore the snapshots directory or start over with an empty state directory"
        )
    return replay_log(log_, State())


def _oldest_covering(snapshots: SnapshotStore, first: int) -> State | None:
    latest = snapshots.latest()
    if latest is not None and latest.seq >= first - 1:
        return from_snapshot(latest.payload, latest.version)
    return None
