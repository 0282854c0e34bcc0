"""Replay's inner loops: every record after a point, checked, cut out or decoded, in batches.

Replay is the daemon's start-up and its hot path, so these loops are measured ones
(bench/bench_log.py, bench/bench_core.py). `Log.replay_decoded` runs `decode_plan`: in
format 2 a run of records is one MessagePack value (see `format`), so after one crc32 call
has checked a segment's records, each stride of its index (128 records) is decoded with
one msgspec call, framing and bodies alike. Format 1 segments are cut out record by record
(`frame_run`), then decoded.

How damage comes out: each segment's records are checked with one checksum call before any
is yielded (record by record only to find damage), and a lazily opened sealed segment read
from its start is checked and indexed in the same pass rather than in one of its own
(`scan.complete` is the pass of its own, run only when that is not possible). Damage in a
record raises LogCorrupt before that record is yielded. What can only be seen once a lazily
opened segment has been read to its end (it holds more records than its neighbours say, or
its .dat does not end where its records' data ends) raises LogCorrupt after its records
were yielded. Batches, not records, because what replays them (decoding, folding) is
cheaper per batch too.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from array import array
from collections.abc import Iterator
from typing import Generic, NamedTuple, TypeVar

import msgspec

from orchestrad.log.errors import LogCorrupt
from orchestrad.log.fileio import map_to_read, read_ahead
from orchestrad.log.format import CHAIN, INDEX_STRIDE, MAX_BODY, MAX_DATA, SEGMENT_HEADER_SIZE
from orchestrad.log.index import load_index
from orchestrad.log.scan import complete
from orchestrad.log.segment import Segment
from orchestrad.refs import DataRef

Plan = list[tuple[Segment, int, int]]  # per segment: its extent frozen when reading began (end, count)
T = TypeVar("T")


class Batch(NamedTuple):
    """Consecutive records as replay yields them: `bodies[i]` and `data[i]` (None when the
    record has no data) are those of the record at seq `first_seq + i`."""

    first_seq: int
    bodies: list[bytes]
    data: list[DataRef | None]


class Framed(msgspec.Struct, Generic[T], array_like=True, gc=False):
    """A format 2 record as MessagePack reads it (the record_crc, last, is skipped)."""

    body_len: int
    data_len: int
    data_crc: int
    data_off: int
    body: T


class Decoded(NamedTuple):
    """Consecutive records, decoded: `records[i]` is the record at seq `first_seq + i`. A
    record's data, if it has any (`data_len`), is in the .dat of `segment`."""

    first_seq: int
    segment: int
    records: list[Framed]


def start_at(segment: Segment, mv: memoryview, seq: int) -> int:
    """The offset of record `seq` of a scanned segment: index lookup, then at most 127 hops."""
    k = seq - segment.first
    off = segment.index[k // INDEX_STRIDE]
    unpack = segment.layout.head.unpack_from
    overhead = segment.layout.overhead
    for _ in range(k % INDEX_STRIDE):
        off += overhead + unpack(mv, off)[0]
    return off


def find_damage(mv: memoryview, off: int, end: int, seq: int, segment: Segment) -> tuple[int, int, LogCorrupt | None]:
    """Check records one by one from `off`: how many are good, where they end, and the
    damage after them."""
    unpack = segment.layout.head.unpack_from
    overhead = segment.layout.overhead
    crc32 = zlib.crc32
    good = 0
    while off < end:
        if end - off < overhead:
            why = "record header cut short"
            break
        blen, dlen, _dcrc, _doff = unpack(mv, off)
        record_end = off + overhead + blen
        if blen > MAX_BODY or dlen > MAX_DATA:
            why = f"impossible record lengths (body {blen:,}, data {dlen:,} bytes)"
            break
        if record_end > end or crc32(mv[off:record_end], CHAIN) != CHAIN:
            why = "record checksum mismatch"
            break
        good += 1
        off = record_end
    else:
        return good, off, None
    return good, off, LogCorrupt(segment.path, off, f"{why} (the file changed after the log was opened)", seq + good)


class Run(NamedTuple):
    """The records of one segment that a replay reads, their checksums checked."""

    mm: mmap.mmap  # the .seg, mapped; the caller closes it
    start: int  # offset of the first record
    end: int  # offset just after the last good one
    seq: int  # of the first record
    stop: int  # seq just after the last good one
    building: bool  # a lazily opened segment, unchecked but for this run: see the callers
    damage: LogCorrupt | None  # what comes after the good records, raised once they are read


def _checked_run(segment: Segment, end: int, seq: int, stop: int, *, indexed: bool) -> Run:
    """Map a segment and check the crc of its records from `seq` on with one call (record
    by record only to find damage).

    A lazily opened segment gets the offsets of its index file, if it has a good one; a
    run that starts mid-way, or must be `indexed`, needs them, so without that file the
    segment is checked and indexed in full first. A run of a segment still unchecked after
    that is `building`: its caller checks what the crc cannot (that the records are where
    the offsets say, and as many as the neighbours say) and then marks it checked.
    """
    mm = map_to_read(segment.path, end)
    try:
        with memoryview(mm) as mv:
            if not segment.scanned and not segment.index and not load_index(segment, mv):
                if seq != segment.first or indexed:
                    complete(segment)
            if not segment.index:
                start = SEGMENT_HEADER_SIZE
            elif segment.scanned:
                start = start_at(segment, mv, seq)
            else:  # the index file's offsets: a start they give is checked by the crc below
                start = _hinted_start(segment, mv, seq, end)
                if start is None:
                    complete(segment)
                    start = start_at(segment, mv, seq)
            damage = None
            if zlib.crc32(mv[start:end], CHAIN) != CHAIN:
                if not segment.scanned:
                    complete(segment)  # raises LogCorrupt naming the first bad record...
                    start = start_at(segment, mv, seq)  # ...or the index file was wrong
                if zlib.crc32(mv[start:end], CHAIN) != CHAIN:
                    good, end, damage = find_damage(mv, start, end, seq, segment)
                    stop = min(stop, seq + good)
    except BaseException:
        mm.close()
        raise
    return Run(mm, start, end, seq, stop, not segment.scanned, damage)


def _hinted_start(segment: Segment, mv: memoryview, seq: int, end: int) -> int | None:
    """Where record `seq` starts by the offsets of an index file, or None if they lead
    nowhere a record could start."""
    try:
        start = start_at(segment, mv, seq)
    except struct.error:
        return None
    return start if SEGMENT_HEADER_SIZE <= start < end else None


def segment_runs(plan: Plan, seq: int, *, indexed: bool = False) -> Iterator[tuple[Segment, Run]]:
    """Each segment of the plan with records from `seq` on, checked, mapped while in use;
    then the damage after its good records, if any, is raised."""
    for i, (segment, end, count) in enumerate(plan):
        stop = segment.first + count
        if seq >= stop:
            continue
        if i + 1 < len(plan):
            read_ahead(plan[i + 1][0].path)  # from disk while this one is parsed, if not cached
        run = _checked_run(segment, end, seq, stop, indexed=indexed)
        try:
            yield segment, run
        finally:
            run.mm.close()
        if run.damage is not None:
            raise run.damage
        seq = stop


def frame_run(segment: Segment, run: Run) -> Iterator[Batch]:
    """The records of a checked run, cut out of the map one by one, 128 to a Batch.

    A batch is one stride of the index, so a lazily opened segment read from its first
    record is indexed in that same loop, one offset per batch, instead of in a pass of its
    own. Measured choices: bodies are sliced from the map as bytes, because a memoryview
    slice costs more than copying an event's few dozen bytes; and the loop keeps `off` 4
    bytes *before* each record (on the previous record's crc, or the segment header's), so
    that one unpack with a 4-byte pad reads the header and two additions find the body and
    the next record.
    """
    mm, first = run.mm, segment.first
    unpack = segment.layout.padded.unpack_from
    skip_head, skip_tail = 4 + segment.layout.head_size, len(segment.layout.tail)
    dataref = DataRef
    off = run.start - 4
    dlen = doff = 0
    index = array("Q")  # the segment's, kept if this pass checks it
    for chunk in range(run.seq, run.stop, INDEX_STRIDE):
        index.append(off + 4)
        bodies: list[bytes] = []
        refs: list[DataRef | None] = []
        body, ref = bodies.append, refs.append
        try:
            for _ in range(min(INDEX_STRIDE, run.stop - chunk)):
                blen, dlen, dcrc, doff = unpack(mm, off)
                at = off + skip_head
                off = at + blen
                body(mm[at:off])
                off += skip_tail
                ref(dataref(first, doff, dlen, dcrc) if dlen else None)
        except struct.error:  # fewer records than the next segment's name says
            yield Batch(chunk, bodies, refs)
            complete(segment)  # raises LogCorrupt saying so
            raise
        yield Batch(chunk, bodies, refs)
    if run.building and run.seq == first:
        hint = segment.index  # from its index file, if it has one
        if off + 4 != run.end or doff + dlen != segment.dat_end or hint and hint != index:
            complete(segment)  # raises LogCorrupt saying what does not add up
        segment.index = index
        segment.scanned = True


def decode_plan(plan: Plan, seq: int, body_type: object) -> Iterator[Decoded]:
    """Yield Decoded batches from `seq` on, 128 records (one stride of the index) each."""
    framed, bodies = _decoders(body_type)
    for segment, run in segment_runs(plan, seq, indexed=True):
        if segment.layout.version == 1:  # not MessagePack: cut out, then decoded
            for batch in frame_run(segment, run):
                decoded = _decode_array(bodies, len(batch.bodies), b"".join(batch.bodies))
                yield Decoded(batch.first_seq, segment.first, [
                    Framed(len(b), r.length, r.crc, r.offset, v) if r else Framed(len(b), 0, 0, 0, v)
                    for b, r, v in zip(batch.bodies, batch.data, decoded)
                ])
        else:
            yield from _decode_run(segment, run, framed)


def _decode_run(segment: Segment, run: Run, decoder: msgspec.msgpack.Decoder) -> Iterator[Decoded]:
    """A format 2 run, a stride of the index at a time, each in one msgspec call: its
    records are MessagePack values already, so they need no cutting out.

    In a `building` run (the offsets came from an index file), each stride decoding into
    exactly its records is what shows that the offsets fall where records begin; if one
    does not, the segment is checked and indexed in full, and decoding goes on from there.
    """
    index, first, stride = segment.index, segment.first, INDEX_STRIDE
    seq, at = run.seq, run.start
    last = None
    while seq < run.stop:
        k = (seq - first) // stride + 1  # the next stride starts at index[k]
        nxt = min(run.stop, first + k * stride)
        to = index[k] if nxt < run.stop else run.end
        try:
            records = _decode_array(decoder, nxt - seq, run.mm[at:to])
        except msgspec.DecodeError:
            if segment.scanned:
                raise  # the records are where the index says: their bodies are not `body_type`
            complete(segment)  # raises LogCorrupt, or corrects the offsets
            with memoryview(run.mm) as mv:
                index, at = segment.index, start_at(segment, mv, seq)
            continue
        yield Decoded(seq, first, records)
        last = records[-1]
        seq, at = nxt, to
    if run.building and not segment.scanned and run.seq == first and last is not None:
        if last.data_off + last.data_len != segment.dat_end:
            complete(segment)  # raises LogCorrupt saying what does not add up
        segment.scanned = True


def _decode_array(decoder: msgspec.msgpack.Decoder, n: int, values: bytes) -> list:
    """Decode `n` MessagePack values, back to back, as one array of them."""
    return decoder.decode(b"\xdd" + n.to_bytes(4, "big") + values)


_DECODERS: dict[object, tuple[msgspec.msgpack.Decoder, msgspec.msgpack.Decoder]] = {}


def _decoders(body_type: object) -> tuple[msgspec.msgpack.Decoder, msgspec.msgpack.Decoder]:
    """Decoders of an array of Framed records, and of an array of bare bodies."""
    found = _DECODERS.get(body_type)
    if found is None:
        found = _DECODERS[body_type] = (
            msgspec.msgpack.Decoder(list[Framed[body_type]]),  # type: ignore[valid-type]
            msgspec.msgpack.Decoder(list[body_type]),  # type: ignore[valid-type]
        )
    return found
