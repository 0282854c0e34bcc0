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


def find(prefix: str) -> list[int]:
    """Pids of live processes whose ORCHESTRA_AGENT starts with `prefix`."""
    needle = f"{VARIABLE}={prefix}".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    me = os.getpid()
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:  # gone, or not ours to read
            continue
        if any(item.startswith(needle) for item in environ.split(b"\0")):
            found.append(int(entry))
    return found


def kill(prefix: str) -> list[int]:
    """SIGKILL every process marked with `prefix` (and its process group where it leads
    one). Returns the pids that were found."""
    pids = find(prefix)
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return pids
