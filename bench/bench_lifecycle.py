"""How fast the daemon stops, and that an idle daemon stays idle (#15).

    .venv/bin/python bench/bench_lifecycle.py [--runs 10] [--idle 10]

For each run: start a daemon on a fresh home, let it settle, measure the CPU it uses while
idle for --idle seconds (utime + stime from /proc), then send SIGTERM and time until the
process has exited. Prints each run and the median; the anchor is `python -I -c pass`,
timed in the same run, for what "fast" means on this machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.daemon import Daemon  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def one(idle: float) -> tuple[float, float]:
    home = Path(tempfile.mkdtemp(prefix="orc-bench-"))
    d = Daemon(home).start()
    try:
        time.sleep(1.0)
        pid = d.proc.pid
        before = cpu_seconds(pid)
        time.sleep(idle)
        busy = (cpu_seconds(pid) - before) / idle
        start = time.perf_counter()
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(30)
        stopped = time.perf_counter() - start
        d.proc = None
        return stopped, busy
    finally:
        d.cleanup()
        shutil.rmtree(home, ignore_errors=True)


def interpreter() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=float, default=10.0)
    args = parser.parse_args()
    stops, idles, anchors = [], [], []
    for run in range(args.runs):
        stopped, busy = one(args.idle)
        anchor = interpreter()
        stops.append(stopped)
        idles.append(busy)
        anchors.append(anchor)
        print(f"run {run + 1}: SIGTERM to exit {stopped * 1000:.1f} ms; idle CPU {busy * 100:.3f}% of a core; "
              f"python -I -c pass {anchor * 1000:.1f} ms", flush=True)
    print(f"median: stop {statistics.median(stops) * 1000:.1f} ms (worst {max(stops) * 1000:.1f} ms), "
          f"idle CPU {statistics.median(idles) * 100:.3f}% of a core, python -I -c pass {statistics.median(anchors) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
