"""Nothing an agent starts outlives its task (#14 item 4).

The attack suite's agents started grandchildren that escaped the mark and the process
group: `setsid env -i ...`, `env -u ORCHESTRA_AGENT ...`, a rewritten mark. Four of six
were still running after their task ended and after a kill -9 restart. Here every variant
is started by a real agent, and must be gone when its task ends, and when the daemon is
killed and restarted while the task runs: with a cgroup per attempt (this machine has
cgroup v2 and the tests run as root), and without (ORCHESTRA_NO_CGROUPS: the subreaper
alone, which cannot see past a kill -9 for a process whose mark was scrubbed).
"""

from __future__ import annotations

import os
import uuid

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import containment, orphans
from tests.daemon import wait_for
from tests.reliability.harness import RDaemon

# Each escapes in its own way, and then sleeps for a number of seconds no other process on
# the machine sleeps for, so it can be found by its command line alone.
VARIANTS = {
    "setsid": "setsid sleep {n} &",
    "setsid env -i": "setsid env -i sleep {n} &",
    "env -u the mark": "env -u ORCHESTRA_AGENT setsid sleep {n} &",
    "a rewritten mark": "ORCHESTRA_AGENT=someone-else:1:1 setsid sleep {n} &",
    "double fork, scrubbed": "setsid sh -c 'env -i sleep {n} & exit 0' &",
    "daemonised, no fds": "setsid -f env -i sh -c 'exec sleep {n}' </dev/null >/dev/null 2>&1",
}


def sleepers(token: int) -> dict[int, str]:
    """pid -> command line of live processes sleeping for a number of seconds starting
    with `token`."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and len(argv) >= 2 and argv[0].endswith(b"sleep") and argv[1].startswith(str(token).encode()):
            found[int(entry)] = argv[1].decode()
    return found


def escapes(token: int, hold: str = "") -> str:
    """A shell script that starts every variant (variant i sleeps for `token`i seconds),
    then runs `hold` (or ends at once)."""
    lines = [v.format(n=f"{token}{i}") for i, v in enumerate(VARIANTS.values())]
    return "\n".join([*lines, "sleep 0.3", hold or "exit 0"])


@pytest.fixture
def token():
    t = 40000 + uuid.uuid4().int % 9000  # a five-digit prefix; variants append their index
    yield t
    for pid in sleepers(t):  # whatever the outcome, leave nothing running
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def started(token: int) -> dict[int, str]:
    return wait_for(lambda: len(found := sleepers(token)) == len(VARIANTS) and found, 10, "every variant to start")


def survivors(token: int) -> list[str]:
    names = list(VARIANTS)
    return sorted(names[int(arg[len(str(token)):])] for arg in sleepers(token).values())


@pytest.mark.parametrize("cgroups", [True, False], ids=["cgroups", "subreaper only"])
def test_nothing_an_agent_started_outlives_its_task(token, cgroups):
    d = RDaemon()
    if not cgroups:
        d.env["ORCHESTRA_NO_CGROUPS"] = "1"
    try:
        d.start()
        task = d.submit("sh", "-c", escapes(token))
        started(token)
        assert d.wait_status(task, *p.FINISHED).status is Status.SUCCEEDED
        wait_for(lambda: not sleepers(token), 10, f"the escaped processes to die: {survivors(token)} live on")
    finally:
        d.cleanup()


def test_a_detached_process_of_no_known_task_waits_for_every_task_that_may_own_it(token):
    """Without cgroups, a process whose mark was scrubbed cannot name its task once its
    parent is gone. It is not killed while a task that may have started it still runs."""
    d = RDaemon()
    d.env["ORCHESTRA_NO_CGROUPS"] = "1"
    try:
        d.start()
        d.call(p.ConfigSet(key="max_concurrent", value=3))
        other = d.submit("sleep", "60")
        d.wait_status(other, Status.RUNNING)
        task = d.submit("sh", "-c", f"setsid env -i sleep {token}0 &\nsleep 0.3")
        d.wait_status(task, Status.SUCCEEDED)
        d.wait_status(d.submit("true"), Status.SUCCEEDED)  # a sweep runs after every exit
        assert sleepers(token), "killed while the task that may have started it still ran"
        d.call(p.Stop(task=other))
        wait_for(lambda: not sleepers(token), 10, "the detached process to die once no owner is left")
    finally:
        d.cleanup()


def test_nothing_an_agent_started_outlives_a_kill_9_restart(token):
    d = RDaemon()
    try:
        d.start()
        task = d.submit("sh", "-c", escapes(token, hold="sleep 60"))
        started(token)
        d.kill9()
        assert len(sleepers(token)) == len(VARIANTS), "they outlived the daemon: the restart must find them"
        d.start()
        assert d.task(task).status is Status.INTERRUPTED
        wait_for(lambda: not sleepers(token), 10, f"the restart to kill what was left: {survivors(token)} live on")
        base = containment._own_cgroup()
        if base is not None:  # the previous daemon's cgroups are gone too
            prefix = f"orchestra-{orphans.home_mark(str(d.paths.log_dir))}-"
            wait_for(lambda: not [c for c in os.listdir(base) if c.startswith(prefix)], 10, "its cgroups to go")
    finally:
        d.cleanup()


def test_a_stopped_task_takes_what_it_started_with_it(token):
    d = RDaemon()
    try:
        d.start()
        task = d.submit("sh", "-c", escapes(token, hold="sleep 60"))
        started(token)
        d.call(p.Stop(task=task))
        assert d.wait_status(task, *p.FINISHED).status is Status.CANCELLED
        wait_for(lambda: not sleepers(token), 10, f"the escaped processes to die: {survivors(token)} live on")
    finally:
        d.cleanup()
