"""The Ray bridge: the one process that imports ray, started by `rayexec.RayExecutor`.

    python -m orchestrad.remote.bridge --fd N --address ADDR --namespace NS

It connects to the cluster, finds the nodes that offer agent slots (the `orchestra_agent`
resource), keeps one detached actor per node (a `procs.NodeProcs`, shipped by value: a node
needs Ray, not orchestra), and carries the daemon's calls to them. For each process it keeps
one read in flight and sends what comes back to the daemon as it comes; while the daemon
has paused output it reads nothing, and the node's buffers and then the process's pipe
fill. Messages, daemon to bridge:

    ["start", task, attempt, argv, cwd, env, stdin]  ["write", task, data]  ["close", task]
    ["term", task, grace]  ["pause"]  ["resume"]  ["quit"]

and bridge to daemon:

    ["ready", [[node_id, host, slots], ...]] or ["failed", why]   (once, first)
    ["started", task, pid, node_id] or ["refused", task, why]
    ["out", task, stream, bytes]  ["exit", task, pid, code, signal]

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

from orchestrad.remote import procs, wire

RESOURCE = "orchestra_agent"
READ_BYTES = 4 << 20  # at most this much output per read call
READ_WAIT = 0.5  # seconds a read waits on the node for output


class Bridge:
    def __init__(self, writer: asyncio.StreamWriter, namespace: str) -> None:
        self.writer = writer
        self.namespace = namespace
        self.nodes: dict[str, dict] = {}  # node id -> {"host", "slots", "actor"}
        self.running: dict[int, tuple[str, str]] = {}  # task -> (node id, key)
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.pumps: set[asyncio.Task] = set()  # and stdin feeders
        self.stdin: dict[int, asyncio.Queue] = {}  # task -> writes on their way, None for the close

    def send(self, *message: object) -> None:
        self.writer.write(wire.frame(*message))

    def connect_nodes(self) -> None:
        Actor = ray.remote(procs.NodeProcs)
        for node in ray.nodes():
            slots = int(node.get("Resources", {}).get(RESOURCE, 0))
            if not node.get("Alive") or slots < 1:
                continue
            node_id = node["NodeID"]
            actor = Actor.options(
                name=f"orchestra-node-{node_id[:16]}", namespace=self.namespace, lifetime="detached",
                get_if_exists=True, num_cpus=0, max_concurrency=256,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote()
            self.nodes[node_id] = {"host": node.get("NodeManagerHostname", ""), "slots": slots, "actor": actor}

    def place(self) -> str | None:
        """The node with the most free slots, or None when every slot is taken."""
        used: dict[str, int] = {}
        for node_id, _ in self.running.values():
            used[node_id] = used.get(node_id, 0) + 1
        free = {n: info["slots"] - used.get(n, 0) for n, info in self.nodes.items()}
        best = max(free, key=lambda n: free[n], default=None)
        return best if best is not None and free[best] > 0 else None

    async def start(self, task: int, attempt: int, argv: list, cwd: str, env: dict, stdin: bool) -> None:
        node_id = self.place()
        if node_id is None:
            self.send("refused", task, "every agent slot of the Ray cluster is taken")
            return
        key = f"{task}.{attempt}"
        actor = self.nodes[node_id]["actor"]
        try:
            pid = await actor.start.remote(key, argv, cwd, env, stdin)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            self.send("refused", task, str(cause).strip().splitlines()[-1])
            return
        except ray.exceptions.RayError as exc:
            self.send("refused", task, f"node {self.nodes[node_id]['host']} could not start it: {type(exc).__name__}")
            return
        self.running[task] = (node_id, key)
        self.send("started", task, pid, node_id)
        pump = asyncio.get_running_loop().create_task(self.pump(task, pid, actor, key))
        self.pumps.add(pump)
        pump.add_done_callback(self.pumps.discard)

    async def pump(self, task: int, pid: int, actor, key: str) -> None:
        acked = [0, 0]
        while True:
            await self.unpaused.wait()
            got = await actor.read.remote(key, tuple(acked), READ_BYTES, READ_WAIT)
            for i, stream in enumerate(("stdout", "stderr")):
                if got[stream]:
                    self.send("out", task, stream, got[stream])
                    acked[i] += len(got[stream])
            await self.writer.drain()
            if got["exit"] is not None or got["unknown"]:
                code, sig = got["exit"] or (None, None)
                self.running.pop(task, None)
                if task in self.stdin:
                    self.stdin[task].put_nowait(None)  # its feeder ends
                await actor.forget.remote(key)  # before the exit is told: a bridge may quit right after
                self.send("exit", task, pid, code, sig)
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
            self.pumps.add(feeder)
            feeder.add_done_callback(self.pumps.discard)
        queue.put_nowait(data)

    async def feeding(self, task: int, queue: asyncio.Queue, actor, key: str) -> None:
        while True:
            data = await queue.get()
            if data is None:
                await actor.close_stdin.remote(key)
                self.stdin.pop(task, None)
                return
            if not await actor.write.remote(key, data):
                self.stdin.pop(task, None)
                return

    def actor_of(self, task: int):
        where = self.running.get(task)
        return (self.nodes[where[0]]["actor"], where[1]) if where else (None, "")

    async def serve(self, reader: asyncio.StreamReader) -> None:
        while (message := await wire.read_frame(reader)) is not None:
            kind, *args = message
            if kind == "start":
                asyncio.get_running_loop().create_task(self.start(*args))
            elif kind in ("write", "close"):
                self.feed(args[0], args[1] if kind == "write" else None)
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


async def main(fd: int, address: str, namespace: str) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    bridge = Bridge(writer, namespace)
    try:
        ray.cloudpickle.register_pickle_by_value(procs)
        ray.init(address=address, namespace=namespace, log_to_driver=False, logging_level="ERROR",
                 configure_logging=False)
        bridge.connect_nodes()
    except Exception as exc:  # noqa: BLE001 - told to the daemon, which shows it
        bridge.send("failed", f"cannot use the Ray cluster at {address}: {exc}")
        await writer.drain()
        return
    bridge.send("ready", [[n, info["host"], info["slots"]] for n, info in bridge.nodes.items()])
    await writer.drain()
    await bridge.serve(reader)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--namespace", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.fd, args.address, args.namespace))
    sys.stdout.flush()
    os._exit(0)  # not ray's atexit: the actors stay, detached, for the next bridge
