"""Honest liveness with a real daemon and real processes: a silent task that uses no CPU is
stopped by its idle timeout, with a reason that says so; one that prints nothing but works
is not; `ps` and `show` tell working from silent."""

from __future__ import annotations

import re
import sys

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import Daemon, wait_for

PY = sys.executable
BUSY_FOR = "import time\nt = time.time()\nwhile time.time() - t < {}: pass"  # silent, and busy


@pytest.fixture(params=["cgroups", "process tree"])
def each_reader(request):
    """A daemon that reads CPU use from a cgroup per task (where this machine allows it),
    and one that must sum it over the task's process tree."""
    d = Daemon()
    if request.param == "process tree":
        d.env["ORCHESTRA_NO_CGROUPS"] = "1"
    d.start()
    yield d
    d.cleanup()


def test_a_silent_task_that_uses_no_cpu_is_stopped_and_the_reason_says_so(each_reader):
    task = each_reader.submit("sh", "-c", "sleep 30", idle_timeout=2)
    view = each_reader.wait_status(task, Status.TIMED_OUT)
    assert view.reason == "no output and no CPU use for 2 s (idle timeout)"


def test_a_silent_task_that_works_is_not_stopped(each_reader):
    task = each_reader.submit(PY, "-c", BUSY_FOR.format(4), idle_timeout=2)
    view = each_reader.wait_status(task, Status.SUCCEEDED, Status.TIMED_OUT, timeout=30)
    assert view.status is Status.SUCCEEDED, view.reason
    assert view.output_bytes == 0  # it said nothing all along


def test_the_cpu_of_a_grandchild_counts(each_reader):
    """The work is done two processes down, as an agent's tools do it."""
    task = each_reader.submit("sh", "-c", '"$0" -c "$1"; true', PY, BUSY_FOR.format(4), idle_timeout=2)
    view = each_reader.wait_status(task, Status.SUCCEEDED, Status.TIMED_OUT, timeout=30)
    assert view.status is Status.SUCCEEDED, view.reason


def ps_row(daemon: Daemon, task: int) -> str:
    """The task's row in `orchestra ps`, as a person runs it (the quick path)."""
    result = daemon.run_cli("ps")
    assert result.returncode == 0, result.stderr
    return next((line for line in result.stdout.splitlines() if line.split()[:1] == [str(task)]), "")


def test_ps_and_show_tell_a_silent_sleeper_from_a_silent_worker(daemon):
    daemon.call(p.ConfigSet(key="silent_after", value=2.0))
    sleeper = daemon.submit("sh", "-c", "sleep 60", title="sleeper")
    worker = daemon.submit(PY, "-c", BUSY_FOR.format(60), title="worker")
    silent = wait_for(lambda: re.search(r"^\d+ +silent (\d+)s +", ps_row(daemon, sleeper)), timeout=20, what="ps to call the sleeper silent")
    assert int(silent.group(1)) >= 2
    # the worker has written nothing either, all this time: only its CPU use tells it apart
    worker_row = wait_for(lambda: (row := ps_row(daemon, worker)) and daemon.task(worker).runtime > 4 and row, timeout=20, what="the worker to run a while")
    assert worker_row.split()[1] == "working", worker_row
    shown = daemon.run_cli("show", str(worker)).stdout
    assert "  now        working\n" in shown and re.search(r"  cpu        \d+\.\d s, last used \d+s ago\n", shown), shown
    assert "  now        silent " in daemon.run_cli("show", str(sleeper)).stdout
    view = daemon.task(worker)
    assert view.output_bytes == 0 and view.cpu_seconds > 1 and view.cpu_at > view.last_activity
