"""The segment log: `Log` opens a log directory, appends records, and reads them back.

Writing: an append writes its batch's data to the .dat file first, then its records to the
.seg file (one write each). `Log.sync` fdatasyncs the .dat, then the .seg: a record is
durable once both are. A segment grows until the two files together would pass
`segment_bytes`, or would hold more than `segment_records` records (so that the scan of the
active segment at open stays short however small the records); it is then sealed (both
fsynced, then its .idx written) and the next pair is created, the .seg (with its header)
fsynced before the .dat, and the directory after both.

Opening is `scan`'s (what is checked, what is cut); replaying is `replay`'s; this module
holds the writer and the few reads production makes: `replay_decoded` at start-up,
`read_data` for a task's output. Readers that only tests and benchmarks use (record by
record, by position) are in tests/logreaders.py.
"""

from __future__ import annotations

import bisect
import errno
import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec

from orchestrad.files import fsync_dir
from orchestrad.log.errors import LogCorrupt
from orchestrad.log.fileio import FileFd, pread_exact, sync_file, write_all
from orchestrad.log.format import (
    CHAIN,
    MAX_BODY,
    MAX_DATA,
    SEGMENT_RECORDS,
    SIDE_NAME,
    U32,
    Layout,
    index_path,
    segment_name,
)
from orchestrad.log.index import write_index
from orchestrad.log.replay import Decoded, Plan, decode_plan
from orchestrad.log.scan import OpenReport, cut_tear, report_line, scan_directory
from orchestrad.log.segment import Segment, create_segment, list_segments, open_data_file
from orchestrad.refs import DataRef

_SEPARATE_BUFFER = 32 << 10  # data this large goes to writev as its own buffer, uncopied


class Position(msgspec.Struct, frozen=True, array_like=True):
    """Where a record lies: the segment (named by its first seq) and its offset in the .seg."""

    segment: int
    offset: int


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
        segments: list[Segment],
        report: OpenReport,
        *,
        readonly: bool = False,
        segment_records: int = SEGMENT_RECORDS,
    ):
        self.directory = directory
        self.report = report
        self._segment_bytes = segment_bytes
        self._segment_records = segment_records
        self._segments: dict[int, Segment] = {s.first: s for s in segments}
        self._firsts: list[int] = [s.first for s in segments]
        self._active = segments[-1]
        self.readonly = readonly
        fd = os.open(self._active.path, (os.O_RDONLY if readonly else os.O_RDWR | os.O_APPEND) | os.O_CLOEXEC)
        try:
            dfd = os.open(self._active.dat_path, os.O_RDONLY | os.O_CLOEXEC) if readonly and self._active.dat_path.exists() else None if readonly else open_data_file(self._active.dat_path)
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
        records it holds (one batch bigger than either gets a segment of its own). Raises
        LogCorrupt on damage a crash cannot explain (see `scan`). `readonly` changes
        nothing on disk (a torn tail is left in place and not read; nothing is created) and
        refuses appends: for checking a log that a running daemon may be writing.
        """
        directory = Path(directory)
        if readonly and not directory.is_dir():
            raise FileNotFoundError(f"there is no log in {directory}")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = list_segments(directory)
        segments, tears = scan_directory(directory, deep=False, lazy=True, found=found)
        if readonly:
            if not segments:
                raise FileNotFoundError(f"the log in {directory} holds no records")
            report = OpenReport(
                truncated=[report_line(t) for t in tears],
                segments=len(segments),
                last_seq=segments[-1].first + segments[-1].count - 1,
                first_seq=segments[0].first,
            )
            return cls(directory, segment_bytes, segments, report, readonly=True, segment_records=segment_records)
        for tear in tears:
            cut_tear(tear)
        if not segments or any(t.offset == 0 and t.path.suffix == ".seg" for t in tears):
            # No segment yet, or the last one's header was torn and the pair removed: start
            # a fresh, empty one where the numbering continues.
            if segments:
                next_seq = segments[-1].first + segments[-1].count
            else:
                next_seq = found[-1][0] if found else 1
            for fd in create_segment(directory, next_seq):
                os.close(fd)
            segments.append(Segment(next_seq, directory / segment_name(next_seq)))
        last = segments[-1]
        report = OpenReport(
            truncated=[report_line(t) for t in tears],
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
        on to a new segment. If a write fails, what the batch wrote to either file is
        truncated away, so the log never holds half a record that later appends would
        follow; the error is raised and no seq is used up.
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
                write_all(dfd, dat_buffers)
            write_all(fd, seg_buffers)
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
            sync_file(old_data)
            sync_file(old)
            write_index(self._active, old)
            fd, dfd = create_segment(self.directory, next_seq)
            os.close(old)
            os.close(old_data)
            self._fd, self._dfd = fd, dfd
            self._data_writes = self._data_synced = 0
            segment = Segment(next_seq, self.directory / segment_name(next_seq))
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
                sync_file(self._dfd)
                self._data_synced = writes
            sync_file(fd)

    # -- reading ------------------------------------------------------------------------

    def segments(self) -> list[int]:
        """The first seq of each segment, oldest first."""
        return list(self._firsts)

    @property
    def first_seq(self) -> int:
        """The oldest seq still in the log (1 until old segments are dropped)."""
        return self._firsts[0]

    def _plan(self, after_seq: int) -> tuple[Plan, int]:
        """The segments to read for the records after `after_seq`, and the first seq."""
        self._require_open()
        seq = max(after_seq + 1, self._firsts[0])
        start = bisect.bisect_right(self._firsts, seq) - 1
        # Freeze the extent now, so records appended while reading are not half-seen.
        return [(s, s.end, s.count) for s in (self._segments[f] for f in self._firsts[start:])], seq

    def replay_decoded(self, body_type: object, after_seq: int = 0) -> Iterator[Decoded]:
        """Yield the records with seq > after_seq decoded, each body as a `body_type`.

        Replay's fastest way: in format 2 a record is a MessagePack array (see `format`),
        so after one crc32 call has checked a segment's records, each stride of its index
        (128 records) is decoded with one msgspec call, framing and bodies alike. The
        offsets come from the segment's index file when it has a good one; else the
        segment is scanned for them first. Bodies must be MessagePack values of
        `body_type`. Format 1 segments are cut out record by record, then decoded. Yields
        the records that exist when it is called; damage raises LogCorrupt, before the
        damaged record is yielded (see `replay` for the one case seen only afterwards).
        """
        plan, seq = self._plan(after_seq)
        return decode_plan(plan, seq, body_type)

    def read_data(self, ref: DataRef) -> bytes:
        """Read a record's data back from its .dat, checking its checksum.

        Raises LogCorrupt, naming the .dat, if the data does not match or is missing."""
        data = b"".join(self._data_parts(ref, 0, ref.length, ref.length))  # one part: no copy
        self._check_crc(ref, zlib.crc32(data))
        return data

    def check_data(self, ref: DataRef, part: int = 64 << 10) -> None:
        """Check a record's data as `read_data` does, reading it `part` bytes at a time so as
        never to hold it whole."""
        crc = 0
        for data in self._data_parts(ref, 0, ref.length, part):
            crc = zlib.crc32(data, crc)
        self._check_crc(ref, crc)

    def read_data_part(self, ref: DataRef, start: int, length: int) -> bytes:
        """Bytes `start` to `start + length` of a record's data (fewer at its end), NOT
        checked: a checksum covers the whole data only. For a reader that has just checked
        the whole of it (`check_data`) and sends it on part by part, so as to hold no more
        than a part at a time."""
        if not 0 <= start <= ref.length or length < 0:
            raise ValueError(f"bytes {start:,}+{length:,} are not inside {ref}")
        length = min(length, ref.length - start)
        return b"".join(self._data_parts(ref, start, length, length))

    def _data_parts(self, ref: DataRef, start: int, length: int, part: int) -> Iterator[bytes]:
        """Bytes `start` to `start + length` of a record's data, `part` bytes at a time."""
        self._require_open()
        segment = self._segment_of(ref.segment)
        # (Of a segment not checked yet, only the .dat's own size is known: a short read tells.)
        if ref.length > MAX_DATA or segment.scanned and ref.offset + ref.length > segment.dat_end:
            raise ValueError(f"{ref} does not point inside {segment.dat_path.name}")
        path = segment.dat_path
        try:
            with FileFd(path, self._dfd if segment is self._active else None) as fd:
                for at in range(start, start + length, max(part, 1)):
                    want = min(part, start + length - at)
                    data = pread_exact(fd, want, ref.offset + at)
                    if len(data) != want:
                        raise LogCorrupt(path, ref.offset, f"data cut short ({at + len(data):,} of {ref.length:,} bytes)")
                    yield data
        except FileNotFoundError:
            raise LogCorrupt(path, ref.offset, "the data file is missing") from None

    def _check_crc(self, ref: DataRef, crc: int) -> None:
        if crc != ref.crc:
            raise LogCorrupt(self._segment_of(ref.segment).dat_path, ref.offset, "record data checksum mismatch")

    def _segment_of(self, first: int) -> Segment:
        try:
            return self._segments[first]
        except KeyError:
            raise ValueError(
                f"the log has no segment {segment_name(first)} (it holds {segment_name(self._firsts[0])} onwards)"
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
            index_path(segment.path).unlink(missing_ok=True)
            removed.append(segment.path)
        if removed:
            for name in os.listdir(self.directory):  # left behind by a crash in an earlier call
                m = SIDE_NAME.match(name)
                if m and int(m.group(1)) < self._firsts[0]:
                    (self.directory / name).unlink(missing_ok=True)
            fsync_dir(self.directory)
        return removed


_Places = list[tuple[int, int, int, int, int]]  # per record: offset in batch, body_len, data_len, data_crc, data_off


def _measure(records: Sequence[tuple[bytes, bytes]], layout: Layout) -> tuple[int, int]:
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
    records: Sequence[tuple[bytes, bytes]], dat_start: int, record_layout: Layout
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
    pack_crc = U32.pack
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
