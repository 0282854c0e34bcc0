"""kill -9 at random moments under concurrent submitters and running agents (short
version; `bench/reliability.py` runs 50 rounds with a Claude task in the mix)."""

from __future__ import annotations

import os
import subprocess
from collections import Counter

import pytest

from orchestra.shared import protocol as p
from tests.daemon import wait_for
from tests.reliability import crashloop
from tests.reliability.harness import RDaemon, kill_marked, strays, tasks

SEED = int(os.environ.get("RELIABILITY_SEED", "20260125"))


def test_kill9_at_random_moments_loses_no_acknowledged_submit_and_reruns_nothing():
    d = RDaemon()
    try:
        fig = crashloop.run(d, rounds=5, seed=SEED, report=print)
        print(f"seed {SEED}")
        print("\n".join(fig.lines()))
        assert fig.problems == [], "\n".join(fig.problems)
        assert fig.rounds == 5
        # the rounds meant something: work was acknowledged, and some of it was cut down mid-run
        assert fig.submits_acked >= 10 and fig.running_at_kill >= 1 and fig.interrupted >= 1
    finally:
        d.cleanup()


def test_a_restart_does_not_kill_an_unrelated_process_that_now_has_a_dead_agents_pid():
    """At start-up the daemon SIGKILLs the process group of every task its log shows as
    running: the orphans of the daemon that died. But after a reboot, or a while after the
    crash, that number may belong to another process of the same user (the editor, the
    shell, a build), which must not be killed. Simulated for real: the orphan is gone, and
    the kernel is asked to hand its pid to an unrelated process (/proc/sys/kernel/ns_last_pid)."""
    d = RDaemon()
    victim = None
    try:
        d.start()
        task = d.submit("sleep", "300")
        pid = d.wait_status(task, p.Status.RUNNING).pid
        d.kill9()
        kill_marked(d.marker)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the orphan to be gone and reaped")
        victim = _process_with_pid(pid)
        assert victim.pid == pid
        d.start()
        d.wait_status(task, p.Status.INTERRUPTED)
        with pytest.raises(subprocess.TimeoutExpired):  # it must still be running
            victim.wait(0.5)
            pytest.fail(f"starting the daemon killed process {pid} (`sleep 600`, not an agent: it merely has "
                        f"the pid that task {task}'s agent had): {victim.returncode}")
    finally:
        if victim is not None and victim.poll() is None:
            victim.kill()
        if victim is not None:
            victim.wait()
        d.cleanup()


def _process_with_pid(pid: int) -> subprocess.Popen:
    """An unrelated process (its own session, as any terminal's job is) with this pid."""
    try:
        for _ in range(50):
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(pid - 1))
            proc = subprocess.Popen(["sleep", "600"], start_new_session=True)
            if proc.pid == pid:
                return proc
            proc.kill()
            proc.wait()
    except OSError as exc:
        pytest.fail(f"cannot choose the next pid through /proc/sys/kernel/ns_last_pid ({exc}); this test needs root")
    pytest.fail(f"could not get pid {pid} for the stand-in process in 50 tries")


def test_a_kill_while_agents_are_being_started_leaves_no_orphan_and_runs_nothing_twice():
    """Forty queued tasks are released at once (max_concurrent raised) and the daemon is
    killed the moment that change is acknowledged: processes have been started whose
    ProcessSpawned is not in the log yet. After the restart no task's program may have run
    twice, and no agent process may be left that the restarted daemon does not know of
    (it cannot kill, stop or time out what it does not know)."""
    d = RDaemon()
    runs = d.home / "runs.txt"
    try:
        d.start()
        d.call(p.ConfigSet(key="max_concurrent", value=1))
        gate = d.submit("sleep", "300")
        d.wait_status(gate, p.Status.RUNNING)
        with d.connect() as conn:
            ids = [conn.call(p.Submit(argv=["sh", "-c", f"echo t{i} >> {runs}; exec sleep 300"], cwd=str(d.home),
                                      env=d.task_env()), p.TaskView).id for i in range(40)]
            conn.call(p.ConfigSet(key="max_concurrent", value=50))
        d.kill9()
        d.start()
        wait_for(lambda: all(t.status is not p.Status.QUEUED for t in tasks(d) if t.id in ids), 20,
                 "the restarted daemon to start what it believes never ran")
        active: set[int] = set()
        orphans: list = []

        def settled() -> bool:
            active.clear()
            active.update(t.pid for t in tasks(d) if t.status.active and t.pid)
            orphans[:] = strays(d.marker, active)
            return not orphans

        try:
            wait_for(settled, 5, "processes unknown to the daemon to be gone")
        except AssertionError:
            pass
        ran = runs.read_text().split() if runs.exists() else []  # nothing may have run yet
        twice = sorted(title for title, n in Counter(ran).items() if n > 1)
        assert not twice and not orphans, (
            f"{len(twice)} of 40 tasks ran twice ({twice[:5]}...), and {len(orphans)} of their processes were "
            f"left running unknown to the restarted daemon: the kill came after they were started and before "
            f"their ProcessSpawned was written")
    finally:
        d.cleanup()
