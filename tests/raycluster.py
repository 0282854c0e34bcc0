"""A real Ray cluster on this machine for tests: a head and worker nodes, each a
`ray start --block` process in its own process group, on 127.0.0.1.

Stopped by killing each node's process group, never with `ray stop` (which stops every Ray
of the machine's user). Each cluster has a temporary directory of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class RayCluster:
    def __init__(self) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp = Path(tempfile.mkdtemp(prefix="orc-ray-", dir="/tmp"))  # Ray wants a short path
        self.nodes: list[subprocess.Popen] = []

    def _start(self, args: list[str], resources: dict[str, float]) -> subprocess.Popen:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}
        with open(self.temp / f"node-{len(self.nodes)}.log", "wb") as log:
            node = subprocess.Popen(
                [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                 f"--resources={json.dumps(resources)}", *args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
            )
        self.nodes.append(node)
        return node

    @staticmethod
    def resources(slots: int, labels: tuple[str, ...]) -> dict[str, float]:
        """What a node offers orchestra: its agent slots, and a resource per label."""
        return {"orchestra_agent": slots, **{f"orchestra_label_{label}": 1 for label in labels}}

    def start_head(self, slots: int, labels: tuple[str, ...] = ()) -> None:
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp}"],
                    self.resources(slots, labels))
        self._wait_port()

    def add_worker(self, slots: int, labels: tuple[str, ...] = ()) -> subprocess.Popen:
        """A worker node, once it has joined: nodes started at once on one machine name
        their sockets alike, and one of them dies."""
        node = self._start([f"--address={self.address}"], self.resources(slots, labels))
        self.wait_nodes(sum(1 for n in self.nodes if n.poll() is None))
        return node

    def _wait_port(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nodes[0].poll() is not None:
                raise RuntimeError(f"ray start --head ended: {(self.temp / 'node-0.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("the Ray head did not open its port")

    def wait_nodes(self, count: int, timeout: float = 120.0) -> None:
        """Until `count` nodes are alive (asked of the cluster by a short-lived Python)."""
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False);"
                "print(sum(1 for n in ray.nodes() if n['Alive']))")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True, timeout=120)
            if out.returncode == 0 and int(out.stdout.strip().splitlines()[-1]) >= count:
                return
            time.sleep(1)
        raise RuntimeError(f"fewer than {count} Ray nodes came up")

    def kill_node(self, node: subprocess.Popen) -> None:
        """SIGKILL the node whole: `ray start` and every process under it (its raylet and
        workers start sessions of their own, so its process group is not enough)."""
        doomed = [node.pid, *_descendants(node.pid)]
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        node.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill_node(node)
        shutil.rmtree(self.temp, ignore_errors=True)  # its sessions and logs: nothing left in /tmp
