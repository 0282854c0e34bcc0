"""Reading a task's CPU use (orchestrad.cpu) on real processes: a busy one and a sleeping one,
through the process tree and, where this machine gives the daemon cgroups, through a cgroup."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from orchestrad import containment, cpu
from tests.daemon import wait_for

PY = sys.executable
BUSY = "while True: pass"
SPEND = "import time\nt = time.process_time()\nwhile time.process_time() - t < {}: pass"  # exactly that much CPU


def spawn(script: str, *then: str, cgroups: containment.Cgroups | None = None, name: str = "") -> subprocess.Popen:
    """`sh -c "python -c SCRIPT; THEN"`: the work is done by a grandchild of the caller, as
    an agent's tools are."""
    argv = ["sh", "-c", f'"$0" -c "$1"; {" ".join(then) or "true"}', PY, script]
    start = lambda: subprocess.Popen(argv, stdin=subprocess.DEVNULL)  # noqa: E731
    return cgroups.spawn_in(name, start) if cgroups is not None else start()


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        for pid in [*children(proc.pid), proc.pid]:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        proc.wait()


def children(pid: int) -> list[int]:
    return [child for child, st in containment.processes().items() if st.ppid == pid]


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def test_the_tree_counts_a_grandchild_s_cpu(procs):
    proc = spawn(SPEND.format(0.3) + "\nimport time; time.sleep(30)")
    procs.append(proc)
    wait_for(lambda: (cpu.tree_seconds(proc.pid, containment.processes()) or 0) >= 0.3, what="the grandchild's CPU in the tree")
    assert containment.processes()[proc.pid].ticks / cpu._TICK < 0.1  # counted from the grandchild, not the shell
    assert cpu.tree_seconds(999_999_999, containment.processes()) is None  # no such process


def test_a_child_reaped_inside_the_tree_keeps_its_cpu_in_the_total(procs):
    proc = spawn(SPEND.format(0.3), "sleep", "30")  # python spends, exits, sh reaps it and sleeps
    procs.append(proc)
    wait_for(lambda: [comm(c) for c in children(proc.pid)] == ["sleep"], what="the python child to be gone")
    assert cpu.tree_seconds(proc.pid, containment.processes()) >= 0.3  # in sh's cutime now


def readers():
    found = ["tree"]
    if containment.Cgroups.probe(f"test-cpu-{os.getpid()}") is not None:
        found.append("cgroup")
    return found


@pytest.mark.parametrize("reader", readers())
def test_a_busy_task_is_seen_using_cpu_and_a_sleeping_one_is_not(procs, reader):
    groups = containment.Cgroups.probe(f"tcpu{os.getpid()}") if reader == "cgroup" else None
    busy = spawn(BUSY, cgroups=groups, name="busy")
    sleeper = spawn("import time; time.sleep(30)", cgroups=groups, name="sleeper")
    procs += [busy, sleeper]
    targets = {
        1: cpu.Target(1, busy.pid, groups.path("busy") if groups else None, time.time()),
        2: cpu.Target(1, sleeper.pid, groups.path("sleeper") if groups else None, time.time()),
    }
    meter = cpu.Meter()
    try:
        moved: list[set[int]] = []
        at = []

        def read() -> bool:
            at.append(time.time())
            moved.append(meter.sample(targets, at[-1]))
            return 1 in moved[-1] and len(moved) >= 3

        wait_for(read, what="the busy task to use CPU")
        assert all(2 not in m for m in moved[1:]), moved  # the sleeping python's start-up may count once, never after
        assert meter.busy()[1] == at[-1] and meter.reading(1).at == at[-1]
        assert meter.reading(1).seconds > cpu.NOISE
        assert meter.reading(2).seconds < 0.5
        meter.forget([1])
        assert meter.reading(1) is None and 1 not in meter.busy()
    finally:
        if groups is not None:
            for name in ("busy", "sleeper"):
                groups.kill(name)
            busy.wait(), sleeper.wait()
            wait_for(lambda: groups.remove("busy") and groups.remove("sleeper"), what="the cgroups to go")


def test_a_new_attempt_starts_from_nothing(procs):
    proc = spawn(SPEND.format(0.2) + "\nimport time; time.sleep(30)")
    procs.append(proc)
    meter = cpu.Meter()
    since = time.time()

    def target(attempt: int) -> dict[int, cpu.Target]:
        return {1: cpu.Target(attempt, proc.pid, None, since)}

    wait_for(lambda: (cpu.tree_seconds(proc.pid, containment.processes()) or 0) >= 0.2, what="it to spend its CPU")
    assert meter.sample(target(1), time.time()) == {1}  # its first reading: all it used since it started
    first = meter.reading(1)
    later = time.time() + cpu.MIN_WINDOW
    assert meter.sample(target(1), later) == set()  # the same attempt: only growth counts, and it sleeps now
    assert meter.reading(1).at == first.at
    assert meter.sample(target(2), later) == {1}  # another attempt: what it used counts from nothing again
    assert meter.reading(1).at == later


def test_a_busy_task_is_announced_at_most_every_so_often():
    meter = cpu.Meter()
    meter._entries[1] = entry = cpu._Entry(1, 0.0)
    entry.at = 100.0
    assert meter.to_tell({1}, 30) == {1}
    entry.at = 110.0
    assert meter.to_tell({1}, 30) == set()
    entry.at = 131.0
    assert meter.to_tell({1}, 30) == {1}


def test_the_sampler_reads_only_while_tasks_run_and_reports_the_busy_ones(procs):
    import asyncio

    busy = spawn(BUSY)
    procs.append(busy)
    running = {1: cpu.Target(1, busy.pid, None, time.time())}
    heard: list[tuple[set[int], set[int]]] = []

    async def main() -> None:
        sampler = cpu.Sampler(lambda tasks: {t: v for t, v in running.items() if tasks is None or t in tasks}, time.time,
                              lambda moved, told: heard.append((moved, told)))
        sampler.arm(1.0)  # silent_after 1 s: a reading every 0.25 s
        assert sampler._timer is not None
        while not heard:
            await asyncio.sleep(0.05)
        assert heard[0] == ({1}, {1}) and sampler.busy() == {1: sampler.meter.reading(1).at}
        running.clear()  # the task stops: the next reading is the last, and no timer is left
        while sampler._timer is not None:
            await asyncio.sleep(0.05)
        sampler.arm(1.0)
        assert sampler._timer is None  # nothing runs: nothing is read

    asyncio.run(asyncio.wait_for(main(), 20))
