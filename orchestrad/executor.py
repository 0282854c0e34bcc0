"""Where a task's processes run: the interface between the engine and an executor.

The engine decides and records; an executor only runs processes and reports what they do.
`local` (`orchestrad.supervisor.Supervisor`) runs them on this machine. An executor for
other machines (a Ray cluster, a Kubernetes Job per attempt) implements the same calls and
keeps the same promises, and tests/test_executor_contract.py holds every one of them to
those promises with the same tests.

What the engine calls:

* `start(task_id, argv, cwd=, env=, stdin=, cgroup=, attempt=, labels=, carry=)` starts one
  process for the task and returns its pid (on the machine it runs on). (task, attempt) is
  its identity: an executor that may retry a start over a network runs one process for it,
  not two. On another machine the process works in a copy of `cwd`'s git checkout, at
  `workdir(task_id, attempt, cwd, env)` (on this machine: `cwd` itself), and `carry` names
  directories of the agent's own state tied to that directory, as (here, there) pairs, to
  take there with the start and bring back with the exit. `env` is the whole environment: an executor adds nothing and hands it to the process
  only (never to a store or a log of its own). `labels` are what the machine it runs on
  must have (an executor of one machine is given none). A process that cannot be started
  raises `SpawnError`, written for a person; `Unavailable` (a `SpawnError`) when it may
  start later (no free slot, the cluster cannot be reached), with when to try again.
* `write(task_id, data)` queues bytes for its stdin without waiting; `check_writable` says
  beforehand, by raising `WriteError`, that they could not be queued now, so that a
  person's answer is refused rather than accepted and dropped. `close_stdin` closes it once
  what was written has been delivered.
* `terminate(task_id, grace)` is the grace ladder: SIGTERM to the process's group now,
  SIGKILL after `grace` seconds if it still runs. A second call never postpones the kill.
* `pause_output` / `resume_output`: back-pressure from the log. While paused, nothing more
  of any process's output is read, so what waits in the daemon stays bounded.
* `pids()`: task id -> pid of each process started and not yet reported as exited.
* `shutdown(grace)` refuses new processes, terminates every one, and returns once each
  exit has been reported.

What it reports, through the two callbacks it was made with:

* `on_output(task_id, stream, chunk)`: "stdout" or "stderr", in order per stream, never
  before `start` has returned the pid;
* `on_exit(task_id, pid, exit_code, signal, lost="")`: exactly once per process, after the
  last `on_output` of both its streams and once what it left in its working directory is
  in `cwd` here, with the exit code or the signal that ended it; or with `lost`, why the
  executor can no longer follow it (its machine died, its work could not be brought back),
  code and signal None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

__all__ = ["ExitCallback", "Executor", "OutputCallback", "SpawnError", "Unavailable", "WriteError"]

OutputCallback = Callable[[int, str, bytes], None]
"""on_output(task_id, stream, chunk)"""

ExitCallback = Callable[..., None]
"""on_exit(task_id, pid, exit_code, signal, lost="")"""


class SpawnError(Exception):
    """A process could not be started. The message is written for a person."""


class Unavailable(SpawnError):
    """A process could not be started now and may be later: try again in `retry_in` seconds."""

    def __init__(self, message: str, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class WriteError(Exception):
    """Input could not be handed to a process. The message is written for a person."""


@runtime_checkable
class Executor(Protocol):
    """Runs one process per task id and reports what they do (see the module's text)."""

    name: str  # what `--executor` and `ps` call it: "local", "ray"
    output_paused: bool

    async def start(
        self, task_id: int, argv: list[str], *, cwd: str, env: dict[str, str], stdin: bool = True, cgroup: str = "",
        attempt: int = 0, labels: Sequence[str] = (), carry: Sequence[tuple[str, str]] = (),
    ) -> int: ...

    async def workdir(self, task_id: int, attempt: int, cwd: str, env: dict[str, str]) -> str: ...

    def write(self, task_id: int, data: bytes) -> None: ...

    def check_writable(self, task_id: int, size: int = 1) -> None: ...

    def close_stdin(self, task_id: int) -> None: ...

    def terminate(self, task_id: int, grace: float) -> None: ...

    def pause_output(self) -> None: ...

    def resume_output(self) -> None: ...

    def pids(self) -> dict[int, int]: ...

    async def shutdown(self, grace: float) -> None: ...
