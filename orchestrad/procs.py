"""Short-lived helper processes (git, a merge's checks): started with `subprocess.Popen` on
the event loop's thread (vfork and exec) and waited for in a worker thread.

The loop's own `subprocess_exec` forks the whole daemon under uvloop, which costs in
proportion to the memory the daemon holds: 5 ms a process for a small daemon, 25 ms at
300 MiB, against 2 ms this way whatever its size (see `orchestrad.supervisor`, which starts
agents the same way for the same reason). The pid is put in `containment.OWN` on the
loop's thread before anything else runs there, so the sweep for processes the daemon
adopted never reaps or kills one of these.

When the daemon stops, a check is killed at once, but a git command is let finish (for up
to `FINISH` seconds): git killed mid-write leaves its lock files (`index.lock`, `HEAD.lock`,
a ref's `.lock`) in the user's repository, and every git there fails until they go.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from typing import NamedTuple

from orchestrad import containment


FINISH = 10.0  # seconds a git command cancelled by the daemon's stop may take to finish


class Result(NamedTuple):
    code: int | None  # None: killed at its timeout
    out: bytes
    err: bytes


async def run(
    argv: list[str], *, cwd: str | None = None, env: dict[str, str] | None = None, timeout: float | None = None,
    merge_stderr: bool = False, new_session: bool = False, finish: bool = False,
) -> Result:
    """Run `argv` to its end (or `timeout` seconds, then SIGKILL to it, and to its process
    group with `new_session`); OSError if it cannot be started. Cancelled, it is killed, or
    with `finish` waited for (up to `FINISH` seconds) before the cancellation goes on."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, start_new_session=new_session,
    )
    containment.OWN.add(proc.pid)
    waiter = asyncio.ensure_future(asyncio.to_thread(_wait, proc, timeout, new_session))
    try:
        return await asyncio.shield(waiter)
    except asyncio.CancelledError:  # the daemon is stopping: the process goes with it
        if finish:
            await asyncio.wait([waiter], timeout=FINISH)
        _kill(proc, new_session)
        raise
    finally:
        containment.OWN.discard(proc.pid)


def _wait(proc: subprocess.Popen, timeout: float | None, group: bool) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
        return Result(proc.returncode, out or b"", err or b"")
    except subprocess.TimeoutExpired:
        _kill(proc, group)
        out, err = proc.communicate()
        return Result(None, out or b"", err or b"")


def _kill(proc: subprocess.Popen, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError):
        pass
