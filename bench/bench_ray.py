"""The Ray executor beside the local one (issue 19), on a real Ray cluster on this machine.

    .venv/bin/python bench/bench_ray.py [--quick] [--only start,ingest,many] [--json PATH]

Starts a head and one worker node (`ray start`, like tests/raycluster.py; `--quick` uses
the head alone), a daemon on a fresh home under bench/out/, and measures, side by side in
one run:

1. start    a `true` task, submitted once the one before finished, in turn local, local
            in a worktree, and ray on a warm cluster (the bridge connected, the node's
            actor made; the task works in a worktree here and a checkout on its node, and
            what it left comes back): submit to finished, p50 and p95. Target: ray <=
            local + 300 ms.
2. ingest   one process on the worker node writes 1 GiB (256 MiB with --quick) to stdout:
            MB/s submit to finish over Ray, beside the same task local; daemon peak RSS.
            Targets: >= 100 MB/s, RSS <= 150 MB.
3. many     200 remote tasks (50 with --quick), each printing a line every 100 ms for
            20 s: daemon CPU while they run, and `orchestra ps` latency meanwhile (p50,
            p95), beside an idle daemon's.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "cli"), str(REPO / "bench")]

from bench_daemon import ORCHESTRA, Daemon, Table, ms, pct, proc_cpu_seconds, proc_status, verdict, wait_for  # noqa: E402

from orchestra.shared import protocol as p  # noqa: E402
from tests.gitrepo import make_repo  # noqa: E402
from tests.raycluster import RayCluster  # noqa: E402

GIB = 1 << 30


def run_one(daemon: Daemon, executor: str, argv: list[str], worktree: bool | None = None) -> tuple[float, float, p.TaskView]:
    """Submit in the bench's repository, wait: (submit -> spawned, submit -> finished) in
    seconds, and its view. A ray task works in a worktree here and a checkout on its node."""
    with daemon.connect() as conn:
        t0 = time.time()
        task = conn.call(p.Submit(cwd=str(daemon.repo), argv=argv, executor=executor, worktree=worktree), p.TaskView).id
        [view] = conn.call(p.Wait(tasks=[task]), list[p.TaskView])
        done = time.time()
    if view.status is not p.Status.SUCCEEDED:
        raise RuntimeError(f"task {task} ({executor}) ended {view.status.value}: {view.reason}")
    return view.started_at - t0, done - t0, view


def bench_start(table: Table, daemon: Daemon, args) -> None:
    runs = 10 if args.quick else 60
    run_one(daemon, "ray", ["true"])  # warm: the bridge joins, the node's actor is made
    finish: dict[str, list[float]] = {"local": [], "local --worktree": [], "ray": []}
    for _ in range(runs):
        for name, executor, worktree in (("local", "local", None), ("local --worktree", "local", True), ("ray", "ray", None)):
            finish[name].append(run_one(daemon, executor, ["true"], worktree)[1])
    ray50, ray95 = pct(finish["ray"], 50), pct(finish["ray"], 95)
    for anchor in ("local", "local --worktree"):
        local50, local95 = pct(finish[anchor], 50), pct(finish[anchor], 95)
        table.add("start", f"`true`, submit -> finished, p50 / p95 ({runs} each)", f"ray {ms(ray50)} / {ms(ray95)}",
                  f"{anchor} {ms(local50)} / {ms(local95)}", f"+{ms(ray50 - local50)}", "<= local + 300 ms",
                  verdict(ray50 - local50 <= 0.3))


def bench_ingest(table: Table, daemon: Daemon, args) -> None:
    size = GIB // 4 if args.quick else GIB
    run_one(daemon, "ray", ["true"])  # warm: the bridge joined, the node's actor made
    peak = [proc_status(daemon.pid, "VmRSS")]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], proc_status(daemon.pid, "VmRSS"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    argv = ["head", "-c", str(size), "/dev/zero"]
    cpu0 = proc_cpu_seconds(daemon.pid)
    _, ray_s, view = run_one(daemon, "ray", argv)
    cpu1 = proc_cpu_seconds(daemon.pid)
    stop.set()
    sampler.join()
    if view.output_bytes != size:
        raise RuntimeError(f"{view.output_bytes} bytes recorded, {size} written")
    _, local_s, _ = run_one(daemon, "local", argv)
    rate, local_rate = size / ray_s / 1e6, size / local_s / 1e6
    table.add("ingest", f"{size >> 20} MiB on stdout from node {view.node}", f"{rate:,.0f} MB/s ({ray_s:.2f} s)",
              f"local {local_rate:,.0f} MB/s ({local_s:.2f} s)", "", ">= 100 MB/s", verdict(rate >= 100))
    table.add("ingest", "  daemon peak RSS during the ray run", f"{peak[0] / 1024:.0f} MB", "", "", "<= 150 MB",
              verdict(peak[0] / 1024 <= 150))
    table.add("ingest", "  daemon CPU during the ray run", f"{cpu1 - cpu0:.2f} s", "")


def ps_times(daemon: Daemon, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        subprocess.run([ORCHESTRA, "ps"], env=daemon.env, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return times


def bench_many(table: Table, daemon: Daemon, slots: int, args) -> None:
    count = 50 if args.quick else 200
    idle_ps = ps_times(daemon, 20)
    code = "import time\nfor i in range(200): print(i, flush=True); time.sleep(0.1)"
    with daemon.connect() as conn:
        tasks = [conn.call(p.Submit(cwd=str(daemon.repo), argv=[sys.executable, "-c", code], executor="ray"), p.TaskView).id
                 for _ in range(count)]
    wait_for(lambda: sum(t.status is p.Status.RUNNING for t in daemon.call(p.ListTasks(limit=count), p.TaskPage).tasks) >= min(count, slots),
             120, "the tasks running")
    cpu0, t0 = proc_cpu_seconds(daemon.pid), time.perf_counter()
    busy_ps = ps_times(daemon, 20)
    time.sleep(5)
    cpu = (proc_cpu_seconds(daemon.pid) - cpu0) / (time.perf_counter() - t0)
    with daemon.connect() as conn:
        views = conn.call(p.Wait(tasks=tasks), list[p.TaskView])
    bad = [v.id for v in views if v.status is not p.Status.SUCCEEDED or v.output_bytes != sum(len(f"{i}\n") for i in range(200))]
    if bad:
        raise RuntimeError(f"tasks {bad[:5]} did not end with all their lines")
    table.add("many", f"{count} remote tasks, a line / 100 ms: daemon CPU", f"{cpu * 100:.0f}% of a core", "", "", "", "")
    table.add("many", "  orchestra ps meanwhile, p50 / p95", f"{ms(pct(busy_ps, 50))} / {ms(pct(busy_ps, 95))}",
              f"idle {ms(pct(idle_ps, 50))} / {ms(pct(idle_ps, 95))}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="start,ingest,many")
    parser.add_argument("--json")
    args = parser.parse_args()
    only = set(args.only.split(","))
    cluster = RayCluster()
    table = Table()
    daemon = Daemon("ray")
    try:
        many = 50 if args.quick else 200
        cluster.start_head(slots=many if args.quick else 4)
        if not args.quick:
            cluster.add_worker(slots=many)  # the node the figures come from
        daemon.start()
        daemon.configure(ray_address=cluster.address, max_output_bytes=4 * GIB)
        daemon.repo = make_repo(daemon.home / "repo")
        if "start" in only:
            bench_start(table, daemon, args)
        if "ingest" in only:
            bench_ingest(table, daemon, args)
        if "many" in only:
            bench_many(table, daemon, many, args)
    finally:
        daemon.cleanup()
        cluster.stop()
    table.show(args.json)


if __name__ == "__main__":
    main()
