"""Running a task's acceptance checks, and asking git whether its agent changed anything:
the shell around `orchestrad.verify`, which says what the results mean.

A check is `sh -c CMD` in the task's directory, started through the engine's supervisor
as the task's process (in the same sandbox as its agent, when it has one), with the task's
environment and a mark of its own (so the sweep of what the agent's attempt left does not
take it for a leftover). Its output is recorded as the task's `check` stream; its last
`verify.TAIL_CHARS` characters are kept for the verdict. One runs past `check_timeout`
seconds is stopped, and fails as timed out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import TYPE_CHECKING

from orchestra.shared.protocol import Status
from orchestrad import launch, orphans, roles, verify
from orchestrad import events as ev
from orchestrad.agents import agent_for
from orchestrad.executor import SpawnError

if TYPE_CHECKING:
    from orchestrad.engine import Engine
    from orchestrad.state import Task

log = logging.getLogger(__name__)

GIT_TIMEOUT = 60.0  # seconds git may take to say what a directory holds


class _Running:
    def __init__(self) -> None:
        self.exited: asyncio.Future = asyncio.get_running_loop().create_future()
        self.tail = bytearray()
        self.timed_out = False


class Checker:
    """The checks in progress, one task at a time each; the engine routes their output and exits here."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._running: dict[int, _Running] = {}

    def owns(self, task_id: int) -> bool:
        return task_id in self._running

    def output(self, task_id: int, chunk: bytes) -> list:
        running = self._running[task_id]
        running.tail += chunk
        del running.tail[: max(0, len(running.tail) - 4 * verify.TAIL_CHARS)]
        return [(ev.OutputAppended(task=task_id, stream="check", size=len(chunk)), chunk)]

    def exited(self, task_id: int, exit_code: int | None, signal: int | None) -> None:
        running = self._running.get(task_id)
        if running is not None and not running.exited.done():
            running.exited.set_result((exit_code, signal))

    def begin(self, task_id: int) -> None:
        """The task's round of checks has been recorded: run it."""
        asyncio.get_running_loop().create_task(self._round(task_id))

    async def _round(self, task_id: int) -> None:
        engine = self.engine
        try:
            task = engine.state.tasks[task_id]
            if task.spec.expects_change and task.baseline_head is not None:
                changed = await changed_since(task.cwd, task.baseline_head, task.baseline_digest)
                engine._observe(verify.unchanged(engine.state.tasks[task_id], changed))
            while engine.accepting:
                task = engine.state.tasks.get(task_id)
                if task is None or task.status is not Status.CHECKING:
                    return
                step = verify.next_step(engine.state, task)
                if not isinstance(step, verify.Run):
                    engine._observe(step)
                    return
                engine._observe([await self._run(task, step)])
        except Exception as exc:  # a bug must not leave the task checking forever
            log.exception("task %s: its checks could not run", task_id)
            task = engine.state.tasks.get(task_id)
            if task is not None and task.status is Status.CHECKING:
                engine._observe([ev.TaskFinished(task=task_id, outcome=Status.FAILED, reason=f"its checks could not run: {exc}")])

    async def _run(self, task: Task, step: verify.Run) -> ev.CheckFinished:
        engine, config = self.engine, self.engine.state.config
        running = self._running[task.id] = _Running()
        try:
            agent = agent_for(task.spec.agent)
            cwd = task.cwd
            mark = orphans.mark(engine.home_mark, task.id, f"{task.attempts}-check{task.check_round}.{step.index}")  # type: ignore[arg-type]
            env = launch.environment(engine.base_env, agent, config, launch.task_env(engine.env_store, task), mark)
            argv, _ = await engine.sandboxes.wrap(
                ["sh", "-c", step.command], cwd=cwd, env=env, agent=agent, role=roles.get(task.role, engine.state.roles),
                role_name=task.role, config=config,
            )
            pid = await engine.supervisor.start(task.id, argv, cwd=cwd, env=env, stdin=False)
        except (SpawnError, OSError) as exc:
            del self._running[task.id]
            return ev.CheckFinished(task=task.id, index=step.index, exit_code=None, signal=None, tail=f"it could not start: {exc}")
        except BaseException:
            self._running.pop(task.id, None)
            raise
        engine._observe([ev.CheckStarted(task=task.id, index=step.index, command=step.command, pid=pid)])
        timer = asyncio.get_running_loop().call_later(config.check_timeout, self._time_out, task.id, running)
        try:
            exit_code, signal = await running.exited
        finally:
            timer.cancel()
            self._running.pop(task.id, None)
        tail = verify.tail(running.tail.decode(errors="replace"))
        if running.timed_out:
            tail = (tail + "\n" if tail else "") + f"(stopped after the check timeout of {config.check_timeout:g} s)"
        return ev.CheckFinished(
            task=task.id, index=step.index, exit_code=exit_code, signal=signal, tail=tail, timed_out=running.timed_out
        )

    def _time_out(self, task_id: int, running: _Running) -> None:
        running.timed_out = True
        self.engine.supervisor.terminate(task_id, self.engine.state.config.kill_grace)


# ---------------------------------------------------------------------------------------
# Whether an agent changed anything: HEAD, and a digest of what is uncommitted.


async def _git(cwd: str, *args: str) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), GIT_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return -1, b""
    return proc.returncode or 0, out


async def where(cwd: str) -> tuple[str, str] | None:
    """(HEAD, a digest of the uncommitted changes: status and diff) of the git directory
    `cwd`, or None if it is none (or git cannot say)."""
    try:
        code, head = await _git(cwd, "rev-parse", "--verify", "-q", "HEAD")
        if code != 0:
            return None
        code, status = await _git(cwd, "status", "--porcelain=v1", "-z", "--untracked-files=all")
        if code != 0:
            return None
        code, diff = await _git(cwd, "diff", "HEAD", "--binary")
    except OSError:  # no git here
        return None
    digest = hashlib.sha256(status + b"\0" + diff).hexdigest()
    return head.decode().strip(), digest


async def changed_since(cwd: str, head: str, digest: str) -> bool | None:
    """Whether the git directory `cwd` is other than (`head`, `digest`); None if git cannot say."""
    now = await where(cwd)
    if now is None:
        return None
    return now != (head, digest)
