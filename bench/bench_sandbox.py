"""What the sandbox costs at the start of a task (#16): the same trivial command agent with
and without bubblewrap, side by side in one run, on one daemon.

    .venv/bin/python bench/bench_sandbox.py [--runs 60] [--gap 0.2]

One daemon; a role `boxed` with `sandbox = "on"`; then, alternating, a task `echo ready`
in the default role (no sandbox) and one in `boxed`, each submitted once the one before
has finished and --gap seconds have passed. From the log's timestamps (the daemon's clock), for each task:

* submit -> spawned: TaskSubmitted to ProcessSpawned (the daemon decides, records the
  start durably, probes nothing after the first time, builds the layout, forks and execs);
* spawned -> first output: ProcessSpawned to the first OutputAppended (bwrap sets up its
  namespaces and mounts, then execs the agent, which writes one line);
* submit -> first output: the two together, the start as a person sees it.

Prints p50 and p95 of each, with and without the sandbox, and the overhead at p50 and p95.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestra.shared import protocol as p  # noqa: E402
from orchestrad import events as ev  # noqa: E402
from tests.daemon import Daemon, wait_for  # noqa: E402
from tests.reliability.harness import read_log  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=60, help="tasks of each kind (default 60)")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds between a task's end and the next submit, "
                        "so that the last one's clean-up (sweep, cgroup removal) is not measured in the next (default 0.2)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="orc-bench-sbx-", dir="/var/tmp"))
    d = Daemon(home)
    roles = d.paths.config / "roles"
    roles.mkdir(parents=True)
    roles.joinpath("boxed.toml").write_text('prompt = "boxed"\nsandbox = "on"\n')
    d.start()
    kinds: dict[int, str] = {}
    try:
        wait_for(lambda: "boxed" in d.call(p.Roles(), p.RolesResult).custom, 15, "the role to load")
        for warm in ("generalist", "boxed"):  # the first sandboxed start probes bwrap once
            task = d.call(p.Submit(argv=["echo", "ready"], cwd=str(home), role=warm), p.TaskView).id
            d.wait_status(task, p.Status.SUCCEEDED)
        for run in range(args.runs * 2):
            role = "boxed" if run % 2 else "generalist"
            task = d.call(p.Submit(argv=["echo", "ready"], cwd=str(home), role=role), p.TaskView).id
            view = d.wait_status(task, *p.FINISHED, timeout=30)
            if view.status is not p.Status.SUCCEEDED:
                raise SystemExit(f"task {task} ({role}) {view.status.value}: {view.reason}")
            kinds[task] = "sandbox" if role == "boxed" else "none"
            time.sleep(args.gap)
        d.stop()
        submitted: dict[int, float] = {}
        spawned: dict[int, float] = {}
        first: dict[int, float] = {}
        boxes: dict[int, str] = {}
        for rec in read_log(d.paths.log_dir):
            event = rec.event
            task = getattr(event, "task", None)
            if task not in kinds:
                continue
            if isinstance(event, ev.TaskSubmitted):
                submitted[task] = rec.ts
            elif isinstance(event, ev.ProcessSpawned):
                spawned[task] = rec.ts
                boxes[task] = event.sandbox
            elif isinstance(event, ev.OutputAppended) and task not in first:
                first[task] = rec.ts
        assert all(bool(boxes[t]) == (k == "sandbox") for t, k in kinds.items()), "a task ran in the wrong sandbox"
        rows = {}
        for kind in ("none", "sandbox"):
            ids = [t for t, k in kinds.items() if k == kind]
            rows[kind] = {
                "submit -> spawned": [(spawned[t] - submitted[t]) * 1000 for t in ids],
                "spawned -> first output": [(first[t] - spawned[t]) * 1000 for t in ids],
                "submit -> first output": [(first[t] - submitted[t]) * 1000 for t in ids],
            }
        print(f"{args.runs} tasks of each kind, alternating, on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        print(f"| measure | no sandbox p50 / p95 | sandbox p50 / p95 | overhead p50 / p95 |")
        print("|---|---|---|---|")
        for measure in rows["none"]:
            a, b = rows["none"][measure], rows["sandbox"][measure]
            a50, a95, b50, b95 = percentile(a, 0.5), percentile(a, 0.95), percentile(b, 0.5), percentile(b, 0.95)
            print(f"| {measure} | {a50:.1f} / {a95:.1f} ms | {b50:.1f} / {b95:.1f} ms | {b50 - a50:+.1f} / {b95 - a95:+.1f} ms |")
        total_a = rows["none"]["submit -> first output"]
        total_b = rows["sandbox"]["submit -> first output"]
        print(f"mean submit -> first output: {statistics.mean(total_a):.1f} ms without, {statistics.mean(total_b):.1f} ms with")
    finally:
        d.cleanup()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
