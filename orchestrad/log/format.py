"""The log's on-disk format: what the bytes of a segment pair are, and every constant of it.

This module is the format's reference. The code that reads the bytes builds on what is
defined here; the rules that depend on the bytes are documented beside their code: the
.idx file in `index`, what opening checks and cuts in `scan`, the order of writes and
fsyncs in `segmentlog`.

On-disk format, version 2
=========================

A record is a small *body* (an encoded event: replay decodes every one) and optional bulk
*data* (agent output: replay never reads it). A log is a directory of *segments*; each
segment is a pair of files named after the sequence number of its first record,
zero-padded to 20 digits::

    00000000000000000001.seg   a segment header, then each record's header and body
    00000000000000000001.dat   the data of those records, back to back, in record order
    00000000000000000001.idx   (sealed segments) where its records start: see `index`

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

A record's sequence number is not stored: it is the segment's first_seq plus the record's
index in the segment. Numbers are contiguous and start at 1; the first segment may start
later once old segments have been dropped behind a snapshot.

Version policy: a reader refuses a segment whose version it does not know
(`UnsupportedLogFormat`), rather than guessing. A format change bumps the version, and new
readers keep reading every older version.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

MAGIC = b"ORCHLOG\x00"
FORMAT_VERSION = 2  # what new segments are written in; every version back to 1 is read
MAX_BODY = 16 << 20
MAX_DATA = 64 << 20
CHAIN = zlib.crc32(bytes(4))  # 0x2144DF1C, the CRC-32 residue: see the module docstring

SEGMENT_HEADER = struct.Struct("<8sHHQI")  # magic, version, reserved, first_seq, crc
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 24
U32 = struct.Struct("<I")


class Layout(NamedTuple):
    """How one format version lays out a record: a head, the body, a tail, the record_crc."""

    version: int
    head: struct.Struct  # unpacks (body_len, data_len, data_crc, data_off) from a record's start
    padded: struct.Struct  # the same from 4 bytes before the record: see replay.frame_run
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
_V1 = Layout(1, _HEAD_1, struct.Struct("<4xIIIQ"), _HEAD_1.pack, b"")
_V2 = Layout(
    2,
    struct.Struct(">2xIxIxIxQ"),
    struct.Struct(">6xIxIxIxQ"),
    lambda blen, dlen, dcrc, doff: _HEAD_2.pack(0x96, 0xCE, blen, 0xCE, dlen, 0xCE, dcrc, 0xCF, doff),
    b"\xc4\x04",  # MessagePack bin 8 of 4 bytes: the record_crc
)
LAYOUTS = {1: _V1, 2: _V2}
CURRENT = LAYOUTS[FORMAT_VERSION]
RECORD_HEAD_SIZE = CURRENT.head_size  # 25 (20 in version 1)
RECORD_OVERHEAD = CURRENT.overhead  # 31 (24 in version 1)

SEGMENT_NAME = re.compile(r"^(\d{20})\.seg$")
SIDE_NAME = re.compile(r"^(\d{20})\.(dat|idx)$")  # a segment's .dat, or its index
INDEX_STRIDE = 128  # remember the offset of every 128th record of each segment
SEGMENT_RECORDS = 1 << 16  # a segment holds at most this many records (but a bigger batch)


def segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


def data_path(segment_path: Path) -> Path:
    return segment_path.with_suffix(".dat")


def index_path(segment_path: Path) -> Path:
    return segment_path.with_suffix(".idx")


def segment_header(first_seq: int, version: int = FORMAT_VERSION) -> bytes:
    """A segment header (see the module docstring) for a segment starting at `first_seq`."""
    head = SEGMENT_HEADER.pack(MAGIC, version, 0, first_seq, 0)[:-4]
    return head + U32.pack(zlib.crc32(head))
