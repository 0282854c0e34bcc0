"""Snapshot files: atomic, checked, the newest two kept, a damaged one skipped with a warning."""

from __future__ import annotations

import zlib

from orchestrad.snapshots import SnapshotStore


def snapshot_path(directory, seq):
    return directory / f"snap-{seq:020d}.bin"


def test_round_trip(tmp_path):
    store = SnapshotStore(tmp_path / "snapshots")
    assert store.latest() is None
    assert store.all() == []
    store.write(42, b"the state at 42")
    assert store.all() == [42]
    assert store.latest() == (42, 2, b"the state at 42")
    assert SnapshotStore(tmp_path / "snapshots").latest() == (42, 2, b"the state at 42")
    assert store.warnings == []


def test_an_empty_payload_is_a_valid_snapshot(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(1, b"")
    assert store.latest() == (1, 2, b"")


def test_only_the_newest_two_are_kept(tmp_path):
    store = SnapshotStore(tmp_path)
    for seq in (10, 20, 30, 40):
        store.write(seq, b"state %d" % seq)
    assert store.all() == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == [snapshot_path(tmp_path, s).name for s in (30, 40)]
    assert store.latest() == (40, 2, b"state 40")


def test_a_damaged_newest_snapshot_falls_back_to_the_older_one_with_a_warning(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(10, b"older state")
    store.write(20, b"newer state")
    newest = snapshot_path(tmp_path, 20)
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0xFF
    newest.write_bytes(bytes(data))

    assert store.latest() == (10, 2, b"older state")
    [warning] = store.warnings
    assert str(newest) in warning and "checksum" in warning and "rebuilt from the log" in warning


def test_a_short_snapshot_is_skipped_and_none_is_used_when_nothing_else_is_left(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(10, b"state" * 100)
    path = snapshot_path(tmp_path, 10)
    path.write_bytes(path.read_bytes()[:-1])
    assert store.latest() is None
    assert "header says" in store.warnings[0]
    path.write_bytes(path.read_bytes()[:10])
    assert store.latest() is None
    assert "shorter than its header" in store.warnings[1]


def test_a_snapshot_renamed_to_another_seq_is_refused(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(10, b"state")
    snapshot_path(tmp_path, 10).rename(snapshot_path(tmp_path, 99))
    assert store.latest() is None
    assert "says seq 10" in store.warnings[0]


def test_a_leftover_temporary_file_is_ignored_and_cleaned_up(tmp_path):
    """A crash between writing the temporary file and renaming it leaves the old snapshot."""
    store = SnapshotStore(tmp_path)
    store.write(10, b"complete state")
    leftover = tmp_path / f".{snapshot_path(tmp_path, 20).name}.tmp"
    leftover.write_bytes(b"half a snap")
    assert store.all() == [10]
    assert store.latest() == (10, 2, b"complete state")
    store.write(30, b"next state")
    assert not leftover.exists()
    assert store.all() == [10, 30]


def test_discard_after_moves_newer_snapshots_aside(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(10, b"a")
    store.write(20, b"b")
    moved = store.discard_after(15)
    assert [p.name for p in moved] == [snapshot_path(tmp_path, 20).name]
    assert moved[0].parent == tmp_path / "discarded" and moved[0].read_bytes()
    assert store.all() == [10]
    assert store.latest() == (10, 2, b"a")
    assert store.discard_after(15) == []


def test_a_snapshot_of_an_unknown_format_version_is_skipped_with_a_warning(tmp_path):
    store = SnapshotStore(tmp_path)
    store.write(10, b"state")
    path = snapshot_path(tmp_path, 10)
    data = bytearray(path.read_bytes())
    data[8:10] = (99).to_bytes(2, "little")  # a newer orchestrad's format, its checksum right
    data[28:32] = zlib.crc32(data[32:], zlib.crc32(data[:28])).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert store.latest() is None
    assert "format version 99" in store.warnings[0]
