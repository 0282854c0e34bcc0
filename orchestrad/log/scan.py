"""Opening a log: what is checked, what a crash can leave and is cut, and what is damage.

The checks that `Log.open` runs, and `verify` runs over every segment, live here with the
rules they apply (below). The bytes they check are described in `format`.

What opening a log checks, and what it repairs by itself
========================================================

Opening checks every record of the active segment, data checksums included. Of each sealed
segment it checks only the header, so start-up does not grow with history; a sealed
segment's records are checked when it is first read (which replay does) and by `verify`.

A crash can only damage the end of the active segment: writes there are not yet fsynced,
and the kernel may have written some pages of either file and not others. Such a *torn
tail* is cut off (truncate + fsync) and reported in `OpenReport.truncated`, one line per
file cut. The first record that does not check out, and every record after it, is a torn
tail when:

- its header or body reaches past the end of the .seg file, and no whole records follow it
  (a record whose length rotted also seems to reach past the end, but good records follow
  it: that is damage);
- its checksum is bad and only zero bytes (or nothing) follow it in the .seg, or it lies in
  a trailing run of zero bytes (space the file system allocated but never filled);
- its data reaches past the end of the .dat file (the end of the data was lost);
- its data checksum is bad and only zero bytes (or nothing) follow that data in the .dat.

The .dat is then cut where the first torn record's data begins. Data bytes after the last
good record's data (a batch whose data was written, but not its records) are cut and
reported too. A last segment whose own header is incomplete, or does not check out and has
only zero bytes after it (segment creation fsyncs the header before any record is written),
is removed with its (empty) .dat and created again. A missing .dat of a segment none of
whose records has data is taken as empty (the active segment's is created again).

Anything else is damage that a crash cannot explain: a bad checksum in a sealed segment; a
bad record in the active segment with good-looking bytes after it; data that does not start
where the previous record's ends; a missing .dat, or one shorter than its records need, in
a sealed segment; a .dat with bytes no record accounts for in a sealed segment; records with
data whose .dat is missing; a torn segment header whose .dat holds data. Opening then raises
`LogCorrupt`, naming the file (.seg or .dat) and the byte offset. Nothing is ever skipped
silently: a record that disappears would change the state that replay rebuilds. `repair()`
(run by ``orchestrad --repair``) keeps everything before the damage and moves the rest
aside.

A length field that rots (rather than being torn) is caught by the record checksum, or, if
it makes the record reach past the end of the .seg, by the whole records after it (looked
for at every byte after the record's start: a run of records that ends exactly at the end
of the file has the crc32 CHAIN). Only the last record of a segment whose length rots,
with nothing after it, is cut as if torn. A .dat that loses its end by some other cause
than a crash also looks like a torn tail; in the active segment it is cut as one. Cuts are
reported, never silent.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import NamedTuple

import msgspec

from orchestrad.files import fsync_dir
from orchestrad.log.errors import LogCorrupt, UnsupportedLogFormat
from orchestrad.log.fileio import file_size, map_file, truncate_durably, unmap
from orchestrad.log.format import (
    CHAIN,
    INDEX_STRIDE,
    LAYOUTS,
    MAGIC,
    MAX_BODY,
    MAX_DATA,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    U32,
    Layout,
    data_path,
)
from orchestrad.log.segment import Segment, list_segments

_ZERO_CHUNK = bytes(1 << 20)


class OpenReport(msgspec.Struct):
    """What `Log.open` found and did.

    `truncated` lists each torn tail that was cut, one line per file: (path, offset,
    bytes_cut, why). An offset of 0 in a .seg file means the segment's own header was torn
    and the file was replaced. For `verify`, `truncated` lists what the next open would cut;
    verify changes nothing.
    """

    truncated: list[tuple[str, int, int, str]] = msgspec.field(default_factory=list)
    segments: int = 0
    last_seq: int = 0
    first_seq: int = 1


def _all_zero(mv: memoryview, start: int, end: int) -> bool:
    """Whether mv[start:end] holds only zero bytes (space a file system allocated, unfilled)."""
    while start < end:
        n = min(len(_ZERO_CHUNK), end - start)
        if mv[start : start + n] != _ZERO_CHUNK[:n]:
            return False
        start += n
    return True


class Tear(NamedTuple):
    """A torn tail to cut off one file of the active segment pair."""

    path: Path
    offset: int  # cut the file here; 0 in a .seg means remove the pair (its header is torn)
    size: int  # the file's size before the cut
    why: str


class _BadRecord(NamedTuple):
    """The first record of a segment that does not check out, and what is wrong with it."""

    offset: int  # of the record in the .seg
    why: str
    kind: str  # "record" (the .seg bytes), "data_off", "no_dat", "data_short", "data_crc"
    torn_shape: bool  # the record itself reaches past the end of the .seg
    record_end: int | None  # where the record would end, when its lengths are plausible
    data_at: int  # where its data begins in the .dat (the previous record's data end)
    data_end: int | None  # where its data ends, when its header checks out


def _check_segment_header(mv: memoryview, path: Path, first: int) -> str | Layout:
    """Return why the header is torn (last segment only), or the layout of its version.

    Raises LogCorrupt for a header that is damaged rather than unfinished, and
    UnsupportedLogFormat for one from a newer writer.
    """
    size = len(mv)
    if size < SEGMENT_HEADER_SIZE:
        return f"segment header incomplete ({size} of {SEGMENT_HEADER_SIZE} bytes)"
    magic, version, _reserved, header_first, crc = SEGMENT_HEADER.unpack_from(mv, 0)
    if magic != MAGIC or zlib.crc32(mv[: SEGMENT_HEADER_SIZE - 4]) != crc:
        # The header is written and fsynced before any record, so a bad header with nothing
        # but zeros after it is an unfinished creation, not damage to records.
        if _all_zero(mv, SEGMENT_HEADER_SIZE, size):
            return "segment header never finished (it does not check out, and no records follow it)"
        if magic != MAGIC:
            raise LogCorrupt(path, 0, "this is not an orchestra log segment (bad magic bytes)", first, cut=(0, 0))
        raise LogCorrupt(path, 0, "segment header checksum mismatch", first, cut=(0, 0))
    layout = LAYOUTS.get(version)
    if layout is None:
        raise UnsupportedLogFormat(path, version)
    if header_first != first:
        raise LogCorrupt(
            path,
            0,
            f"segment header says its first record is {header_first}, but the file is named for {first}",
            first,
            cut=(0, 0),
        )
    return layout


def _walk_records(
    mv: memoryview, segment: Segment, dat_size: int | None, dat: memoryview, *, check_data: bool
) -> _BadRecord | None:
    """Check every record of a mapped segment, noting each good one in `segment`.

    `dat_size` is the .dat file's size (None: there is none), `dat` its bytes when
    `check_data`. Returns the first bad record, or None when the records end exactly at the
    end of the .seg. Open runs this over the active segment, so the loop only checks; what
    exactly is wrong with a bad record is left to `_diagnose`.
    """
    size = len(mv)
    off = SEGMENT_HEADER_SIZE
    unpack = segment.layout.head.unpack_from
    overhead = segment.layout.overhead
    crc32 = zlib.crc32
    # Every record's crc at once (see CHAIN in `format`); record by record only if that fails.
    each = crc32(mv[off:size], CHAIN) != CHAIN
    have = dat_size or 0
    index = segment.index
    count = 0
    dpos = 0
    while size - off >= overhead:
        blen, dlen, dcrc, doff = unpack(mv, off)
        end = off + overhead + blen
        if end > size or blen > MAX_BODY or dlen > MAX_DATA:
            break
        if each and crc32(mv[off : end - 4], CHAIN) != U32.unpack_from(mv, end - 4)[0]:
            break
        if doff != dpos:
            break
        if dlen:
            dend = dpos + dlen
            if dend > have or check_data and crc32(dat[dpos:dend]) != dcrc:
                break
            dpos = dend
        if not count % INDEX_STRIDE:
            index.append(off)
        count += 1
        off = end
    segment.count = count
    segment.end = off
    segment.dat_end = dpos
    return None if off == size else _diagnose(mv, off, dpos, dat_size, segment)


def _diagnose(mv: memoryview, off: int, dpos: int, dat_size: int | None, segment: Segment) -> _BadRecord:
    """Say what is wrong with the record at `off`, which `_walk_records` refused."""
    size = len(mv)
    dat_path = segment.dat_path
    if size - off < segment.layout.overhead:
        return _BadRecord(off, "record header cut short by the end of the file", "record", True, None, dpos, None)
    blen, dlen, _dcrc, doff = segment.layout.head.unpack_from(mv, off)
    if blen > MAX_BODY or dlen > MAX_DATA:
        why = f"impossible record lengths (body {blen:,}, data {dlen:,} bytes)"
        return _BadRecord(off, why, "record", False, None, dpos, None)
    end = off + segment.layout.overhead + blen
    if end > size:
        why = f"record cut short by the end of the file ({end - size:,} bytes missing)"
        return _BadRecord(off, why, "record", True, end, dpos, None)
    if zlib.crc32(mv[off:end], CHAIN) != CHAIN:
        return _BadRecord(off, "record checksum mismatch", "record", False, end, dpos, None)
    if doff != dpos:
        why = (
            f"the record's data is said to start at offset {doff:,} of {dat_path.name}, but the "
            f"previous record's data ends at {dpos:,}"
        )
        return _BadRecord(off, why, "data_off", False, end, dpos, None)
    dend = dpos + dlen
    if dat_size is None:
        why = f"the data file {dat_path.name} is missing, but this record has data"
        return _BadRecord(off, why, "no_dat", False, end, dpos, dend)
    if dend > dat_size:
        why = f"record data cut short by the end of {dat_path.name} ({dend - dat_size:,} bytes missing)"
        return _BadRecord(off, why, "data_short", False, end, dpos, dend)
    return _BadRecord(off, "record data checksum mismatch", "data_crc", False, end, dpos, dend)


def _scan_segment(path: Path, first: int, *, last: bool, check_data: bool) -> tuple[Segment | None, list[Tear]]:
    """Check one segment pair. Returns what it holds, and the torn tails to cut, if any.

    A segment whose header is torn comes back as (None, tears). Damage that is not a torn
    tail, or any damage at all in a sealed segment, raises LogCorrupt.
    """
    size = path.stat().st_size
    segment = Segment(first, path)
    dat_path = segment.dat_path
    dat_size = file_size(dat_path)
    mm = map_file(path) if size else None
    mv = memoryview(mm) if mm is not None else memoryview(b"")
    dmm = map_file(dat_path) if check_data and dat_size else None
    dmv = memoryview(dmm) if dmm is not None else memoryview(b"")
    try:
        torn_header = _check_segment_header(mv, path, first)
        if isinstance(torn_header, Layout):
            segment.layout = torn_header
        else:
            if not last:
                raise LogCorrupt(path, 0, torn_header, first, cut=(0, 0))
            if dat_size:
                why = f"{torn_header}, yet {dat_path.name} holds {dat_size:,} bytes of data, so records were written"
                raise LogCorrupt(path, 0, why, first, cut=(0, 0))
            return None, [Tear(path, 0, size, torn_header)]
        bad = _walk_records(mv, segment, dat_size, dmv, check_data=check_data)
        have = dat_size or 0
        if bad is None:
            if have == segment.dat_end:
                return segment, []
            why = f"{have - segment.dat_end:,} bytes of data after the last record's data"
            if last:
                why += ": data whose records were never written"
                return segment, [Tear(dat_path, segment.dat_end, have, why)]
            raise LogCorrupt(dat_path, segment.dat_end, why, None, cut=(segment.end, segment.dat_end))
        seq = first + segment.count
        torn = _torn_tail_reason(mv, dmv, have, bad, segment) if last else None
        if torn is not None:
            tears = [Tear(path, bad.offset, size, torn)]
            if have > bad.data_at:
                tears.append(Tear(dat_path, bad.data_at, have, f"the data of the torn records cut from {path.name}"))
            return segment, tears
        detail = bad.why
        if last and bad.torn_shape:  # not torn: whole records follow it (see _torn_tail_reason)
            assert bad.record_end is not None
            detail = (
                f"the record's length is damaged: it reaches {bad.record_end - size:,} bytes past the end "
                f"of the file, yet whole records follow it, so this is not a crash's torn tail"
            )
        elif last and bad.kind in ("record", "data_crc"):
            detail += "; good-looking bytes follow it, so this is not a crash's torn tail"
        cut = (bad.offset, bad.data_at)
        if bad.kind in ("record", "data_off"):
            raise LogCorrupt(path, bad.offset, detail, seq, cut=cut)
        detail += f" (the record is at byte {bad.offset:,} of {path.name})"
        where = {"no_dat": 0, "data_short": have}.get(bad.kind, bad.data_at)
        raise LogCorrupt(dat_path, where, detail, seq, cut=cut)
    finally:
        mv.release()
        dmv.release()
        if mm is not None:
            unmap(mm)
        if dmm is not None:
            unmap(dmm)


def _torn_tail_reason(mv: memoryview, dat: memoryview, dat_size: int, bad: _BadRecord, segment: Segment) -> str | None:
    """Why this bad record is the unfinished last write of a crash, or None if it is not."""
    dat_path = segment.dat_path
    if bad.kind == "record":
        if bad.torn_shape:
            if bad.record_end is not None and _whole_records_from(mv, bad.offset + 1, segment.layout) is not None:
                return None  # its length is damaged: what a crash tears has nothing after it
            return bad.why
        if _all_zero(mv, bad.offset, len(mv)):
            return "only zero bytes from here on: space the file system allocated but never filled"
        if bad.record_end is not None and _all_zero(mv, bad.record_end, len(mv)):
            after = "nothing" if bad.record_end == len(mv) else "only zero bytes"
            return f"{bad.why} in the final record, with {after} after it: an unfinished write"
        return None
    if bad.kind == "data_short":
        return f"{bad.why}: the end of an unfinished write of data"
    if bad.kind == "data_crc" and bad.data_end is not None and _all_zero(dat, bad.data_end, dat_size):
        after = "nothing" if bad.data_end == dat_size else "only zero bytes"
        return f"{bad.why}, with {after} after that data in {dat_path.name}: an unfinished write"
    return None


def _whole_records_from(mv: memoryview, start: int, layout: Layout) -> int | None:
    """The first offset >= start from which the bytes to the end are whole, good records.

    Tells a record whose length rotted (it seems to reach past the end of the file, but
    good records follow it) from one that a crash cut short (nothing follows it). Tried at
    every byte, so slow in Python, but it only runs on a record that seems cut short, and
    in a crash that is the last few bytes of the file. A record found by chance inside
    other bytes would also need its crc to match, and then the crc of the whole rest.
    """
    size = len(mv)
    unpack = layout.head.unpack_from
    overhead = layout.overhead
    crc32 = zlib.crc32
    for p in range(start, size - overhead + 1):
        end = p + overhead + unpack(mv, p)[0]
        if end <= size and crc32(mv[p:end], CHAIN) == CHAIN and crc32(mv[p:size], CHAIN) == CHAIN:
            return p
    return None


def scan_directory(
    directory: Path, *, deep: bool, lazy: bool = False, found: list[tuple[int, Path]] | None = None
) -> tuple[list[Segment], list[Tear]]:
    """Check every segment of a log, oldest first, and that their numbers follow on.

    Sealed segments get their record checksums checked (and data checksums when deep); the
    last one gets everything checked, since that is where a crash leaves damage. With
    `lazy` (how the daemon opens its log), sealed segments get only their header checked
    now: their record count follows from the next segment's first seq, and their records
    are checked when first read (by replay in the same pass, else by `complete`), so
    opening does not grow with history. `found`: the directory's segments, if just listed.
    """
    found = list_segments(directory) if found is None else found
    segments: list[Segment] = []
    tears: list[Tear] = []
    for i, (first, path) in enumerate(found):
        last = i == len(found) - 1
        if lazy and not last:
            segment, found_tears = _header_only(path, first), []
        else:
            segment, found_tears = _scan_segment(path, first, last=last, check_data=deep or last)
        tears += found_tears
        if segment is None:  # the last segment's header was torn: it will be made anew
            if segments and not segments[-1].scanned:
                segments[-1].count = first - segments[-1].first
                complete(segments[-1])  # it becomes the active segment: check it all
            continue
        if segments:
            previous = segments[-1]
            if not previous.scanned:
                previous.count = first - previous.first
            expected = previous.first + previous.count
            if first != expected or previous.count < 0:
                raise LogCorrupt(
                    path,
                    0,
                    f"this segment starts at record {first}, but the previous one ends at record "
                    f"{expected - 1}; records are missing in between",
                    expected,
                    cut=(0, 0),
                )
        segments.append(segment)
    return segments, tears


def _header_only(path: Path, first: int) -> Segment:
    """A sealed segment whose header checks out; its records are checked when first read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
        end = os.fstat(fd).st_size
    finally:
        os.close(fd)
    layout = _check_segment_header(memoryview(head), path, first)
    if not isinstance(layout, Layout):
        raise LogCorrupt(path, 0, layout, first, cut=(0, 0))
    segment = Segment(first, path, end=end, scanned=False, layout=layout)
    try:
        segment.dat_end = os.stat(segment.dat_path).st_size
    except FileNotFoundError:
        segment.dat_end = 0
    return segment


def complete(segment: Segment) -> None:
    """Check every record of a lazily opened sealed segment and build its index.

    Raises LogCorrupt, naming the file and offset, for any damage, or if the segment does
    not hold the records its neighbours say it does."""
    scanned, tears = _scan_segment(segment.path, segment.first, last=False, check_data=False)
    assert scanned is not None and not tears  # a sealed segment raises instead
    if scanned.count != segment.count or scanned.end != segment.end:
        raise LogCorrupt(
            segment.path,
            scanned.end,
            f"the segment holds {scanned.count} records, but the next segment starts at record "
            f"{segment.first + segment.count}",
            segment.first + scanned.count,
            cut=(scanned.end, scanned.dat_end),
        )
    segment.index = scanned.index
    segment.dat_end = scanned.dat_end
    segment.scanned = True


def cut_tear(tear: Tear) -> None:
    """Cut a torn tail off, durably; a torn segment header takes its (empty) pair with it."""
    if tear.offset == 0 and tear.path.suffix == ".seg":
        data_path(tear.path).unlink(missing_ok=True)  # empty: see _scan_segment
        os.unlink(tear.path)
        fsync_dir(tear.path.parent)
    else:
        truncate_durably(tear.path, tear.offset)


def report_line(tear: Tear) -> tuple[str, int, int, str]:
    """A tear as `OpenReport.truncated` lists it."""
    return (str(tear.path), tear.offset, tear.size - tear.offset, tear.why)


def verify(directory: Path, *, deep: bool = False) -> OpenReport:
    """Check a log without changing it; raise LogCorrupt at the first problem.

    Checks what open checks, and every record of every segment (one crc32 call per
    segment when nothing is wrong); `deep` also checks the data checksum of every record in
    every segment against its .dat. The report's `truncated` lists torn tails the next open
    would cut.
    """
    directory = Path(directory)
    segments, tears = scan_directory(directory, deep=deep)
    if not segments:
        return OpenReport(truncated=[report_line(t) for t in tears])
    last = segments[-1]
    return OpenReport(
        truncated=[report_line(t) for t in tears],
        segments=len(segments),
        last_seq=last.first + last.count - 1,
        first_seq=segments[0].first,
    )
