"""Stalled `logs --follow` readers at full size (issue 14, item 1): is any output lost, and
what do they cost the daemon's memory?

    .venv/bin/python bench/bench_followers.py [--followers 50] [--mib 500] [--json PATH]

One daemon, on a fresh home under bench/out/. A command task waits for a line on stdin,
then writes --mib MiB as fast as it can (each MiB different). Before it starts writing,
--followers clients ask for `logs --follow` (as `orchestra logs -f 4 | less` does) and
never read a byte (a 4 KiB receive buffer); one more follows with the real client and
reads everything as it comes (a reader that keeps up). Then:

- the daemon's peak memory (VmHWM from /proc: the kernel's own peak, no sampling gaps)
  and what it holds once the task has ended, beside its memory before the followers came;
- BufferError (or any traceback) in the daemon's output;
- what the reader that kept up got, and what `orchestra logs --raw` serves afterwards,
  against what was written (size and sha256), with its time;
- after the stalled followers hang up and the daemon stops: `orchestrad --verify`, and,
  after a restart, the task's output size and `logs --raw` again.

The issue's figures, before the fixes: 48 BufferErrors for 50 MB and one stalled
follower, `logs --raw` serving 1,048,576 bytes, `--verify` reporting a mismatch; 50
stalled followers of a 500 MB task peaking at 313 MB RSS. The target is under 150 MB.
Everything started is cleaned up (the daemon by its pid, the home removed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402

from orchestra.shared import protocol as p  # noqa: E402
from tests.reliability.harness import PY, RDaemon, Raw, kill_marked  # noqa: E402

WRITER = ("import hashlib, sys\nsys.stdin.readline()\nout = sys.stdout.buffer\n"
          "for i in range({n}):\n    out.write(hashlib.sha256(b'%d' % i).digest() * 32768)\n")


def expected(n: int) -> tuple[int, str]:
    h = hashlib.sha256()
    for i in range(n):
        h.update(hashlib.sha256(b"%d" % i).digest() * 32768)
    return n << 20, h.hexdigest()


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Keeper(threading.Thread):
    """`logs -f --raw` through the real client, reading every frame as it comes."""

    def __init__(self, d: RDaemon, task: int) -> None:
        super().__init__(daemon=True)
        self.conn = d.connect()
        self.task = task
        self.size = 0
        self.hash = hashlib.sha256()
        self.error = ""

    def run(self) -> None:
        try:
            with self.conn:
                for chunk in self.conn.stream(p.Logs(task=self.task, follow=True, raw=True), p.LogChunk):
                    self.size += len(chunk.data)
                    self.hash.update(chunk.data)
        except Exception as exc:  # noqa: BLE001 - reported
            self.error = f"{type(exc).__name__}: {exc}"


def cli_logs(d: RDaemon, task: int) -> tuple[int, str, float]:
    """`orchestra logs --raw TASK` as a person runs it: (bytes, sha256, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "orchestra", "logs", "--raw", str(task)], env=d.env, stdout=subprocess.PIPE)
    h, size = hashlib.sha256(), 0
    assert proc.stdout is not None
    while block := proc.stdout.read(1 << 20):
        h.update(block)
        size += len(block)
    proc.stdout.close()
    proc.wait(300)
    return size, h.hexdigest(), time.perf_counter() - t0


def stall(d: RDaemon, task: int) -> Raw:
    raw = Raw(d.paths.socket, timeout=30)
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.hello()
    raw.frame(msgspec.msgpack.encode(p.Logs(task=task, follow=True)))
    return raw


def run(followers: int, mib: int) -> dict:
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    d = RDaemon(Path(tempfile.mkdtemp(prefix="followers-", dir=out)))
    size, digest = expected(mib)
    fig: dict = {"followers": followers, "mib": mib, "bytes_written": size}
    stalled: list[Raw] = []
    try:
        d.start()
        task = d.submit(PY, "-c", WRITER.format(n=mib), title="writer")
        d.wait_status(task, p.Status.RUNNING)
        fig["rss_before_kb"] = status_kb(d.pid, "VmRSS")
        stalled = [stall(d, task) for _ in range(followers)]
        keeper = Keeper(d, task)
        keeper.start()
        cpu0, t0 = cpu_s(d.pid), time.perf_counter()
        d.call(p.Respond(task=task, text="go"))
        view = d.wait_status(task, p.Status.SUCCEEDED, p.Status.FAILED, timeout=1800)
        fig["write_s"] = time.perf_counter() - t0
        keeper.join(600)
        fig["keeper_s"] = time.perf_counter() - t0
        fig["daemon_cpu_s"] = cpu_s(d.pid) - cpu0
        fig["peak_kb"] = status_kb(d.pid, "VmHWM")
        fig["rss_after_kb"] = status_kb(d.pid, "VmRSS")
        text = d.output()
        fig["buffer_errors"] = text.count("BufferError")
        fig["tracebacks"] = text.count("Traceback")
        fig["status"] = view.status.value
        fig["output_bytes"] = view.output_bytes
        fig["keeper_ok"] = keeper.size == size and keeper.hash.hexdigest() == digest
        fig["keeper_bytes"] = keeper.size
        fig["keeper_error"] = keeper.error
        served, served_digest, fig["logs_raw_s"] = cli_logs(d, task)
        fig["logs_raw_bytes"], fig["logs_raw_ok"] = served, (served, served_digest) == (size, digest)
        for raw in stalled:
            raw.close()
        stalled = []
        d.stop()
        verify = d.orchestrad("--verify", timeout=1800)
        fig["verify"] = (verify.stdout + verify.stderr).strip().splitlines()[-1:]
        fig["verify_ok"] = verify.returncode == 0
        d.start()
        fig["output_bytes_after_restart"] = d.task(task).output_bytes
        served, served_digest, _ = cli_logs(d, task)
        fig["logs_raw_after_restart_ok"] = (served, served_digest) == (size, digest)
    finally:
        for raw in stalled:
            raw.close()
        d.cleanup()
        kill_marked(d.marker)
    return fig


def report(fig: dict) -> None:
    mb = fig["bytes_written"] / 1e6
    print(f"{fig['followers']} stalled `logs -f` followers of a task writing {fig['bytes_written']:,} bytes")
    print(f"  task {fig['status']} in {fig['write_s']:.1f} s, {fig['output_bytes']:,} bytes recorded; "
          f"daemon CPU {fig['daemon_cpu_s']:.1f} s")
    print(f"  daemon VmRSS {fig['rss_before_kb'] / 1024:.0f} MB before the followers, "
          f"peak (VmHWM) {fig['peak_kb'] / 1024:.0f} MB, {fig['rss_after_kb'] / 1024:.0f} MB after (target: under 150 MB)")
    print(f"  BufferErrors in the daemon's output: {fig['buffer_errors']}; tracebacks: {fig['tracebacks']}")
    print(f"  a reader that kept up: {fig['keeper_bytes']:,} bytes, {'all of them, same sha256' if fig['keeper_ok'] else 'WRONG'}"
          f" {fig['keeper_error']}; done {fig['keeper_s']:.1f} s after the writer began")
    print(f"  `logs --raw` afterwards: {fig['logs_raw_bytes']:,} bytes, {'same sha256' if fig['logs_raw_ok'] else 'WRONG'}, "
          f"{fig['logs_raw_s']:.1f} s ({mb / fig['logs_raw_s']:.0f} MB/s)")
    print(f"  orchestrad --verify: {'ok' if fig['verify_ok'] else 'FAILED'} {fig['verify']}")
    print(f"  after a restart: output_bytes {fig['output_bytes_after_restart']:,}, `logs --raw` "
          f"{'same sha256' if fig['logs_raw_after_restart_ok'] else 'WRONG'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--followers", type=int, default=50)
    parser.add_argument("--mib", type=int, default=500, help="MiB the task writes")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    fig = run(args.followers, args.mib)
    report(fig)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    ok = (fig["buffer_errors"] == 0 and fig["keeper_ok"] and fig["logs_raw_ok"] and fig["verify_ok"]
          and fig["logs_raw_after_restart_ok"] and fig["peak_kb"] < 150 * 1024)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
