"""The event log on disk: segmented, append-only, checksummed records of opaque bytes.

This module knows nothing about events. It stores records, numbers them, finds them again,
and refuses to hand back anything that is not exactly what was written. Everything above
it (event encoding, replay, snapshots) trusts that contract.

On-disk format, version 1
=========================

A log is a directory of segment files, each named after the sequence number of its first
record, zero-padded to 20 digits: ``00000000000000000001.seg``. Only the last segment is
ever written to (the *active* segment); the others are *sealed*: fsynced when the log moved
on, and never changed again. All integers are little-endian.

Segment header (24 bytes)::

    8s  magic           b"ORCHLOG\\x00"
    u16 format version  1
    u16 reserved        0
    u64 first_seq       sequence number of the first record (same as the file name)
    u32 header_crc      zlib.crc32 of the 20 bytes above

Then records, back to back, until the end of the file::

    u32 body_len        <= 16 MiB
    u32 data_len        <= 64 MiB, may be 0
    u32 data_crc        zlib.crc32(data)
    u32 head_crc        zlib.crc32(the 12 bytes above + body)
    body                body_len bytes: the small encoded event that replay decodes
    data                data_len bytes: bulk payload (agent output) that replay never reads

Why two checksums: replay reads every body, so ``head_crc`` is checked on every read; it
also covers both lengths, so a damaged length is caught before it sends the reader astray.
``data`` can be large and replay never needs it, so replay speed does not depend on how
much output agents produced. Data is checked when it is read back (``read_data``), when
the log is opened (for the active segment only: that is where a crash can leave damage),
and by ``verify(deep=True)``.

A record's sequence number is not stored: it is the segment's first_seq plus the record's
index in the segment. Numbers are contiguous and start at 1; the first segment may start
later once old segments have been dropped behind a snapshot.

Version policy: a reader refuses a segment whose version it does not know
(`UnsupportedLogFormat`), rather than guessing. A future format change bumps the version,
and new readers keep reading version 1.

What opening a log checks, and what it repairs by itself
========================================================

A crash can only damage the end of the active segment: writes there are not yet fsynced,
and the kernel may have written some of the pages and not others. Such a *torn tail* is cut
off (truncate + fsync) and reported in `OpenReport.truncated`:

- a final record whose header, body or data reaches past the end of the file;
- a final record with a bad checksum followed only by zero bytes (or nothing);
- a trailing run of zero bytes (space the file system allocated but never filled);
- a last segment whose own header is incomplete, or does not check out and has only zero
  bytes after it (segment creation fsyncs the header before any record is written): it is
  removed and created again, empty.

Anything else is damage that a crash cannot explain: a bad checksum in a sealed segment, or
a bad record in the active segment with good-looking bytes after it. Opening then raises
`LogCorrupt`, naming the file and the byte offset. Nothing is ever skipped silently: a
record that disappears would change the state that replay rebuilds. `repair()` (run by
``orchestrad --repair``) keeps everything before the damage and moves the rest aside.

A length field that rots (rather than being torn) can make the final records look as if
they reach past the end of the file; the log then cuts them as a torn tail. The cut is
reported, never silent, and it can only happen in the active segment.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import errno
import mmap
import os
import re
import shutil
import struct
import sys
import threading
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import msgspec

__all__ = [
    "FORMAT_VERSION",
    "MAX_BODY",
    "MAX_DATA",
    "DataRef",
    "Entry",
    "GroupCommit",
    "Log",
    "LogCorrupt",
    "OpenReport",
    "Position",
    "UnsupportedLogFormat",
    "repair",
    "verify",
]

MAGIC = b"ORCHLOG\x00"
FORMAT_VERSION = 1
MAX_BODY = 16 << 20
MAX_DATA = 64 << 20

_SEGMENT_HEADER = struct.Struct("<8sHHQI")  # magic, version, reserved, first_seq, crc
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size  # 24
_RECORD_HEADER = struct.Struct("<IIII")  # body_len, data_len, data_crc, head_crc
RECORD_HEADER_SIZE = _RECORD_HEADER.size  # 16
_RECORD_PREFIX = struct.Struct("<III")  # the part of the record header that head_crc covers
_U32 = struct.Struct("<I")
_LENGTHS = struct.Struct("<II")

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_INDEX_STRIDE = 128  # remember the offset of every 128th record of each segment
_SEPARATE_BUFFER = 256 << 10  # data this large goes to writev as its own buffer, uncopied
_ZERO_CHUNK = bytes(1 << 20)

# The checksum of a record header's first 12 bytes, for records without data: they are
# (body_len, 0, 0), so the crc depends on body_len alone and is looked up rather than
# computed. Event bodies come in few sizes; this saves a fifth to a third of replay's time.
# Filled as lengths are met, up to this many.
_PREFIX_CRCS: dict[int, int] = {}
_PREFIX_CRCS_MAX = 4096


def _prefix_crc(blen: int) -> int:
    """The crc of the first 12 header bytes of a record without data, remembered."""
    crc = zlib.crc32(_RECORD_PREFIX.pack(blen, 0, 0))
    if len(_PREFIX_CRCS) < _PREFIX_CRCS_MAX:
        _PREFIX_CRCS[blen] = crc
    return crc

try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not on Linux/macOS
    _IOV_MAX = 1024

DAMAGED_DIR = "damaged"


# ---------------------------------------------------------------------------------------
# Public types


class Position(msgspec.Struct, frozen=True, array_like=True):
    """Where a record lies: the segment (named by its first seq) and the header's offset."""

    segment: int
    offset: int


class DataRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a record's data bytes lie, and their checksum, so they can be read back alone."""

    segment: int
    offset: int  # of the data bytes themselves, not of the record header
    length: int
    crc: int


class Entry(NamedTuple):
    """One record as reading yields it.

    `body` is a memoryview into a memory map when it comes from `Log.read`: no copy is
    made, and it is valid while the iteration runs. Copy it (``bytes(entry.body)``) to keep
    it longer. `data` is None when the record has no data.
    """

    seq: int
    position: Position
    body: memoryview | bytes
    data: DataRef | None


class OpenReport(msgspec.Struct):
    """What `Log.open` found and did.

    `truncated` lists each torn tail that was cut: (path, offset, bytes_cut, why). An
    offset of 0 means the segment's own header was torn and the file was replaced.
    For `verify`, `truncated` lists what the next open would cut; verify changes nothing.
    """

    truncated: list[tuple[str, int, int, str]] = msgspec.field(default_factory=list)
    segments: int = 0
    last_seq: int = 0
    first_seq: int = 1


class LogCorrupt(Exception):
    """The log holds damage that a crash cannot explain; nothing after it is trusted.

    Attributes: `path` (the segment file), `offset` (byte offset of the damaged record or
    header in that file), `detail` (what is wrong), and `seq` (the sequence number the
    damaged record would have had, when known).
    """

    def __init__(self, path: str | os.PathLike[str], offset: int, detail: str, seq: int | None = None):
        super().__init__(str(path), offset, detail, seq)
        self.path = Path(path)
        self.offset = offset
        self.detail = detail
        self.seq = seq

    def __str__(self) -> str:
        where = f"{self.path}, byte offset {self.offset:,}"
        if self.seq is not None:
            where += f" (record {self.seq})"
        return (
            f"the event log is damaged at {where}: {self.detail}. "
            f"The daemon does not skip damaged records, so it stops here. "
            f"Run `orchestrad --repair` to keep every record before this point and move "
            f"the damaged part aside into {self.path.parent / DAMAGED_DIR}/."
        )


class UnsupportedLogFormat(Exception):
    """A segment was written in a format version this code does not read."""

    def __init__(self, path: str | os.PathLike[str], version: int):
        super().__init__(str(path), version)
        self.path = Path(path)
        self.version = version

    def __str__(self) -> str:
        return (
            f"{self.path} uses event log format version {self.version}, but this orchestrad "
            f"reads version {FORMAT_VERSION}. It was probably written by a newer orchestrad: "
            f"run that version. Do not run --repair: it would move those records aside."
        )


# ---------------------------------------------------------------------------------------
# Small file helpers


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def _list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segment files in the directory, oldest first. Anything else there is ignored."""
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        m = _SEGMENT_NAME.match(name)
        if m:
            found.append((int(m.group(1)), directory / name))
    found.sort()
    return found


def _segment_header(first_seq: int) -> bytes:
    head = _SEGMENT_HEADER.pack(MAGIC, FORMAT_VERSION, 0, first_seq, 0)[:-4]
    return head + _U32.pack(zlib.crc32(head))


def _sync_file(fd: int) -> None:
    """Make a file's written bytes durable.

    fdatasync where there is one (it still flushes a size change, which is what appends
    need); on macOS, F_FULLFSYNC, because plain fsync there does not flush the drive cache.
    """
    if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
        import fcntl

        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover
        os.fsync(fd)


def _fsync_dir(directory: Path) -> None:
    """Make creations, renames and deletions in a directory durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate_durably(path: Path, length: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, length)
        _sync_file(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write every buffer, in order, with as few writev calls as the kernel allows.

    Normally that is one call. A short write (the kernel may stop early, for example when
    the disk fills) is continued; an error is raised to the caller, who undoes the part
    that was written.
    """
    views = [memoryview(b) for b in buffers if len(b)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + _IOV_MAX])
        if n <= 0:
            raise OSError(errno.EIO, "write wrote nothing")
        while n:
            size = len(views[i])
            if n >= size:
                n -= size
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    buf = os.pread(fd, length, offset)
    while len(buf) < length:
        more = os.pread(fd, length - len(buf), offset + len(buf))
        if not more:
            break
        buf += more
    return buf


def _map(path: Path, length: int = 0) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ)


def _unmap(mm: mmap.mmap) -> None:
    """Close a map unless someone still holds a view into it; then the GC closes it later."""
    try:
        mm.close()
    except BufferError:
        pass


def _all_zero(mv: memoryview, start: int, end: int) -> bool:
    while start < end:
        n = min(len(_ZERO_CHUNK), end - start)
        if mv[start : start + n] != _ZERO_CHUNK[:n]:
            return False
        start += n
    return True


# ---------------------------------------------------------------------------------------
# Scanning: what open, verify and repair share


@dataclass
class _Segment:
    """What the log remembers of one segment: enough to find any record without scanning."""

    first: int
    path: Path
    count: int = 0  # records
    end: int = SEGMENT_HEADER_SIZE  # offset just after the last record
    index: array = field(default_factory=lambda: array("Q"))  # offset of every STRIDE-th record
    scanned: bool = True  # False: a sealed segment opened lazily; count and end are derived

    def note_record(self, offset: int, size: int) -> None:
        if self.count % _INDEX_STRIDE == 0:
            self.index.append(offset)
        self.count += 1
        self.end = offset + size


class _Tear(NamedTuple):
    path: Path
    offset: int  # cut the file here; 0 means remove the file (its header is torn)
    size: int  # the file's size before the cut
    why: str


class _BadRecord(NamedTuple):
    offset: int
    why: str
    torn_shape: bool  # the record itself reaches past the end of the file
    record_end: int | None  # where the record would end, when its lengths are plausible


def _check_segment_header(mv: memoryview, path: Path, first: int) -> str | None:
    """Return why the header is torn (last segment only), or None if it is fine.

    Raises LogCorrupt for a header that is damaged rather than unfinished, and
    UnsupportedLogFormat for one from a newer writer.
    """
    size = len(mv)
    if size < SEGMENT_HEADER_SIZE:
        return f"segment header incomplete ({size} of {SEGMENT_HEADER_SIZE} bytes)"
    magic, version, _reserved, header_first, crc = _SEGMENT_HEADER.unpack_from(mv, 0)
    if magic != MAGIC or zlib.crc32(mv[: SEGMENT_HEADER_SIZE - 4]) != crc:
        # The header is written and fsynced before any record, so a bad header with nothing
        # but zeros after it is an unfinished creation, not damage to records.
        if _all_zero(mv, SEGMENT_HEADER_SIZE, size):
            return "segment header never finished (it does not check out, and no records follow it)"
        if magic != MAGIC:
            raise LogCorrupt(path, 0, "this is not an orchestra log segment (bad magic bytes)", first)
        raise LogCorrupt(path, 0, "segment header checksum mismatch", first)
    if version != FORMAT_VERSION:
        raise UnsupportedLogFormat(path, version)
    if header_first != first:
        raise LogCorrupt(
            path, 0, f"segment header says its first record is {header_first}, but the file is named for {first}", first
        )
    return None


def _walk_records(mv: memoryview, segment: _Segment, *, check_data: bool) -> _BadRecord | None:
    """Check every record of a mapped segment, noting each good one in `segment`.

    Returns the first bad record, or None when the records end exactly at the end of file.
    Open runs this over the whole log, so the loop only checks; working out what exactly
    is wrong with a bad record is left to `_diagnose`.
    """
    size = len(mv)
    off = SEGMENT_HEADER_SIZE
    unpack = _RECORD_HEADER.unpack_from
    crc32 = zlib.crc32
    prefix_crcs, prefix_crc_of = _PREFIX_CRCS, _prefix_crc
    index = segment.index
    count = 0
    while off < size:
        if size - off < RECORD_HEADER_SIZE:
            break
        blen, dlen, dcrc, hcrc = unpack(mv, off)
        data_at = off + RECORD_HEADER_SIZE + blen
        end = data_at + dlen
        if end > size or blen > MAX_BODY or dlen > MAX_DATA:
            break
        if dlen or dcrc:
            prefix_crc = crc32(mv[off : off + 12])
        else:
            prefix_crc = prefix_crcs.get(blen)
            if prefix_crc is None:
                prefix_crc = prefix_crc_of(blen)
        if crc32(mv[off + RECORD_HEADER_SIZE : data_at], prefix_crc) != hcrc:
            break
        if check_data and dlen and crc32(mv[data_at:end]) != dcrc:
            break
        if not count % _INDEX_STRIDE:
            index.append(off)
        count += 1
        off = end
    segment.count = count
    segment.end = off
    return None if off == size else _diagnose(mv, off)


def _diagnose(mv: memoryview, off: int) -> _BadRecord:
    """Say what is wrong with the record at `off`, which `_walk_records` refused."""
    size = len(mv)
    if size - off < RECORD_HEADER_SIZE:
        return _BadRecord(off, "record header cut short by the end of the file", True, None)
    blen, dlen, dcrc, hcrc = _RECORD_HEADER.unpack_from(mv, off)
    if blen > MAX_BODY or dlen > MAX_DATA:
        return _BadRecord(off, f"impossible record lengths (body {blen:,}, data {dlen:,} bytes)", False, None)
    data_at = off + RECORD_HEADER_SIZE + blen
    end = data_at + dlen
    if end > size:
        return _BadRecord(off, f"record cut short by the end of the file ({end - size:,} bytes missing)", True, end)
    if zlib.crc32(mv[off + RECORD_HEADER_SIZE : data_at], zlib.crc32(mv[off : off + 12])) != hcrc:
        return _BadRecord(off, "record checksum mismatch", False, end)
    return _BadRecord(off, "record data checksum mismatch", False, end)


def _scan_segment(path: Path, first: int, *, last: bool, check_data: bool) -> tuple[_Segment | None, _Tear | None]:
    """Check one segment. Returns what it holds, and the torn tail to cut, if any.

    A segment whose header is torn comes back as (None, tear). Damage that is not a torn
    tail, or any damage at all in a sealed segment, raises LogCorrupt.
    """
    size = path.stat().st_size
    segment = _Segment(first, path)
    mm = _map(path) if size else None
    mv = memoryview(mm) if mm is not None else memoryview(b"")
    try:
        torn_header = _check_segment_header(mv, path, first)
        if torn_header is not None:
            if last:
                return None, _Tear(path, 0, size, torn_header)
            raise LogCorrupt(path, 0, torn_header, first)
        bad = _walk_records(mv, segment, check_data=check_data)
        if bad is None:
            return segment, None
        seq = first + segment.count
        torn = _torn_tail_reason(mv, bad) if last else None
        if torn is not None:
            return segment, _Tear(path, bad.offset, size, torn)
        detail = bad.why
        if last:
            detail += "; good-looking bytes follow it, so this is not a crash's torn tail"
        raise LogCorrupt(path, bad.offset, detail, seq)
    finally:
        mv.release()
        if mm is not None:
            _unmap(mm)


def _torn_tail_reason(mv: memoryview, bad: _BadRecord) -> str | None:
    """Why this bad record is the unfinished last write of a crash, or None if it is not."""
    if bad.torn_shape:
        return bad.why
    if _all_zero(mv, bad.offset, len(mv)):
        return "only zero bytes from here on: space the file system allocated but never filled"
    if bad.record_end is not None and _all_zero(mv, bad.record_end, len(mv)):
        after = "nothing" if bad.record_end == len(mv) else "only zero bytes"
        return f"{bad.why} in the final record, with {after} after it: an unfinished write"
    return None


def _scan_directory(directory: Path, *, deep: bool, lazy: bool = False) -> tuple[list[_Segment], list[_Tear]]:
    """Check every segment of a log, oldest first, and that their numbers follow on.

    Sealed segments get their record checksums checked (and data checksums when deep); the
    last one gets everything checked, since that is where a crash leaves damage. With
    `lazy` (how the daemon opens its log), sealed segments get only their header checked
    now: their record count follows from the next segment's first seq, and their records
    are checked when first read (`_complete`), so opening does not grow with history.
    """
    found = _list_segments(directory)
    segments: list[_Segment] = []
    tears: list[_Tear] = []
    for i, (first, path) in enumerate(found):
        last = i == len(found) - 1
        if lazy and not last:
            segment, tear = _header_only(path, first), None
        else:
            segment, tear = _scan_segment(path, first, last=last, check_data=deep or last)
        if tear is not None:
            tears.append(tear)
        if segment is None:  # the last segment's header was torn: it will be made anew
            if segments and not segments[-1].scanned:
                segments[-1].count = first - segments[-1].first
                _complete(segments[-1])  # it becomes the active segment: check it all
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
                )
        segments.append(segment)
    return segments, tears


def _header_only(path: Path, first: int) -> _Segment:
    """A sealed segment whose header checks out; its records are checked when first read."""
    with open(path, "rb") as f:
        head = f.read(SEGMENT_HEADER_SIZE)
    torn = _check_segment_header(memoryview(head), path, first)
    if torn is not None:
        raise LogCorrupt(path, 0, torn, first)
    return _Segment(first, path, end=path.stat().st_size, scanned=False)


def _complete(segment: _Segment) -> None:
    """Check every record of a lazily opened sealed segment and build its index.

    Raises LogCorrupt, naming the file and offset, for any damage, or if the segment does
    not hold the records its neighbours say it does."""
    scanned, tear = _scan_segment(segment.path, segment.first, last=False, check_data=False)
    assert scanned is not None and tear is None  # a sealed segment raises instead
    if scanned.count != segment.count or scanned.end != segment.end:
        raise LogCorrupt(
            segment.path,
            scanned.end,
            f"the segment holds {scanned.count} records, but the next segment starts at record "
            f"{segment.first + segment.count}",
            segment.first + scanned.count,
        )
    segment.index = scanned.index
    segment.scanned = True


def _cut(tear: _Tear) -> None:
    if tear.offset == 0:
        os.unlink(tear.path)
        _fsync_dir(tear.path.parent)
    else:
        _truncate_durably(tear.path, tear.offset)


def _report_line(tear: _Tear) -> tuple[str, int, int, str]:
    return (str(tear.path), tear.offset, tear.size - tear.offset if tear.offset else tear.size, tear.why)


# ---------------------------------------------------------------------------------------
# The log


class Log:
    """An open log: appends to the active segment, reads any record.

    One writer: a Log is not safe for concurrent appends from several threads. `sync` may
    run in another thread (GroupCommit does that) while the owner keeps appending.
    """

    def __init__(self, directory: Path, segment_bytes: int, segments: list[_Segment], report: OpenReport):
        self.directory = directory
        self.report = report
        self._segment_bytes = segment_bytes
        self._segments: dict[int, _Segment] = {s.first: s for s in segments}
        self._firsts: list[int] = [s.first for s in segments]
        self._active = segments[-1]
        self._fd: int | None = os.open(self._active.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self._lock = threading.Lock()  # guards the active fd against a sync in another thread
        self._broken: BaseException | None = None
        self.last_seq = self._active.first + self._active.count - 1

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: Path, *, segment_bytes: int = 64 << 20) -> Log:
        """Open (or create) the log in `directory`, cutting a torn tail if a crash left one.

        Raises LogCorrupt on damage a crash cannot explain; see the module docstring.
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = _list_segments(directory)
        segments, tears = _scan_directory(directory, deep=False, lazy=True)
        for tear in tears:
            _cut(tear)
        if not segments or tears and tears[-1].offset == 0:
            # No segment yet, or the last one's header was torn and the file removed: start
            # a fresh, empty one where the numbering continues.
            if segments:
                next_seq = segments[-1].first + segments[-1].count
            else:
                next_seq = found[-1][0] if found else 1
            fd = _create_segment(directory, next_seq)
            os.close(fd)
            segments.append(_Segment(next_seq, directory / _segment_name(next_seq)))
        last = segments[-1]
        report = OpenReport(
            truncated=[_report_line(t) for t in tears],
            segments=len(segments),
            last_seq=last.first + last.count - 1,
            first_seq=segments[0].first,
        )
        return cls(directory, segment_bytes, segments, report)

    def close(self) -> None:
        """Close the active segment. Appends are not fsynced by close: call sync() first."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"the log in {self.directory} is closed")
        return self._fd

    # -- writing ------------------------------------------------------------------------

    def append(self, records: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, Position, DataRef | None]]:
        """Append (body, data) records as one write; return each one's seq and positions.

        Not durable until `sync`. A batch never spans segments: if it would take the active
        segment past `segment_bytes`, the log first moves on to a new segment. If the write
        fails, the bytes it wrote are truncated away, so the log never holds half a record
        that later appends would follow; the error is raised and no seq is used up.
        """
        fd = self._require_open()
        if self._broken is not None:
            raise OSError(
                errno.EIO,
                f"the log in {self.directory} refuses appends: an earlier failed write could not "
                f"be undone ({self._broken}). Restart the daemon; opening the log cuts the torn tail.",
            )
        if not records:
            return []
        buffers, layout, total = _frame(records)
        if self._active.count and self._active.end + total > self._segment_bytes:
            self._roll()
            fd = self._require_open()
        segment = self._active
        start = segment.end
        try:
            _write_all(fd, buffers)
        except BaseException:
            self._undo_write(fd, start)
            raise
        results = []
        seq = self.last_seq
        first = segment.first
        for rel, blen, dlen, dcrc in layout:
            seq += 1
            off = start + rel
            size = RECORD_HEADER_SIZE + blen + dlen
            segment.note_record(off, size)
            ref = DataRef(first, off + RECORD_HEADER_SIZE + blen, dlen, dcrc) if dlen else None
            results.append((seq, Position(first, off), ref))
        self.last_seq = seq
        return results

    def _undo_write(self, fd: int, good_end: int) -> None:
        try:
            os.ftruncate(fd, good_end)
        except OSError as exc:
            self._broken = exc

    def _roll(self) -> None:
        """Seal the active segment (fsync) and start the next one."""
        next_seq = self.last_seq + 1
        with self._lock:
            old = self._require_open()
            _sync_file(old)
            fd = _create_segment(self.directory, next_seq)
            os.close(old)
            self._fd = fd
            segment = _Segment(next_seq, self.directory / _segment_name(next_seq))
            self._segments[next_seq] = segment
            self._firsts.append(next_seq)
            self._active = segment

    def sync(self) -> None:
        """Make every append so far durable (fdatasync of the active segment).

        Earlier segments were fsynced when the log moved past them. Safe to call from a
        worker thread while the owner appends.
        """
        with self._lock:
            _sync_file(self._require_open())

    # -- reading ------------------------------------------------------------------------

    def segments(self) -> list[int]:
        """The first seq of each segment, oldest first."""
        return list(self._firsts)

    @property
    def first_seq(self) -> int:
        """The oldest seq still in the log (1 until old segments are dropped)."""
        return self._firsts[0]

    def read(self, after_seq: int = 0) -> Iterator[Entry]:
        """Yield the records with seq > after_seq, oldest first, checking each checksum.

        Yields the records that exist when read() is called; to follow new ones, call again
        with the last seq seen. Bodies are zero-copy views, valid while iterating. The
        starting point is found from the in-memory index (one bisect over segments, then
        at most 127 records hopped), so reading from the tail of a big log is cheap.
        Raises LogCorrupt if a record no longer matches its checksum.
        """
        self._require_open()
        seq = max(after_seq + 1, self._firsts[0])
        start = bisect.bisect_right(self._firsts, seq) - 1
        # Freeze the extent now, so records appended while reading are not half-seen.
        plan = [(s, s.end, s.count) for s in (self._segments[f] for f in self._firsts[start:])]
        return _read_plan(plan, seq)

    def read_at(self, position: Position) -> Entry:
        """Read the one record at `position` (body as bytes), checking its checksum."""
        self._require_open()
        segment = self._segment_of(position.segment)
        seq = self._seq_at(segment, position.offset)
        with self._segment_fd(segment) as fd:
            head = _pread_exact(fd, RECORD_HEADER_SIZE, position.offset)
            blen, dlen, dcrc, hcrc = _RECORD_HEADER.unpack(head)
            if blen > MAX_BODY:
                raise LogCorrupt(segment.path, position.offset, f"impossible body length {blen:,}", seq)
            body = _pread_exact(fd, blen, position.offset + RECORD_HEADER_SIZE)
        if len(body) != blen or zlib.crc32(body, zlib.crc32(head[:12])) != hcrc:
            raise LogCorrupt(segment.path, position.offset, "record checksum mismatch", seq)
        ref = DataRef(segment.first, position.offset + RECORD_HEADER_SIZE + blen, dlen, dcrc) if dlen else None
        return Entry(seq, position, body, ref)

    def read_data(self, ref: DataRef) -> bytes:
        """Read a record's data back, checking its checksum (LogCorrupt if it does not match)."""
        self._require_open()
        segment = self._segment_of(ref.segment)
        if ref.length > MAX_DATA or ref.offset + ref.length > segment.end:
            raise ValueError(f"{ref} does not point inside segment {segment.path.name}")
        with self._segment_fd(segment) as fd:
            data = _pread_exact(fd, ref.length, ref.offset)
        if len(data) != ref.length:
            raise LogCorrupt(segment.path, ref.offset, f"data cut short ({len(data):,} of {ref.length:,} bytes)")
        if zlib.crc32(data) != ref.crc:
            raise LogCorrupt(segment.path, ref.offset, "record data checksum mismatch")
        return data

    def _segment_of(self, first: int) -> _Segment:
        try:
            return self._segments[first]
        except KeyError:
            raise ValueError(
                f"the log has no segment {_segment_name(first)} (it holds {_segment_name(self._firsts[0])} onwards)"
            ) from None

    def _seq_at(self, segment: _Segment, offset: int) -> int:
        """The seq of the record whose header is at `offset`: index lookup, then hop."""
        if not segment.scanned:
            _complete(segment)
        k = bisect.bisect_right(segment.index, offset) - 1
        if k < 0 or offset >= segment.end:
            raise ValueError(f"no record starts at offset {offset} of {segment.path.name}")
        at = segment.index[k]
        n = k * _INDEX_STRIDE
        with self._segment_fd(segment) as fd:
            while at < offset:
                blen, dlen = _LENGTHS.unpack(_pread_exact(fd, _LENGTHS.size, at))
                at += RECORD_HEADER_SIZE + blen + dlen
                n += 1
        if at != offset:
            raise ValueError(f"no record starts at offset {offset} of {segment.path.name}")
        return segment.first + n

    def _segment_fd(self, segment: _Segment) -> _SegmentFd:
        return _SegmentFd(segment.path, self._fd if segment is self._active else None)

    # -- compaction ---------------------------------------------------------------------

    def drop_segments_before(self, first_seq: int) -> list[Path]:
        """Delete whole segments whose records all have seq < first_seq; never the active one.

        Used after a snapshot at first_seq - 1 made the old records unnecessary. Oldest
        first, so a crash half-way leaves a log that still starts cleanly. A read() under way
        that has not yet reached a dropped segment fails with FileNotFoundError there.
        """
        self._require_open()
        removed = []
        while len(self._firsts) > 1 and self._firsts[1] <= first_seq:
            segment = self._segments.pop(self._firsts.pop(0))
            os.unlink(segment.path)
            removed.append(segment.path)
        if removed:
            _fsync_dir(self.directory)
        return removed


class _SegmentFd:
    """A read fd for a segment: the active one's own fd, or a fresh one closed after use."""

    def __init__(self, path: Path, fd: int | None):
        self._path = path
        self._fd = fd
        self._owned = fd is None

    def __enter__(self) -> int:
        if self._owned:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        assert self._fd is not None
        return self._fd

    def __exit__(self, *exc_info: object) -> None:
        if self._owned and self._fd is not None:
            os.close(self._fd)


_Layout = list[tuple[int, int, int, int]]  # per record: offset in batch, body_len, data_len, data_crc


def _frame(records: Sequence[tuple[bytes, bytes]]) -> tuple[list[bytes | bytearray], _Layout, int]:
    """Encode a batch: the buffers to write, where each record lies in it, and its total size.

    Everything is checked before anything is written, so a bad record fails the whole batch
    cleanly. Small parts are joined into one buffer; big data goes to writev uncopied.
    """
    buffers: list[bytes | bytearray] = []
    pending = bytearray()
    layout = []
    pos = 0
    crc32 = zlib.crc32
    for body, data in records:
        blen, dlen = len(body), len(data)
        if blen > MAX_BODY:
            raise ValueError(f"a record body of {blen:,} bytes is over the {MAX_BODY:,}-byte limit")
        if dlen > MAX_DATA:
            raise ValueError(f"record data of {dlen:,} bytes is over the {MAX_DATA:,}-byte limit; split it")
        dcrc = crc32(data) if dlen else 0
        prefix = _RECORD_PREFIX.pack(blen, dlen, dcrc)
        pending += prefix
        pending += _U32.pack(crc32(body, crc32(prefix)))
        pending += body
        if dlen >= _SEPARATE_BUFFER:
            buffers.append(pending)
            buffers.append(data)
            pending = bytearray()
        else:
            pending += data
        layout.append((pos, blen, dlen, dcrc))
        pos += RECORD_HEADER_SIZE + blen + dlen
    if pending:
        buffers.append(pending)
    return buffers, layout, pos


def _create_segment(directory: Path, first_seq: int) -> int:
    """Create a segment file with its header, durably; return an fd open for appending."""
    path = directory / _segment_name(first_seq)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, [_segment_header(first_seq)])
        _sync_file(fd)
        _fsync_dir(directory)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _read_plan(plan: list[tuple[_Segment, int, int]], seq: int) -> Iterator[Entry]:
    """Yield the records from `seq` on, segment by segment, up to each one's frozen end.

    This is replay's inner loop, so it is written for speed: one generator, one memory map
    per segment, precompiled struct unpacking, checksums over memoryview slices, no copies,
    and everything it calls held in locals.
    """
    unpack = _RECORD_HEADER.unpack_from
    lengths = _LENGTHS.unpack_from
    crc32 = zlib.crc32
    new = tuple.__new__
    entry, position, dataref = Entry, Position, DataRef
    prefix_crcs, prefix_crc_of = _PREFIX_CRCS, _prefix_crc
    for segment, end, count in plan:
        first = segment.first
        k = seq - first
        if k >= count:
            continue
        if not segment.scanned:
            _complete(segment)
        offset = segment.index[k // _INDEX_STRIDE]
        skip = k % _INDEX_STRIDE
        seq -= skip
        mm = _map(segment.path, end)
        mv = memoryview(mm)
        try:
            for _ in range(skip):  # from the indexed record to the one asked for
                blen, dlen = lengths(mv, offset)
                offset += RECORD_HEADER_SIZE + blen + dlen
                seq += 1
            while offset < end:
                blen, dlen, dcrc, hcrc = unpack(mv, offset)
                data_at = offset + RECORD_HEADER_SIZE + blen
                body = mv[offset + RECORD_HEADER_SIZE : data_at]
                if dlen or dcrc:
                    prefix_crc = crc32(mv[offset : offset + 12])
                else:
                    prefix_crc = prefix_crcs.get(blen)
                    if prefix_crc is None:
                        prefix_crc = prefix_crc_of(blen)
                if crc32(body, prefix_crc) != hcrc or data_at + dlen > end:
                    why = "record checksum mismatch (the file changed after the log was opened)"
                    raise LogCorrupt(segment.path, offset, why, seq)
                ref = dataref(first, data_at, dlen, dcrc) if dlen else None
                yield new(entry, (seq, position(first, offset), body, ref))
                offset = data_at + dlen
                seq += 1
        finally:
            mv.release()
            _unmap(mm)


# ---------------------------------------------------------------------------------------
# Offline tools: verify and repair


def verify(directory: Path, *, deep: bool = False) -> OpenReport:
    """Check a log without changing it; raise LogCorrupt at the first problem.

    Checks what open checks; `deep` also checks the data checksum of every record in every
    segment. The report's `truncated` lists torn tails the next open would cut.
    """
    directory = Path(directory)
    segments, tears = _scan_directory(directory, deep=deep)
    if not segments:
        return OpenReport(truncated=[_report_line(t) for t in tears])
    last = segments[-1]
    return OpenReport(
        truncated=[_report_line(t) for t in tears],
        segments=len(segments),
        last_seq=last.first + last.count - 1,
        first_seq=segments[0].first,
    )


def repair(directory: Path) -> list[str]:
    """Keep the good prefix of a damaged log and move everything after the damage aside.

    For each LogCorrupt that opening would raise: the bytes from the bad offset to the end
    of that segment are copied into ``directory/damaged/`` as one file, every later segment
    is moved there whole, and the segment is truncated at the bad offset. That repeats until
    the log checks clean (cutting a segment makes it the last one, whose data checksums are
    then checked too). Torn tails are left for open, which cuts and reports them. Nothing is
    deleted: the damaged bytes stay in damaged/ for a person to look at.
    Returns lines for a person saying what was done.
    """
    directory = Path(directory)
    lines: list[str] = []
    seen: set[tuple[Path, int]] = set()
    while True:
        try:
            segments, tears = _scan_directory(directory, deep=False)
        except LogCorrupt as exc:
            if (exc.path, exc.offset) in seen:  # moving it aside did not help: do not loop
                raise
            seen.add((exc.path, exc.offset))
            lines.append(_move_damaged_aside(directory, exc))
            continue
        break
    if not lines:
        if segments:
            last = segments[-1].first + segments[-1].count - 1
            summary = f"records {segments[0].first}..{last} in {len(segments)} segment(s) check out"
        else:
            summary = "the log is empty"
        lines.append(f"nothing to repair: {summary}")
    for tear in tears:
        where = f"{tear.path.name} at offset {tear.offset:,}"
        lines.append(f"note: opening the log will cut a torn tail of {where} ({tear.why})")
    return lines


def _move_damaged_aside(directory: Path, exc: LogCorrupt) -> str:
    found = _list_segments(directory)
    bad_first = int(_SEGMENT_NAME.match(exc.path.name).group(1))  # type: ignore[union-attr]
    later = [path for first, path in found if first > bad_first]
    damaged = directory / DAMAGED_DIR
    damaged.mkdir(mode=0o700, exist_ok=True)
    size = exc.path.stat().st_size
    offset = exc.offset if exc.offset >= SEGMENT_HEADER_SIZE else 0
    if offset == 0:
        os.rename(exc.path, _unused_name(damaged / exc.path.name))
        moved_segments, moved_bytes = 1 + len(later), 0
    else:
        _copy_tail(exc.path, offset, _unused_name(damaged / f"{exc.path.name}.from-{offset}"))
        moved_segments, moved_bytes = len(later), size - offset
    for path in later:
        os.rename(path, _unused_name(damaged / path.name))
    _fsync_dir(damaged)
    if offset:
        _truncate_durably(exc.path, offset)
    _fsync_dir(directory)

    first_kept = found[0][0]
    last_kept = (exc.seq if exc.seq is not None else bad_first) - 1
    kept_segments = len(found) - len(later) - (0 if offset else 1)
    kept = f"kept records {first_kept}..{last_kept:,}" if last_kept >= first_kept else "kept no records"
    what = f"{moved_segments} segment(s)"
    if moved_bytes:
        what += f" and {moved_bytes:,} bytes from {exc.path.name} at offset {offset:,}"
    return f"{kept} ({kept_segments} segment(s)); moved {what} to {damaged}/ (damage: {exc.detail})"


def _copy_tail(path: Path, offset: int, target: Path) -> None:
    with open(path, "rb") as src, open(target, "xb") as dst:
        src.seek(offset)
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())


def _unused_name(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate


# ---------------------------------------------------------------------------------------
# Group commit


class GroupCommit:
    """Durable appends for an asyncio daemon: one fsync covers every append made meanwhile.

    Appends are written at once, in call order (so the order callers see is the log
    order); a caller then waits for the next fsync. While one fsync runs, in a worker
    thread so the event loop never blocks on the disk, new appends are written and wait
    for the next one, which covers all of them. Under load the fsync rate stays at what
    the disk allows while each fsync carries more records.

    Failures:

    - A failed write (ENOSPC, EIO) raises from `append` / `append_nowait` at once. The log
      truncates the partial write away, so the next append follows the last whole record.
      No seq is used up.
    - A failed fsync fails the future of every append it was meant to cover. Those records
      are written and stay in the log (the daemon may already have applied them), but they
      may not be durable: treat the outcome as unknown. After a failed fsync the kernel may
      have dropped the unwritten pages, so the daemon should stop and restart; opening the
      log then checks every record of the active segment. Later appends are fsynced again
      as usual (they do not inherit the error).

    `close()` waits for pending fsyncs; it does not close the Log, which its owner closes.
    """

    def __init__(self, log: Log, *, executor: concurrent.futures.Executor | None = None):
        self._log = log
        self._executor = executor
        self._waiting: list[asyncio.Future[None]] = []
        self._syncer: asyncio.Task[None] | None = None
        self._closed = False
        self.fsyncs = 0  # how many fsyncs ran; appends / fsyncs is the batching factor

    @property
    def log(self) -> Log:
        return self._log

    async def append(self, records: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, Position, DataRef | None]]:
        """Append and return once the records are durable. Raises what the write or fsync raised."""
        results, durable = self.append_nowait(records)
        await durable
        return results

    def append_nowait(
        self, records: Sequence[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[int, Position, DataRef | None]], asyncio.Future[None]]:
        """Write now; return the results and a future that is done once they are durable.

        The daemon applies the events at once but replies to clients only after the future
        is done. An empty batch is a barrier: its future is done when everything appended
        before it is durable.
        """
        if self._closed:
            raise RuntimeError("this GroupCommit is closed; appends are no longer accepted")
        loop = asyncio.get_running_loop()
        results = self._log.append(records)
        durable: asyncio.Future[None] = loop.create_future()
        self._waiting.append(durable)
        if self._syncer is None:
            self._syncer = loop.create_task(self._sync_until_idle())
        return results, durable

    async def _sync_until_idle(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[asyncio.Future[None]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    await loop.run_in_executor(self._executor, self._log.sync)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    _settle(batch, exc)
                else:
                    self.fsyncs += 1
                    _settle(batch, None)
                batch = []
        except asyncio.CancelledError:
            _cancel(batch + self._waiting)
            self._waiting = []
            raise
        finally:
            self._syncer = None

    async def close(self) -> None:
        """Refuse new appends and wait until every pending one is fsynced (or has failed)."""
        self._closed = True
        while self._syncer is not None:
            await asyncio.shield(self._syncer)


def _settle(futures: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for future in futures:
        if future.done():  # its waiter was cancelled; the record is written all the same
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


def _cancel(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        future.cancel()
