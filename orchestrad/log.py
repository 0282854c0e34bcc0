"""The event log on disk: segmented, append-only, checksummed records of opaque bytes.

This module knows nothing about events. It stores records, numbers them, finds them again,
and refuses to hand back anything that is not exactly what was written. Everything above
it (event encoding, replay, snapshots) trusts that contract.

On-disk format, version 2
=========================

A record is a small *body* (an encoded event: replay decodes every one) and optional bulk
*data* (agent output: replay never reads it). A log is a directory of *segments*; each
segment is a pair of files named after the sequence number of its first record,
zero-padded to 20 digits::

    00000000000000000001.seg   a segment header, then each record's header and body
    00000000000000000001.dat   the data of those records, back to back, in record order
    00000000000000000001.idx   (sealed segments) where its records start: see below

Keeping the data out of line keeps the .seg files dense: replay reads them sequentially,
a few dozen bytes per record, however much output the agents produced. Only the last
segment is ever written to (the *active* segment); the others are *sealed*: both files were
fsynced when the log moved on, and never change again.

A .seg file starts with the segment header (24 bytes, little-endian)::

    8s  magic           b"ORCHLOG\\x00"
    u16 format version  2 (or 1: see below)
    u16 reserved        0
    u64 first_seq       sequence number of the first record (same as the file name)
    u32 header_crc      zlib.crc32 of the 20 bytes above

Then records, back to back, until the end of the file. A record is a MessagePack array of
six, 31 bytes plus its body, its integers big-endian as MessagePack has them::

    0x96                fixarray of 6
    0xce u32 body_len   <= 16 MiB
    0xce u32 data_len   <= 64 MiB, may be 0
    0xce u32 data_crc   zlib.crc32(data), 0 when data_len is 0
    0xcf u64 data_off   where the data starts in the .dat file: where the previous record's
                        data ends (0 for a segment's first record); records without data
                        carry it too
    body                body_len bytes: one MessagePack value (the log does not look inside)
    0xc4 0x04           bin 8 of 4 bytes, whose 4 bytes are...
    u32 record_crc      ...zlib.crc32(everything above, CHAIN), little-endian; CHAIN = 0x2144DF1C

Why MessagePack: a run of whole records, behind an array header that counts them, is one
MessagePack value, so replay hands it to msgspec and gets every record back, framing and
body decoded, from one call (`Log.replay_decoded`): no Python per record to cut bodies out.
A reader that does not decode still finds each record's end from its fixed-size head.

Format version 1 (the first) laid out the same fields as raw little-endian integers: u32
body_len, u32 data_len, u32 data_crc, u64 data_off, the body, u32 record_crc, 24 bytes plus
the body. Every reader still reads it, segment by segment (a log's older segments may be in
version 1 and its newer ones in 2), and an active segment of version 1 is appended to in
version 1 until it is sealed; new segments are always version 2.

The .dat file has no header: a record's data is its bytes [data_off, data_off + data_len),
each record's data starts where the previous one's ends, and the file ends where the last
record's data ends.

Why ``record_crc`` is seeded with CHAIN and ends the record: 0x2144DF1C is the CRC-32
residue, ``crc32(M + le32(crc32(M, s)), s) == CHAIN`` for any bytes M and seed s (it is
``crc32(bytes(4))``). The segment header ends in its own crc too, so the crc32 of a whole
intact .seg file is CHAIN, and ``crc32(any run of whole records, CHAIN) == CHAIN``. Readers
check a run of thousands of records with one zlib call and fall back to checking record by
record only to find the damage when that fails; yet each record's crc still checks that
record alone, which is how the damaged one is found. Damage that cancels out across two
records passes the run check with the same 2**-32 odds as damage passing one record's
check. ``record_crc`` also covers both lengths and the data's offset and crc, so a damaged
header is caught before it sends a reader astray. Data is checked when it is read back
(``read_data``), when the log is opened (for the active segment only: that is where a
crash can leave damage), and by ``verify(deep=True)``.

When a segment is sealed, its index (the offset of every 128th record) is saved beside it
in a .idx file, so that replaying it later needs neither a pass to find its records nor one
msgspec call for all of them at once (a batch that outgrows the CPU caches costs more per
record). Little-endian, in this machine's byte order for the offsets::

    8s  magic           b"ORCHIDX\\x00"
    u16 version         1
    u16 reserved        0
    u32 stride          128
    u64 count           records in the segment
    u64 seg_end         size of the .seg
    u64 dat_end         size of the .dat
    u32 last_crc        record_crc of the segment's last record
    u64 offsets[]       of records 0, 128, 256, ... of the segment
    u32 crc             zlib.crc32 of everything above

It is derived data, written without fsync. One that is missing, torn, or does not describe
its segment exactly (count, sizes, last record) is ignored and the segment scanned instead;
offsets that are wrong under a good checksum are caught as replay uses them (a start must
pass the run's crc check; a stride must decode into exactly its records), and the segment
is then scanned. Nothing in an index file can make a good log look damaged.

A record's sequence number is not stored: it is the segment's first_seq plus the record's
index in the segment. Numbers are contiguous and start at 1; the first segment may start
later once old segments have been dropped behind a snapshot.

Writing: an append writes its batch's data to the .dat file first, then its records to the
.seg file (one write each). `Log.sync` fdatasyncs the .dat, then the .seg: a record is
durable once both are. A segment grows until the two files together would pass
`segment_bytes`, or would hold more than `segment_records` records (so that the scan of the
active segment at open stays short however small the records); it is then sealed (both
fsynced, then its .idx written) and the next pair
is created, the .seg (with its header) fsynced before the .dat, and the directory after both.

Version policy: a reader refuses a segment whose version it does not know
(`UnsupportedLogFormat`), rather than guessing. A format change bumps the version, and new
readers keep reading every older version.

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

import bisect
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

import msgspec

from orchestrad.files import fsync_dir, unused_name
from orchestrad.refs import DataRef

__all__ = [
    "CHAIN",
    "Batch",
    "Decoded",
    "Framed",
    "FORMAT_VERSION",
    "MAX_BODY",
    "MAX_DATA",
    "DataRef",
    "Log",
    "LogCorrupt",
    "OpenReport",
    "Position",
    "UnsupportedLogFormat",
    "repair",
    "verify",
]

MAGIC = b"ORCHLOG\x00"
FORMAT_VERSION = 2  # what new segments are written in; every version back to 1 is read
MAX_BODY = 16 << 20
MAX_DATA = 64 << 20
CHAIN = zlib.crc32(bytes(4))  # 0x2144DF1C, the CRC-32 residue: see the module docstring

_SEGMENT_HEADER = struct.Struct("<8sHHQI")  # magic, version, reserved, first_seq, crc
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size  # 24
_U32 = struct.Struct("<I")


class _Layout(NamedTuple):
    """How one format version lays out a record: a head, the body, a tail, the record_crc."""

    version: int
    head: struct.Struct  # unpacks (body_len, data_len, data_crc, data_off) from a record's start
    padded: struct.Struct  # the same from 4 bytes before the record: see _frame_run
    pack: Callable[[int, int, int, int], bytes]  # the head of a record
    tail: bytes  # between the body and the record_crc

    @property
    def head_size(self) -> int:
        return self.head.size

    @property
    def overhead(self) -> int:
        """A record's bytes besides its body."""
        return self.head.size + len(self.tail) + 4


_HEAD_1 = struct.Struct("<IIIQ")
_HEAD_2 = struct.Struct(">BBIBIBIBQ")  # MessagePack: fixarray(6), uint32 x3, uint64
_V1 = _Layout(1, _HEAD_1, struct.Struct("<4xIIIQ"), _HEAD_1.pack, b"")
_V2 = _Layout(
    2,
    struct.Struct(">2xIxIxIxQ"),
    struct.Struct(">6xIxIxIxQ"),
    lambda blen, dlen, dcrc, doff: _HEAD_2.pack(0x96, 0xCE, blen, 0xCE, dlen, 0xCE, dcrc, 0xCF, doff),
    b"\xc4\x04",  # MessagePack bin 8 of 4 bytes: the record_crc
)
_LAYOUTS = {1: _V1, 2: _V2}
_CURRENT = _LAYOUTS[FORMAT_VERSION]
RECORD_HEAD_SIZE = _CURRENT.head_size  # 25 (20 in version 1)
RECORD_OVERHEAD = _CURRENT.overhead  # 31 (24 in version 1)

_SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
_SIDE_NAME = re.compile(r"^(\d{20})\.(dat|idx)$")  # a segment's .dat, or its index
_INDEX_STRIDE = 128  # remember the offset of every 128th record of each segment
SEGMENT_RECORDS = 1 << 16  # a segment holds at most this many records (but a bigger batch)
_INDEX_MAGIC = b"ORCHIDX\x00"
_INDEX_HEADER = struct.Struct("<8sHHIQQQI")  # magic, version, reserved, stride, count, seg end, dat end, last crc
_SEPARATE_BUFFER = 32 << 10  # data this large goes to writev as its own buffer, uncopied
_ZERO_CHUNK = bytes(1 << 20)

try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not on Linux/macOS
    _IOV_MAX = 1024

DAMAGED_DIR = "damaged"
T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Public types


class Position(msgspec.Struct, frozen=True, array_like=True):
    """Where a record lies: the segment (named by its first seq) and its offset in the .seg."""

    segment: int
    offset: int


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


class LogCorrupt(Exception):
    """The log holds damage that a crash cannot explain; nothing after it is trusted.

    Attributes: `path` (the damaged file: a segment's .seg, or its .dat for damaged or
    missing data), `offset` (byte offset of the damage in that file), `detail` (what is
    wrong), `seq` (the sequence number the damaged record would have had, when known), and
    `cut`: where `repair` cuts the segment pair, as (offset in the .seg, offset in the .dat),
    when the damage was found by checking the log rather than by reading it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        offset: int,
        detail: str,
        seq: int | None = None,
        *,
        cut: tuple[int, int] | None = None,
    ):
        super().__init__(str(path), offset, detail, seq)
        self.path = Path(path)
        self.offset = offset
        self.detail = detail
        self.seq = seq
        self.cut = cut

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
            f"reads versions 1 to {FORMAT_VERSION}. It was probably written by a newer orchestrad: "
            f"run that version. Do not run --repair: it would move those records aside."
        )


# ---------------------------------------------------------------------------------------
# Small file helpers


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def _data_path(segment_path: Path) -> Path:
    return segment_path.with_suffix(".dat")


def _index_path(segment_path: Path) -> Path:
    return segment_path.with_suffix(".idx")


def _write_index(segment: _Segment, fd: int) -> None:
    """Save a sealed segment's index beside it, so that a later replay need not scan it.

    The index file is derived data, written without fsync: one that is missing, torn or
    does not match its segment (see `_load_index`) is ignored, and the segment scanned."""
    last_crc = _U32.unpack(_pread_exact(fd, 4, segment.end - 4))[0]
    head = _INDEX_HEADER.pack(_INDEX_MAGIC, 1, 0, _INDEX_STRIDE, segment.count, segment.end, segment.dat_end, last_crc)
    body = head + segment.index.tobytes()
    try:
        out = os.open(_index_path(segment.path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(out, [body, _U32.pack(zlib.crc32(body))])
        finally:
            os.close(out)
    except OSError:  # pragma: no cover - only an optimization is lost
        pass


def _load_index(segment: _Segment, mv: memoryview) -> bool:
    """Take a lazily opened segment's offsets from its index file, if it has a good one.

    Good: its checksum matches, and it describes exactly this segment (its record count,
    the sizes of both files, the crc of its last record, mapped in `mv`). Replay still
    checks every record it reads (and `_decode_run` that the offsets fall on records)."""
    try:
        raw = _index_path(segment.path).read_bytes()
    except OSError:
        return False
    n = -(-segment.count // _INDEX_STRIDE)
    if len(raw) != _INDEX_HEADER.size + 8 * n + 4 or zlib.crc32(raw[:-4]) != _U32.unpack_from(raw, len(raw) - 4)[0]:
        return False
    magic, version, _, stride, count, end, dat_end, last_crc = _INDEX_HEADER.unpack_from(raw)
    if (magic, version, stride, count, end, dat_end) != (_INDEX_MAGIC, 1, _INDEX_STRIDE, segment.count, segment.end, segment.dat_end):
        return False
    if end < SEGMENT_HEADER_SIZE + 4 or _U32.unpack_from(mv, end - 4)[0] != last_crc:
        return False
    index = array("Q")
    index.frombytes(raw[_INDEX_HEADER.size : -4])  # in this machine's byte order
    segment.index = index
    return True


def _list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segment (.seg) files in the directory, oldest first. Anything else there is ignored."""
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


def _segment_header(first_seq: int, version: int = FORMAT_VERSION) -> bytes:
    head = _SEGMENT_HEADER.pack(MAGIC, version, 0, first_seq, 0)[:-4]
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




def _truncate_durably(path: Path, length: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, length)
        _sync_file(fd)
    finally:
        os.close(fd)


def _file_size(path: Path) -> int | None:
    """The file's size, or None if there is no such file."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


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


def _map_to_read(path: Path, length: int) -> mmap.mmap:
    """Map a .seg to read it from front to back: ask the kernel to read ahead, and far."""
    mm = _map(path, length)
    for advice in ("MADV_SEQUENTIAL", "MADV_WILLNEED"):
        if hasattr(mmap, advice):
            try:
                mm.madvise(getattr(mmap, advice))
            except OSError:  # pragma: no cover - advice is only advice
                pass
    return mm


def _read_ahead(path: Path) -> None:
    """Ask the kernel to start reading a file into the page cache, without waiting for it."""
    if hasattr(os, "posix_fadvise"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # reading it will say what is wrong
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:  # pragma: no cover - advice is only advice
            pass
        finally:
            os.close(fd)


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
    path: Path  # the .seg file
    count: int = 0  # records
    end: int = SEGMENT_HEADER_SIZE  # offset just after the last record in the .seg
    dat_end: int = 0  # offset just after the last record's data in the .dat
    index: array = field(default_factory=lambda: array("Q"))  # offset of every STRIDE-th record
    scanned: bool = True  # False: a sealed segment opened lazily; count and ends are derived
    layout: _Layout = _CURRENT  # of its format version, from its header
    dat_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dat_path = _data_path(self.path)

    def note_record(self, offset: int, size: int) -> None:
        if self.count % _INDEX_STRIDE == 0:
            self.index.append(offset)
        self.count += 1
        self.end = offset + size


class _Tear(NamedTuple):
    path: Path
    offset: int  # cut the file here; 0 in a .seg means remove the pair (its header is torn)
    size: int  # the file's size before the cut
    why: str


class _BadRecord(NamedTuple):
    offset: int  # of the record in the .seg
    why: str
    kind: str  # "record" (the .seg bytes), "data_off", "no_dat", "data_short", "data_crc"
    torn_shape: bool  # the record itself reaches past the end of the .seg
    record_end: int | None  # where the record would end, when its lengths are plausible
    data_at: int  # where its data begins in the .dat (the previous record's data end)
    data_end: int | None  # where its data ends, when its header checks out


def _check_segment_header(mv: memoryview, path: Path, first: int) -> str | _Layout:
    """Return why the header is torn (last segment only), or the layout of its version.

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
            raise LogCorrupt(path, 0, "this is not an orchestra log segment (bad magic bytes)", first, cut=(0, 0))
        raise LogCorrupt(path, 0, "segment header checksum mismatch", first, cut=(0, 0))
    layout = _LAYOUTS.get(version)
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
    mv: memoryview, segment: _Segment, dat_size: int | None, dat: memoryview, *, check_data: bool
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
    # Every record's crc at once (see the module docstring); record by record only if that fails.
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
        if each and crc32(mv[off : end - 4], CHAIN) != _U32.unpack_from(mv, end - 4)[0]:
            break
        if doff != dpos:
            break
        if dlen:
            dend = dpos + dlen
            if dend > have or check_data and crc32(dat[dpos:dend]) != dcrc:
                break
            dpos = dend
        if not count % _INDEX_STRIDE:
            index.append(off)
        count += 1
        off = end
    segment.count = count
    segment.end = off
    segment.dat_end = dpos
    return None if off == size else _diagnose(mv, off, dpos, dat_size, segment)


def _diagnose(mv: memoryview, off: int, dpos: int, dat_size: int | None, segment: _Segment) -> _BadRecord:
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


def _scan_segment(path: Path, first: int, *, last: bool, check_data: bool) -> tuple[_Segment | None, list[_Tear]]:
    """Check one segment pair. Returns what it holds, and the torn tails to cut, if any.

    A segment whose header is torn comes back as (None, tears). Damage that is not a torn
    tail, or any damage at all in a sealed segment, raises LogCorrupt.
    """
    size = path.stat().st_size
    segment = _Segment(first, path)
    dat_path = segment.dat_path
    dat_size = _file_size(dat_path)
    mm = _map(path) if size else None
    mv = memoryview(mm) if mm is not None else memoryview(b"")
    dmm = _map(dat_path) if check_data and dat_size else None
    dmv = memoryview(dmm) if dmm is not None else memoryview(b"")
    try:
        torn_header = _check_segment_header(mv, path, first)
        if isinstance(torn_header, _Layout):
            segment.layout = torn_header
        else:
            if not last:
                raise LogCorrupt(path, 0, torn_header, first, cut=(0, 0))
            if dat_size:
                why = f"{torn_header}, yet {dat_path.name} holds {dat_size:,} bytes of data, so records were written"
                raise LogCorrupt(path, 0, why, first, cut=(0, 0))
            return None, [_Tear(path, 0, size, torn_header)]
        bad = _walk_records(mv, segment, dat_size, dmv, check_data=check_data)
        have = dat_size or 0
        if bad is None:
            if have == segment.dat_end:
                return segment, []
            why = f"{have - segment.dat_end:,} bytes of data after the last record's data"
            if last:
                why += ": data whose records were never written"
                return segment, [_Tear(dat_path, segment.dat_end, have, why)]
            raise LogCorrupt(dat_path, segment.dat_end, why, None, cut=(segment.end, segment.dat_end))
        seq = first + segment.count
        torn = _torn_tail_reason(mv, dmv, have, bad, segment) if last else None
        if torn is not None:
            tears = [_Tear(path, bad.offset, size, torn)]
            if have > bad.data_at:
                tears.append(_Tear(dat_path, bad.data_at, have, f"the data of the torn records cut from {path.name}"))
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
            _unmap(mm)
        if dmm is not None:
            _unmap(dmm)


def _torn_tail_reason(mv: memoryview, dat: memoryview, dat_size: int, bad: _BadRecord, segment: _Segment) -> str | None:
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


def _whole_records_from(mv: memoryview, start: int, layout: _Layout) -> int | None:
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


def _scan_directory(
    directory: Path, *, deep: bool, lazy: bool = False, found: list[tuple[int, Path]] | None = None
) -> tuple[list[_Segment], list[_Tear]]:
    """Check every segment of a log, oldest first, and that their numbers follow on.

    Sealed segments get their record checksums checked (and data checksums when deep); the
    last one gets everything checked, since that is where a crash leaves damage. With
    `lazy` (how the daemon opens its log), sealed segments get only their header checked
    now: their record count follows from the next segment's first seq, and their records
    are checked when first read (by replay in the same pass, else by `_complete`), so
    opening does not grow with history. `found`: the directory's segments, if just listed.
    """
    found = _list_segments(directory) if found is None else found
    segments: list[_Segment] = []
    tears: list[_Tear] = []
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
                    cut=(0, 0),
                )
        segments.append(segment)
    return segments, tears


def _header_only(path: Path, first: int) -> _Segment:
    """A sealed segment whose header checks out; its records are checked when first read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, SEGMENT_HEADER_SIZE, 0)
        end = os.fstat(fd).st_size
    finally:
        os.close(fd)
    layout = _check_segment_header(memoryview(head), path, first)
    if not isinstance(layout, _Layout):
        raise LogCorrupt(path, 0, layout, first, cut=(0, 0))
    segment = _Segment(first, path, end=end, scanned=False, layout=layout)
    try:
        segment.dat_end = os.stat(segment.dat_path).st_size
    except FileNotFoundError:
        segment.dat_end = 0
    return segment


def _complete(segment: _Segment) -> None:
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


def _cut(tear: _Tear) -> None:
    if tear.offset == 0 and tear.path.suffix == ".seg":
        _data_path(tear.path).unlink(missing_ok=True)  # empty: see _scan_segment
        os.unlink(tear.path)
        fsync_dir(tear.path.parent)
    else:
        _truncate_durably(tear.path, tear.offset)


def _report_line(tear: _Tear) -> tuple[str, int, int, str]:
    return (str(tear.path), tear.offset, tear.size - tear.offset, tear.why)


# ---------------------------------------------------------------------------------------
# The log


class Log:
    """An open log: appends to the active segment, replays records, reads their data back.

    One writer: a Log is not safe for concurrent appends from several threads. `sync` may
    run in another thread (`orchestrad.commit.GroupCommit` does that) while the owner keeps
    appending.
    """

    def __init__(
        self,
        directory: Path,
        segment_bytes: int,
        segments: list[_Segment],
        report: OpenReport,
        *,
        readonly: bool = False,
        segment_records: int = SEGMENT_RECORDS,
    ):
        self.directory = directory
        self.report = report
        self._segment_bytes = segment_bytes
        self._segment_records = segment_records
        self._segments: dict[int, _Segment] = {s.first: s for s in segments}
        self._firsts: list[int] = [s.first for s in segments]
        self._active = segments[-1]
        self.readonly = readonly
        fd = os.open(self._active.path, (os.O_RDONLY if readonly else os.O_RDWR | os.O_APPEND) | os.O_CLOEXEC)
        try:
            dfd = os.open(self._active.dat_path, os.O_RDONLY | os.O_CLOEXEC) if readonly and self._active.dat_path.exists() else None if readonly else _open_data_file(self._active.dat_path)
        except BaseException:
            os.close(fd)
            raise
        self._fd: int | None = fd  # the active .seg
        self._dfd: int | None = dfd  # the active .dat
        self._lock = threading.Lock()  # guards the active fds against a sync in another thread
        self._broken: BaseException | None = None
        self._data_writes = 0  # appends that wrote data to the active .dat (owner only)
        self._data_synced = 0  # _data_writes as of the last fdatasync of the .dat (sync only)
        self.last_seq = self._active.first + self._active.count - 1

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(
        cls, directory: Path, *, segment_bytes: int = 64 << 20, segment_records: int = SEGMENT_RECORDS, readonly: bool = False
    ) -> Log:
        """Open (or create) the log in `directory`, cutting a torn tail if a crash left one.

        `segment_bytes` bounds a segment's two files together, and `segment_records` the
        records it holds (one batch bigger than either gets a segment of its own). Raises LogCorrupt on damage a crash cannot explain; see
        the module docstring. `readonly` changes nothing on disk (a torn tail is left in
        place and not read; nothing is created) and refuses appends: for checking a log
        that a running daemon may be writing.
        """
        directory = Path(directory)
        if readonly and not directory.is_dir():
            raise FileNotFoundError(f"there is no log in {directory}")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = _list_segments(directory)
        segments, tears = _scan_directory(directory, deep=False, lazy=True, found=found)
        if readonly:
            if not segments:
                raise FileNotFoundError(f"the log in {directory} holds no records")
            report = OpenReport(
                truncated=[_report_line(t) for t in tears],
                segments=len(segments),
                last_seq=segments[-1].first + segments[-1].count - 1,
                first_seq=segments[0].first,
            )
            return cls(directory, segment_bytes, segments, report, readonly=True, segment_records=segment_records)
        for tear in tears:
            _cut(tear)
        if not segments or any(t.offset == 0 and t.path.suffix == ".seg" for t in tears):
            # No segment yet, or the last one's header was torn and the pair removed: start
            # a fresh, empty one where the numbering continues.
            if segments:
                next_seq = segments[-1].first + segments[-1].count
            else:
                next_seq = found[-1][0] if found else 1
            for fd in _create_segment(directory, next_seq):
                os.close(fd)
            segments.append(_Segment(next_seq, directory / _segment_name(next_seq)))
        last = segments[-1]
        report = OpenReport(
            truncated=[_report_line(t) for t in tears],
            segments=len(segments),
            last_seq=last.first + last.count - 1,
            first_seq=segments[0].first,
        )
        return cls(directory, segment_bytes, segments, report, segment_records=segment_records)

    def close(self) -> None:
        """Close the active segment. Appends are not fsynced by close: call sync() first."""
        with self._lock:
            for fd in (self._fd, self._dfd):
                if fd is not None:
                    os.close(fd)
            self._fd = self._dfd = None

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
        """Append (body, data) records; return each one's seq, position and data reference.

        The batch's data goes to the .dat in one write, then its records to the .seg in
        another. Not durable until `sync`. A batch never spans segments: if it would take
        the active segment past `segment_bytes` or `segment_records`, the log first moves
        on to a new segment. If
        a write fails, what the batch wrote to either file is truncated away, so the log
        never holds half a record that later appends would follow; the error is raised and
        no seq is used up.
        """
        fd = self._require_open()
        if self.readonly:
            raise ValueError(f"the log in {self.directory} was opened read-only")
        if self._broken is not None:
            raise OSError(
                errno.EIO,
                f"the log in {self.directory} refuses appends: an earlier failed write could not "
                f"be undone ({self._broken}). Restart the daemon; opening the log cuts the torn tail.",
            )
        if not records:
            return []
        segment = self._active
        seg_total, dat_total = _measure(records, segment.layout)
        if segment.count and (
            segment.end + segment.dat_end + seg_total + dat_total > self._segment_bytes
            or segment.count + len(records) > self._segment_records
        ):
            self._roll()
            fd = self._require_open()
            segment = self._active
            seg_total, dat_total = _measure(records, segment.layout)
        dfd = self._dfd
        assert dfd is not None
        start, dat_start = segment.end, segment.dat_end
        seg_buffers, dat_buffers, layout = _frame(records, dat_start, segment.layout)
        try:
            if dat_total:
                _write_all(dfd, dat_buffers)
            _write_all(fd, seg_buffers)
        except BaseException:
            self._undo_write(fd, start, dfd, dat_start)
            raise
        if dat_total:
            self._data_writes += 1
        results = []
        seq = self.last_seq
        first = segment.first
        note = segment.note_record
        overhead = segment.layout.overhead
        for rel, blen, dlen, dcrc, doff in layout:
            seq += 1
            off = start + rel
            note(off, overhead + blen)
            results.append((seq, Position(first, off), DataRef(first, doff, dlen, dcrc) if dlen else None))
        segment.dat_end = dat_start + dat_total
        self.last_seq = seq
        return results

    def _undo_write(self, fd: int, good_end: int, dfd: int, good_dat_end: int) -> None:
        try:
            os.ftruncate(fd, good_end)
            os.ftruncate(dfd, good_dat_end)
        except OSError as exc:
            self._broken = exc

    def _roll(self) -> None:
        """Seal the active segment (fsync both files) and start the next one."""
        next_seq = self.last_seq + 1
        with self._lock:
            old = self._require_open()
            old_data = self._dfd
            assert old_data is not None
            _sync_file(old_data)
            _sync_file(old)
            _write_index(self._active, old)
            fd, dfd = _create_segment(self.directory, next_seq)
            os.close(old)
            os.close(old_data)
            self._fd, self._dfd = fd, dfd
            self._data_writes = self._data_synced = 0
            segment = _Segment(next_seq, self.directory / _segment_name(next_seq))
            self._segments[next_seq] = segment
            self._firsts.append(next_seq)
            self._active = segment

    def sync(self) -> None:
        """Make every append so far durable: fdatasync the active .dat, then the active .seg.

        The .dat is skipped when nothing was written to it since its last fdatasync.
        Earlier segments were fsynced when the log moved past them. Safe to call from a
        worker thread while the owner appends.
        """
        with self._lock:
            fd = self._require_open()
            writes = self._data_writes
            if writes != self._data_synced:
                assert self._dfd is not None
                _sync_file(self._dfd)
                self._data_synced = writes
            _sync_file(fd)

    # -- reading ------------------------------------------------------------------------

    def segments(self) -> list[int]:
        """The first seq of each segment, oldest first."""
        return list(self._firsts)

    @property
    def first_seq(self) -> int:
        """The oldest seq still in the log (1 until old segments are dropped)."""
        return self._firsts[0]

    def _plan(self, after_seq: int) -> tuple[list[tuple[_Segment, int, int]], int]:
        self._require_open()
        seq = max(after_seq + 1, self._firsts[0])
        start = bisect.bisect_right(self._firsts, seq) - 1
        # Freeze the extent now, so records appended while reading are not half-seen.
        return [(s, s.end, s.count) for s in (self._segments[f] for f in self._firsts[start:])], seq

    def replay_decoded(self, body_type: object, after_seq: int = 0) -> Iterator[Decoded]:
        """Yield the records with seq > after_seq decoded, each body as a `body_type`.

        Replay's fastest way: in format 2 a record is a MessagePack array (see the module
        docstring), so after one crc32 call has checked a segment's records, each stride of
        its index (128 records) is decoded with one msgspec call, framing and bodies alike.
        The offsets come from the segment's index file when it has a good one; else the
        segment is scanned for them first. Bodies must be MessagePack values of
        `body_type`. Format 1 segments are cut out record by record, then decoded.

        Each segment's records are checked with one checksum call before any is yielded
        (record by record only to find damage), and a lazily opened sealed segment read
        from its start is checked and indexed in the same pass rather than in one of its
        own. Damage in a record raises LogCorrupt before that record is yielded. What can
        only be seen once a lazily opened segment has been read to its end (it holds more
        records than its neighbours say, or its .dat does not end where its records' data
        ends) raises LogCorrupt after its records were yielded. Readers that only tests and
        benchmarks use (record by record, by position) are in tests/logreaders.py.
        """
        plan, seq = self._plan(after_seq)
        return _decode_plan(plan, seq, body_type)

    def read_data(self, ref: DataRef) -> bytes:
        """Read a record's data back from its .dat, checking its checksum.

        Raises LogCorrupt, naming the .dat, if the data does not match or is missing."""
        self._require_open()
        segment = self._segment_of(ref.segment)
        # (Of a segment not checked yet, only the .dat's own size is known: a short read tells.)
        if ref.length > MAX_DATA or segment.scanned and ref.offset + ref.length > segment.dat_end:
            raise ValueError(f"{ref} does not point inside {segment.dat_path.name}")
        path = segment.dat_path
        try:
            with _FileFd(path, self._dfd if segment is self._active else None) as fd:
                data = _pread_exact(fd, ref.length, ref.offset)
        except FileNotFoundError:
            raise LogCorrupt(path, ref.offset, "the data file is missing") from None
        if len(data) != ref.length:
            raise LogCorrupt(path, ref.offset, f"data cut short ({len(data):,} of {ref.length:,} bytes)")
        if zlib.crc32(data) != ref.crc:
            raise LogCorrupt(path, ref.offset, "record data checksum mismatch")
        return data

    def _segment_of(self, first: int) -> _Segment:
        try:
            return self._segments[first]
        except KeyError:
            raise ValueError(
                f"the log has no segment {_segment_name(first)} (it holds {_segment_name(self._firsts[0])} onwards)"
            ) from None

    # -- compaction ---------------------------------------------------------------------

    def drop_segments_before(self, first_seq: int) -> list[Path]:
        """Delete whole segments whose records all have seq < first_seq; never the active one.

        Used after a snapshot at first_seq - 1 made the old records unnecessary. Oldest
        first, each one's .seg before its .dat, so a crash half-way leaves a log that still
        starts cleanly (and a .dat without its .seg, which the next call removes). A replay
        under way that has not yet reached a dropped segment fails with FileNotFoundError
        there. Returns the .seg paths of the segments removed.
        """
        self._require_open()
        removed = []
        while len(self._firsts) > 1 and self._firsts[1] <= first_seq:
            segment = self._segments.pop(self._firsts.pop(0))
            os.unlink(segment.path)
            segment.dat_path.unlink(missing_ok=True)
            _index_path(segment.path).unlink(missing_ok=True)
            removed.append(segment.path)
        if removed:
            for name in os.listdir(self.directory):  # left behind by a crash in an earlier call
                m = _SIDE_NAME.match(name)
                if m and int(m.group(1)) < self._firsts[0]:
                    (self.directory / name).unlink(missing_ok=True)
            fsync_dir(self.directory)
        return removed


def _open_data_file(path: Path) -> int:
    """Open the active segment's .dat for appending; create it if a crash left none."""
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _sync_file(fd)
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _FileFd:
    """A read fd for a file: the log's own open fd, or a fresh one closed after use."""

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


_Places = list[tuple[int, int, int, int, int]]  # per record: offset in batch, body_len, data_len, data_crc, data_off


def _measure(records: Sequence[tuple[bytes, bytes]], layout: _Layout) -> tuple[int, int]:
    """Check a batch's records against the limits; return its bytes in the .seg and the .dat.

    Everything is checked before anything is written, so a bad record fails the whole batch
    cleanly."""
    seg_total = dat_total = 0
    for body, data in records:
        blen, dlen = len(body), len(data)
        if blen > MAX_BODY:
            raise ValueError(f"a record body of {blen:,} bytes is over the {MAX_BODY:,}-byte limit")
        if dlen > MAX_DATA:
            raise ValueError(f"record data of {dlen:,} bytes is over the {MAX_DATA:,}-byte limit; split it")
        seg_total += layout.overhead + blen
        dat_total += dlen
    return seg_total, dat_total


def _frame(
    records: Sequence[tuple[bytes, bytes]], dat_start: int, record_layout: _Layout
) -> tuple[list[bytes | bytearray], list[bytes | bytearray], _Places]:
    """Encode a checked batch whose data starts at `dat_start` in the .dat, in `record_layout`.

    Returns the buffers to write to the .seg and to the .dat, and where each record lies.
    Small parts are joined into one buffer; big data goes to writev uncopied.
    """
    pending = bytearray()
    dat_buffers: list[bytes | bytearray] = []
    small = bytearray()
    layout = []
    pos = 0
    dpos = dat_start
    crc32 = zlib.crc32
    pack_head = record_layout.pack
    pack_crc = _U32.pack
    tail = record_layout.tail
    overhead = record_layout.overhead
    for body, data in records:
        blen, dlen = len(body), len(data)
        dcrc = crc32(data) if dlen else 0
        head = pack_head(blen, dlen, dcrc, dpos)
        pending += head
        pending += body
        pending += tail
        pending += pack_crc(crc32(tail, crc32(body, crc32(head, CHAIN))))
        if dlen >= _SEPARATE_BUFFER:
            if small:
                dat_buffers.append(small)
                small = bytearray()
            dat_buffers.append(data)
        elif dlen:
            small += data
        layout.append((pos, blen, dlen, dcrc, dpos))
        pos += overhead + blen
        dpos += dlen
    if small:
        dat_buffers.append(small)
    return [pending], dat_buffers, layout


def _create_segment(directory: Path, first_seq: int) -> tuple[int, int]:
    """Create a segment pair, durably: the .seg with its header, then an empty .dat.

    Returns fds open for appending to each."""
    path = directory / _segment_name(first_seq)
    dat_path = _data_path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    dfd = None
    try:
        _write_all(fd, [_segment_header(first_seq)])
        _sync_file(fd)
        dfd = os.open(dat_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        _sync_file(dfd)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        if dfd is not None:
            os.close(dfd)
            dat_path.unlink(missing_ok=True)
        raise
    return fd, dfd


# ---------------------------------------------------------------------------------------
# Reading: replay's inner loops


def _start_at(segment: _Segment, mv: memoryview, seq: int) -> int:
    """The offset of record `seq` of a scanned segment: index lookup, then at most 127 hops."""
    k = seq - segment.first
    off = segment.index[k // _INDEX_STRIDE]
    unpack = segment.layout.head.unpack_from
    overhead = segment.layout.overhead
    for _ in range(k % _INDEX_STRIDE):
        off += overhead + unpack(mv, off)[0]
    return off


def _find_damage(mv: memoryview, off: int, end: int, seq: int, segment: _Segment) -> tuple[int, int, LogCorrupt | None]:
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


class _Run(NamedTuple):
    """The records of one segment that a replay reads, their checksums checked."""

    mm: mmap.mmap  # the .seg, mapped; the caller closes it
    start: int  # offset of the first record
    end: int  # offset just after the last good one
    seq: int  # of the first record
    stop: int  # seq just after the last good one
    building: bool  # a lazily opened segment, unchecked but for this run: see the callers
    damage: LogCorrupt | None  # what comes after the good records, raised once they are read


def _checked_run(segment: _Segment, end: int, seq: int, stop: int, *, indexed: bool) -> _Run:
    """Map a segment and check the crc of its records from `seq` on with one call (record
    by record only to find damage).

    A lazily opened segment gets the offsets of its index file, if it has a good one; a
    run that starts mid-way, or must be `indexed`, needs them, so without that file the
    segment is checked and indexed in full first. A run of a segment still unchecked after
    that is `building`: its caller checks what the crc cannot (that the records are where
    the offsets say, and as many as the neighbours say) and then marks it checked.
    """
    mm = _map_to_read(segment.path, end)
    try:
        with memoryview(mm) as mv:
            if not segment.scanned and not segment.index and not _load_index(segment, mv):
                if seq != segment.first or indexed:
                    _complete(segment)
            if not segment.index:
                start = SEGMENT_HEADER_SIZE
            elif segment.scanned:
                start = _start_at(segment, mv, seq)
            else:  # the index file's offsets: a start they give is checked by the crc below
                start = _hinted_start(segment, mv, seq, end)
                if start is None:
                    _complete(segment)
                    start = _start_at(segment, mv, seq)
            damage = None
            if zlib.crc32(mv[start:end], CHAIN) != CHAIN:
                if not segment.scanned:
                    _complete(segment)  # raises LogCorrupt naming the first bad record...
                    start = _start_at(segment, mv, seq)  # ...or the index file was wrong
                if zlib.crc32(mv[start:end], CHAIN) != CHAIN:
                    good, end, damage = _find_damage(mv, start, end, seq, segment)
                    stop = min(stop, seq + good)
    except BaseException:
        mm.close()
        raise
    return _Run(mm, start, end, seq, stop, not segment.scanned, damage)


def _hinted_start(segment: _Segment, mv: memoryview, seq: int, end: int) -> int | None:
    """Where record `seq` starts by the offsets of an index file, or None if they lead
    nowhere a record could start."""
    try:
        start = _start_at(segment, mv, seq)
    except struct.error:
        return None
    return start if SEGMENT_HEADER_SIZE <= start < end else None


def _segment_runs(plan: list[tuple[_Segment, int, int]], seq: int, *, indexed: bool = False) -> Iterator[tuple[_Segment, _Run]]:
    """Each segment of the plan with records from `seq` on, checked, mapped while in use;
    then the damage after its good records, if any, is raised."""
    for i, (segment, end, count) in enumerate(plan):
        stop = segment.first + count
        if seq >= stop:
            continue
        if i + 1 < len(plan):
            _read_ahead(plan[i + 1][0].path)  # from disk while this one is parsed, if not cached
        run = _checked_run(segment, end, seq, stop, indexed=indexed)
        try:
            yield segment, run
        finally:
            run.mm.close()
        if run.damage is not None:
            raise run.damage
        seq = stop


def _frame_run(segment: _Segment, run: _Run) -> Iterator[Batch]:
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
    for chunk in range(run.seq, run.stop, _INDEX_STRIDE):
        index.append(off + 4)
        bodies: list[bytes] = []
        refs: list[DataRef | None] = []
        body, ref = bodies.append, refs.append
        try:
            for _ in range(min(_INDEX_STRIDE, run.stop - chunk)):
                blen, dlen, dcrc, doff = unpack(mm, off)
                at = off + skip_head
                off = at + blen
                body(mm[at:off])
                off += skip_tail
                ref(dataref(first, doff, dlen, dcrc) if dlen else None)
        except struct.error:  # fewer records than the next segment's name says
            yield Batch(chunk, bodies, refs)
            _complete(segment)  # raises LogCorrupt saying so
            raise
        yield Batch(chunk, bodies, refs)
    if run.building and run.seq == first:
        hint = segment.index  # from its index file, if it has one
        if off + 4 != run.end or doff + dlen != segment.dat_end or hint and hint != index:
            _complete(segment)  # raises LogCorrupt saying what does not add up
        segment.index = index
        segment.scanned = True


def _decode_plan(plan: list[tuple[_Segment, int, int]], seq: int, body_type: object) -> Iterator[Decoded]:
    """Yield Decoded batches from `seq` on, 128 records (one stride of the index) each."""
    framed, bodies = _decoders(body_type)
    for segment, run in _segment_runs(plan, seq, indexed=True):
        if segment.layout.version == 1:  # not MessagePack: cut out, then decoded
            for batch in _frame_run(segment, run):
                decoded = _decode_array(bodies, len(batch.bodies), b"".join(batch.bodies))
                yield Decoded(batch.first_seq, segment.first, [
                    Framed(len(b), r.length, r.crc, r.offset, v) if r else Framed(len(b), 0, 0, 0, v)
                    for b, r, v in zip(batch.bodies, batch.data, decoded)
                ])
        else:
            yield from _decode_run(segment, run, framed)


def _decode_run(segment: _Segment, run: _Run, decoder: msgspec.msgpack.Decoder) -> Iterator[Decoded]:
    """A format 2 run, a stride of the index at a time, each in one msgspec call: its
    records are MessagePack values already, so they need no cutting out.

    In a `building` run (the offsets came from an index file), each stride decoding into
    exactly its records is what shows that the offsets fall where records begin; if one
    does not, the segment is checked and indexed in full, and decoding goes on from there.
    """
    index, first, stride = segment.index, segment.first, _INDEX_STRIDE
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
            _complete(segment)  # raises LogCorrupt, or corrects the offsets
            with memoryview(run.mm) as mv:
                index, at = segment.index, _start_at(segment, mv, seq)
            continue
        yield Decoded(seq, first, records)
        last = records[-1]
        seq, at = nxt, to
    if run.building and not segment.scanned and run.seq == first and last is not None:
        if last.data_off + last.data_len != segment.dat_end:
            _complete(segment)  # raises LogCorrupt saying what does not add up
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


# ---------------------------------------------------------------------------------------
# Offline tools: verify and repair


def verify(directory: Path, *, deep: bool = False) -> OpenReport:
    """Check a log without changing it; raise LogCorrupt at the first problem.

    Checks what open checks, and every record of every segment (one crc32 call per
    segment when nothing is wrong); `deep` also checks the data checksum of every record in
    every segment against its .dat. The report's `truncated` lists torn tails the next open
    would cut.
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

    For each LogCorrupt that opening would raise: the bytes from the damaged record to the
    end of that segment's .seg, and from that record's data on to the end of its .dat, are
    copied into ``directory/damaged/`` (one file each), every later segment pair is moved
    there whole, and the pair is truncated where the damage begins. (Data bytes that no
    record accounts for at the end of a sealed .dat are moved aside alone: no record is
    lost.) That repeats until the log checks clean (cutting a segment makes it the last
    one, whose data checksums are then checked too). Torn tails are left for open, which
    cuts and reports them. Nothing is deleted: the damaged bytes stay in damaged/ for a
    person to look at. Returns lines for a person saying what was done.
    """
    directory = Path(directory)
    lines: list[str] = []
    seen: set[tuple[Path, int]] = set()
    while True:
        try:
            segments, tears = _scan_directory(directory, deep=False)
        except LogCorrupt as exc:
            if (exc.path, exc.offset) in seen or exc.cut is None:  # moving it aside did not help: do not loop
                raise
            seen.add((exc.path, exc.offset))
            lines.append(_move_damaged_aside(directory, exc, exc.cut))
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


def _move_damaged_aside(directory: Path, exc: LogCorrupt, cut: tuple[int, int]) -> str:
    found = _list_segments(directory)
    seg_path = exc.path.with_suffix(".seg")
    dat_path = _data_path(seg_path)
    bad_first = int(_SEGMENT_NAME.match(seg_path.name).group(1))  # type: ignore[union-attr]
    seg_size = seg_path.stat().st_size
    dat_size = _file_size(dat_path)
    seg_cut, dat_cut = cut
    whole = seg_cut < SEGMENT_HEADER_SIZE  # the segment's own header is damaged
    records_cut = whole or seg_cut < seg_size
    later = [first for first, _ in found if first > bad_first] if records_cut else []
    for first in [bad_first, *later]:  # derived, and about to be wrong
        _index_path(directory / _segment_name(first)).unlink(missing_ok=True)
    damaged = directory / DAMAGED_DIR
    damaged.mkdir(mode=0o700, exist_ok=True)
    moved_bytes = []
    if whole:
        if dat_size is not None:
            os.rename(dat_path, unused_name(damaged / dat_path.name))
        os.rename(seg_path, unused_name(damaged / seg_path.name))
    else:
        if seg_cut < seg_size:
            _copy_tail(seg_path, seg_cut, unused_name(damaged / f"{seg_path.name}.from-{seg_cut}"))
            moved_bytes.append(f"{seg_size - seg_cut:,} bytes from {seg_path.name} at offset {seg_cut:,}")
        if dat_size is not None and dat_cut < dat_size:
            _copy_tail(dat_path, dat_cut, unused_name(damaged / f"{dat_path.name}.from-{dat_cut}"))
            moved_bytes.append(f"{dat_size - dat_cut:,} bytes from {dat_path.name} at offset {dat_cut:,}")
    for first in later:
        # The .dat first: a crash half-way leaves a .seg without its .dat, which the next
        # repair finds again, never a .dat that a new segment would be created over.
        later_seg = directory / _segment_name(first)
        later_dat = _data_path(later_seg)
        if later_dat.exists():
            os.rename(later_dat, unused_name(damaged / later_dat.name))
        os.rename(later_seg, unused_name(damaged / later_seg.name))
    fsync_dir(damaged)
    if not whole:
        if seg_cut < seg_size:
            _truncate_durably(seg_path, seg_cut)
        if dat_size is not None and dat_cut < dat_size:
            _truncate_durably(dat_path, dat_cut)
    fsync_dir(directory)

    first_kept = found[0][0]
    kept_segments = len(found) - len(later) - (1 if whole else 0)
    if records_cut:
        last_kept = (exc.seq if exc.seq is not None else bad_first) - 1
        kept = f"kept records {first_kept}..{last_kept:,}" if last_kept >= first_kept else "kept no records"
    else:
        kept = "kept every record"
    what = " and ".join([f"{len(later) + (1 if whole else 0)} segment(s)", *moved_bytes])
    return f"{kept} ({kept_segments} segment(s)); moved {what} to {damaged}/ (damage: {exc.detail})"


def _copy_tail(path: Path, offset: int, target: Path) -> None:
    with open(path, "rb") as src, open(target, "xb") as dst:
        src.seek(offset)
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.flush()
        os.fsync(dst.fileno())
