"""The Ray executor, the daemon's side: an `orchestrad.executor.Executor` that imports no Ray.

It starts the bridge (`orchestrad.remote.bridge`, the one process that imports ray) on its
first `start`, over a socket pair, and turns the calls into the bridge's messages and the
bridge's messages into `on_output` and `on_exit`. A cluster that cannot be reached makes
every start `Unavailable` (tried again later, backing off) until it can; a start with no
free slot on a node with its labels is `Unavailable` too. `nodes` is what the bridge last
saw of the cluster; `attach` follows a process an earlier daemon started.

A task's working directory must be in a git checkout: its node works in a checkout of its
own made from it, and what the process left there is put back in it before its exit is
reported (`workdir`), so `on_exit` means here what it means for a local process. `carry`
names directories of the agent's own state tied to the working directory (here, there),
taken to the node with the start and brought back with the exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import tarfile
from collections.abc import Sequence

import msgspec

from orchestrad import containment, orphans, sandbox
from orchestrad.executor import ExitCallback, OutputCallback, SpawnError, Unavailable, WriteError
from orchestrad.remote import wire, workdir

__all__ = ["Node", "RayExecutor", "check_remote", "mark", "namespace"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 60.0  # seconds for the bridge to join the cluster
PROBE_TIMEOUT = 5.0  # seconds for the head's port to take a connection, first
BUSY_RETRY = 3.0  # seconds before a start that found no free slot is tried again
DOWN_RETRY = (5.0, 60.0)  # ... one that could not reach the cluster: the first wait, doubling up to the second
MAX_ENV = 64 << 10  # bytes of environment a remote start may carry (Ray keeps larger arguments in its object store)


def namespace(home_mark: str) -> str:
    """The Ray namespace of one daemon home: its actors, found again after a restart."""
    return f"orchestra-{home_mark}"


def mark(home_mark: str, task: int, attempt: int) -> str:
    """The orphan mark of a remote process: not this home's local prefix, so that a daemon
    restarting on a machine that is also a node never takes it for its own leftover."""
    return f"ray-{orphans.mark(home_mark, task, attempt)}"


def check_remote(role, config) -> None:
    """A task may run on a remote executor only without the sandbox, which is this machine's."""
    choice = sandbox.chosen(role, config)
    if choice.on or not choice.network:
        raise SpawnError(
            "the sandbox runs agents on this machine only, not on the nodes of a Ray cluster: run the task "
            "with --executor local, or turn the sandbox off for its role (sandbox = \"off\")"
        )


class Node(msgspec.Struct, frozen=True):
    id: str
    host: str
    slots: int
    labels: list[str]
    alive: bool

    @property
    def name(self) -> str:
        return f"{self.host} ({self.id[:8]})"


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
        self.nodes: dict[str, Node] = {}  # what the bridge last saw of the cluster
        self.problem = ""  # why the cluster cannot be used now ("" when it can, or was never tried)
        self.on_nodes = lambda: None  # told when `nodes` or `problem` change
        self._failures = 0  # connections that failed in a row
        self._bridge: subprocess.Popen | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ready: asyncio.Future | None = None
        self._starting: dict[int, asyncio.Future] = {}
        self._running: dict[int, int] = {}  # task -> pid, until its exit is reported
        self._node_of: dict[int, str] = {}
        self._stdin_open: set[int] = set()
        self._held: dict[int, list[tuple]] = {}  # reports for a task whose start has not returned yet
        self._exited: dict[int, asyncio.Future] = {}
        self._work: dict[int, tuple[str, int, dict[str, str]]] = {}  # task -> (cwd, attempt, carried: there -> here)
        self._returning: set[asyncio.Task] = set()
        self._closing = False
        self._detached = False
        self._served: asyncio.Task | None = None

    @property
    def slots(self) -> int | None:
        """The agent slots of the cluster's live nodes; None while it is not reached (the
        scheduler then tries one start at a time, which finds out again)."""
        if self._ready is None or not self._ready.done() or self._ready.exception() is not None:
            return None
        return sum(n.slots for n in self.nodes.values() if n.alive)

    # -- the bridge -----------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._ready is not None and not (self._ready.done() and self._ready.exception()):
            return await asyncio.shield(self._ready)
        loop = asyncio.get_running_loop()
        self._ready = ready = loop.create_future()
        problem = await self._probe()
        if problem:  # ray.init would wait minutes on an address that does not answer
            self._down(f"cannot reach the Ray cluster at {self.address}: {problem}")
            raise self._unavailable()
        ours, theirs = socket.socketpair()
        env = {**self.env, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._bridge = subprocess.Popen(
            [self.python, "-m", "orchestrad.remote.bridge", "--fd", str(theirs.fileno()),
             "--address", self.address, "--namespace", self.namespace],
            pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        containment.OWN.add(self._bridge.pid)  # the daemon's helper, never an agent's stray
        theirs.close()
        reader, self._writer = await asyncio.open_connection(sock=ours)
        if self.output_paused:  # paused before there was a bridge to tell
            self._send("pause")
        self._served = loop.create_task(self._serve(reader, self._writer))
        try:
            await asyncio.wait_for(asyncio.shield(ready), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            self._kill_bridge()
            self._down(f"cannot reach the Ray cluster at {self.address}: no answer in {CONNECT_TIMEOUT:.0f} s")
            raise self._unavailable() from None
        except SpawnError as exc:
            self._down(str(exc))
            raise self._unavailable() from None
        self._failures, self.problem = 0, ""
        self.on_nodes()

    async def _probe(self) -> str:
        """Why the head's port does not take a connection ("" when it does)."""
        host, _, port = self.address.rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            return f"no answer in {PROBE_TIMEOUT:.0f} s"
        except (OSError, ValueError) as exc:
            return getattr(exc, "strerror", None) or str(exc)
        writer.close()
        return ""

    def _down(self, why: str) -> None:
        self._failures += 1
        self.problem = why
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SpawnError(why))
        self.on_nodes()

    def _unavailable(self) -> Unavailable:
        first, most = DOWN_RETRY
        return Unavailable(self.problem, min(most, first * 2 ** max(0, self._failures - 1)))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (message := await wire.read_frame(reader)) is not None:
            kind, *args = message
            if kind in ("ready", "nodes"):
                self.nodes = {n[0]: Node(*n) for n in args[0]}
                if kind == "ready":
                    self._ready.set_result(None)
                else:
                    self.on_nodes()
            elif kind == "failed":
                self._ready.set_exception(SpawnError(args[0]))
            elif kind == "started":
                task, pid, node = args
                self._running[task], self._node_of[task] = pid, node
                self._held[task] = []
                self._resolve(task, pid)
            elif kind == "refused":
                task, why, later = args
                self._resolve(task, Unavailable(why, BUSY_RETRY) if later else SpawnError(why))
            elif kind == "out":
                self._report(args[0], self.on_output, args[0], args[1], args[2])
            elif kind == "exit":
                task, pid, code, sig, back = args
                self._report(task, self._returned, task, pid, code, sig, back)
            elif kind == "lost":
                task, why = args
                self._report(task, self._exit, task, self._running.get(task, 0), None, None, why)
        writer.close()
        bridge = self._bridge
        if bridge is not None:  # reaped here, whoever else waits for it
            await asyncio.get_running_loop().run_in_executor(None, bridge.wait)
            containment.OWN.discard(bridge.pid)
        if self._detached:
            return
        why = f"the Ray bridge ended (exit status {self._bridge.poll() if self._bridge else None})"
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(SpawnError(f"cannot use the Ray cluster at {self.address}: {why}"))
        elif not self._closing:
            self._down(f"lost the Ray cluster at {self.address}: {why}")
            broken = asyncio.get_running_loop().create_future()
            broken.set_exception(SpawnError(why))  # the next start starts a bridge anew
            broken.exception()
            self._ready = broken
        for task in list(self._starting):
            self._resolve(task, Unavailable(why, BUSY_RETRY))
        for task, pid in list(self._running.items()):  # their processes cannot be followed any more
            self._report(task, self._exit, task, pid, None, None, why)

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

    def _returned(self, task: int, pid: int, code: int | None, sig: int | None, back: dict | None) -> None:
        job = asyncio.get_running_loop().create_task(self._put_back(task, pid, code, sig, back))
        self._returning.add(job)
        job.add_done_callback(self._returning.discard)

    async def _put_back(self, task: int, pid: int, code: int | None, sig: int | None, back: dict | None) -> None:
        """Put what the process left on its node in its working directory here, then
        report its exit; lost, saying why, when that cannot be done."""
        cwd, attempt, carried = self._work.get(task, ("", 0, {}))
        lost = ""
        if not cwd:
            lost = "its working directory here is not known"
        elif back is None or "error" in back:
            lost = back["error"] if back else "its node did not keep what it left"
        else:
            try:
                kept = await asyncio.to_thread(workdir.apply, cwd, back, f"{task}-{attempt}")
                if kept:
                    log.warning("task %s: %s", task, kept)
                for there, data in back["carry"]:
                    if data is not None and there in carried:
                        await asyncio.to_thread(workdir.unpack_dir, data, carried[there])
            except (workdir.WorkError, OSError, tarfile.TarError) as exc:
                lost = f"what it left on its node could not be put in {cwd}: {exc}"
        self._send("forget", task)
        self._exit(task, pid, code, sig, lost)

    def _exit(self, task: int, pid: int, code: int | None, sig: int | None, lost: str) -> None:
        if self._running.pop(task, None) is None:
            return
        self._work.pop(task, None)
        self._stdin_open.discard(task)
        self._node_of.pop(task, None)
        if lost:
            self.on_exit(task, pid, None, None, lost=lost)
        else:
            self.on_exit(task, pid, code, sig)
        done = self._exited.pop(task, None)
        if done is not None and not done.done():
            done.set_result(None)

    def _send(self, *message: object) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(wire.frame(*message))

    def _kill_bridge(self) -> None:
        if self._bridge is not None and self._bridge.poll() is None:
            self._bridge.kill()
            self._bridge.wait()
        if self._bridge is not None:
            containment.OWN.discard(self._bridge.pid)

    # -- the executor's calls ------------------------------------------------------------------

    def node_root(self, env: dict[str, str]) -> str:
        """Where on a node the checkouts of this daemon's tasks are made: under the cache
        directory of the user the task's environment names."""
        home = env.get("HOME") or self.env.get("HOME") or "/tmp"
        cache = env.get("XDG_CACHE_HOME") or self.env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
        return os.path.join(cache, "orchestra", "nodes", self.namespace)

    async def workdir(self, task_id: int, attempt: int, cwd: str, env: dict[str, str]) -> str:
        """The directory on its node where the task, working in `cwd` here, will run."""
        try:
            top = await asyncio.to_thread(workdir.top_of, cwd)
        except workdir.WorkError as exc:
            raise SpawnError(str(exc)) from None
        inside = os.path.relpath(os.path.realpath(cwd), os.path.realpath(top))
        return os.path.normpath(os.path.join(self.node_root(env), "work", f"{task_id}.{attempt}", inside))

    async def start(self, task_id: int, argv: list[str], *, cwd: str, env: dict[str, str], stdin: bool = True,
                    cgroup: str = "", attempt: int = 0, labels: Sequence[str] = (),
                    carry: Sequence[tuple[str, str]] = ()) -> int:
        if self._closing:
            raise SpawnError("not starting new processes: the Ray executor is shutting down")
        if not argv:
            raise SpawnError("nothing to run: the command is empty")
        if task_id in self._running or task_id in self._starting:
            raise SpawnError(f"task {task_id} already has a process running")
        if len(msgspec.msgpack.encode(env)) > MAX_ENV:
            raise SpawnError(f"its environment is over {MAX_ENV >> 10} KiB, more than a remote start carries; pass less")
        await self._connect()
        try:
            work = await asyncio.to_thread(workdir.outgoing, cwd)
            taken = [[there, await asyncio.to_thread(workdir.pack_dir, here)] for here, there in carry]
        except (workdir.WorkError, OSError) as exc:
            raise SpawnError(str(exc)) from None
        work["root"] = self.node_root(env)
        size = len(work["bundle"] or b"") + len(work["patch"]) + sum(len(data or b"") for _, data in taken)
        if size > wire.MAX_FRAME - (1 << 20):
            raise SpawnError(
                f"its working directory needs {size >> 20} MiB sent to a node, more than a start carries "
                f"({wire.MAX_FRAME >> 20} MiB): push its repository to a remote the nodes can fetch from, or commit less"
            )
        self._work[task_id] = (cwd, attempt, {there: here for here, there in carry})
        try:
            return await self._begin(task_id, stdin, "start", task_id, attempt, argv, env, stdin, list(labels), work, taken)
        except SpawnError:
            self._work.pop(task_id, None)
            raise

    async def reach(self) -> None:
        """Join the cluster if not joined yet; `problem` says why not when it cannot be."""
        try:
            await self._connect()
        except Unavailable:
            pass

    async def attach(self, task_id: int, attempt: int, node: str, *, cwd: str, stdin: bool = True,
                     carry: Sequence[tuple[str, str]] = ()) -> int:
        """Follow the process of (task, attempt) that an earlier daemon started on `node`
        in `cwd`, from the output its node still keeps; its pid. SpawnError when it is gone."""
        await self._connect()
        self._work[task_id] = (cwd, attempt, {there: here for here, there in carry})
        try:
            return await self._begin(task_id, stdin, "attach", task_id, attempt, node)
        except SpawnError:
            self._work.pop(task_id, None)
            raise

    async def _begin(self, task_id: int, stdin: bool, *message: object) -> int:
        loop = asyncio.get_running_loop()
        if self._writer is None or self._writer.is_closing():
            raise Unavailable(f"lost the Ray cluster at {self.address}: its bridge ended", BUSY_RETRY)
        future = self._starting[task_id] = loop.create_future()
        self._exited[task_id] = loop.create_future()
        self._send(*message)
        try:
            pid = await future
        except SpawnError:
            self._exited.pop(task_id, None)
            raise
        if stdin:
            self._stdin_open.add(task_id)
        loop.call_soon(self._release, task_id)  # reports flow once our caller has the pid
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
        self._kill_bridge()

    def node_of(self, task_id: int) -> tuple[str, str]:
        """The node its process runs on: (node id, host)."""
        node_id = self._node_of.get(task_id, "")
        node = self.nodes.get(node_id)
        return node_id, node.host if node is not None else ""
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
                self._kill_bridge()
        if self._served is not None:
            await self._served
