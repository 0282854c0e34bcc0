"""The event log on disk: framing, torn tails, damage, repair, and group commit."""

from __future__ import annotations

import asyncio
import errno
import os
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import orchestrad.log as log_mod
from orchestrad.log import (
    MAX_BODY,
    MAX_DATA,
    SEGMENT_HEADER_SIZE,
    GroupCommit,
    Log,
    LogCorrupt,
    Position,
    UnsupportedLogFormat,
    repair,
    verify,
)

# ---------------------------------------------------------------------------------------
# Helpers


def record(i: int) -> tuple[bytes, bytes]:
    """A recognisable record; every third one has data."""
    body = b"event-%d-" % i + bytes([i % 251]) * (i % 17)
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
    """Open the log and return every record as (seq, body, data)."""
    with Log.open(directory, **kw) as log:
        return read_all(log)


def read_all(log: Log, after: int = 0) -> list[tuple[int, bytes, bytes]]:
    return [(e.seq, bytes(e.body), log.read_data(e.data) if e.data else b"") for e in log.read(after)]


def expected(n: int, first: int = 0) -> list[tuple[int, bytes, bytes]]:
    return [(i + 1, *record(i)) for i in range(first, n)]


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}.seg"


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------
# Appending and reading


def test_round_trip_across_segment_rolls(tmp_path):
    results = fill(tmp_path, 200)
    assert [seq for seq, _, _ in results] == list(range(1, 201))
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert len(log.segments()) > 5
        assert read_all(log) == expected(200)
        for (seq, position, ref), (body, data) in zip(results, (record(i) for i in range(200))):
            entry = log.read_at(position)
            assert (entry.seq, entry.body) == (seq, body)
            assert (log.read_data(ref) if ref else b"") == data


def test_a_batch_never_spans_segments_and_rolls_happen_before_it(tmp_path):
    with Log.open(tmp_path, segment_bytes=600) as log:
        for _ in range(10):
            batch = log.append([(b"x" * 50, b"y" * 50) for _ in range(4)])
            assert len({position.segment for _, position, _ in batch}) == 1
        sizes = [segment_path(tmp_path, first).stat().st_size for first in log.segments()]
    assert all(size <= 600 for size in sizes)


def test_a_batch_bigger_than_a_segment_gets_a_segment_of_its_own(tmp_path):
    with Log.open(tmp_path, segment_bytes=100) as log:
        log.append([(b"a", b"")])
        log.append([(b"b" * 500, b"")])
        assert log.segments() == [1, 2]


def test_reopening_continues_the_numbering(tmp_path):
    fill(tmp_path, 10)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 10
        assert log.report.truncated == []
        assert [seq for seq, _, _ in log.append([(b"next", b""), (b"after", b"")])] == [11, 12]


def test_a_new_directory_starts_at_seq_1(tmp_path):
    with Log.open(tmp_path / "state" / "log") as log:
        assert log.last_seq == 0
        assert list(log.read()) == []
        assert log.append([(b"first", b"")])[0][0] == 1
        assert log.segments() == [1]


def test_read_after_seq_starts_in_the_right_segment_without_touching_older_ones(tmp_path):
    fill(tmp_path, 300)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
        target = firsts[len(firsts) // 2]
        # Damage every older segment after opening: read(after) must not even look there.
        for first in firsts:
            if first < target:
                flip(segment_path(tmp_path, first), SEGMENT_HEADER_SIZE + 20)
        entries = list(log.read(after_seq=target + 2))
        assert entries[0].seq == target + 3
        assert entries[0].position.segment == target
        assert [e.seq for e in entries] == list(range(target + 3, 301))
        assert bytes(entries[0].body) == record(target + 2)[0]
        with pytest.raises(LogCorrupt):
            list(log.read())


def test_read_past_the_end_and_read_from_a_dropped_prefix(tmp_path):
    fill(tmp_path, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert list(log.read(after_seq=100)) == []
        assert list(log.read(after_seq=500)) == []
        removed = log.drop_segments_before(40)
        assert removed and all(not p.exists() for p in removed)
        assert log.first_seq <= 40
        assert read_all(log) == expected(100, first=log.first_seq - 1)


def test_read_sees_what_existed_when_it_was_called(tmp_path):
    with Log.open(tmp_path, segment_bytes=300) as log:
        log.append([(b"one", b""), (b"two", b"")])
        seen = []
        for entry in log.read():
            seen.append(entry.seq)
            log.append([(b"more" * 10, b"")])  # rolls segments while reading
        assert seen == [1, 2]
        assert [e.seq for e in log.read(2)] == [3, 4]


def test_drop_segments_before_keeps_the_active_segment_and_anything_still_needed(tmp_path):
    fill(tmp_path, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
        removed = log.drop_segments_before(firsts[2])
        assert [p.name for p in removed] == [segment_path(tmp_path, f).name for f in firsts[:2]]
        assert log.segments() == firsts[2:]
        log.drop_segments_before(10**9)
        assert log.segments() == firsts[-1:]
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 100
        assert log.report.first_seq == firsts[-1]


def test_read_data_round_trip_and_damaged_data_is_an_error(tmp_path):
    big = os.urandom(300_000)  # large enough to go to writev as its own buffer
    with Log.open(tmp_path) as log:
        [(_, _, small_ref), (_, _, big_ref), (_, _, none_ref)] = log.append(
            [(b"a", b"small data"), (b"b", big), (b"c", b"")]
        )
        assert none_ref is None
        assert log.read_data(small_ref) == b"small data"
        assert log.read_data(big_ref) == big
        flip(segment_path(tmp_path, 1), big_ref.offset + 1234)
        with pytest.raises(LogCorrupt) as caught:
            log.read_data(big_ref)
        assert caught.value.offset == big_ref.offset
        assert "data checksum" in str(caught.value)


def test_read_at_refuses_an_offset_that_is_not_a_record(tmp_path):
    fill(tmp_path, 10)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        with pytest.raises(ValueError, match="no record starts"):
            log.read_at(Position(1, SEGMENT_HEADER_SIZE + 3))
        with pytest.raises(ValueError, match="no segment"):
            log.read_at(Position(99, SEGMENT_HEADER_SIZE))


def test_oversized_records_are_refused_before_anything_is_written(tmp_path):
    with Log.open(tmp_path) as log:
        with pytest.raises(ValueError, match="limit"):
            log.append([(b"ok", b""), (bytes(MAX_BODY + 1), b"")])
        with pytest.raises(ValueError, match="limit"):
            log.append([(b"ok", bytes(MAX_DATA + 1))])
        assert log.last_seq == 0
        assert segment_path(tmp_path, 1).stat().st_size == SEGMENT_HEADER_SIZE


def test_appending_to_a_closed_log_says_so(tmp_path):
    log = Log.open(tmp_path)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.append([(b"x", b"")])


# ---------------------------------------------------------------------------------------
# Torn tails: what a crash leaves is cut, reported, and everything before it is kept


def build_for_cutting(directory: Path, bodies_and_data, segment_bytes: int) -> list[tuple[int, int]]:
    """Write the records one per batch; return each record's (segment, start, end)."""
    spans = []
    with Log.open(directory, segment_bytes=segment_bytes) as log:
        for body, data in bodies_and_data:
            [(_, position, _)] = log.append([(body, data)])
            spans.append((position.segment, position.offset, position.offset + 16 + len(body) + len(data)))
    return spans


def check_cut(directory, records, spans, last_first, original, new_bytes, segment_bytes):
    """Write `new_bytes` as the last segment; opening must keep exactly the intact records."""
    last = segment_path(directory, last_first)
    last.write_bytes(new_bytes)
    intact = 0
    for segment, start, end in spans:
        if segment != last_first or new_bytes[start:end] == original[start:end] and end <= len(new_bytes):
            intact += 1
        else:
            break
    with Log.open(directory, segment_bytes=segment_bytes) as log:
        got = [(e.seq, bytes(e.body), log.read_data(e.data) if e.data else b"") for e in log.read()]
        assert got == [(i + 1, *records[i]) for i in range(intact)]
        clean_cut = len(new_bytes) == SEGMENT_HEADER_SIZE or any(
            end == len(new_bytes) for segment, _, end in spans if segment == last_first
        )
        if clean_cut and new_bytes == original[: len(new_bytes)]:
            assert log.report.truncated == []
        else:
            assert log.report.truncated, "a torn tail must be reported"
        assert log.append([(b"next", b"")])[0][0] == intact + 1
    for first, path in log_mod._list_segments(directory):
        if first > last_first:  # the append above moved on to a new segment: undo that
            path.unlink()


def test_truncation_at_every_byte_of_the_last_segment_keeps_exactly_the_whole_records(tmp_path):
    records = [record(i) for i in range(12)]
    spans = build_for_cutting(tmp_path, records, segment_bytes=300)
    last_first = spans[-1][0]
    assert last_first > 1, "the test needs a sealed segment before the last one"
    original = segment_path(tmp_path, last_first).read_bytes()
    for cut in range(len(original) + 1):
        check_cut(tmp_path, records, spans, last_first, original, original[:cut], 300)


records_strategy = st.lists(
    st.tuples(st.binary(max_size=60), st.one_of(st.just(b""), st.binary(max_size=80))), min_size=1, max_size=25
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_strategy, segment_bytes=st.sampled_from([120, 400, 4096]), data=st.data())
def test_a_log_cut_anywhere_in_its_last_records_opens_cleanly_with_the_whole_records_before_the_cut(
    records, segment_bytes, data
):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        spans = build_for_cutting(directory, records, segment_bytes)
        last_first = spans[-1][0]
        original = segment_path(directory, last_first).read_bytes()
        last_spans = [s for s in spans if s[0] == last_first]
        lowest = last_spans[max(0, len(last_spans) - 4)][1]  # the last few records ...
        lowest = data.draw(st.sampled_from([0, lowest]))  # ... or anywhere, header included
        cut = data.draw(st.integers(lowest, len(original)))
        if data.draw(st.booleans()):
            new = original[:cut]  # the file ends at the cut
        else:
            new = original[:cut] + bytes(len(original) - cut)  # pages allocated, never written
        check_cut(directory, records, spans, last_first, original, new, segment_bytes)


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


def test_a_bad_final_record_followed_only_by_zeros_is_a_torn_tail(tmp_path):
    results = fill(tmp_path, 20)
    _, position, _ = results[-1]
    last = segment_path(tmp_path, position.segment)
    data = bytearray(last.read_bytes())
    data[position.offset + 18 :] = bytes(len(data) - position.offset - 18 + 100)
    last.write_bytes(bytes(data))
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 19
        [(path, offset, _, _)] = log.report.truncated
        assert (path, offset) == (str(last), position.offset)


def test_a_last_segment_with_a_torn_header_is_replaced(tmp_path):
    fill(tmp_path, 10)
    (tmp_path / "00000000000000000011.seg").write_bytes(b"ORCHLO")
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 10
        assert log.report.truncated[0][:3] == (str(tmp_path / "00000000000000000011.seg"), 0, 6)
        assert log.append([(b"x", b"")])[0][0] == 11
    assert contents(tmp_path)[-1] == (11, b"x", b"")


def test_a_last_segment_whose_header_is_all_zeros_is_replaced(tmp_path):
    fill(tmp_path, 10)
    (tmp_path / "00000000000000000011.seg").write_bytes(bytes(4096))
    with Log.open(tmp_path, segment_bytes=1024) as log:
        assert log.last_seq == 10
        assert len(log.report.truncated) == 1


def test_an_empty_log_whose_only_segment_is_torn_starts_again(tmp_path):
    (tmp_path / "00000000000000000001.seg").write_bytes(b"")
    with Log.open(tmp_path) as log:
        assert log.last_seq == 0
        assert log.append([(b"x", b"")])[0][0] == 1


# ---------------------------------------------------------------------------------------
# Damage: never skipped, always named


def sealed_record(tmp_path: Path, results, index: int = 5):
    """A record in the first (sealed) segment."""
    _, position, _ = results[index]
    assert position.segment == 1
    return segment_path(tmp_path, 1), position


@pytest.mark.parametrize("where", ["body", "body_len", "data_crc", "head_crc"])
def test_a_flipped_byte_in_a_sealed_segment_is_damage_named_by_file_and_offset(tmp_path, where):
    results = fill(tmp_path, 100)
    path, position = sealed_record(tmp_path, results)
    flip(path, position.offset + {"body": 20, "body_len": 1, "data_crc": 9, "head_crc": 13}[where])
    # Opening checks sealed segments' headers only (start-up must not grow with history);
    # their records are checked when read, which replay does, and by verify.
    with Log.open(tmp_path, segment_bytes=1024) as log:
        with pytest.raises(LogCorrupt) as caught:
            list(log.read())
        with pytest.raises(LogCorrupt):
            list(log.read(after_seq=3))
    with pytest.raises(LogCorrupt) as verified:
        verify(tmp_path)
    assert (verified.value.path, verified.value.offset) == (path, position.offset)
    exc = caught.value
    assert (exc.path, exc.offset, exc.seq) == (path, position.offset, 6)
    message = str(exc)
    assert str(path) in message and f"{position.offset:,}" in message
    assert "orchestrad --repair" in message


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
    data[8:24] = log_mod._segment_header(1)[8:24]
    data[8] = 2  # version 2, with a correct header checksum
    data[20:24] = log_mod._U32.pack(log_mod.zlib.crc32(bytes(data[:20])))
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedLogFormat, match="version 2"):
        Log.open(tmp_path)
    with pytest.raises(UnsupportedLogFormat):
        repair(tmp_path)


def test_a_missing_segment_in_the_middle_is_damage(tmp_path):
    fill(tmp_path, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
    segment_path(tmp_path, firsts[1]).unlink()
    with pytest.raises(LogCorrupt, match="missing"):
        verify(tmp_path)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        with pytest.raises(LogCorrupt, match="the next segment starts at record"):
            list(log.read())


def test_damaged_data_in_a_sealed_segment_is_found_by_read_data_and_deep_verify(tmp_path):
    results = fill(tmp_path, 100)
    _, position, ref = results[6]
    assert ref is not None and position.segment == 1
    flip(segment_path(tmp_path, 1), ref.offset)
    verify(tmp_path, deep=False)  # replay never reads data, so only a deep check sees it
    with pytest.raises(LogCorrupt) as caught:
        verify(tmp_path, deep=True)
    assert caught.value.offset == position.offset
    with Log.open(tmp_path, segment_bytes=1024) as log, pytest.raises(LogCorrupt):
        log.read_data(ref)


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
    _, position, ref = results[9]
    flip(segment_path(tmp_path, 1), ref.offset + 2)
    with pytest.raises(LogCorrupt, match="data checksum") as caught:
        Log.open(tmp_path)
    assert caught.value.offset == position.offset


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
    flip(bad_file, bad_position.offset + 20)
    tail = bad_file.read_bytes()[bad_position.offset :]
    later = {segment_path(tmp_path, f).name: segment_path(tmp_path, f).read_bytes() for f in firsts[3:]}

    lines = repair(tmp_path)

    assert len(lines) == 1
    assert lines[0].startswith(f"kept records 1..{bad_seq - 1} (3 segment(s)); moved {len(later)} segment(s)")
    assert f"{len(tail):,} bytes from {bad_file.name} at offset {bad_position.offset:,}" in lines[0]
    damaged = tmp_path / "damaged"
    moved = {p.name: p.read_bytes() for p in damaged.iterdir()}
    assert moved.pop(f"{bad_file.name}.from-{bad_position.offset}") == tail
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


def test_repair_keeps_going_until_the_log_checks_clean(tmp_path):
    """Cutting a sealed segment makes it the last, whose data is then checked too."""
    results = fill(tmp_path, 200)
    in_first = [r for r in results if r[1].segment == 1]
    _, data_position, ref = next(r for r in in_first[3:] if r[2] is not None)
    _, body_position, _ = in_first[-2]
    flip(segment_path(tmp_path, 1), ref.offset)  # found only once segment 1 is the last
    flip(segment_path(tmp_path, 1), body_position.offset + 20)
    lines = repair(tmp_path)
    assert len(lines) == 2
    data_seq = next(seq for seq, position, _ in results if position == data_position)
    assert contents(tmp_path, segment_bytes=1024) == expected(data_seq - 1)


def test_repair_of_a_damaged_segment_header_moves_the_whole_segment(tmp_path):
    fill(tmp_path, 100)
    with Log.open(tmp_path, segment_bytes=1024) as log:
        firsts = log.segments()
    flip(segment_path(tmp_path, firsts[1]), 0)
    lines = repair(tmp_path)
    assert lines[0].startswith(f"kept records 1..{firsts[1] - 1} (1 segment(s)); moved {len(firsts) - 1} segment(s)")
    assert contents(tmp_path, segment_bytes=1024) == expected(firsts[1] - 1)


def test_repair_on_a_healthy_log_says_there_is_nothing_to_repair(tmp_path):
    fill(tmp_path, 50)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert repair(tmp_path) == [f"nothing to repair: records 1..50 in {len(before)} segment(s) check out"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---------------------------------------------------------------------------------------
# Group commit


@pytest.fixture
def fsyncs(monkeypatch):
    """Count the log's fsyncs; each takes 5 ms, like a real disk, so appends pile up."""
    calls = []
    real = log_mod._sync_file

    def counted(fd):
        calls.append(fd)
        time.sleep(0.005)
        real(fd)

    monkeypatch.setattr(log_mod, "_sync_file", counted)
    return calls


def test_concurrent_appenders_get_contiguous_unique_seqs_and_share_fsyncs(tmp_path, fsyncs):
    async def main():
        with Log.open(tmp_path) as log:
            fsyncs.clear()
            commit = GroupCommit(log)

            async def writer(i):
                await asyncio.sleep(i % 7 * 0.002)
                [(seq, _, _)] = await commit.append([(b"w%d" % i, b"")])
                return seq

            seqs = await asyncio.gather(*(writer(i) for i in range(200)))
            await commit.close()
            return seqs, commit.fsyncs

    seqs, reported = asyncio.run(main())
    assert sorted(seqs) == list(range(1, 201))
    assert 1 <= len(fsyncs) < 50, "one fsync must cover many appends"
    assert reported == len(fsyncs)
    bodies = {seq: body for seq, body, _ in contents(tmp_path)}
    assert all(bodies[seq] == b"w%d" % i for i, seq in enumerate(seqs))


def test_append_nowait_orders_by_call_and_resolves_when_durable(tmp_path, fsyncs):
    async def main():
        with Log.open(tmp_path) as log:
            commit = GroupCommit(log)
            first, durable1 = commit.append_nowait([(b"a", b""), (b"b", b"")])
            second, durable2 = commit.append_nowait([(b"c", b"")])
            assert [r[0] for r in first + second] == [1, 2, 3]
            assert not durable1.done() and not durable2.done()
            calls_before = len(fsyncs)
            await asyncio.gather(durable1, durable2)
            assert len(fsyncs) == calls_before + 1
            _, barrier = commit.append_nowait([])
            await barrier
            await commit.close()
            with pytest.raises(RuntimeError, match="closed"):
                commit.append_nowait([(b"late", b"")])

    asyncio.run(main())


def test_the_event_loop_keeps_running_during_an_fsync(tmp_path, monkeypatch):
    monkeypatch.setattr(log_mod, "_sync_file", lambda fd: time.sleep(0.2))

    async def main():
        with Log.open(tmp_path) as log:
            commit = GroupCommit(log)
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            await commit.append([(b"x", b"")])
            task.cancel()
            return ticks

    assert asyncio.run(main()) >= 5


def test_a_failed_fsync_fails_every_append_it_covered_and_the_log_stays_usable(tmp_path, monkeypatch):
    real = log_mod._sync_file

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    async def main():
        with Log.open(tmp_path) as log:
            commit = GroupCommit(log)
            await commit.append([(b"before", b"")])
            monkeypatch.setattr(log_mod, "_sync_file", no_space)
            outcomes = await asyncio.gather(
                *(commit.append([(b"x%d" % i, b"")]) for i in range(5)), return_exceptions=True
            )
            monkeypatch.setattr(log_mod, "_sync_file", real)
            [(seq, _, _)] = await commit.append([(b"after", b"")])
            await commit.close()
            return outcomes, seq

    outcomes, seq = asyncio.run(main())
    assert all(isinstance(o, OSError) and o.errno == errno.ENOSPC for o in outcomes)
    assert seq == 7
    # The records were written (the daemon may have applied them); only durability failed.
    assert [body for _, body, _ in contents(tmp_path)] == [b"before", *(b"x%d" % i for i in range(5)), b"after"]


def test_a_failed_write_leaves_no_partial_record_behind(tmp_path, monkeypatch):
    real_writev = os.writev
    calls = 0

    def half_then_no_space(fd, buffers):
        nonlocal calls
        calls += 1
        if calls == 1:  # a short write: the kernel took only half
            data = b"".join(bytes(b) for b in buffers)
            return real_writev(fd, [data[: len(data) // 2]])
        raise OSError(errno.ENOSPC, "No space left on device")

    async def main():
        with Log.open(tmp_path) as log:
            commit = GroupCommit(log)
            await commit.append([(b"one", b"data one"), (b"two", b"")])
            size = segment_path(tmp_path, 1).stat().st_size
            monkeypatch.setattr(os, "writev", half_then_no_space)
            with pytest.raises(OSError) as caught:
                await commit.append([(b"three" * 20, b"big" * 100), (b"four", b"")])
            assert caught.value.errno == errno.ENOSPC
            assert calls == 2
            assert segment_path(tmp_path, 1).stat().st_size == size
            assert log.last_seq == 2
            monkeypatch.setattr(os, "writev", real_writev)
            [(seq, _, _)] = await commit.append([(b"five", b"")])
            assert seq == 3
            assert [bytes(e.body) for e in log.read()] == [b"one", b"two", b"five"]
            await commit.close()

    asyncio.run(main())
    with Log.open(tmp_path) as log:
        assert log.report.truncated == []
        assert log.last_seq == 3


def test_group_commit_across_segment_rolls(tmp_path, fsyncs):
    """Rolls seal segments while an fsync of the active one may be running in a thread."""

    async def main():
        with Log.open(tmp_path, segment_bytes=2048) as log:
            commit = GroupCommit(log)

            async def writer(i):
                for j in range(10):
                    await commit.append([(b"writer %d append %d" % (i, j), b"x" * (j * 7))])

            await asyncio.gather(*(writer(i) for i in range(20)))
            await commit.close()
            return log.segments()

    segments = asyncio.run(main())
    assert len(segments) > 5
    with Log.open(tmp_path, segment_bytes=2048) as log:
        assert log.report.truncated == []
        assert [e.seq for e in log.read()] == list(range(1, 201))
    verify(tmp_path, deep=True)
