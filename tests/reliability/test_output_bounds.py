"""Output is bounded, whatever agents write and whatever the disk can take (#14 item 8).

The attack suite ran a task writing 200 MB onto a 20 MB disk: the daemon held 213 MB of
it in memory until space came back (10 GB would have been 10 GB). Now, while the log
cannot take output, the daemon stops reading agents' pipes and they block on write; and
every task has an output quota (`max_output_bytes`, 1 GiB by default).
"""

from __future__ import annotations

import time

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import wait_for
from tests.reliability.harness import RDaemon, vm_rss_kb
from tests.reliability.test_disk_full import fill, small_disk  # noqa: F401 - a fixture

WRITE_MB = 200


def test_a_full_disk_stops_reading_agents_instead_of_buffering_their_output(small_disk, tmp_path):  # noqa: F811
    flag = tmp_path / "go"
    d = RDaemon(home=small_disk)
    try:
        d.start()
        task = d.submit("sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.05; done; head -c {WRITE_MB}000000 /dev/zero; echo")
        d.wait_status(task, Status.RUNNING)
        before = vm_rss_kb(d.pid)
        filler = fill(small_disk)
        flag.touch()
        # Long enough for the agent to have written everything, had the daemon read it all.
        deadline = time.monotonic() + 8
        peak = 0
        while time.monotonic() < deadline:
            peak = max(peak, vm_rss_kb(d.pid))
            time.sleep(0.1)
        print(f"daemon RSS {before} kB before, peak {peak} kB while the disk was full")
        assert peak - before < 40_000, f"the daemon buffered output it could not write: {peak - before} kB more"
        assert d.task(task).status is Status.RUNNING, "the agent is held, not failed"
        filler.unlink()
        d.call(p.Stop(task=task))
        view = d.wait_status(task, *p.FINISHED, timeout=30)
        assert view.status is Status.CANCELLED, view.reason
    finally:
        d.cleanup()


def test_a_task_past_its_output_quota_is_stopped_with_a_reason_that_says_so():
    d = RDaemon()
    try:
        d.start()
        d.call(p.ConfigSet(key="max_output_bytes", value=2 << 20))
        task = d.submit("sh", "-c", "head -c 50000000 /dev/zero; sleep 30")
        view = d.wait_status(task, *p.FINISHED, timeout=30)
        assert view.status is Status.FAILED
        assert "output limit of 2 MiB" in view.reason and "max_output_bytes" in view.reason, view.reason
        assert 2 << 20 <= view.output_bytes < 4 << 20, view.output_bytes
        assert len(d.output_of(task)) == view.output_bytes
        wait_for(lambda: d.call(p.ConfigGet(key="max_output_bytes")) == {"max_output_bytes": 2 << 20}, 2, "config")
        small = d.submit("sh", "-c", "echo fine")
        assert d.wait_status(small, Status.SUCCEEDED).output_bytes == 5
    finally:
        d.cleanup()
