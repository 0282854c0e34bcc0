"""Readers of the event log that only tests and benchmarks use, kept out of the daemon.

The daemon reads its log two ways: `Log.replay_decoded` at start-up and `Log.read_data`
for a task's output. Tests want more: every record with its position (to damage a chosen
one, or to check `append`'s answers), one record by its position, and the bodies as bytes
without decoding them (logs whose bodies are not events). These are those readers. They
are built from the log's own parts (`orchestrad.log.replay`, `scan`, `fileio`) and the
Log's frozen read plan, so they check what production checks, the same way.
bench/bench_log.py times `read` and `replay`.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterator
from itertools import chain, count
from typing import NamedTuple

from orchestrad.log import DataRef, Log, LogCorrupt
from orchestrad.log.fileio import FileFd, map_to_read, pread_exact, unmap
from orchestrad.log.format import CHAIN, INDEX_STRIDE, MAX_BODY
from orchestrad.log.replay import Batch, Plan, find_damage, frame_run, segment_runs, start_at
from orchestrad.log.scan import complete
from orchestrad.log.segment import Segment
from orchestrad.log.segmentlog import Position


class Entry(NamedTuple):
    """One record as reading yields it.

    `body` is a memoryview into a memory map when it comes from `read`: no copy is made,
    and it is valid while the iteration runs. Copy it (``bytes(entry.body)``) to keep it
    longer. `data` is None when the record has no data.
    """

    seq: int
    position: Position
    body: memoryview | bytes
    data: DataRef | None


def read(log: Log, after_seq: int = 0) -> Iterator[Entry]:
    """Yield the records with seq > after_seq, oldest first, checking each checksum.

    Yields the records that exist when read() is called; to follow new ones, call again
    with the last seq seen. Bodies are zero-copy views, valid while iterating. The
    starting point is found from the in-memory index (one bisect over segments, then
    at most 127 records hopped), so reading from the tail of a big log is cheap.
    Raises LogCorrupt if a record no longer matches its checksum.
    """
    plan, seq = log._plan(after_seq)
    return _read_plan(plan, seq)


def replay(log: Log, after_seq: int = 0) -> Iterator[tuple[int, bytes, DataRef | None]]:
    """Yield (seq, body, data ref or None) for the records with seq > after_seq.

    What `replay_batches` yields, one record at a time.
    """
    batches = replay_batches(log, after_seq)
    return chain.from_iterable(zip(count(b.first_seq), b.bodies, b.data) for b in batches)


def replay_batches(log: Log, after_seq: int = 0) -> Iterator[Batch]:
    """Yield the records with seq > after_seq as Batches of up to 128, bodies undecoded.

    What `read` yields, minus the positions, and faster: the loops `Log.replay_decoded`
    runs (checked runs; a lazily opened segment checked and indexed in the same pass), and
    its damage rules (see `orchestrad.log.replay`), with each body cut out of the map as
    bytes (copied: for bodies of a few dozen bytes that is cheaper than a memoryview), so
    they stay valid after the iteration.
    """
    plan, seq = log._plan(after_seq)
    return _replay_plan(plan, seq)


def read_at(log: Log, position: Position) -> Entry:
    """Read the one record at `position` (body as bytes), checking its checksum."""
    log._require_open()
    segment = log._segment_of(position.segment)
    seq = _seq_at(log, segment, position.offset)
    layout = segment.layout
    with FileFd(segment.path, log._fd if segment is log._active else None) as fd:
        head = pread_exact(fd, layout.head_size, position.offset)
        blen, dlen, dcrc, doff = layout.head.unpack(head)
        if blen > MAX_BODY:
            raise LogCorrupt(segment.path, position.offset, f"impossible body length {blen:,}", seq)
        after = layout.overhead - layout.head_size
        rest = pread_exact(fd, blen + after, position.offset + layout.head_size)
    if len(rest) != blen + after or zlib.crc32(rest, zlib.crc32(head, CHAIN)) != CHAIN:
        raise LogCorrupt(segment.path, position.offset, "record checksum mismatch", seq)
    ref = DataRef(segment.first, doff, dlen, dcrc) if dlen else None
    return Entry(seq, position, rest[:blen], ref)


def _seq_at(log: Log, segment: Segment, offset: int) -> int:
    """The seq of the record whose header is at `offset`: index lookup, then hop."""
    if not segment.scanned:
        complete(segment)
    k = bisect.bisect_right(segment.index, offset) - 1
    if k < 0 or offset >= segment.end:
        raise ValueError(f"no record starts at offset {offset} of {segment.path.name}")
    at = segment.index[k]
    n = k * INDEX_STRIDE
    layout = segment.layout
    with FileFd(segment.path, log._fd if segment is log._active else None) as fd:
        while at < offset:
            blen = layout.head.unpack(pread_exact(fd, layout.head_size, at))[0]
            at += layout.overhead + blen
            n += 1
    if at != offset:
        raise ValueError(f"no record starts at offset {offset} of {segment.path.name}")
    return segment.first + n


def _read_plan(plan: Plan, seq: int) -> Iterator[Entry]:
    """Yield Entries from `seq` on, segment by segment, up to each one's frozen end."""
    crc32 = zlib.crc32
    new = tuple.__new__
    entry, position, dataref = Entry, Position, DataRef
    for segment, end, records in plan:
        first = segment.first
        stop = first + records
        if seq >= stop:
            continue
        if not segment.scanned:
            complete(segment)
        mm = map_to_read(segment.path, end)
        mv = memoryview(mm)
        try:
            off = start_at(segment, mv, seq)
            damage = None
            if crc32(mv[off:end], CHAIN) != CHAIN:  # every record at once; else find the bad one
                good, _, damage = find_damage(mv, off, end, seq, segment)
                stop = min(stop, seq + good)
            unpack = segment.layout.head.unpack_from
            head_size, after = segment.layout.head_size, segment.layout.overhead - segment.layout.head_size
            for seq in range(seq, stop):  # noqa: B020 - seq carries on from segment to segment
                blen, dlen, dcrc, doff = unpack(mv, off)
                at = off + head_size
                ref = dataref(first, doff, dlen, dcrc) if dlen else None
                yield new(entry, (seq, position(first, off), mv[at : at + blen], ref))
                off = at + blen + after
            seq = stop
            if damage is not None:
                raise damage
        finally:
            mv.release()
            unmap(mm)


def _replay_plan(plan: Plan, seq: int) -> Iterator[Batch]:
    """Yield Batches from `seq` on: bodies as bytes, data as DataRefs."""
    for segment, run in segment_runs(plan, seq):
        yield from frame_run(segment, run)
