"""The event log on disk: framing, torn tails, damage, repair, durability, and its shape."""

from __future__ import annotations

import ast
import asyncio
import errno
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchestrad.log.replay as replay_mod
from orchestrad.commit import GroupCommit
from orchestrad.log import DataRef, Log, LogCorrupt, UnsupportedLogFormat, repair, verify
from orchestrad.log.format import (
    CHAIN,
    MAX_BODY,
    MAX_DATA,
    RECORD_HEAD_SIZE,
    RECORD_OVERHEAD,
    SEGMENT_HEADER_SIZE,
    SEGMENT_RECORDS,
    U32,
    segment_header,
)
from orchestrad.log.index import INDEX_HEADER
from orchestrad.log.segment import create_segment, list_segments
from orchestrad.log.segmentlog import Position
from tests import logreaders

# ---------------------------------------------------------------------------------------
# Helpers


def record(i: int) -> tuple[bytes, bytes]:
    """A recognisable record; every third one has data. Bodies are MessagePack (bin) values,
    as `Log.replay_decoded` needs them to be."""
    body = msgspec.msgpack.encode(b"event-%d-" % i + bytes([i % 251]) * (i % 17))
    data = b"output-%d" % i * (1 + i % 5) if i % 3 == 0 else b""
    return body, data


def fill(directory: Path, n: int, *, segment_bytes: int = 1024, batch: int = 3) -> list:
    """Write records 0..n-1 in batches; return the append results in order."""
    results = []
    with Log.open(directory, segment_bytes=segment_bytes) as log:
        for start in range(0, n, batch):
            results += log.append([record(i) for i in range(start, min(n, start + batch))])
        log.sync()
    return results


def contents(directory: Path, **kw) -> list[tuple[int, bytes, bytes]]:
    """Open the log and return every record as (seq, body, data), by replay(), read() and
    replay_decoded() alike."""
    with Log.open(directory, **kw) as log:
        replayed = replay_all(log)  # first, while sealed segments are still unchecked
        assert read_all(log) == replayed
    if all(map(is_bin, (body for _, body, _ in replayed))):  # else it cannot be decoded
        with Log.open(directory, **kw) as log:
            assert decoded_all(log) == replayed  # first, in a log opened anew
            assert decoded_all(log) == replayed
    return replayed


def is_bin(body: bytes) -> bool:
    try:
        msgspec.msgpack.decode(body, type=bytes)
    except msgspec.DecodeError:
        return False
    return True


def read_all(log: Log, after: int = 0) -> list[tuple[int, bytes, bytes]]:
    return [(e.seq, bytes(e.body), log.read_data(e.data) if e.data else b"") for e in logreaders.read(log, after)]


def replay_all(log: Log, after: int = 0) -> list[tuple[int, bytes, bytes]]:
    return [(seq, bytes(body), log.read_data(ref) if ref else b"") for seq, body, ref in logreaders.replay(log, after)]


def decoded_all(log: Log, after: int = 0) -> list[tuple[int, bytes, bytes]]:
    got = []
    for first_seq, segment, records in log.replay_decoded(bytes, after):
        for seq, r in enumerate(records, first_seq):
            data = log.read_data(DataRef(segment, r.data_off, r.data_len, r.data_crc)) if r.data_len else b""
            got.append((seq, msgspec.msgpack.encode(r.body), data))
    return got


def expected(n: int, first: int = 0) -> list[tuple[int, bytes, bytes]]:
    return [(i + 1, *record(i)) for i in range(first, n)]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}.seg"


def data_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}.dat"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


# ---------------------------------------------------------------------------------------
# The format


def test_the_record_layout_is_as_documented(tmp_path):
    with Log.open(tmp_path) as log:
        [(_, first, ref), (_, second, none)] = log.append([(b"\xa4body", b"some data"), (b"\xa4next", b"")])
        log.sync()
    assert none is None and (ref.offset, ref.length) == (0, 9)
    seg = segment_path(tmp_path, 1).read_bytes()
    assert seg[8:10] == struct.pack("<H", 2)  # the format version, in the segment header
    assert data_path(tmp_path, 1).read_bytes() == b"some data"
    assert first.offset == SEGMENT_HEADER_SIZE and second.offset == first.offset + RECORD_OVERHEAD + 5
    # A MessagePack array: body_len, data_len, data_crc (uint32), data_off (uint64), the
    # body (one MessagePack value), and the record_crc as a bin 8 of 4 bytes.
    head = struct.pack(">BBIBIBIBQ", 0x96, 0xCE, 5, 0xCE, 9, 0xCE, zlib.crc32(b"some data"), 0xCF, 0) + b"\xa4body\xc4\x04"
    assert seg[first.offset : second.offset] == head + struct.pack("<I", zlib.crc32(head, CHAIN))
    head = struct.pack(">BBIBIBIBQ", 0x96, 0xCE, 5, 0xCE, 0, 0xCE, 0, 0xCF, 9) + b"\xa4next\xc4\x04"  # data_off: where the data would start
    assert seg[second.offset :] == head + struct.pack("<I", zlib.crc32(head, CHAIN))
    # The residue: a whole segment, and any run of whole records, checks with one call.
    assert zlib.crc32(seg) == CHAIN == 0x2144DF1C
    assert zlib.crc32(seg[second.offset :], CHAIN) == CHAIN
    assert (RECORD_HEAD_SIZE, RECORD_OVERHEAD) == (25, 31)
    # And MessagePack reads the records as they are: framing, body and all.
    records = msgspec.msgpack.decode(b"\x92" + seg[SEGMENT_HEADER_SIZE:])
    assert records == [[5, 9, zlib.crc32(b"some data"), 0, "body", seg[second.offset - 4 : second.offset]], [5, 0, 0, 9, "next", seg[-4:]]]


def test_format_1_segments_are_still_read_and_appended_to(tmp_path):
    records = [(f"record {i}".encode(), b"data %d" % i if i % 3 else b"") for i in range(1, 301)]
    with Log.open(tmp_path, segment_bytes=2048) as log:
        for i in range(0, 150, 10):
            log.append(records[i : i + 10])
        log.sync()
    assert len(segments(tmp_path)) > 2
    to_format_1(tmp_path)
    with Log.open(tmp_path, segment_bytes=2048) as log:
        assert log.report.truncated == [] and log.last_seq == 150
        for i in range(150, 300, 10):  # the active segment stays in format 1; new ones are in 2
            log.append(records[i : i + 10])
        log.sync()
        got = [(seq, bytes(body), log.read_data(ref) if ref else b"") for seq, body, ref in logreaders.replay(log)]
        assert got == [(seq, body, data) for seq, (body, data) in enumerate(records, 1)]
        read = list(logreaders.read(log, after_seq=140))
        assert [bytes(e.body) for e in read] == [body for body, _ in records[140:]]
        assert logreaders.read_at(log, read[5].position).body == records[145][0]
    versions = {struct.unpack_from("<H", p.read_bytes(), 8)[0] for p in segments(tmp_path)}
    assert versions == {1, 2}
    assert verify(tmp_path, deep=True).last_seq == 300


def test_replay_decoded_reads_both_formats_alike(tmp_path):
    bodies = [msgspec.msgpack.encode([i, "x" * (i % 7)]) for i in range(1, 401)]
    records = [(b, b"d" * (i % 5)) for i, b in enumerate(bodies)]
    with Log.open(tmp_path, segment_bytes=2048) as log:
        for i in range(0, 200, 10):
            log.append(records[i : i + 10])
        log.sync()
    to_format_1(tmp_path)
    with Log.open(tmp_path, segment_bytes=2048) as log:
        for i in range(200, 400, 10):
            log.append(records[i : i + 10])
        log.sync()
        expected = [(seq, body, ref) for seq, body, ref in logreaders.replay(log)]
        for after in (0, 1, 150, 199, 200, 333, 400):
            got = []
            for first_seq, segment, framed in log.replay_decoded(tuple[int, str], after):
                for seq, r in enumerate(framed, first_seq):
                    ref = DataRef(segment, r.data_off, r.data_len, r.data_crc) if r.data_len else None
                    got.append((seq, msgspec.msgpack.encode(list(r.body)), ref))
                    assert r.body_len == len(got[-1][1])
            assert got == expected[after:]


def to_format_1(directory: Path) -> None:
    """Rewrite every segment of a (closed) log in format 1, record by record."""
    with Log.open(directory, readonly=True) as log:
        entries = [(e.position.segment, bytes(e.body), e.data) for e in logreaders.read(log)]
    for path in segments(directory):
        first = int(path.name.split(".")[0])
        out = bytearray(segment_header(first, version=1))
        dpos = 0
        for segment, body, ref in entries:
            if segment != first:
                continue
            dlen, dcrc = (ref.length, ref.crc) if ref else (0, 0)
            head = struct.pack("<IIIQ", len(body), dlen, dcrc, dpos) + body
            out += head + struct.pack("<I", zlib.crc32(head, CHAIN))
            dpos += dlen
        path.write_bytes(out)


# ---------------------------------------------------------------------------------------
# Appending and reading


def test_round_trip_across_segment_rolls(tmp_path):
    results = fill(tmp_path, 200)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert len(log.segments()) > 5
        assert replay_all(log) == expected(200)
        assert read_all(log) == expected(200)
        for (seq, position, ref), (body, data) in zip(results, (record(i) for i in range(200))):
            entry = logreaders.read_at(log, position)
            assert (entry.seq, entry.body) == (seq, body)
            assert entry.data == ref
            assert (log.read_data(ref) if ref else b"") == data
    assert [seq for seq, _, _ in results] == list(range(1, 201))
    for first in log.segments():
        assert segment_path(tmp_path, first).exists() and data_path(tmp_path, first).exists()


def test_replay_yields_what_read_yields_from_anywhere(tmp_path):
    fill(tmp_path, 300)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
        starts = sorted({0, 1, 2, firsts[1] - 1, firsts[1], firsts[2] + 5, firsts[-1] - 1, 150, 299, 300, 400})
        for after in starts:  # some of these start in lazily opened segments, mid-way or not
            got = [(seq, bytes(body), ref) for seq, body, ref in logreaders.replay(log, after)]
            assert got == [(e.seq, bytes(e.body), e.data) for e in logreaders.read(log, after)]
            assert [seq for seq, _, _ in got] == list(range(after + 1, 301))
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert replay_all(log) == expected(300)  # checks and indexes every sealed segment ...
        assert all(s.scanned for s in log._segments.values())
        for seq, position, _ in [(e.seq, e.position, e.data) for e in logreaders.read(log)][::7]:
            assert logreaders.read_at(log, position).seq == seq  # ... so that the index finds records


def test_a_batch_never_spans_segments_and_rolls_happen_before_it(tmp_path):
    with Log.open(tmp_path, segment_bytes=600) as log:
        for _ in range(10):
            batch = log.append([(b"x" * 50, b"y" * 50) for _ in range(4)])
            assert len({position.segment for _, position, _ in batch}) == 1
            assert len({ref.segment for _, _, ref in batch}) == 1
        sizes = [
            segment_path(tmp_path, first).stat().st_size + data_path(tmp_path, first).stat().st_size
            for first in log.segments()
        ]
    assert len(sizes) > 3
    assert all(size <= 600 for size in sizes)


def test_a_batch_bigger_than_a_segment_gets_a_segment_of_its_own(tmp_path):
    with Log.open(tmp_path, segment_bytes=100) as log:
        log.append([(b"a", b"")])
        log.append([(b"b" * 500, b"")])
        log.append([(b"c", b"d" * 500)])
        assert log.segments() == [1, 2, 3]


def test_reopening_continues_the_numbering(tmp_path):
    fill(tmp_path, 10)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 10
        assert log.report.truncated == []
        assert [seq for seq, _, _ in log.append([(b"next", b""), (b"after", b"")])] == [11, 12]


def test_a_new_directory_starts_at_seq_1(tmp_path):
    with Log.open(tmp_path / "state" / "log") as log:
        assert log.last_seq == 0
        assert list(logreaders.read(log)) == []
        assert list(logreaders.replay(log)) == []
        assert log.append([(b"first", b"")])[0][0] == 1
        assert log.segments() == [1]
    assert sorted(files(tmp_path / "state" / "log")) == ["00000000000000000001.dat", "00000000000000000001.seg"]


def test_read_after_seq_starts_in_the_right_segment_without_touching_older_ones(tmp_path):
    fill(tmp_path, 300)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
        target = firsts[len(firsts) // 2]
        # Damage every older segment after opening: read(after) must not even look there.
        for first in firsts:
            if first < target:
                flip(segment_path(tmp_path, first), SEGMENT_HEADER_SIZE + 20)
                data_path(tmp_path, first).unlink()
        entries = list(logreaders.read(log, after_seq=target + 2))
        assert entries[0].seq == target + 3
        assert entries[0].position.segment == target
        assert [e.seq for e in entries] == list(range(target + 3, 301))
        assert bytes(entries[0].body) == record(target + 2)[0]
        assert [(s, bytes(b), r) for s, b, r in logreaders.replay(log, target - 1)] == [
            (e.seq, bytes(e.body), e.data) for e in logreaders.read(log, target - 1)
        ]
        with pytest.raises(LogCorrupt):
            list(logreaders.read(log))
        with pytest.raises(LogCorrupt):
            list(logreaders.replay(log))


def test_read_past_the_end_and_read_from_a_dropped_prefix(tmp_path):
    fill(tmp_path, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert list(logreaders.read(log, after_seq=100)) == []
        assert list(logreaders.read(log, after_seq=500)) == []
        assert list(logreaders.replay(log, after_seq=500)) == []
        removed = log.drop_segments_before(40)
        assert removed and all(not p.exists() and not p.with_suffix(".dat").exists() for p in removed)
        assert log.first_seq <= 40
        assert read_all(log) == expected(100, first=log.first_seq - 1)
        assert replay_all(log) == expected(100, first=log.first_seq - 1)


def test_read_sees_what_existed_when_it_was_called(tmp_path):
    with Log.open(tmp_path, segment_bytes=300) as log:
        log.append([(b"one", b""), (b"two", b"2")])
        seen = []
        for entry in logreaders.read(log):
            seen.append(entry.seq)
            log.append([(b"more" * 10, b"data")])  # rolls segments while reading
        assert seen == [1, 2]
        seen = []
        for seq, _, _ in logreaders.replay(log):
            seen.append(seq)
            log.append([(b"more" * 10, b"data")])
        assert seen == [1, 2, 3, 4]
        assert [e.seq for e in logreaders.read(log, 2)] == list(range(3, 9))


def test_a_segment_also_holds_at_most_segment_records_records(tmp_path):
    with Log.open(tmp_path, segment_records=10) as log:
        for i in range(0, 34, 4):
            log.append([record(j) for j in range(i, min(34, i + 4))])
        log.append([record(j) for j in range(34, 50)])  # a bigger batch: a segment of its own
        log.sync()
        assert log.segments() == [1, 9, 17, 25, 35]  # 8, 8, 8, 10 records, then the big batch
    assert contents(tmp_path, segment_records=10) == expected(50)
    assert SEGMENT_RECORDS == 1 << 16


# ---------------------------------------------------------------------------------------
# Index files: a sealed segment's offsets, saved so that replay need not scan it


def test_sealed_segments_get_an_index_file_that_replay_uses_instead_of_a_scan(tmp_path, monkeypatch):
    fill(tmp_path, 400)
    sealed = segments(tmp_path)[:-1]
    assert len(sealed) > 3
    assert sorted(tmp_path.glob("*.idx")) == [p.with_suffix(".idx") for p in sealed]
    full = expected(400)
    scans = []
    real_complete = replay_mod.complete
    monkeypatch.setattr(replay_mod, "complete", lambda segment: scans.append(segment.first) or real_complete(segment))
    for after in (0, 5, 129, 250, 399):
        with Log.open(tmp_path, segment_bytes=1024) as log:
            assert decoded_all(log, after) == full[after:]
    assert scans == []  # every offset came from an index file
    for p in sealed[1:3]:
        p.with_suffix(".idx").unlink()
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert decoded_all(log) == full  # without them, those two segments are scanned instead
    assert scans == [int(p.name[:20]) for p in sealed[1:3]]


@pytest.mark.parametrize("wrong", ["offsets", "stale", "torn", "garbage"])
def test_a_wrong_index_file_is_never_taken_for_damage(tmp_path, wrong):
    fill(tmp_path, 400, segment_bytes=1 << 20, batch=50)
    with Log.open(tmp_path, segment_bytes=1 << 20) as log:
        log.append([record(400)])
        log._roll()  # seal it: it gets an index file
        log.sync()
    path = segments(tmp_path)[0].with_suffix(".idx")
    raw = bytearray(path.read_bytes())
    head = INDEX_HEADER.size
    if wrong == "offsets":  # offsets that miss the records, under a good checksum
        for i in range(head + 8, len(raw) - 4, 8):
            raw[i : i + 8] = struct.pack("<Q", struct.unpack_from("<Q", raw, i)[0] + 3)
        raw[-4:] = struct.pack("<I", zlib.crc32(bytes(raw[:-4])))
    elif wrong == "stale":  # of another segment with the same records count and sizes
        raw[head - 4 : head] = bytes(4)  # the crc of its last record
        raw[-4:] = struct.pack("<I", zlib.crc32(bytes(raw[:-4])))
    elif wrong == "torn":
        raw = raw[: len(raw) // 2]
    else:
        raw = bytearray(os.urandom(len(raw)))
    path.write_bytes(bytes(raw))
    for after in (0, 200):
        with Log.open(tmp_path) as log:
            assert decoded_all(log, after) == expected(401, first=after)
            assert replay_all(log, after) == expected(401, first=after)


def test_compaction_and_repair_remove_index_files_with_their_segments(tmp_path):
    results = fill(tmp_path, 200)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
        log.drop_segments_before(firsts[2])
    assert not any(segment_path(tmp_path, f).with_suffix(".idx").exists() for f in firsts[:2])
    assert all(segment_path(tmp_path, f).with_suffix(".idx").exists() for f in firsts[2:-1])
    _, bad_position, _ = next(r for r in results if r[1].segment == firsts[4] and r[0] > firsts[4] + 2)
    flip(segment_path(tmp_path, firsts[4]), bad_position.offset + 26)
    repair(tmp_path)
    assert sorted(p.name[:20] for p in tmp_path.glob("*.idx")) == [f"{f:020d}" for f in firsts[2:4]]
    assert contents(tmp_path, segment_bytes=1024)[-1][0] < bad_position.segment + 3


def test_drop_segments_before_keeps_the_active_segment_and_anything_still_needed(tmp_path):
    fill(tmp_path, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
        removed = log.drop_segments_before(firsts[2])
        assert [p.name for p in removed] == [segment_path(tmp_path, f).name for f in firsts[:2]]
        assert log.segments() == firsts[2:]
        # A crash between removing a .seg and its .dat leaves the .dat: the next drop removes it.
        data_path(tmp_path, firsts[1]).write_bytes(b"left behind")
        log.drop_segments_before(10**9)
        assert log.segments() == firsts[-1:]
    assert sorted(files(tmp_path)) == [data_path(tmp_path, firsts[-1]).name, segment_path(tmp_path, firsts[-1]).name]
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 100
        assert log.report.first_seq == firsts[-1]


def test_read_data_round_trip_and_damaged_data_is_an_error(tmp_path):
    big = os.urandom(300_000)  # large enough to go to writev as its own buffer
    with Log.open(tmp_path) as log:
        [(_, _, small_ref), (_, _, big_ref), (_, _, none_ref), (_, _, after_ref)] = log.append(
            [(b"a", b"small data"), (b"b", big), (b"c", b""), (b"d", b"after")]
        )
        assert none_ref is None
        assert (small_ref.offset, big_ref.offset, after_ref.offset) == (0, 10, 300_010)
        assert log.read_data(small_ref) == b"small data"
        assert log.read_data(big_ref) == big
        assert log.read_data(after_ref) == b"after"
        flip(data_path(tmp_path, 1), big_ref.offset + 1234)
        with pytest.raises(LogCorrupt) as caught:
            log.read_data(big_ref)
        assert (caught.value.path, caught.value.offset) == (data_path(tmp_path, 1), big_ref.offset)
        assert "data checksum" in str(caught.value)
        with pytest.raises(ValueError, match="does not point inside"):
            log.read_data(DataRef(1, 300_010, 6, 0))


def test_data_is_checked_and_read_in_parts_without_holding_it_whole(tmp_path):
    """What `logs` does with a big chunk: check it part by part, then read parts by range."""
    big = os.urandom(300_000)
    with Log.open(tmp_path) as log:
        [(_, _, before), (_, _, ref)] = log.append([(b"a", b"before"), (b"b", big)])
        for part in (1, 4096, 65536, 300_000, 1 << 20):
            log.check_data(ref, part)
        assert b"".join(log.read_data_part(ref, at, 65536) for at in range(0, ref.length, 65536)) == big
        assert log.read_data_part(ref, 299_990, 100) == big[-10:]  # fewer at its end
        assert log.read_data_part(ref, ref.length, 100) == b""
        with pytest.raises(ValueError, match="not inside"):
            log.read_data_part(ref, ref.length + 1, 1)
        log.check_data(before)
        flip(data_path(tmp_path, 1), ref.offset + 299_999)
        with pytest.raises(LogCorrupt, match="data checksum") as caught:
            log.check_data(ref)
        assert (caught.value.path, caught.value.offset) == (data_path(tmp_path, 1), ref.offset)
        assert log.read_data_part(ref, 0, 6) == big[:6]  # unchecked, as it says


def test_read_at_refuses_an_offset_that_is_not_a_record(tmp_path):
    fill(tmp_path, 10)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        with pytest.raises(ValueError, match="no record starts"):
            logreaders.read_at(log, Position(1, SEGMENT_HEADER_SIZE + 3))
        with pytest.raises(ValueError, match="no segment"):
            logreaders.read_at(log, Position(99, SEGMENT_HEADER_SIZE))


def test_oversized_records_are_refused_before_anything_is_written(tmp_path):
    with Log.open(tmp_path) as log:
        with pytest.raises(ValueError, match="limit"):
            log.append([(b"ok", b"data"), (bytes(MAX_BODY + 1), b"")])
        with pytest.raises(ValueError, match="limit"):
            log.append([(b"ok", bytes(MAX_DATA + 1))])
        assert log.last_seq == 0
        assert segment_path(tmp_path, 1).stat().st_size == SEGMENT_HEADER_SIZE
        assert data_path(tmp_path, 1).stat().st_size == 0


def test_appending_to_a_closed_log_says_so(tmp_path):
    log = Log.open(tmp_path)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append([(b"x", b"")])
    with pytest.raises(ValueError, match="closed"):
        logreaders.replay(log)


# ---------------------------------------------------------------------------------------
# Torn tails: what a crash leaves is cut, reported, and everything before it is kept


class Span(tuple):
    """Where one record lies: its segment, its bytes in the .seg and its data in the .dat."""

    segment = property(lambda self: self[0])
    start = property(lambda self: self[1])
    end = property(lambda self: self[2])
    data_start = property(lambda self: self[3])
    data_end = property(lambda self: self[4])


def build_for_cutting(directory: Path, bodies_and_data, segment_bytes: int) -> list[Span]:
    """Write the records one per batch; return where each one lies."""
    spans: list[Span] = []
    with Log.open(directory, segment_bytes=segment_bytes) as log:
        for body, data in bodies_and_data:
            [(_, position, ref)] = log.append([(body, data)])
            same = spans and spans[-1].segment == position.segment
            data_start = spans[-1].data_end if same else 0
            assert ref is None or ref.offset == data_start
            end = position.offset + RECORD_OVERHEAD + len(body)
            spans.append(Span((position.segment, position.offset, end, data_start, data_start + len(data))))
    return spans


def intact_records(spans, last_first, original, new, original_dat, new_dat) -> int:
    """How many records, from the first, are whole in the rewritten last segment."""
    intact = 0
    for s in spans:
        if s.segment == last_first:
            if s.end > len(new) or new[s.start : s.end] != original[s.start : s.end]:
                break
            data = slice(s.data_start, s.data_end)
            if s.data_end > len(new_dat) or new_dat[data] != original_dat[data]:
                break
        intact += 1
    return intact


def check_cut(directory, records, spans, last_first, original, original_dat, new, new_dat, segment_bytes):
    """Rewrite the last segment's files; opening must keep exactly the intact records.

    Or, when the segment header is torn while its .dat holds data (records were written
    after the header was made durable, so a crash cannot explain it), refuse with LogCorrupt.
    """
    seg, dat = segment_path(directory, last_first), data_path(directory, last_first)
    seg.write_bytes(new)
    dat.write_bytes(new_dat)
    intact = intact_records(spans, last_first, original, new, original_dat, new_dat)
    header_torn = new[:SEGMENT_HEADER_SIZE] != original[:SEGMENT_HEADER_SIZE]
    if header_torn and new_dat:
        with pytest.raises(LogCorrupt) as caught:
            Log.open(directory, segment_bytes=segment_bytes)
        assert (caught.value.path, caught.value.offset) == (seg, 0)
        return
    with Log.open(directory, segment_bytes=segment_bytes) as log:
        got = [(seq, bytes(body), log.read_data(ref) if ref else b"") for seq, body, ref in logreaders.replay(log)]
        assert got == [(i + 1, *records[i]) for i in range(intact)]
        kept = [s for s in spans[:intact] if s.segment == last_first]
        clean = not header_torn and new == original[: kept[-1].end if kept else SEGMENT_HEADER_SIZE]
        clean = clean and new_dat == original_dat[: kept[-1].data_end if kept else 0]
        if clean:
            assert log.report.truncated == []
        else:
            assert log.report.truncated, "a torn tail must be reported"
            assert {path for path, *_ in log.report.truncated} <= {str(seg), str(dat)}
        assert log.append([(b"next", b"and its data")])[0][0] == intact + 1
        assert log.read_data(log.append([(b"then", b"more data")])[0][2]) == b"more data"
    for first, path in list_segments(directory):
        if first > last_first:  # the appends above moved on to a new segment: undo that
            path.unlink()
            path.with_suffix(".dat").unlink()


def test_truncation_at_every_byte_of_either_file_of_the_last_segment_keeps_exactly_the_whole_records(tmp_path):
    records = [record(i) for i in range(14)]
    spans = build_for_cutting(tmp_path, records, segment_bytes=440)
    last_first = spans[-1].segment
    assert last_first > 1, "the test needs a sealed segment before the last one"
    assert sum(1 for s in spans if s.segment == last_first and s.data_end > s.data_start) >= 2
    original = segment_path(tmp_path, last_first).read_bytes()
    original_dat = data_path(tmp_path, last_first).read_bytes()
    for cut in range(len(original) + 1):
        check_cut(tmp_path, records, spans, last_first, original, original_dat, original[:cut], original_dat, 400)
    for cut in range(len(original_dat) + 1):
        check_cut(tmp_path, records, spans, last_first, original, original_dat, original, original_dat[:cut], 400)


records_strategy = st.lists(
    st.tuples(st.binary(max_size=60), st.one_of(st.just(b""), st.binary(min_size=1, max_size=80))),
    min_size=1,
    max_size=25,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_strategy, segment_bytes=st.sampled_from([120, 400, 4096]), data=st.data())
def test_a_log_cut_anywhere_in_its_last_records_opens_cleanly_with_the_whole_records_before_the_cut(
    records, segment_bytes, data
):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        spans = build_for_cutting(directory, records, segment_bytes)
        last_first = spans[-1].segment
        original = segment_path(directory, last_first).read_bytes()
        original_dat = data_path(directory, last_first).read_bytes()
        last_spans = [s for s in spans if s.segment == last_first]
        tail = last_spans[max(0, len(last_spans) - 4)]  # the last few records ...
        new, new_dat = original, original_dat
        if data.draw(st.booleans(), label="cut the .seg (else the .dat)"):
            lowest = data.draw(st.sampled_from([0, tail.start]))  # ... or anywhere, header included
            cut = data.draw(st.integers(lowest, len(original)))
            zeros = len(original) - cut if data.draw(st.booleans(), label="zero-filled") else 0
            new = original[:cut] + bytes(zeros)  # zeros: pages allocated, never written
        else:
            lowest = data.draw(st.sampled_from([0, tail.data_start]))
            cut = data.draw(st.integers(lowest, len(original_dat)))
            zeros = len(original_dat) - cut if data.draw(st.booleans(), label="zero-filled") else 0
            new_dat = original_dat[:cut] + bytes(zeros)
        if data.draw(st.booleans(), label="extra zeros after"):
            if data.draw(st.booleans(), label="...after the .seg"):
                new += bytes(data.draw(st.integers(1, 300)))
            else:
                new_dat += bytes(data.draw(st.integers(1, 300)))
        check_cut(directory, records, spans, last_first, original, original_dat, new, new_dat, segment_bytes)


def test_a_trailing_run_of_zeros_is_cut_and_reported(tmp_path):
    fill(tmp_path, 20)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        last = segment_path(tmp_path, log.segments()[-1])
    size = last.stat().st_size
    with open(last, "ab") as f:
        f.write(bytes(8192))
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 20
        [(path, offset, cut, why)] = log.report.truncated
        assert (path, offset, cut) == (str(last), size, 8192)
        assert "zero" in why
    assert last.stat().st_size == size


def test_data_after_the_last_records_data_is_cut_and_reported(tmp_path):
    fill(tmp_path, 20)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        dat = data_path(tmp_path, log.segments()[-1])
    size = dat.stat().st_size
    with open(dat, "ab") as f:
        f.write(b"data whose records were never written")
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 20
        [(path, offset, cut, why)] = log.report.truncated
        assert (path, offset, cut) == (str(dat), size, 37)
        assert "never written" in why
    assert dat.stat().st_size == size
    assert contents(tmp_path, segment_bytes=1024) == expected(20)


@pytest.mark.parametrize("with_data", [False, True])
def test_a_bad_final_record_followed_only_by_zeros_is_a_torn_tail(tmp_path, with_data):
    results = fill(tmp_path, 19 if with_data else 20)  # record(18) has data, record(19) has none
    _, position, ref = results[-1]
    assert (ref is not None) == with_data
    last = segment_path(tmp_path, position.segment)
    data = bytearray(last.read_bytes())
    data[position.offset + 18 :] = bytes(len(data) - position.offset - 18 + 100)
    last.write_bytes(bytes(data))
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == len(results) - 1
        cuts = {path: offset for path, offset, _, _ in log.report.truncated}
        assert cuts.pop(str(last)) == position.offset
        assert cuts == ({str(data_path(tmp_path, position.segment)): ref.offset} if with_data else {})
    if with_data:
        assert data_path(tmp_path, position.segment).stat().st_size == ref.offset


def test_a_final_record_whose_data_was_lost_is_a_torn_tail_with_everything_after_it(tmp_path):
    with Log.open(tmp_path) as log:
        log.append([(b"kept", b"kept data")])
        [(_, position, ref)] = log.append([(b"torn", b"data the crash lost")])
        log.append([(b"after, no data", b""), (b"after, data", b"more")])  # written, but after it
        log.sync()
    dat = data_path(tmp_path, 1)
    for size in (ref.offset + 5, ref.offset):  # the data cut short, or not there at all
        with open(dat, "r+b") as f:
            f.truncate(size)
        with Log.open(tmp_path) as log:
            assert [(seq, bytes(body)) for seq, body, _ in logreaders.replay(log)] == [(1, b"kept")]
            cuts = {path: offset for path, offset, _, _ in log.report.truncated}
            assert cuts.pop(str(segment_path(tmp_path, 1))) == position.offset
            assert cuts == ({str(dat): ref.offset} if size > ref.offset else {})
            assert "data cut short" in log.report.truncated[0][3]
            log.append([(b"torn", b"data the crash lost")])
            log.append([(b"after, no data", b""), (b"after, data", b"more")])
            log.sync()


def test_a_final_record_whose_data_is_zeros_is_a_torn_tail(tmp_path):
    with Log.open(tmp_path) as log:
        log.append([(b"kept", b"kept data")])
        [(_, position, ref)] = log.append([(b"torn", b"data never written")])
        log.append([(b"after", b"")])
        log.sync()
    dat = data_path(tmp_path, 1)
    dat.write_bytes(dat.read_bytes()[: ref.offset] + bytes(ref.length + 4096))
    with Log.open(tmp_path) as log:
        assert log.last_seq == 1
        assert [(p, o) for p, o, _, _ in log.report.truncated] == [
            (str(segment_path(tmp_path, 1)), position.offset),
            (str(dat), ref.offset),
        ]
    assert dat.stat().st_size == ref.offset


def test_a_last_segment_with_a_torn_header_is_replaced(tmp_path):
    fill(tmp_path, 10)
    (tmp_path / "00000000000000000011.seg").write_bytes(b"ORCHLO")
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 10
        assert log.report.truncated[0][:3] == (str(tmp_path / "00000000000000000011.seg"), 0, 6)
        assert log.append([(b"x", b"its data")])[0][0] == 11
    assert contents(tmp_path)[-1] == (11, b"x", b"its data")


def test_a_last_segment_whose_header_is_all_zeros_is_replaced(tmp_path):
    fill(tmp_path, 10)
    (tmp_path / "00000000000000000011.seg").write_bytes(bytes(4096))
    (tmp_path / "00000000000000000011.dat").write_bytes(b"")
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 10
        assert len(log.report.truncated) == 1
    assert (tmp_path / "00000000000000000011.dat").stat().st_size == 0


def test_a_torn_segment_header_whose_data_file_holds_data_is_damage(tmp_path):
    fill(tmp_path, 10)
    (tmp_path / "00000000000000000011.seg").write_bytes(b"ORCHLO")
    (tmp_path / "00000000000000000011.dat").write_bytes(b"data of records that were written")
    with pytest.raises(LogCorrupt, match="records were written") as caught:
        Log.open(tmp_path, segment_bytes=1024)
    assert (caught.value.path, caught.value.offset) == (tmp_path / "00000000000000000011.seg", 0)
    lines = repair(tmp_path)
    assert lines[0].startswith("kept records 1..10 (")
    assert sorted(p.name for p in (tmp_path / "damaged").iterdir()) == [
        "00000000000000000011.dat",
        "00000000000000000011.seg",
    ]
    assert contents(tmp_path, segment_bytes=1024) == expected(10)


def test_an_empty_log_whose_only_segment_is_torn_starts_again(tmp_path):
    (tmp_path / "00000000000000000001.seg").write_bytes(b"")
    with Log.open(tmp_path) as log:
        assert log.last_seq == 0
        assert log.append([(b"x", b"")])[0][0] == 1


def test_a_missing_data_file_of_an_active_segment_without_data_is_made_again(tmp_path):
    with Log.open(tmp_path) as log:
        log.append([(b"no data", b"")])
    data_path(tmp_path, 1).unlink()
    assert verify(tmp_path).last_seq == 1
    with Log.open(tmp_path) as log:
        assert log.report.truncated == []
        log.append([(b"with data", b"data")])
    assert contents(tmp_path) == [(1, b"no data", b""), (2, b"with data", b"data")]


def test_a_missing_data_file_of_an_active_segment_with_data_is_damage(tmp_path):
    results = fill(tmp_path, 10, segment_bytes=1 << 20)
    data_path(tmp_path, 1).unlink()
    with pytest.raises(LogCorrupt, match="missing") as caught:
        Log.open(tmp_path)
    _, position, _ = results[0]  # record(0) is the first with data
    assert (caught.value.path, caught.value.offset, caught.value.seq) == (data_path(tmp_path, 1), 0, 1)
    assert f"byte {position.offset:,} of {segment_path(tmp_path, 1).name}" in str(caught.value)
    lines = repair(tmp_path)
    assert lines[0].startswith("kept no records (1 segment(s)); moved 0 segment(s) and ")
    with Log.open(tmp_path) as log:
        assert log.last_seq == 0
        assert log.append([(b"x", b"y")])[0][0] == 1


# ---------------------------------------------------------------------------------------
# Damage: never skipped, always named


def sealed_record(tmp_path: Path, results, index: int = 5):
    """A record in the first (sealed) segment."""
    _, position, _ = results[index]
    assert position.segment == 1
    return segment_path(tmp_path, 1), position


@pytest.mark.parametrize("where", ["body", "body_len", "data_len", "data_crc", "data_off", "record_crc"])
def test_a_flipped_byte_in_a_sealed_segment_is_damage_named_by_file_and_offset(tmp_path, where):
    results = fill(tmp_path, 100)
    path, position = sealed_record(tmp_path, results)
    body_len = len(record(5)[0])
    at = {"body_len": 5, "data_len": 9, "data_crc": 14, "data_off": 24, "body": 26, "record_crc": 28 + body_len}
    flip(path, position.offset + at[where])
    # Opening checks sealed segments' headers only (start-up must not grow with history);
    # their records are checked when read, which replay does, and by verify.
    with Log.open(tmp_path, segment_bytes=1024) as log:
        with pytest.raises(LogCorrupt) as replayed:
            list(logreaders.replay(log))
        with pytest.raises(LogCorrupt) as caught:
            list(logreaders.read(log))
        with pytest.raises(LogCorrupt):
            list(logreaders.read(log, after_seq=3))
        with pytest.raises(LogCorrupt):
            list(logreaders.replay(log, after_seq=3))
    for after in (0, 3):
        with Log.open(tmp_path, segment_bytes=1024) as log, pytest.raises(LogCorrupt) as decoded:
            list(log.replay_decoded(bytes, after))
        assert (decoded.value.path, decoded.value.offset, decoded.value.seq) == (path, position.offset, 6)
    with pytest.raises(LogCorrupt) as verified:
        verify(tmp_path)
    assert (verified.value.path, verified.value.offset) == (path, position.offset)
    for exc in (caught.value, replayed.value):
        assert (exc.path, exc.offset, exc.seq) == (path, position.offset, 6)
        message = str(exc)
        assert str(path) in message and f"{position.offset:,}" in message
        assert "orchestrad --repair" in message


def test_replay_yields_every_record_before_damage_in_the_active_segment_then_raises(tmp_path):
    results = fill(tmp_path, 30, segment_bytes=1 << 20)
    _, position, _ = results[10]
    with Log.open(tmp_path) as log:
        flip(segment_path(tmp_path, 1), position.offset + 22)  # after opening: open checked it
        seen = []
        with pytest.raises(LogCorrupt, match="changed after the log was opened") as caught:
            for seq, _, _ in logreaders.replay(log):
                seen.append(seq)
        assert seen == list(range(1, 11))
        assert (caught.value.offset, caught.value.seq) == (position.offset, 11)
        with pytest.raises(LogCorrupt):
            list(logreaders.read(log))
        with pytest.raises(LogCorrupt):
            logreaders.read_at(log, position)


def test_a_damaged_sealed_segment_header_is_damage(tmp_path):
    fill(tmp_path, 100)
    flip(segment_path(tmp_path, 1), 3)
    with pytest.raises(LogCorrupt) as caught:
        Log.open(tmp_path, segment_bytes=1024)
    assert (caught.value.path, caught.value.offset) == (segment_path(tmp_path, 1), 0)


def test_a_segment_from_a_newer_format_is_refused_not_repaired(tmp_path):
    fill(tmp_path, 5)
    path = segment_path(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[8:24] = segment_header(1)[8:24]
    data[8] = 3  # version 3, with a correct header checksum
    data[20:24] = U32.pack(zlib.crc32(bytes(data[:20])))
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedLogFormat, match="version 3"):
        Log.open(tmp_path)
    with pytest.raises(UnsupportedLogFormat):
        repair(tmp_path)


def test_a_missing_segment_in_the_middle_is_damage(tmp_path):
    fill(tmp_path, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
    segment_path(tmp_path, firsts[1]).unlink()
    data_path(tmp_path, firsts[1]).unlink()
    with pytest.raises(LogCorrupt, match="missing"):
        verify(tmp_path)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        with pytest.raises(LogCorrupt, match="the next segment starts at record"):
            list(logreaders.read(log))
    with Log.open(tmp_path, segment_bytes=1024) as log:
        seen = []
        with pytest.raises(LogCorrupt, match="the next segment starts at record"):
            for seq, _, _ in logreaders.replay(log):
                seen.append(seq)
        assert seen == list(range(1, firsts[1]))


def test_a_sealed_segment_with_more_records_than_its_neighbours_say_is_damage(tmp_path):
    with Log.open(tmp_path, segment_bytes=1 << 20) as log:
        log.append([(b"one", b"1"), (b"two", b"2")])
        log.sync()
    # A second segment that claims to start at record 2: segment 1 holds one record too many.
    fd, dfd = create_segment(tmp_path, 2)
    os.close(fd)
    os.close(dfd)
    with Log.open(tmp_path) as log:
        with pytest.raises(LogCorrupt, match="holds 2 records"):
            list(logreaders.replay(log))
    with Log.open(tmp_path) as log:
        with pytest.raises(LogCorrupt, match="holds 2 records"):
            list(logreaders.read(log))


def test_damaged_data_in_a_sealed_segment_is_found_by_read_data_and_deep_verify(tmp_path):
    results = fill(tmp_path, 100)
    seq, position, ref = results[6]
    assert ref is not None and position.segment == 1
    flip(data_path(tmp_path, 1), ref.offset)
    verify(tmp_path, deep=False)  # replay never reads data, so only a deep check sees it
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert [seq for seq, _, _ in logreaders.replay(log)] == list(range(1, 101))
    with pytest.raises(LogCorrupt) as caught:
        verify(tmp_path, deep=True)
    assert (caught.value.path, caught.value.offset, caught.value.seq) == (data_path(tmp_path, 1), ref.offset, seq)
    assert f"byte {position.offset:,} of {segment_path(tmp_path, 1).name}" in str(caught.value)
    with Log.open(tmp_path, segment_bytes=1024) as log, pytest.raises(LogCorrupt, match="data checksum"):
        log.read_data(ref)


@pytest.mark.parametrize("how", ["missing", "short", "longer"])
def test_a_sealed_data_file_that_is_missing_or_the_wrong_size_is_damage(tmp_path, how):
    results = fill(tmp_path, 100)
    dat = data_path(tmp_path, 1)
    size = dat.stat().st_size
    if how == "missing":
        dat.unlink()
    elif how == "short":
        with open(dat, "r+b") as f:
            f.truncate(size - 3)
    else:
        with open(dat, "ab") as f:
            f.write(b"junk")
    match = {"missing": "missing", "short": "cut short", "longer": "after the last record's data"}[how]
    with pytest.raises(LogCorrupt, match=match) as caught:
        verify(tmp_path)
    assert caught.value.path == dat
    with Log.open(tmp_path, segment_bytes=1024) as log:  # lazily: only headers are checked
        with pytest.raises(LogCorrupt, match=match):
            list(logreaders.replay(log))
        with pytest.raises(LogCorrupt, match=match):
            list(logreaders.read(log))
        if how != "longer":
            last_ref = [ref for _, position, ref in results if position.segment == 1 and ref][-1]
            with pytest.raises(LogCorrupt, match=dat.name):
                log.read_data(last_ref)
    lines = repair(tmp_path)
    if how == "longer":  # no record is lost: only the junk is moved aside
        assert lines[0].startswith("kept every record (")
        assert "moved 0 segment(s) and 4 bytes from 00000000000000000001.dat" in lines[0]
        assert contents(tmp_path, segment_bytes=1024) == expected(100)
    elif how == "short":  # the last record with data, and everything after it, is moved aside
        last_good = [seq for seq, position, ref in results if position.segment == 1 and ref][-1] - 1
        assert lines[0].startswith(f"kept records 1..{last_good} (1 segment(s)); moved ")
        assert contents(tmp_path, segment_bytes=1024) == expected(last_good)
    else:  # record 1 has data
        assert lines[0].startswith("kept no records (1 segment(s)); moved ")
        assert contents(tmp_path, segment_bytes=1024) == []


def test_data_that_does_not_start_where_the_previous_records_ends_is_damage(tmp_path):
    with Log.open(tmp_path) as log:
        [(_, _, _), (_, position, _)] = log.append([(b"one", b"first"), (b"two", b"second")])
    path = segment_path(tmp_path, 1)
    seg = bytearray(path.read_bytes())
    end = len(seg)
    head = bytearray(seg[position.offset : end - 4])
    head[17:25] = struct.pack(">Q", 4)  # says its data starts at 4, not 5: with a good crc
    seg[position.offset : end] = head + struct.pack("<I", zlib.crc32(head, CHAIN))
    path.write_bytes(bytes(seg))
    with pytest.raises(LogCorrupt, match="previous record's data ends at 5") as caught:
        Log.open(tmp_path)
    assert (caught.value.path, caught.value.offset) == (path, position.offset)


def test_a_flipped_byte_mid_way_in_the_last_segment_with_good_records_after_is_damage(tmp_path):
    results = fill(tmp_path, 30, segment_bytes=1 << 20)
    _, position, _ = results[10]
    flip(segment_path(tmp_path, 1), position.offset + 18)
    with pytest.raises(LogCorrupt) as caught:
        Log.open(tmp_path)
    assert (caught.value.offset, caught.value.seq) == (position.offset, 11)
    assert "not a crash's torn tail" in str(caught.value)


def test_damaged_data_mid_way_in_the_last_segment_is_damage(tmp_path):
    results = fill(tmp_path, 30, segment_bytes=1 << 20)
    seq, position, ref = results[9]
    flip(data_path(tmp_path, 1), ref.offset + 2)
    with pytest.raises(LogCorrupt, match="data checksum") as caught:
        Log.open(tmp_path)
    assert (caught.value.path, caught.value.offset, caught.value.seq) == (data_path(tmp_path, 1), ref.offset, seq)
    assert "not a crash's torn tail" in str(caught.value)


def test_a_flipped_byte_in_the_very_last_record_is_cut_as_a_torn_tail_and_reported(tmp_path):
    results = fill(tmp_path, 30, segment_bytes=1 << 20)
    _, position, _ = results[-1]
    flip(segment_path(tmp_path, 1), position.offset + 17)
    with Log.open(tmp_path) as log:
        assert log.last_seq == 29
        assert log.report.truncated[0][1] == position.offset


# ---------------------------------------------------------------------------------------
# Repair


def test_repair_keeps_the_good_prefix_and_moves_the_rest_aside(tmp_path):
    results = fill(tmp_path, 200)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
    bad_seq, bad_position, _ = next(r for r in results if r[1].segment == firsts[2] and r[0] > firsts[2] + 2)
    bad_file = segment_path(tmp_path, bad_position.segment)
    bad_dat = data_path(tmp_path, bad_position.segment)
    data_from = next(ref.offset for seq, _, ref in results if seq >= bad_seq and ref and ref.segment == firsts[2])
    flip(bad_file, bad_position.offset + 22)
    tail = bad_file.read_bytes()[bad_position.offset :]
    data_tail = bad_dat.read_bytes()[data_from:]
    later = {}
    for f in firsts[3:]:
        later.update({p.name: p.read_bytes() for p in (segment_path(tmp_path, f), data_path(tmp_path, f))})

    lines = repair(tmp_path)

    assert len(lines) == 1
    assert lines[0].startswith(f"kept records 1..{bad_seq - 1} (3 segment(s)); moved {len(firsts) - 3} segment(s)")
    assert f"{len(tail):,} bytes from {bad_file.name} at offset {bad_position.offset:,}" in lines[0]
    assert f"{len(data_tail):,} bytes from {bad_dat.name} at offset {data_from:,}" in lines[0]
    damaged = tmp_path / "damaged"
    moved = files(damaged)
    assert moved.pop(f"{bad_file.name}.from-{bad_position.offset}") == tail
    assert moved.pop(f"{bad_dat.name}.from-{data_from}") == data_tail
    assert moved == later
    assert contents(tmp_path, segment_bytes=1024) == expected(bad_seq - 1)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.report.truncated == []
        assert log.append([(b"after repair", b"")])[0][0] == bad_seq
    assert repair(tmp_path)[0].startswith("nothing to repair")


def test_repair_of_damage_in_the_last_segment(tmp_path):
    results = fill(tmp_path, 30, segment_bytes=1 << 20)
    _, position, _ = results[10]
    flip(segment_path(tmp_path, 1), position.offset + 18)
    lines = repair(tmp_path)
    assert lines[0].startswith("kept records 1..10 (1 segment(s)); moved 0 segment(s) and ")
    assert contents(tmp_path) == expected(10)
    assert verify(tmp_path, deep=True).last_seq == 10


def test_repair_keeps_going_until_the_log_checks_clean(tmp_path):
    """Cutting a sealed segment makes it the last, whose data is then checked too."""
    results = fill(tmp_path, 200)
    in_first = [r for r in results if r[1].segment == 1]
    data_seq, _, ref = next(r for r in in_first[3:] if r[2] is not None)
    _, body_position, _ = in_first[-2]
    flip(data_path(tmp_path, 1), ref.offset)  # found only once segment 1 is the last
    flip(segment_path(tmp_path, 1), body_position.offset + 22)
    lines = repair(tmp_path)
    assert len(lines) == 2
    assert "data checksum" in lines[1]
    assert contents(tmp_path, segment_bytes=1024) == expected(data_seq - 1)
    assert verify(tmp_path, deep=True).last_seq == data_seq - 1


def test_repair_of_a_damaged_segment_header_moves_the_whole_segment(tmp_path):
    fill(tmp_path, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
    flip(segment_path(tmp_path, firsts[1]), 0)
    lines = repair(tmp_path)
    assert lines[0].startswith(f"kept records 1..{firsts[1] - 1} (1 segment(s)); moved {len(firsts) - 1} segment(s)")
    assert len(files(tmp_path / "damaged")) == 2 * (len(firsts) - 1)
    assert contents(tmp_path, segment_bytes=1024) == expected(firsts[1] - 1)


def test_repair_on_a_healthy_log_says_there_is_nothing_to_repair(tmp_path):
    fill(tmp_path, 50)
    before = files(tmp_path)
    segments = sum(name.endswith(".seg") for name in before)
    assert repair(tmp_path) == [f"nothing to repair: records 1..50 in {segments} segment(s) check out"]
    assert files(tmp_path) == before


@pytest.mark.parametrize("where", ["middle", "last"])
def test_a_rotted_length_that_reaches_past_the_end_is_damage_unless_nothing_follows(tmp_path, where):
    results = fill(tmp_path, 30, segment_bytes=1 << 20)
    seq, position, _ = results[10 if where == "middle" else -1]
    path = segment_path(tmp_path, 1)
    before = files(tmp_path)
    flip(path, position.offset + 3)  # the body length grows by 4 MiB: past the end of the file
    if where == "middle":  # whole records follow it: a crash does not do that
        with pytest.raises(LogCorrupt, match="length is damaged") as caught:
            verify(tmp_path)
        assert (caught.value.path, caught.value.offset, caught.value.seq) == (path, position.offset, seq)
        with pytest.raises(LogCorrupt, match="length is damaged"):
            Log.open(tmp_path)
        assert {n: b for n, b in files(tmp_path).items() if n != path.name} == {
            n: b for n, b in before.items() if n != path.name
        }
        assert repair(tmp_path)[0].startswith(f"kept records 1..{seq - 1} (1 segment(s))")
    with Log.open(tmp_path) as log:
        assert log.last_seq == seq - 1
        if where == "last":  # nothing follows it: it cannot be told from a record a crash cut short
            assert log.report.truncated[0][:2] == (str(path), position.offset)
        else:
            assert log.report.truncated == []


# ---------------------------------------------------------------------------------------
# Durability: the order of fsyncs, and writes that fail




def test_sync_fdatasyncs_the_data_file_before_the_segment_file_and_only_when_it_changed(tmp_path, fsyncs):
    with Log.open(tmp_path) as log:
        seg_fd, dat_fd = log._fd, log._dfd
        fsyncs.clear()
        log.append([(b"a", b"data")])
        log.sync()
        assert fsyncs == [dat_fd, seg_fd]
        fsyncs.clear()
        log.append([(b"b", b"")])
        log.sync()
        assert fsyncs == [seg_fd]  # nothing new in the .dat: no need to wait for it


@pytest.mark.parametrize("fails", ["data write", "record write"])
def test_a_failed_write_leaves_no_partial_record_behind(tmp_path, monkeypatch, fails):
    real_writev = os.writev
    calls = 0

    def failing(fd, buffers):
        nonlocal calls
        calls += 1
        if fails == "data write" and calls == 1:  # a short write: the kernel took only half
            data = b"".join(bytes(b) for b in buffers)
            return real_writev(fd, [data[: len(data) // 2]])
        if fails == "record write" and calls == 1:  # the data goes through ...
            return real_writev(fd, buffers)
        raise OSError(errno.ENOSPC, "No space left on device")  # ... the records do not

    async def main():
        with Log.open(tmp_path) as log:
            commit = GroupCommit(log)
            await commit.append([(b"one", b"data one"), (b"two", b"")])
            size = segment_path(tmp_path, 1).stat().st_size
            data_size = data_path(tmp_path, 1).stat().st_size
            monkeypatch.setattr(os, "writev", failing)
            with pytest.raises(OSError) as caught:
                await commit.append([(b"three" * 20, b"big" * 100), (b"four", b"")])
            assert caught.value.errno == errno.ENOSPC
            assert calls == 2
            assert segment_path(tmp_path, 1).stat().st_size == size
            assert data_path(tmp_path, 1).stat().st_size == data_size
            assert log.last_seq == 2
            monkeypatch.setattr(os, "writev", real_writev)
            [(seq, _, ref)] = await commit.append([(b"five", b"data five")])
            assert seq == 3
            assert ref.offset == data_size
            assert [bytes(e.body) for e in logreaders.read(log)] == [b"one", b"two", b"five"]
            await commit.close()

    asyncio.run(main())
    with Log.open(tmp_path) as log:
        assert log.report.truncated == []
        assert log.last_seq == 3
    assert contents(tmp_path) == [(1, b"one", b"data one"), (2, b"two", b""), (3, b"five", b"data five")]


def test_a_write_failure_that_cannot_be_undone_stops_appends(tmp_path, monkeypatch):
    def no_space(fd, buffers):
        raise OSError(errno.ENOSPC, "No space left on device")

    def cannot(fd, length):
        raise OSError(errno.EIO, "Input/output error")

    with Log.open(tmp_path) as log:
        log.append([(b"one", b"data")])
        monkeypatch.setattr(os, "writev", no_space)
        monkeypatch.setattr(os, "ftruncate", cannot)
        with pytest.raises(OSError):
            log.append([(b"two", b"data")])
        monkeypatch.undo()
        with pytest.raises(OSError, match="refuses appends"):
            log.append([(b"three", b"")])


# ---------------------------------------------------------------------------------------
# The package's shape: one job per module, and no event loop


LOG_PACKAGE = Path(__file__).resolve().parent.parent / "orchestrad" / "log"
# The order of orchestrad/log/__init__.py's docstring: each module imports only earlier ones.
LOG_MODULES = ["format", "errors", "fileio", "segment", "index", "scan", "replay", "segmentlog", "repair"]


def test_the_log_imports_no_asyncio():
    """The log is synchronous; group commit (orchestrad.commit) is where it meets asyncio."""
    probe = "import sys, orchestrad.log; print(sorted(m for m in ('asyncio', 'orchestrad.commit') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"importing orchestrad.log imported {result.stdout.strip()}"


def test_each_log_module_imports_only_the_ones_before_it():
    assert sorted(p.stem for p in LOG_PACKAGE.glob("*.py")) == sorted(["__init__", *LOG_MODULES])
    for i, name in enumerate(LOG_MODULES):
        tree = ast.parse((LOG_PACKAGE / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        inside = {m.removeprefix("orchestrad.log.") for m in imported if m.startswith("orchestrad.log.")}
        assert inside <= set(LOG_MODULES[:i]), f"orchestrad/log/{name}.py imports {sorted(inside - set(LOG_MODULES[:i]))}"
        assert "orchestrad.log" not in imported, f"orchestrad/log/{name}.py imports the package it is part of"
        assert not {m for m in imported if m.split(".")[0] == "asyncio"}, f"orchestrad/log/{name}.py imports asyncio"
