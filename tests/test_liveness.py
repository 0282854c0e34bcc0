"""Honest liveness with a real daemon and real processes: a silent task that uses no CPU is
stopped by its idle timeout, with a reason that says so; one that prints nothing but works
is not; `ps` and `show` tell working from silent."""

from __future__ import annotations

import sys

import pytest

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
    task = each_reader.submit("sh", "-c", f'"$0" -c "$1"; true', PY, BUSY_FOR.format(4), idle_timeout=2)
    view = each_reader.wait_status(task, Status.SUCCEEDED, Status.TIMED_OUT, timeout=30)
    assert view.status is Status.SUCCEEDED, view.reason
