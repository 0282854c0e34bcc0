"""Core benchmarks: replay speed, start-up with a snapshot, durable submits.

    .venv/bin/python bench/bench_core.py [--events 1000000] [--dir bench/out/core] [--keep]

Builds a log of a realistic mix of events (per task: submitted, spawned, session, about ten
output chunks of 4-64 KiB, two usage records, exited, finished), then measures:

* full replay: opening the store with no snapshot (every record checked and folded), best of 3;
* start-up with a snapshot: opening the store once a snapshot of that history exists;
* durable submits/s: 64 concurrent writers, each awaiting its own fsynced submit (group
  commit), beside one writer doing fsync-per-append.

Figures are printed; bench/RESULTS.md records them with the machine they came from. With
--keep, the log is left in --dir, and a later run with --keep replays it again instead of
building it anew (its snapshots are removed first, so replay starts from nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import time
from pathlib import Path

from orchestra.shared.protocol import Status
from orchestrad import events as ev
from orchestrad.log import Log
from orchestrad.store import Store

SPEC = ev.TaskSpec(
    prompt="implement the parser change described in the design notes, with tests",
    argv=[],
    role="implementer",
    agent="claude",
    priority=0,
    after=[],
    cwd="/home/dev/project",
    env={"PROJECT": "demo"},
    secret_env=[],
    timeout=3600.0,
    idle_timeout=600.0,
    budget_usd=5.0,
    model=None,
    title="implement the parser change",
)


def build(directory: Path, n_events: int, seed: int = 1) -> tuple[int, int, int]:
    """Write the mixed log; (events, tasks, output bytes)."""
    rng = random.Random(seed)
    blob = os.urandom(64 << 10)
    log = Log.open(directory)
    written = tasks = out_bytes = 0
    ts = 1_700_000_000.0
    batch: list[tuple[bytes, bytes]] = []

    def add(event: ev.Event, data: bytes = b"") -> None:
        nonlocal written
        batch.append((ev.encode(ts, event), data))
        written += 1
        if len(batch) >= 512:
            log.append(batch)
            batch.clear()

    while written < n_events:
        tasks += 1
        task = tasks
        add(ev.TaskSubmitted(task=task, spec=SPEC))
        add(ev.ProcessSpawned(task=task, attempt=1, pid=10_000 + task % 30_000, argv=["claude", "-p"]))
        add(ev.SessionStarted(task=task, session_id=f"{task:08x}-session", model="claude-sonnet"))
        for i in range(rng.randint(6, 14)):
            size = int(4096 * (16 ** rng.random()))  # log-uniform, 4-64 KiB
            add(ev.OutputAppended(task=task, stream="stdout", size=size), blob[:size])
            out_bytes += size
            ts += 0.05
            if i % 5 == 4:
                add(ev.UsageRecorded(task=task, cost_usd=0.01, input_tokens=1200, output_tokens=300))
        add(ev.ProcessExited(task=task, pid=10_000 + task % 30_000, exit_code=0, signal=None))
        add(ev.TaskFinished(task=task, outcome=Status.SUCCEEDED, reason=""))
        ts += 1
    if batch:
        log.append(batch)
    log.sync()
    log.close()
    return written, tasks, out_bytes


def timed_open(state_dir: Path) -> tuple[float, Store]:
    start = time.perf_counter()
    store = Store.open(state_dir / "log", state_dir / "snapshots")
    return time.perf_counter() - start, store


async def durable_submits(state_dir: Path, writers: int, per_writer: int) -> float:
    store = Store.open(state_dir / "log", state_dir / "snapshots")
    store.attach()
    counter = iter(range(1, 10**9))

    async def writer() -> None:
        for _ in range(per_writer):
            await store.append(time.time(), [ev.TaskSubmitted(task=next(counter), spec=SPEC)])

    start = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(writers)))
    elapsed = time.perf_counter() - start
    await store.close()
    return writers * per_writer / elapsed


def fsync_per_append(directory: Path, n: int) -> float:
    log = Log.open(directory)
    body = ev.encode(time.time(), ev.TaskSubmitted(task=1, spec=SPEC))
    start = time.perf_counter()
    for _ in range(n):
        log.append([(body, b"")])
        log.sync()
    elapsed = time.perf_counter() - start
    log.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / "out" / "core")
    parser.add_argument("--keep", action="store_true", help="keep the log, and reuse a kept one")
    args = parser.parse_args()
    root: Path = args.dir
    state_dir = root / "state"
    kept = args.keep and (state_dir / "log").is_dir()
    if kept:
        for leftover in (state_dir / "snapshots", root / "submits", root / "single"):
            shutil.rmtree(leftover, ignore_errors=True)
        with Log.open(state_dir / "log", readonly=True) as log:
            n = log.last_seq
        print(f"reusing the log of {n:,} events in {state_dir / 'log'}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        t = time.perf_counter()
        n, tasks, out_bytes = build(state_dir / "log", args.events)
        print(f"built {n:,} events ({tasks:,} tasks, {out_bytes / 2**30:.1f} GiB of output) in {time.perf_counter() - t:.1f} s")

    os.system("sync")
    times = []
    for _ in range(3):  # the first run also reads the log into the page cache, if it is not there
        seconds, store = timed_open(state_dir)
        times.append(seconds)
        store.log.close()
    best = min(times)
    runs = ", ".join(f"{t:.2f}" for t in times)
    print(f"full replay (no snapshot): {best:.2f} s = {n / best:,.0f} events/s (best of 3: {runs} s)")
    t = time.perf_counter()
    store.snapshot_now()
    print(f"snapshot write: {time.perf_counter() - t:.2f} s ({len(store.state.tasks):,} tasks)")
    del store

    best = min(timed_open(state_dir)[0] for _ in range(3))
    print(f"start-up with a snapshot: {best * 1000:.0f} ms (best of 3)")

    async_dir = root / "submits"
    rate = asyncio.run(durable_submits(async_dir, writers=64, per_writer=200))
    single = fsync_per_append(root / "single", 500)
    print(f"durable submits/s, 64 concurrent writers (group commit): {rate:,.0f}")
    print(f"durable appends/s, one writer, fsync per append:         {single:,.0f}")
    if args.keep:
        shutil.rmtree(state_dir / "snapshots", ignore_errors=True)
        shutil.rmtree(async_dir, ignore_errors=True)
        shutil.rmtree(root / "single", ignore_errors=True)
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
