"""The daemon's storage for real: snapshots, verify, repair, torn tails, retention and compaction."""

from __future__ import annotations

import subprocess
import sys

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad.log import Log
from tests import logreaders
from tests.daemon import Daemon, wait_for

PY = sys.executable


def orchestrad(daemon: Daemon, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "orchestrad", "--home", str(daemon.home), *args], capture_output=True, text=True, timeout=60)


def run_tasks(daemon: Daemon, n: int, *, size: int = 2000) -> list[int]:
    tasks = [daemon.submit(PY, "-c", f"print('x' * {size}); print('task', {i})") for i in range(n)]
    for t in tasks:
        daemon.wait_status(t, Status.SUCCEEDED)
    return tasks


def record_positions(daemon: Daemon) -> list[tuple[int, object]]:
    with Log.open(daemon.paths.log_dir) as log:
        return [(e.seq, e.position) for e in logreaders.read(log)]


def flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_restart_replays_to_the_same_state_and_verify_agrees(daemon):
    tasks = run_tasks(daemon, 5)
    before = daemon.tasks()
    assert daemon.stop() == 0
    verified = orchestrad(daemon, "--verify")
    assert verified.returncode == 0, verified.stderr
    assert "gives the live state" in verified.stdout
    daemon.start()
    after = daemon.tasks()
    assert [(v.id, v.status, v.exit_code, v.output_bytes) for v in after] == [(v.id, v.status, v.exit_code, v.output_bytes) for v in before]
    assert daemon.output_of(tasks[-1]).endswith(b"task 4\n")


def test_damage_in_the_active_segment_stops_start_up_until_repaired():
    d = Daemon().start()
    try:
        run_tasks(d, 3)
        d.kill9()
        positions = record_positions(d)
        seq, position = positions[len(positions) // 2]
        segment = sorted(d.paths.log_dir.glob("*.seg"))[-1]
        flip(segment, position.offset + 20)  # inside the record's body
        with open(d.home / "daemon.out", "ab") as out:
            refused = subprocess.run([PY, "-m", "orchestrad", "--home", str(d.home)], stdout=out, stderr=subprocess.PIPE, text=True, timeout=60)
        assert refused.returncode == 2
        assert segment.name in refused.stderr and f"{position.offset:,}" in refused.stderr
        assert "orchestrad --repair" in refused.stderr
        repaired = orchestrad(d, "--repair")
        assert repaired.returncode == 0
        assert f"kept records 1..{seq - 1:,}" in repaired.stdout and "damaged" in repaired.stdout
        d.start()
        assert d.call(p.Info(), p.DaemonStatus).last_seq >= seq - 1
        assert (d.paths.log_dir / "damaged").is_dir()
    finally:
        d.cleanup()


def test_a_torn_tail_is_cut_and_reported():
    d = Daemon().start()
    try:
        tasks = run_tasks(d, 2)
        d.kill9()
        segment = sorted(d.paths.log_dir.glob("*.seg"))[-1]
        with open(segment, "ab") as f:
            f.write(b"\x40\x00\x00\x00\x00\x00")  # half a record header: a write cut short
        d.start()
        assert "cut a torn record" in d.output()
        assert d.task(tasks[-1]).status is Status.SUCCEEDED
        task = d.submit("echo", "after the cut")
        assert d.wait_status(task, Status.SUCCEEDED)
    finally:
        d.cleanup()


def test_retention_purges_old_tasks_and_compaction_frees_their_segments():
    d = Daemon().start("--segment-bytes", "8192")
    try:
        old = run_tasks(d, 12, size=3000)
        d.call(p.ConfigSet(key="retention_days", value=0))
        keep = d.submit(PY, "-c", "import sys; print('kept', flush=True); sys.stdin.readline()")
        d.wait_status(keep, Status.RUNNING)
        wait_for(lambda: d.output_of(keep) == b"kept\n", what="the kept task's output")
        segments_before = len(list(d.paths.log_dir.glob("*.seg")))
        result = d.call(p.Cleanup(), p.CleanupResult)
        assert sorted(result.purged) == old
        assert result.segments_removed > 0 and result.bytes_freed > 0
        assert len(list(d.paths.log_dir.glob("*.seg"))) == segments_before - result.segments_removed
        listed = [v.id for v in d.tasks()]
        assert listed == [keep]
        assert d.output_of(keep) == b"kept\n"  # a live task's output is never compacted away
        d.call(p.Respond(task=keep, text="go"))
        d.wait_status(keep, Status.SUCCEEDED)
        assert d.stop() == 0
        d.start("--segment-bytes", "8192")
        assert [v.id for v in d.tasks()] == [keep]
        assert d.output_of(keep) == b"kept\n"
        assert d.submit("true") == keep + 1  # ids are never reused
        d.stop()
        verified = orchestrad(d, "--verify")
        assert verified.returncode == 0 and "gives the live state" in verified.stdout, verified.stdout + verified.stderr
    finally:
        d.cleanup()
