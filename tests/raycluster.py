"""A real Ray cluster on this machine for tests: a head and worker nodes, each a
`ray start --block` process in its own process group, on 127.0.0.1.

Stopped by killing each node's process group, never with `ray stop` (which stops every Ray
of the machine's user). Each cluster has a temporary directory of its own.
"""

from __future__ import annotations

import json
import os
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

    def start_head(self, slots: int) -> None:
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp}",
                     ],
                    {"orchestra_agent": slots})
        self._wait_port()

    def add_worker(self, slots: int) -> subprocess.Popen:
        return self._start([f"--address={self.address}"], {"orchestra_agent": slots})

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
        try:
            os.killpg(node.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        node.wait()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            self.kill_node(node)
