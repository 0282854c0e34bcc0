"""The Ray bridge: the one process that imports ray, started by `rayexec.RayExecutor`.

    python -m orchestrad.remote.bridge --fd N --address ADDR --namespace NS

It connects to the cluster, finds the nodes that offer agent slots (the `orchestra_agent`
resource; a resource `orchestra_label_NAME` gives a node the label NAME), keeps one
detached actor per node (a `procs.NodeProcs`, shipped by value with `workdir`: a node
needs Ray and git, not orchestra), and carries the daemon's calls to them. For each process it keeps one read in
flight and sends what comes back to the daemon as it comes; while the daemon has paused
output it reads nothing, and the node's buffers and then the process's pipe fill. It
watches the nodes: one that dies takes its processes with it, and each is reported lost.
Messages, daemon to bridge:

    ["start", task, attempt, argv, env, stdin, labels, work, carry]  ["attach", task, attempt, node_id]
    ["write", task, data]  ["close", task]  ["term", task, grace]  ["forget", task]
    ["pause"]  ["resume"]  ["quit"]

and bridge to daemon:

    ["ready", nodes] or ["failed", why]   (once, first)       ["nodes", nodes]   (when they change)
    ["started", task, pid, node_id] or ["refused", task, why, later]
    ["out", task, stream, bytes]  ["exit", task, pid, code, signal, back]  ["lost", task, why]

where nodes is [[node_id, host, slots, labels, alive], ...] and `later` says whether the
start may succeed later (no free slot, a node unreachable) rather than never (no such
program). "attach" finds a process a bridge before this one started (the daemon was
restarted) and follows it from the output its node still keeps. `work` says how to make the
task's checkout on its node and `carry` what to put there besides (`procs.NodeProcs.start`);
`back` is what the process left there (`procs.NodeProcs.returned`), and the node keeps it
until the daemon, having put it in place, says "forget".

Credentials reach a node only as the `env` argument of the start call, an actor method's
argument: never put in Ray's object store by the bridge, never logged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

import ray
import ray.cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrad.remote import procs, wire, workdir

RESOURCE = "orchestra_agent"
LABEL = "orchestra_label_"  # a resource named so gives its node a label
READ_BYTES = 4 << 20  # at most this much output per read call
READ_WAIT = 0.5  # seconds a read waits on the node for output
INLINE = {"env_vars": {"RAY_max_direct_call_object_size": str(2 * READ_BYTES)}}
"""A read's reply travels in the call's own reply, not through the node's object store (Ray
stores results over 100 KiB there, which costs a put and a fetch per read: 84 MB/s instead
of over 100)."""
WATCH_EVERY = 1.0  # seconds between looks at the cluster's nodes
UNAVAILABLE_FOR = 30.0  # seconds a node may be unreachable before its processes are lost


class Bridge:
    def __init__(self, writer: asyncio.StreamWriter, namespace: str) -> None:
        self.writer = writer
        self.namespace = namespace
        self.nodes: dict[str, dict] = {}  # node id -> {"host", "slots", "labels", "alive", "actor"}
        self.running: dict[int, tuple[str, str]] = {}  # task -> (node id, key)
        self.ended: dict[int, tuple[str, str]] = {}  # task -> (node id, key) of an exit told, until "forget"
        self.forgetting: set[asyncio.Task] = set()
        self.placing: dict[int, str] = {}  # task -> the node whose slot it holds while it starts there
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.pumps: dict[int, asyncio.Task] = {}  # task -> its pump
        self.feeders: set[asyncio.Task] = set()
        self.stdin: dict[int, asyncio.Queue] = {}  # task -> writes on their way, None for the close
        self.shown: list = []

    def send(self, *message: object) -> None:
        self.writer.write(wire.frame(*message))

    # -- nodes ----------------------------------------------------------------------------

    def look(self) -> None:
        """Read the cluster's nodes; a new one with agent slots gets its actor."""
        Actor = ray.remote(procs.NodeProcs)
        for node in ray.nodes():
            resources = node.get("Resources", {}) or {}
            slots = int(resources.get(RESOURCE, 0))
            node_id = node["NodeID"]
            if slots < 1 and node_id not in self.nodes:
                continue
            info = self.nodes.get(node_id)
            if info is None and node.get("Alive"):
                actor = Actor.options(
                    name=f"orchestra-node-{node_id[:16]}", namespace=self.namespace, lifetime="detached",
                    get_if_exists=True, num_cpus=0, max_concurrency=256, runtime_env=INLINE,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                ).remote()
                info = self.nodes[node_id] = {"actor": actor}
            if info is None:
                continue
            info["alive"] = bool(node.get("Alive"))
            if info["alive"] or "slots" not in info:  # a dead node lists no resources: it keeps what it had
                info.update(
                    host=node.get("NodeManagerHostname", "") or node.get("NodeManagerAddress", ""), slots=slots,
                    labels=sorted(name[len(LABEL):] for name in resources if name.startswith(LABEL)),
                )

    def listing(self) -> list:
        return [[n, i["host"], i["slots"], i["labels"], i["alive"]] for n, i in sorted(self.nodes.items())]

    def where(self, node_id: str) -> str:
        info = self.nodes.get(node_id)
        return f"{info['host']} ({node_id[:8]})" if info else node_id[:8]

    async def watch(self) -> None:
        """Tell the daemon when the nodes change; a node that died takes its processes."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WATCH_EVERY)
            try:
                await loop.run_in_executor(None, self.look)
            except Exception:  # noqa: BLE001 - the GCS is restarting: look again later
                continue
            listing = self.listing()
            if listing != self.shown:
                self.shown = listing
                self.send("nodes", listing)
            for task, (node_id, _) in list(self.running.items()):
                if not self.nodes[node_id]["alive"]:
                    self.lose(task, f"its node {self.where(node_id)} left the Ray cluster")

    def lose(self, task: int, why: str) -> None:
        if self.running.pop(task, None) is None:
            return
        pump = self.pumps.pop(task, None)
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
        self.send("lost", task, why)

    def place(self, labels: list[str]) -> str | None:
        """The node with every label that has the most free slots; None when none has one."""
        used: dict[str, int] = {}
        for node_id in [*(n for n, _ in self.running.values()), *self.placing.values()]:
            used[node_id] = used.get(node_id, 0) + 1
        free = {
            n: info["slots"] - used.get(n, 0) for n, info in self.nodes.items()
            if info["alive"] and set(labels) <= set(info["labels"])
        }
        best = max(free, key=lambda n: free[n], default=None)
        return best if best is not None and free[best] > 0 else None

    # -- processes ----------------------------------------------------------------------

    async def start(self, task: int, attempt: int, argv: list, env: dict, stdin: bool, labels: list, work: dict,
                    carry: list) -> None:
        node_id = self.place(labels)
        if node_id is None:
            fit = [n for n, i in self.nodes.items() if i["alive"] and set(labels) <= set(i["labels"])]
            if fit:
                why = "every agent slot of the Ray cluster's nodes" + (f" labelled {', '.join(labels)}" if labels else "") + " is taken"
            elif labels:
                why = f"no node of the Ray cluster has the label{'s' if len(labels) > 1 else ''} {', '.join(labels)}"
            else:
                why = "no node of the Ray cluster offers agent slots (start one with --resources '{\"orchestra_agent\": 4}')"
            self.send("refused", task, why, True)
            return
        key = f"{task}.{attempt}"
        actor = self.nodes[node_id]["actor"]
        self.placing[task] = node_id
        try:
            pid = await actor.start.remote(key, argv, env, stdin, work, carry)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            self.send("refused", task, str(cause).strip().splitlines()[-1], False)
            return
        except ray.exceptions.RayError as exc:
            self.send("refused", task, f"node {self.where(node_id)} could not start it: {type(exc).__name__}", True)
            return
        finally:
            self.placing.pop(task, None)
        self.follow(task, pid, node_id, key)

    def follow(self, task: int, pid: int, node_id: str, key: str) -> None:
        self.running[task] = (node_id, key)
        self.send("started", task, pid, node_id)
        self.pumps[task] = asyncio.get_running_loop().create_task(self.pump(task, pid, node_id, key))

    async def attach(self, task: int, attempt: int, node_id: str) -> None:
        key = f"{task}.{attempt}"
        info = self.nodes.get(node_id)
        if info is None or not info["alive"]:
            self.send("refused", task, f"its node {self.where(node_id)} is no longer in the Ray cluster", False)
            return
        try:
            pid = await info["actor"].pid_of.remote(key)
        except ray.exceptions.RayError as exc:
            self.send("refused", task, f"its node {self.where(node_id)} cannot be reached: {type(exc).__name__}", False)
            return
        if pid is None:
            self.send("refused", task, f"its node {self.where(node_id)} no longer knows its process", False)
            return
        self.follow(task, pid, node_id, key)

    async def pump(self, task: int, pid: int, node_id: str, key: str) -> None:
        actor = self.nodes[node_id]["actor"]
        acked = (0, 0)
        unavailable_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            await self.unpaused.wait()
            try:
                got = await actor.read.remote(key, acked, READ_BYTES, READ_WAIT)
            except ray.exceptions.ActorUnavailableError:  # its node does not answer, for now
                unavailable_since = unavailable_since or loop.time()
                if loop.time() - unavailable_since > UNAVAILABLE_FOR:
                    return self.lose(task, f"its node {self.where(node_id)} has not answered for {UNAVAILABLE_FOR:.0f} s")
                await asyncio.sleep(0.5)
                continue
            except ray.exceptions.RayError as exc:
                return self.lose(task, f"its node {self.where(node_id)} is gone ({type(exc).__name__})")
            unavailable_since = None
            for i, stream in enumerate(("stdout", "stderr")):
                if got[stream]:
                    self.send("out", task, stream, got[stream])
            acked = (got["at"][0] + len(got["stdout"]), got["at"][1] + len(got["stderr"]))
            await self.writer.drain()
            if got["unknown"]:
                return self.lose(task, f"its node {self.where(node_id)} no longer knows its process")
            if got["exit"] is not None:
                code, sig = got["exit"]
                self.running.pop(task, None)
                self.pumps.pop(task, None)
                if task in self.stdin:
                    self.stdin[task].put_nowait(None)  # its feeder ends
                try:
                    back = await actor.returned.remote(key)
                except ray.exceptions.RayError as exc:
                    back = {"error": f"its node {self.where(node_id)} did not give what it left: {type(exc).__name__}"}
                if back is not None and len(wire.frame(back)) > wire.MAX_FRAME - (1 << 20):
                    back = {"error": f"what it left on its node {self.where(node_id)} is more than a "
                                     f"{wire.MAX_FRAME >> 20} MiB message carries: commit less, or push it from there"}
                self.ended[task] = (node_id, key)
                self.send("exit", task, pid, code, sig, back)
                return

    def feed(self, task: int, data: bytes | None) -> None:
        """Queue a write (or, with None, the close) of a process's stdin. Calls on an actor
        run on its threads in no set order, so each waits for the one before it."""
        actor, key = self.actor_of(task)
        if actor is None:
            return
        queue = self.stdin.get(task)
        if queue is None:
            queue = self.stdin[task] = asyncio.Queue()
            feeder = asyncio.get_running_loop().create_task(self.feeding(task, queue, actor, key))
            self.feeders.add(feeder)
            feeder.add_done_callback(self.feeders.discard)
        queue.put_nowait(data)

    async def feeding(self, task: int, queue: asyncio.Queue, actor, key: str) -> None:
        try:
            while True:
                data = await queue.get()
                if data is None:
                    await actor.close_stdin.remote(key)
                    return
                if not await actor.write.remote(key, data):
                    return
        except ray.exceptions.RayError:
            return  # its node is gone: the pump tells
        finally:
            if self.stdin.get(task) is queue:
                del self.stdin[task]

    def actor_of(self, task: int):
        where = self.running.get(task)
        return (self.nodes[where[0]]["actor"], where[1]) if where else (None, "")

    async def serve(self, reader: asyncio.StreamReader) -> None:
        loop = asyncio.get_running_loop()
        while (message := await wire.read_frame(reader)) is not None:
            kind, *args = message
            if kind == "start":
                loop.create_task(self.start(*args))
            elif kind == "attach":
                loop.create_task(self.attach(*args))
            elif kind in ("write", "close"):
                self.feed(args[0], args[1] if kind == "write" else None)
            elif kind == "forget":
                self.forget(args[0])
            elif kind == "term":
                actor, key = self.actor_of(args[0])
                if actor is not None:
                    actor.terminate.remote(key, args[1])
            elif kind == "pause":
                self.unpaused.clear()
            elif kind == "resume":
                self.unpaused.set()
            elif kind == "quit":
                break
        if self.forgetting:  # a call only submitted may not leave before this process does
            await asyncio.wait(self.forgetting, timeout=30)

    def forget(self, task: int) -> None:
        """The daemon has put what the task left in place: its node may let it go."""
        node_id, key = self.ended.pop(task, ("", ""))
        if node_id not in self.nodes:
            return

        async def call() -> None:
            try:
                await self.nodes[node_id]["actor"].forget.remote(key)
            except ray.exceptions.RayError:
                pass  # its node is gone, and the checkout with it

        job = asyncio.get_running_loop().create_task(call())
        self.forgetting.add(job)
        job.add_done_callback(self.forgetting.discard)


async def main(fd: int, address: str, namespace: str) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    bridge = Bridge(writer, namespace)
    try:
        ray.cloudpickle.register_pickle_by_value(procs)
        ray.cloudpickle.register_pickle_by_value(workdir)
        os.environ.update(INLINE["env_vars"])  # this side of the calls too
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level="ERROR",
                 configure_logging=False)
        bridge.look()
    except Exception as exc:  # noqa: BLE001 - told to the daemon, which shows it
        bridge.send("failed", f"cannot use the Ray cluster at {address}: {exc}")
        await writer.drain()
        return
    bridge.shown = bridge.listing()
    bridge.send("ready", bridge.shown)
    await writer.drain()
    watcher = asyncio.get_running_loop().create_task(bridge.watch())
    await bridge.serve(reader)
    watcher.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.fd, args.address, args.namespace))
    sys.stdout.flush()
    os._exit(0)  # not ray's atexit: the actors stay, detached, for the next bridge
