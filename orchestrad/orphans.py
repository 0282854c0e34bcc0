"""Finding agent processes by the mark the daemon puts in their environment.

Every agent process is started with `ORCHESTRA_AGENT=<home>:<task>:<attempt>` in its
environment, and everything it starts inherits it — even a grandchild that left the
process group with setsid. So after a task ends the daemon can find and kill what it left
behind, and after a crash it can find the previous daemon's agents without trusting a pid
from the log that may since belong to someone else. Linux (/proc); elsewhere nothing is
found and the process-group kill of the supervisor is all there is.
"""

from __future__ import annotations

import hashlib
import os
import signal

VARIABLE = "ORCHESTRA_AGENT"


def home_mark(state_dir: str) -> str:
    """A short token naming one daemon home, so instances never touch each other's agents."""
    return hashlib.sha1(os.path.realpath(state_dir).encode()).hexdigest()[:12]


def mark(home: str, task: int, attempt: int) -> str:
    return f"{home}:{task}:{attempt}"


def marked() -> dict[int, str]:
    """pid -> mark of every live process that carries one (but this one)."""
    needle = f"\0{VARIABLE}=".encode()
    found: dict[int, str] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    me = os.getpid()
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = b"\0" + f.read()
        except OSError:  # gone, or not ours to read
            continue
        start = environ.find(needle)
        if start >= 0:
            start += len(needle)
            end = environ.find(b"\0", start)
            found[int(entry)] = environ[start : end if end >= 0 else len(environ)].decode(errors="replace")
    return found


def mark_of(pid: int) -> str | None:
    """The mark `pid` carries, if any (None also when it is gone or not ours to read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = b"\0" + f.read()
    except OSError:
        return None
    needle = f"\0{VARIABLE}=".encode()
    start = environ.find(needle)
    if start < 0:
        return None
    start += len(needle)
    end = environ.find(b"\0", start)
    return environ[start : end if end >= 0 else len(environ)].decode(errors="replace")


def find(prefix: str) -> list[int]:
    """Pids of live processes whose mark starts with `prefix`."""
    return [pid for pid, value in marked().items() if value.startswith(prefix)]


def kill(prefix: str) -> list[int]:
    """SIGKILL every process whose mark starts with `prefix` (and its process group where
    it leads one). Returns the pids that were found."""
    pids = find(prefix)
    _kill(pids)
    return pids


def kill_marked(marks: set[str]) -> dict[str, list[int]]:
    """SIGKILL every process carrying exactly one of `marks`, in one pass over /proc.
    Returns, per mark that was found, its pids."""
    found: dict[str, list[int]] = {}
    for pid, value in marked().items():
        if value in marks:
            found.setdefault(value, []).append(pid)
    for pids in found.values():
        _kill(pids)
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
