"""Finding and killing processes by the mark in their environment."""

from __future__ import annotations

import os
import subprocess
import sys

from orchestrad import orphans
from tests.daemon import wait_for

def marked_sleeper(mark: str) -> subprocess.Popen:
    env = {**os.environ, orphans.VARIABLE: mark}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env, start_new_session=True)


def test_one_pass_kills_exactly_the_marks_asked_for():
    home = f"t{os.getpid()}"
    first, tenth, other = (marked_sleeper(orphans.mark(home, task, n)) for task, n in ((1, 1), (1, 10), (2, 1)))
    try:
        wait_for(lambda: len(orphans.find(f"{home}:")) == 3, what="three marked processes")
        found = orphans.kill_marked({orphans.mark(home, 1, 1), orphans.mark(home, 9, 9)})
        assert found == {orphans.mark(home, 1, 1): [first.pid]}  # attempt 1 is not attempt 10
        assert first.wait(10) == -9
        assert tenth.poll() is None and other.poll() is None
        assert sorted(orphans.kill(f"{home}:1:")) == [tenth.pid]
        assert tenth.wait(10) == -9 and other.poll() is None
    finally:
        for proc in (first, tenth, other):
            proc.kill()
            proc.wait()


def test_the_scan_skips_this_process():
    os.environ[orphans.VARIABLE] = "self:0:0"
    try:
        assert os.getpid() not in orphans.marked()
    finally:
        del os.environ[orphans.VARIABLE]
