"""The Ray executor, the daemon's side: an `orchestrad.executor.Executor` that imports no Ray.

It starts the bridge (`orchestrad.remote.bridge`, the one process that imports ray) on its
first `start`, over a socket pair, and turns the calls into the bridge's messages and the
bridge's messages into `on_output` and `on_exit`. A bridge that cannot reach the cluster
says why, and every start fails with that reason until the next try.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

from orchestrad.executor import ExitCallback, OutputCallback, SpawnError, WriteError
from orchestrad.remote import wire

__all__ = ["RayExecutor"]

CONNECT_TIMEOUT = 120.0  # seconds for the bridge to join the cluster


class RayExecutor:
    name = "ray"

    def __init__(self, *, on_output: OutputCallback, on_exit: ExitCallback, address: str, namespace: str,
                 python: str = sys.executable, env: dict[str, str] | None = None) -> None:
        self.on_output = on_output
        self.on_exit = on_exit
        self.address = address
        self.namespace = namespace
        self.python = python
        self.env = dict(os.environ if env is None else env)
        self.output_paused = False
        self.nodes: list[tuple[str, str, int]] = []  # (node id, host, slots), once connected
        self._bridge: subprocess.Popen | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future | None = None
        self._starting: dict[int, asyncio.Future] = {}
        self._running: dict[int, int] = {}  # task -> pid, until its exit is reported
        self._node_of: dict[int, str] = {}
        self._stdin_open: set[int] = set()
        self._held: dict[int, list[tuple]] = {}  # reports for a task whose start has not returned yet
        self._exited: dict[int, asyncio.Future] = {}
        self._closing = False
        self._detached = False
        self._served: asyncio.Task | None = None

    # -- the bridge -----------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._ready is not None and not (self._ready.done() and self._ready.exception()):
            return await asyncio.shield(self._ready)
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        ours, theirs = socket.socketpair()
        env = {**self.env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._bridge = subprocess.Popen(
            [self.python, "-m", "orchestrad.remote.bridge", "--fd", str(theirs.fileno()),
             "--address", self.address, "--namespace", self.namespace],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        if self.output_paused:  # paused before there was a bridge to tell
            self._send("pause")
        self._served = loop.create_task(self._serve(reader))
        await asyncio.wait_for(asyncio.shield(self._ready), CONNECT_TIMEOUT)

    async def _serve(self, reader: asyncio.StreamReader) -> None:
        while (message := await wire.read_frame(reader)) is not None:
            kind, *args = message
            if kind == "ready":
                self.nodes = [tuple(n) for n in args[0]]
                self._ready.set_result(None)
            elif kind == "failed":
                self._ready.set_exception(SpawnError(args[0]))
            elif kind == "started":
                task, pid, node = args
                self._running[task], self._node_of[task] = pid, node
                self._held[task] = []
                self._resolve(task, pid)
            elif kind == "refused":
                self._resolve(args[0], SpawnError(args[1]))
            elif kind == "out":
                self._report(args[0], self.on_output, args[0], args[1], args[2])
            elif kind == "exit":
                task, pid, code, sig = args
                self._report(task, self._exit, task, pid, code, sig)
        why = "the Ray bridge ended"
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SpawnError(f"cannot use the Ray cluster at {self.address}: {why}"))
        for task in list(self._starting):
            self._resolve(task, SpawnError(why))
        if self._detached:
            return
        for task, pid in list(self._running.items()):  # their processes cannot be followed any more
            self._report(task, self._exit, task, pid, None, None)

    def _resolve(self, task: int, result: object) -> None:
        future = self._starting.pop(task, None)
        if future is not None and not future.done():
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _report(self, task: int, fn, *args: object) -> None:
        held = self._held.get(task)
        if held is not None:
            held.append((fn, args))
        else:
            fn(*args)

    def _release(self, task: int) -> None:
        for fn, args in self._held.pop(task, []):
            fn(*args)

    def _exit(self, task: int, pid: int, code: int | None, sig: int | None) -> None:
        if self._running.pop(task, None) is None:
            return
        self._stdin_open.discard(task)
        self._node_of.pop(task, None)
        self.on_exit(task, pid, code, sig)
        done = self._exited.pop(task, None)
        if done is not None and not done.done():
            done.set_result(None)

    def _send(self, *message: object) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(wire.frame(*message))

    # -- the executor's calls ------------------------------------------------------------------

    async def start(self, task_id: int, argv: list[str], *, cwd: str, env: dict[str, str], stdin: bool = True,
                    cgroup: str = "", attempt: int = 0) -> int:
        if self._closing:
            raise SpawnError("not starting new processes: the Ray executor is shutting down")
        if not argv:
            raise SpawnError("nothing to run: the command is empty")
        if task_id in self._running or task_id in self._starting:
            raise SpawnError(f"task {task_id} already has a process running")
        await self._connect()
        future = asyncio.get_running_loop().create_future()
        self._starting[task_id] = future
        self._exited[task_id] = asyncio.get_running_loop().create_future()
        self._send("start", task_id, attempt, argv, cwd, env, stdin)
        try:
            pid = await future
        except SpawnError:
            self._exited.pop(task_id, None)
            raise
        if stdin:
            self._stdin_open.add(task_id)
        asyncio.get_running_loop().call_soon(self._release, task_id)  # reports flow once our caller has the pid
        return pid

    async def detach(self) -> None:
        """Let go of the cluster and leave the processes running on their nodes, reporting
        nothing more: a later executor of the same namespace finds them again."""
        self._closing = self._detached = True
        self._send("quit")
        if self._writer is not None:
            self._writer.close()
        if self._served is not None:
            await self._served
        if self._bridge is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._bridge.wait)

    def abandon(self) -> None:
        """Kill the bridge and leave the processes running on their nodes: what a daemon
        killed with SIGKILL leaves behind."""
        self._detached = True
        if self._bridge is not None and self._bridge.poll() is None:
            self._bridge.kill()
            self._bridge.wait()

    def node_of(self, task_id: int) -> str:
        return self._node_of.get(task_id, "")

    def check_writable(self, task_id: int, size: int = 1) -> None:
        if task_id not in self._running or task_id not in self._stdin_open:
            raise WriteError(f"cannot send input to task {task_id}: it has no running process")

    def write(self, task_id: int, data: bytes) -> None:
        self.check_writable(task_id, len(data))
        self._send("write", task_id, data)

    def close_stdin(self, task_id: int) -> None:
        if task_id in self._stdin_open:
            self._stdin_open.discard(task_id)
            self._send("close", task_id)

    def terminate(self, task_id: int, grace: float) -> None:
        if task_id in self._running:
            self._send("term", task_id, grace)

    def pause_output(self) -> None:
        self.output_paused = True
        self._send("pause")

    def resume_output(self) -> None:
        self.output_paused = False
        self._send("resume")

    def pids(self) -> dict[int, int]:
        return dict(self._running)

    async def shutdown(self, grace: float) -> None:
        self._closing = True
        waits = [self._exited[t] for t in self._running if t in self._exited]
        for task in list(self._running):
            self.terminate(task, grace)
        if waits:
            await asyncio.wait(waits, timeout=grace + 30)
        self._send("quit")
        if self._writer is not None:
            self._writer.close()
        if self._bridge is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self._bridge.wait, 30)
            except subprocess.TimeoutExpired:
                self._bridge.kill()
