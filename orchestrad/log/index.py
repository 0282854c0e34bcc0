"""A sealed segment's index file (.idx): its offsets, saved so that replay need not scan it.

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
"""

from __future__ import annotations

import os
import struct
import zlib
from array import array

from orchestrad.log.fileio import pread_exact, write_all
from orchestrad.log.format import INDEX_STRIDE, SEGMENT_HEADER_SIZE, U32, index_path
from orchestrad.log.segment import Segment

_INDEX_MAGIC = b"ORCHIDX\x00"
INDEX_HEADER = struct.Struct("<8sHHIQQQI")  # magic, version, reserved, stride, count, seg end, dat end, last crc


def write_index(segment: Segment, fd: int) -> None:
    """Save a sealed segment's index beside it, so that a later replay need not scan it.

    The index file is derived data, written without fsync: one that is missing, torn or
    does not match its segment (see `load_index`) is ignored, and the segment scanned."""
    last_crc = U32.unpack(pread_exact(fd, 4, segment.end - 4))[0]
    head = INDEX_HEADER.pack(_INDEX_MAGIC, 1, 0, INDEX_STRIDE, segment.count, segment.end, segment.dat_end, last_crc)
    body = head + segment.index.tobytes()
    try:
        out = os.open(index_path(segment.path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(out, [body, U32.pack(zlib.crc32(body))])
        finally:
            os.close(out)
    except OSError:  # pragma: no cover - only an optimization is lost
        pass


def load_index(segment: Segment, mv: memoryview) -> bool:
    """Take a lazily opened segment's offsets from its index file, if it has a good one.

    Good: its checksum matches, and it describes exactly this segment (its record count,
    the sizes of both files, the crc of its last record, mapped in `mv`). Replay still
    checks every record it reads (and `replay` that the offsets fall on records)."""
    try:
        raw = index_path(segment.path).read_bytes()
    except OSError:
        return False
    n = -(-segment.count // INDEX_STRIDE)
    if len(raw) != INDEX_HEADER.size + 8 * n + 4 or zlib.crc32(raw[:-4]) != U32.unpack_from(raw, len(raw) - 4)[0]:
        return False
    magic, version, _, stride, count, end, dat_end, last_crc = INDEX_HEADER.unpack_from(raw)
    if (magic, version, stride, count, end, dat_end) != (_INDEX_MAGIC, 1, INDEX_STRIDE, segment.count, segment.end, segment.dat_end):
        return False
    if end < SEGMENT_HEADER_SIZE + 4 or U32.unpack_from(mv, end - 4)[0] != last_crc:
        return False
    index = array("Q")
    index.frombytes(raw[INDEX_HEADER.size : -4])  # in this machine's byte order
    segment.index = index
    return True
