"""Torn and damaged storage, with a real daemon on top: power loss cutting the active
segment's files at random offsets, flipped bytes inside records, data and snapshots.

tests/test_log.py pins the log's own rules file by file; tests/test_storage.py checks one
flipped byte and one torn tail through the daemon. Here the daemon itself is held to the
promise, over many seeded cases: after a cut it starts and holds exactly the records before
the cut (its tasks, their outcomes and their output say so, and the records on disk are
byte for byte the old ones); after damage before the tail it refuses to start, naming the
file and the offset, and `orchestrad --repair` lets it start with the records before the
damage; a damaged snapshot falls back to the log.

The log's format is changing under another engineer, so nothing here knows its layout:
a record's extent in its .seg file is from its `Entry.position` to the next record's, and a
record's data lies at its `DataRef` offset in the segment's .dat file (or in the .seg, for a
format that keeps data inline).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import events as ev
from orchestrad.log import Log
from tests import logreaders
from tests.daemon import wait_for
from tests.reliability.harness import PY, RDaemon, Rec, flip, kill_marked, read_log, segment_path, settle, tasks

SEED = int(os.environ.get("RELIABILITY_SEED", "20260125"))
SEGMENT_BYTES = "8192"
CUT_CASES = 8
FLIP_CASES = 6


@dataclass
class Base:
    """A log a real daemon wrote and left by kill -9: sealed segments, an active one, no
    snapshot (so a start replays every record), one task running at the kill."""

    state: Path  # a pristine copy of the state directory
    recs: list[Rec]
    data: dict[int, bytes]  # seq -> the record's data
    active: int  # first seq of the active segment

    @property
    def log_dir(self) -> Path:
        return self.state / "log"

    def active_recs(self) -> list[Rec]:
        return [r for r in self.recs if r.segment == self.active]


@pytest.fixture(scope="module")
def base():
    d = RDaemon()
    keep = Path(tempfile.mkdtemp(prefix="orc-base-"))
    try:
        d.start("--segment-bytes", SEGMENT_BYTES)
        # One task at a time, each submitted once the one before has ended, one output
        # stream each: the same records every run, so the seeded cases hit the same bytes.
        for i in range(8):
            settle(d, [d.submit(PY, "-c", f"print('DATA-{i}-' + 'x' * 2500)", title=f"big{i}")])
        for i in range(6):
            settle(d, [d.submit("sh", "-c", f"echo small {i}" + (" >&2" if i % 2 else ""), title=f"small{i}")])
        settle(d, [d.submit("sh", "-c", "echo failing; exit 3", title="failing")])
        running = d.submit("sh", "-c", "echo running; sleep 60", title="running")
        wait_for(lambda: d.output_of(running) == b"running\n", 15, "the running task's output")
        queued_after = d.submit("true", title="queued", after=[running])
        assert queued_after
        d.kill9()
        kill_marked(d.marker)  # the orphan of the running task
        shutil.copytree(d.paths.state, keep / "state")
        scratch = keep / "scratch"
        shutil.copytree(d.paths.state, scratch)
        recs = read_log(scratch / "log")
        with Log.open(scratch / "log") as log:
            data = {e.seq: log.read_data(e.data) for e in logreaders.read(log) if e.data is not None}
        shutil.rmtree(scratch)
        segments = sorted({r.segment for r in recs})
        assert len(segments) >= 3, "the base log should have sealed segments"
        b = Base(keep / "state", recs, data, segments[-1])
        assert len(b.active_recs()) >= 6, f"the active segment holds only {len(b.active_recs())} records"
        print("base log:", [(s, sum(1 for r in recs if r.segment == s)) for s in segments])
        yield b
    finally:
        d.cleanup()
        shutil.rmtree(keep, ignore_errors=True)


def fresh(base: Base) -> RDaemon:
    d = RDaemon()
    shutil.copytree(base.state, d.paths.state)
    d.args = ("--segment-bytes", SEGMENT_BYTES)
    return d


def data_file(log_dir: Path, segment: int) -> Path:
    dat = segment_path(log_dir, segment).with_suffix(".dat")
    return dat if dat.exists() else segment_path(log_dir, segment)


def expected_tasks(recs: list[Rec], data: dict[int, bytes]) -> dict[int, dict]:
    """What the records say of each task: submitted, started, how it ended, its output."""
    out: dict[int, dict] = {}
    for r in recs:
        e = r.event
        if isinstance(e, ev.TaskSubmitted):
            out[e.task] = {"title": e.spec.title, "spawned": False, "finished": None, "output": b""}
        elif isinstance(e, ev.ProcessSpawned):
            out[e.task]["spawned"] = True
        elif isinstance(e, ev.TaskFinished):
            out[e.task]["finished"] = (e.outcome, e.reason)
        elif isinstance(e, ev.OutputAppended):
            out[e.task]["output"] += data[r.seq]
    return out


def check_holds(d: RDaemon, base: Base, kept: int, when: str) -> None:
    """The serving daemon holds exactly the first `kept` records: its tasks say so, and
    once it is stopped, the log's first `kept` records are the old ones, byte for byte."""
    want = expected_tasks(base.recs[:kept], base.data)
    views = {t.id: t for t in tasks(d)}
    assert sorted(views) == sorted(want), f"{when}: tasks {sorted(views)}, expected {sorted(want)}"
    for task_id, w in want.items():
        t = views[task_id]
        assert t.title == w["title"], when
        if w["finished"] is not None:
            assert (t.status, t.reason) == w["finished"], f"{when}: task {task_id}"
            assert d.output_of(task_id) == w["output"], f"{when}: output of task {task_id}"
        elif w["spawned"]:
            assert t.status is Status.INTERRUPTED, f"{when}: task {task_id} is {t.status.value}"
    assert d.stop() == 0
    after = read_log(d.paths.log_dir)
    assert [r.body for r in after[:kept]] == [r.body for r in base.recs[:kept]], f"{when}: records 1..{kept} differ"
    assert len(after) > kept and isinstance(after[kept].event, ev.DaemonStarted), (
        f"{when}: record {kept + 1} should be the new daemon's start, not {after[kept].event if len(after) > kept else None}"
    )


# ---------------------------------------------------------------------------------------
# Power loss: the active segment's files cut short


def cut_case(base: Base, case: int) -> tuple[dict[Path, int], int, bool, str]:
    """Seeded cut offsets for the active segment's files; the records that survive them;
    whether the cut falls inside a record; and a description."""
    rng = random.Random(SEED * 1000 + case)
    seg = segment_path(base.log_dir, base.active)
    dat = seg.with_suffix(".dat")
    recs = base.active_recs()
    first_record = recs[0].offset
    seg_size = seg.stat().st_size
    cuts: dict[Path, int] = {}
    kind = ["record boundary", "a segment just created", "anywhere in the .seg", "anywhere in the .seg",
            "anywhere in the .dat", "both files"][case % 6]
    if kind == "record boundary":
        cuts[seg] = rng.choice(recs[:-1]).end
    elif kind == "a segment just created":
        # its header is fsynced before any record is written, so a torn header means the
        # power went before anything else reached the segment: no data either
        cuts[seg] = rng.randrange(1, first_record)
        if dat.exists():
            cuts[dat] = 0
    elif kind == "anywhere in the .seg" or not dat.exists():
        cuts[seg] = rng.randrange(first_record, seg_size)
        kind = "anywhere in the .seg"
    elif kind == "anywhere in the .dat":
        cuts[dat] = rng.randrange(0, dat.stat().st_size)
    else:
        cuts[seg] = rng.randrange(first_record, seg_size)
        cuts[dat] = rng.randrange(0, dat.stat().st_size)
    seg_cut = cuts.get(seg, seg_size)
    dat_cut = cuts.get(dat, dat.stat().st_size if dat.exists() else None)
    kept = len(base.recs) - len(recs)
    for r in recs:
        if r.end > seg_cut:
            break
        if r.data is not None and dat.exists() and r.data.offset + r.data.length > dat_cut:
            break
        kept += 1
    if seg_cut < first_record:
        kept = len(base.recs) - len(recs)
    torn = seg_cut not in {first_record, *(r.end for r in recs)} or (dat.exists() and dat in cuts)
    where = ", ".join(f"{path.name} at {offset}" for path, offset in cuts.items())
    return cuts, kept, torn, f"case {case}: {kind}: {where}"


@pytest.mark.parametrize("case", range(CUT_CASES))
def test_after_a_power_loss_cut_the_daemon_starts_with_exactly_the_records_before_it(base, case):
    cuts, kept, torn, what = cut_case(base, case)
    print(what, f"-> keeps {kept} of {len(base.recs)} records")
    d = fresh(base)
    try:
        for path, offset in cuts.items():
            os.truncate(d.paths.log_dir / path.name, offset)
        refused = d.try_start()
        assert refused is None, f"{what}: the daemon refused to start ({refused.returncode}): {refused.stderr}"
        if torn and kept < len(base.recs):
            assert "cut a torn record" in d.output(), f"{what}: the cut was not reported:\n{d.output()}"
        check_holds(d, base, kept, what)
        assert d.orchestrad("--verify").returncode == 0
    finally:
        d.cleanup()


def test_a_flipped_byte_in_the_very_last_record_is_a_torn_tail_the_daemon_cuts_and_reports(base):
    last = base.recs[-1]
    d = fresh(base)
    try:
        flip(segment_path(d.paths.log_dir, last.segment), random.Random(SEED).randrange(last.offset, last.end))
        assert d.try_start() is None
        assert "cut a torn record" in d.output()
        check_holds(d, base, len(base.recs) - 1, "last record flipped")
    finally:
        d.cleanup()


# ---------------------------------------------------------------------------------------
# Damage before the tail: refuse, name it, repair


OFFSET = re.compile(r"byte offset ([\d,]+)")


def refuses_naming(d: RDaemon, refused, path: Path, lo: int, hi: int, what: str) -> None:
    assert refused is not None, f"{what}: the daemon started on a damaged log; it said:\n{d.output()}"
    assert refused.returncode == 2, f"{what}: exit code {refused.returncode}: {refused.stderr}"
    assert path.name in refused.stderr, f"{what}: the refusal does not name {path.name}: {refused.stderr}"
    offsets = [int(m.replace(",", "")) for m in OFFSET.findall(refused.stderr)]
    assert any(lo <= o < hi for o in offsets), f"{what}: no offset in [{lo}, {hi}) named: {refused.stderr}"
    assert "orchestrad --repair" in refused.stderr, what


def repaired_keeps(d: RDaemon, base: Base, kept: int, what: str) -> None:
    repaired = d.orchestrad("--repair")
    assert repaired.returncode == 0, f"{what}: --repair failed: {repaired.stdout} {repaired.stderr}"
    assert "damaged" in repaired.stdout, repaired.stdout
    refused = d.try_start()
    assert refused is None, f"{what}: still refused after --repair: {refused.stderr}"
    check_holds(d, base, kept, f"{what}, repaired")


@pytest.mark.parametrize("case", range(FLIP_CASES))
def test_a_flipped_byte_inside_a_record_before_the_tail_stops_start_up_until_repaired(base, case):
    rng = random.Random(SEED * 2000 + case)
    # alternate between the active segment and the sealed ones (no snapshot: replay reads them)
    pool = base.active_recs()[:-1] if case % 2 == 0 else [r for r in base.recs if r.segment != base.active]
    rec = rng.choice(pool)
    offset = rng.randrange(rec.offset, rec.end)
    what = (f"case {case}: record {rec.seq} ({type(rec.event).__name__}) at {rec.offset}..{rec.end} "
            f"of {rec.segment:020d}.seg, byte {offset} flipped")
    print(what)
    d = fresh(base)
    try:
        path = segment_path(d.paths.log_dir, rec.segment)
        flip(path, offset)
        refuses_naming(d, d.try_start(), path, rec.offset, rec.end, what)
        repaired_keeps(d, base, rec.seq - 1, what)
    finally:
        d.cleanup()


def test_damaged_output_data_in_the_active_segment_stops_start_up_until_repaired(base):
    # not the last data of the segment: data torn at the very end is a crash's torn tail
    with_data = [r for r in base.active_recs() if r.data is not None]
    rec = with_data[len(with_data) // 2]
    d = fresh(base)
    try:
        path = data_file(d.paths.log_dir, rec.segment)
        flip(path, rec.data.offset + rec.data.length // 2)
        refused = d.try_start()
        lo, hi = (rec.data.offset, rec.data.offset + rec.data.length)
        if path.suffix == ".seg":
            lo, hi = rec.offset, rec.end
        # the refusal may name the data's place, or the record's
        assert refused is not None and refused.returncode == 2, refused and refused.stderr
        assert path.name in refused.stderr or f"{rec.segment:020d}.seg" in refused.stderr, refused.stderr
        offsets = [int(m.replace(",", "")) for m in OFFSET.findall(refused.stderr)]
        assert any(lo <= o < hi or rec.offset <= o < rec.end for o in offsets), refused.stderr
        repaired_keeps(d, base, rec.seq - 1, f"data of record {rec.seq}")
    finally:
        d.cleanup()


def test_damaged_output_in_a_sealed_segment_is_an_error_reply_naming_it_and_the_daemon_serves_on(base):
    """Data of sealed segments is checked when it is read back, not at start-up (by design:
    start-up must not grow with history). Reading it must then say what is wrong."""
    rec = next(r for r in base.recs if r.data is not None and r.segment != base.active)
    task = rec.event.task
    d = fresh(base)
    try:
        flip(data_file(d.paths.log_dir, rec.segment), rec.data.offset + rec.data.length // 2)
        assert d.try_start() is None
        with d.connect() as conn:
            with pytest.raises(p.OrchestraError) as caught:
                list(conn.stream(p.Logs(task=task), p.LogChunk))
        assert "damaged" in caught.value.message and "--repair" in caught.value.message, caught.value.message
        assert d.call(p.Info(), p.DaemonStatus).pid == d.pid
    finally:
        d.cleanup()


def test_a_rotted_length_field_mid_way_in_the_active_segment_is_damage_not_a_torn_tail(base):
    """One bit flipped in the length field (the first bytes of a record) of a record with
    good records after it. The log's docstring says the record checksum catches it; a
    length that points past the end of the file must not make the records after it
    (acknowledged, fsynced) vanish as if a crash had torn them."""
    recs = base.active_recs()
    rec = recs[len(recs) // 2]
    d = fresh(base)
    try:
        path = segment_path(d.paths.log_dir, rec.segment)
        before = {f.name: f.read_bytes() for f in d.paths.log_dir.iterdir() if f.is_file()}
        flip(path, rec.offset + 2, 0x01)  # +65536 bytes on a little-endian length
        verified = d.orchestrad("--verify")
        after = {f.name: f.read_bytes() for f in d.paths.log_dir.iterdir() if f.is_file()}
        assert after == {**before, path.name: after[path.name]} and len(after[path.name]) == len(before[path.name]), (
            f"orchestrad --verify changed the log: {verified.stdout}"
        )
        assert verified.returncode != 0, f"--verify called the damaged log fine: {verified.stdout}"
        refuses_naming(d, d.try_start(), path, rec.offset, rec.end, f"length of record {rec.seq}")
        repaired_keeps(d, base, rec.seq - 1, f"length of record {rec.seq}")
    finally:
        d.cleanup()


def test_orchestrad_verify_changes_nothing_even_on_a_log_with_a_torn_tail(base):
    """`orchestrad --verify` is the check a person runs to see whether the log is sound; it
    takes no lock, so it may run beside a live daemon. It must only look: cutting a torn
    tail is for start-up (and says so when it does it)."""
    d = fresh(base)
    try:
        seg = segment_path(d.paths.log_dir, base.active)
        with open(seg, "ab") as f:
            f.write(b"\x40\x00\x00")  # a record header cut short: a torn tail
        before = {f.name: f.read_bytes() for f in d.paths.state.rglob("*") if f.is_file()}
        verified = d.orchestrad("--verify")
        after = {f.name: f.read_bytes() for f in d.paths.state.rglob("*") if f.is_file()}
        # SQLite's shared-memory index of the history's write-ahead log is where any reader
        # takes its read locks: it holds no data, and it is the one file a reader writes.
        changed = sorted(n for n in before.keys() | after.keys() if before.get(n) != after.get(n) and n != "history.db-shm")
        assert verified.returncode == 0, verified.stderr
        assert not changed, f"--verify changed {changed}: {verified.stdout}"
    finally:
        d.cleanup()


# ---------------------------------------------------------------------------------------
# Snapshots


@pytest.fixture(scope="module")
def snapshotted():
    """A daemon's home after a graceful stop (which writes a snapshot), and its tasks."""
    d = RDaemon()
    keep = Path(tempfile.mkdtemp(prefix="orc-snap-"))
    try:
        d.start("--segment-bytes", SEGMENT_BYTES)
        ids = [d.submit(PY, "-c", f"print('snap {i}' * 300)", title=f"snap{i}") for i in range(10)]
        settle(d, ids)
        views = tasks(d)
        outputs = {i: d.output_of(i) for i in ids}
        assert d.stop() == 0
        shutil.copytree(d.paths.state, keep / "state")
        assert list((keep / "state" / "snapshots").glob("snap-*.bin")), "a graceful stop writes a snapshot"
        yield keep / "state", views, outputs
    finally:
        d.cleanup()
        shutil.rmtree(keep, ignore_errors=True)


def shape(views: list[p.TaskView]) -> list[tuple]:
    return [(t.id, t.title, t.status, t.reason, t.attempts, t.started_at, t.finished_at, t.output_bytes) for t in views]


@pytest.mark.parametrize("damage", ["flip newest", "flip all", "truncate newest", "empty all"])
def test_a_damaged_snapshot_falls_back_to_the_log(snapshotted, damage):
    state, views, outputs = snapshotted
    d = RDaemon()
    try:
        shutil.copytree(state, d.paths.state)
        snaps = sorted(d.paths.snapshot_dir.glob("snap-*.bin"))
        targets = snaps[-1:] if "newest" in damage else snaps
        for snap in targets:
            if damage.startswith("flip"):
                flip(snap, snap.stat().st_size // 2)
            elif damage.startswith("truncate"):
                os.truncate(snap, snap.stat().st_size // 2)
            else:
                os.truncate(snap, 0)
        d.start("--segment-bytes", SEGMENT_BYTES)
        assert "unusable" in d.output(), d.output()
        assert shape([t for t in tasks(d)]) == shape(views)
        assert {i: d.output_of(i) for i in outputs} == outputs
        assert d.stop() == 0
        assert d.orchestrad("--verify").returncode == 0
    finally:
        d.cleanup()


def test_with_the_log_compacted_and_every_snapshot_damaged_start_up_refuses_and_says_why():
    d = RDaemon()
    try:
        d.start("--segment-bytes", SEGMENT_BYTES)
        old = [d.submit(PY, "-c", f"print('old {i}' * 600)") for i in range(8)]
        settle(d, old)
        d.call(p.ConfigSet(key="retention_days", value=0))
        result = d.call(p.Cleanup(), p.CleanupResult)
        assert result.segments_removed > 0
        assert d.stop() == 0
        for snap in d.paths.snapshot_dir.glob("snap-*.bin"):
            flip(snap, snap.stat().st_size - 1)
        refused = d.try_start()
        assert refused is not None and refused.returncode == 2, refused
        assert "snapshot" in refused.stderr, refused.stderr
    finally:
        d.cleanup()


def test_a_log_of_a_newer_format_is_refused_with_a_sentence_by_start_verify_and_repair():
    """A segment written by a newer orchestrad: every entry point says so and what to do,
    and none of them touches it (no traceback, no repair)."""
    import zlib

    from orchestrad.log.format import U32, segment_header

    d = RDaemon()
    try:
        d.start()
        d.wait_status(d.submit("true"), Status.SUCCEEDED)
        assert d.stop() == 0
        [first] = sorted(d.paths.log_dir.glob("*.seg"))[:1]
        data = bytearray(first.read_bytes())
        data[8:24] = segment_header(1)[8:24]
        data[8] = 99  # a version from the future, with a correct header checksum
        data[20:24] = U32.pack(zlib.crc32(bytes(data[:20])))
        first.write_bytes(bytes(data))
        before = first.read_bytes()
        refused = d.try_start()
        assert refused is not None and refused.returncode == 2, refused
        for args in (("--verify",), ("--repair",)):
            done = d.orchestrad(*args)
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert "uses event log format version 99" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert "format version 99" in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert first.read_bytes() == before, "a segment of a newer format was changed"
    finally:
        d.cleanup()
