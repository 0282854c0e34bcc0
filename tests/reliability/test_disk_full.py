"""A full disk, for real: the daemon's home is a small tmpfs (this suite runs as root in
its sandbox, where `mount -t tmpfs` works), filled up to the last byte by a file beside
the daemon's own. The daemon must refuse new work with a clear error, keep answering
reads, keep what it acknowledged, and take (and run) work again once space returns."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import wait_for
from tests.reliability.harness import RDaemon, alive, settle, tasks

SIZE = "8m"


@pytest.fixture
def small_disk():
    home = Path(tempfile.mkdtemp(prefix="orc-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0700", "tmpfs", str(home)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        os.rmdir(home)
        pytest.fail(f"cannot mount a {SIZE} tmpfs at {home} (euid {os.geteuid()}): {mounted.stderr.strip()}; "
                    "this test needs root (or CAP_SYS_ADMIN) to make a real full disk")
    try:
        yield home
    finally:
        if subprocess.run(["umount", str(home)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(home)], capture_output=True)
        os.rmdir(home)


def fill(directory: Path) -> Path:
    """Write a file until the file system has not one byte left."""
    path = directory / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4096, 512, 1):
            block = bytes(size)
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return path


def submit_until_refused(d: RDaemon, acked: dict[str, int], prefix: str, limit: int = 500) -> p.OrchestraError:
    """Submit until the daemon says no (a page's slack may take a few more records)."""
    with d.connect() as conn:
        for i in range(limit):
            title = f"{prefix}-{i}"
            try:
                view = conn.call(p.Submit(argv=["true"], cwd="/", title=title, env=d.task_env()), p.TaskView)
            except p.OrchestraError as exc:
                return exc
            acked[title] = view.id
    raise AssertionError(f"{limit} submits were all accepted on a full disk")


def check_acked(d: RDaemon, acked: dict[str, int]) -> None:
    listed = {t.title: t.id for t in tasks(d)}
    missing = {title: task for title, task in acked.items() if listed.get(title) != task}
    assert not missing, f"acknowledged submits missing: {missing}"


def test_a_full_disk_refuses_new_work_clearly_keeps_answering_and_keeps_what_it_acknowledged(small_disk, tmp_path):
    flag = tmp_path / "go"
    d = RDaemon(home=small_disk)
    try:
        d.start()
        acked: dict[str, int] = {}
        for i in range(5):
            title = f"before-{i}"
            acked[title] = d.submit("sh", "-c", f"echo output {i}", title=title)
        settle(d, list(acked.values()))
        # Nothing starts or ends while the disk is full (that is the next test's subject):
        # one task holds the only slot until space is back.
        d.call(p.ConfigSet(key="max_concurrent", value=1))
        acked["gate"] = d.submit("sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.05; done", title="gate")
        d.wait_status(acked["gate"], Status.RUNNING)
        filler = fill(small_disk)

        refusal = submit_until_refused(d, acked, "full")
        assert refusal.code is p.ErrorCode.UNAVAILABLE, refusal
        assert "disk" in refusal.message.lower(), refusal.message
        print(f"refused after {len(acked) - 6} more submits: {refusal.message}")

        # still up, still answering reads
        assert d.proc.poll() is None
        assert d.call(p.Info(), p.DaemonStatus).pid == d.pid
        check_acked(d, acked)
        assert d.output_of(acked["before-3"]) == b"output 3\n"
        with d.connect() as conn:  # and refusing, again and again, without falling over
            for i in range(20):
                with pytest.raises(p.OrchestraError) as again:
                    conn.call(p.Submit(argv=["true", "x" * 8192], cwd="/", title=f"refused-{i}"))
                assert again.value.code is p.ErrorCode.UNAVAILABLE

        filler.unlink()
        flag.touch()
        after = d.submit("sh", "-c", "echo space is back", title="after")
        acked["after"] = after
        views = settle(d, list(acked.values()), timeout=30)
        assert all(v.status is Status.SUCCEEDED for v in views.values()), {
            i: (v.status.value, v.reason) for i, v in views.items() if v.status is not Status.SUCCEEDED}
        assert d.output_of(after) == b"space is back\n"

        assert d.stop() == 0
        assert d.orchestrad("--verify").returncode == 0
        d.start()
        check_acked(d, acked)
        assert [(t.id, t.status) for t in tasks(d)] == [(v.id, v.status) for v in views.values()]
    finally:
        d.cleanup()


def test_a_task_that_ends_while_the_disk_is_full_still_ends_and_frees_its_slot_once_space_returns(small_disk, tmp_path):
    """While the disk is full the daemon cannot record that a process exited. Once space
    returns, that task must still end (it must not stay `running` with no process behind
    it), and the slot it held must run queued work again, without a restart."""
    flag = tmp_path / "go"
    d = RDaemon(home=small_disk)
    try:
        d.start()
        d.call(p.ConfigSet(key="max_concurrent", value=1))
        task = d.submit("sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.05; done; echo done", title="ends-while-full")
        pid = d.wait_status(task, Status.RUNNING).pid
        filler = fill(small_disk)
        submit_until_refused(d, {}, "full")
        flag.touch()
        wait_for(lambda: not alive(pid), 10, "the task's process to exit")
        assert d.proc.poll() is None and d.call(p.Info(), p.DaemonStatus).pid == d.pid

        filler.unlink()
        queued = d.submit("sh", "-c", "echo next", title="next")
        view = d.wait_status(task, *p.FINISHED, timeout=15)
        assert view.status is not Status.INTERRUPTED or "disk" in view.reason, view
        assert d.wait_status(queued, *p.FINISHED, timeout=15).status is Status.SUCCEEDED
    finally:
        d.cleanup()
