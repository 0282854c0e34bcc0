"""Keeping everything an agent starts within the daemon's reach, and knowing who asks.

Three mechanisms, strongest first (Linux; elsewhere only the mark of `orchestrad.orphans`
and the supervisor's process groups remain):

* **A cgroup per attempt.** Where the daemon may create cgroups below its own (cgroup v2:
  root, or a systemd user service with `Delegate=yes`), each attempt is born in
  `<daemon's cgroup>/orchestra-<home>-<task>-<attempt>`: the daemon moves itself into the
  new cgroup for the instant of the fork and back, so there is no window in which a child
  could fork outside it. No setsid, double fork or scrubbed environment leaves a cgroup;
  ending the task kills the whole cgroup (`cgroup.kill`), and a daemon restarted after
  kill -9 finds the cgroups its predecessor left by their names and kills them too.
* **The daemon as child subreaper** (`PR_SET_CHILD_SUBREAPER`). A process whose parent
  dies is re-parented to its nearest subreaper ancestor instead of init, so whatever an
  agent starts stays a descendant of the daemon, however it detaches. The daemon reaps those
  adopted processes when they exit, and (without cgroups) kills the ones it cannot place
  once no task that may have started them is still running.
* **Ancestry.** A process is an agent's when one of its ancestors is a task's process, when
  it sits in a task's cgroup, or when it descends from the daemon at all (the daemon starts
  nothing but agents and git): `identify` answers "is this peer the user or an agent?"
  for the socket server.

Everything here reads /proc and /sys/fs/cgroup; nothing keeps state but `Cgroups`' paths.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from orchestrad.decide import Actor

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36

OWN: set[int] = set()
"""Pids of the daemon's own helper processes (git) that their caller waits for: never
reaped or killed as adopted strays."""


def become_subreaper() -> bool:
    """Make this process the child subreaper of its descendants. False where the platform
    has no such thing (then orphans go to init, and only the mark finds them)."""
    if not os.path.exists("/proc/self/stat"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Stat(NamedTuple):
    ppid: int
    state: str
    ticks: int  # CPU clock ticks used: its own and its reaped children's
    start: int = 0  # when it started, in clock ticks after boot: with the pid, a process's identity


def stat(pid: int) -> Stat | None:
    """The parent, state and CPU use of `pid` from /proc, or None if it is gone (or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # the name may hold spaces and parentheses
    try:  # fields[0] is the state (field 3 of proc(5)), then the parent; utime is field 14, cstime 17
        return Stat(int(fields[1]), fields[0].decode(), sum(int(x) for x in fields[11:15]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def ancestors(pid: int, limit: int = 256) -> list[int]:
    """`pid` and its ancestors, nearest first, up to (not including) pid 1 or 0."""
    chain = []
    while pid > 1 and len(chain) < limit:
        chain.append(pid)
        st = stat(pid)
        if st is None:
            break
        pid = st.ppid
    return chain


def processes() -> dict[int, Stat]:
    """Every live process's parent, state and CPU use, in one pass over /proc."""
    found: dict[int, Stat] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if entry.isdigit():
            st = stat(int(entry))
            if st is not None:
                found[int(entry)] = st
    return found


def adopted_zombies(me: int, table: dict[int, Stat]) -> list[int]:
    """Zombies whose parent is `me`: candidates to reap (the caller leaves out its own)."""
    return [pid for pid, st in table.items() if st.ppid == me and st.state == "Z"]


def reap(pids: list[int]) -> list[int]:
    """Reap the given zombie children (never blocks). Returns those reaped."""
    done = []
    for pid in pids:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                done.append(pid)
        except ChildProcessError:
            pass
    return done


def strays(me: int, table: dict[int, Stat], keep: set[int]) -> list[int]:
    """Live processes adopted by `me` (their parent is the daemon) that are none of `keep`
    (the task processes and the daemon's own helpers): what agents left behind, detached."""
    return [pid for pid, st in table.items() if st.ppid == me and st.state != "Z" and pid not in keep]


def kill_tree(root: int, table: dict[int, Stat]) -> list[int]:
    """SIGKILL `root` and all its descendants in `table`. Returns the pids signalled."""
    children: dict[int, list[int]] = {}
    for pid, st in table.items():
        children.setdefault(st.ppid, []).append(pid)
    todo, hit = [root], []
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            os.kill(pid, signal.SIGKILL)
            hit.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return hit


# ---------------------------------------------------------------------------------------
# cgroups


def _own_cgroup() -> Path | None:
    """The cgroup v2 directory this process is in, if cgroup v2 is mounted."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
        with open("/proc/self/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    mount = None
    for line in mounts:
        left, _, right = line.partition(" - ")
        if right.split(" ", 1)[0] == "cgroup2":
            mount = left.split()[4]
            break
    if relative is None or mount is None:
        return None
    path = Path(mount) / relative.lstrip("/")
    return path if path.is_dir() else None


class Cgroups:
    """A cgroup per task attempt, below the daemon's own cgroup."""

    def __init__(self, base: Path, prefix: str) -> None:
        self.base = base
        self.prefix = prefix

    @classmethod
    def probe(cls, home_mark: str) -> "Cgroups | None":
        """Cgroups for this daemon if it may make them and move itself in and out of them;
        None otherwise (nothing is left behind by trying)."""
        if os.environ.get("ORCHESTRA_NO_CGROUPS"):
            return None
        base = _own_cgroup()
        if base is None:
            return None
        groups = cls(base, f"orchestra-{home_mark}-")
        name = f"probe-{os.getpid()}"
        try:
            groups.spawn_in(name, lambda: None)
        except OSError as exc:
            log.info("no cgroup per task (%s): processes are followed through the subreaper and the mark", exc)
            return None
        finally:
            groups.remove(name)
        return groups

    def path(self, name: str) -> Path:
        return self.base / f"{self.prefix}{name}"

    def spawn_in(self, name: str, start):
        """Make the cgroup `name`, and call `start()` (which forks) from inside it, so its
        child is born there. The daemon is back in its own cgroup when this returns."""
        path = self.path(name)
        try:
            path.mkdir()
        except FileExistsError:
            pass
        me = str(os.getpid()).encode()
        _write(path / "cgroup.procs", me)
        try:
            return start()
        finally:
            _write(self.base / "cgroup.procs", me)

    def pids(self, name: str) -> list[int]:
        try:
            with open(self.path(name) / "cgroup.procs") as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def signal(self, name: str, sig: int) -> int:
        """Send `sig` to every process in the cgroup; how many there were."""
        pids = self.pids(name)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        return len(pids)

    def kill(self, name: str) -> int:
        """SIGKILL everything in the cgroup (cgroup.kill where the kernel has it: no process
        can fork its way out meanwhile). How many processes were in it."""
        count = len(self.pids(name))
        if count:
            try:
                _write(self.path(name) / "cgroup.kill", b"1")
            except OSError:  # before Linux 5.14
                self.signal(name, signal.SIGKILL)
        return count

    def remove(self, name: str) -> bool:
        """Remove the cgroup; False while processes are still in it."""
        try:
            self.path(name).rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                return False
            raise
        return True

    def leftovers(self) -> list[str]:
        """The names of this home's cgroups that exist now."""
        try:
            entries = os.listdir(self.base)
        except OSError:
            return []
        return [e[len(self.prefix) :] for e in entries if e.startswith(self.prefix)]

    def name_of(self, pid: int) -> str | None:
        """The name of the task cgroup `pid` is in, if it is one of this home's."""
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        relative = next((line[3:] for line in lines if line.startswith("0::")), "")
        leaf = relative.rsplit("/", 1)[-1]
        return leaf[len(self.prefix) :] if leaf.startswith(self.prefix) else None


# ---------------------------------------------------------------------------------------
# Who asks


def identify(pid: int | None, task_pids: dict[int, int], cgroups: "Cgroups | None", home_mark: str) -> "Actor | None":
    """None if the peer `pid` is the user; an `Actor` if it is an agent's process or
    anything one started: it is in a task's cgroup, or descends from a task's process
    (`task_pids`: pid -> task) or from the daemon itself (which starts nothing but agents
    and git), or carries an agent's mark in its environment (a previous daemon's agent, or
    another home's)."""
    from orchestrad import orphans
    from orchestrad.decide import Actor

    if pid is None or pid <= 0:
        return None
    if os.path.isdir("/proc/self") and not os.path.exists(f"/proc/{pid}"):
        return Actor(task=None)  # gone before it could be told apart: never taken for the user
    if cgroups is not None:
        name = cgroups.name_of(pid)
        if name is not None:
            return Actor(task=task_of_cgroup(name))
    me = os.getpid()
    for ancestor in ancestors(pid):
        if ancestor in task_pids:
            return Actor(task=task_pids[ancestor])
        if ancestor == me:
            return Actor(task=None)  # adopted: its task is over, or cannot be told
    mark = orphans.mark_of(pid)
    if mark is not None:
        home, _, rest = mark.partition(":")
        task = rest.split(":")[0]
        return Actor(task=int(task) if home == home_mark and task.isdigit() else None)
    return None


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def cgroup_name(task: int, attempt: int) -> str:
    return f"{task}-{attempt}"


def task_of_cgroup(name: str) -> int | None:
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None
