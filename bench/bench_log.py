"""How fast is the event log? Replay reads, and durable appends with and without group commit.

    python bench/bench_log.py [--records 1000000] [--seconds 3] [--dir PATH]

Prints figures; writes nothing outside a temporary directory, which it removes. The
directory must be on a real disk (fsync on tmpfs costs nothing and would flatter the
append figures), so /tmp is used only when it is on the same file system as this repo.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from pathlib import Path

from orchestrad.log import GroupCommit, Log

REPO = Path(__file__).resolve().parent.parent


def filesystem_of(path: Path) -> str:
    """The type of the file system holding `path`, from /proc/mounts (Linux), else '?'."""
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _dev, mount, fstype, *_ = line.split()
                if str(path).startswith(mount) and len(mount) > len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


def pick_directory(requested: str | None) -> Path:
    if requested:
        base = Path(requested)
    else:
        tmp = Path(tempfile.gettempdir()).resolve()
        on_repo_disk = os.stat(tmp).st_dev == os.stat(REPO).st_dev
        base = tmp if on_repo_disk and filesystem_of(tmp) != "tmpfs" else REPO / "bench" / "out"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="bench-log-", dir=base))


def body(i: int) -> bytes:
    """About 60 bytes, like a small encoded event."""
    return b"\x85\xa4kind\xadTaskSubmitted\xa2id%c\xa4prio\x02\xa6prompt\xb0fix the tests %06d" % (i % 128, i % 10**6)


def bench_read(directory: Path, records: int) -> None:
    with Log.open(directory / "read") as log:
        t = time.perf_counter()
        for start in range(0, records, 1000):
            log.append([(body(i), b"") for i in range(start, min(records, start + 1000))])
        log.sync()
        write_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in (directory / "read").iterdir())
    print(f"wrote {records:,} records ({size / records:.0f} bytes each on disk) in {write_s:.2f} s"
          f" = {records / write_s:,.0f} records/s (batches of 1000, one fsync)")

    t, c = time.perf_counter(), time.process_time()
    log = Log.open(directory / "read")
    open_s, open_cpu = time.perf_counter() - t, time.process_time() - c
    print(f"open (checks every record checksum): {open_s:.2f} s = {records / open_s:,.0f} records/s"
          f" ({records / open_cpu:,.0f} per CPU-second)")
    rates, cpu_rates = [], []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        n = 0
        for _entry in log.read():
            n += 1
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        assert n == records
        rates.append(n / elapsed)
        cpu_rates.append(n / cpu)
    log.close()
    print(f"read(): {max(rates):,.0f} records/s (best of 3: {', '.join(f'{r:,.0f}' for r in rates)});"
          f" per CPU-second: {max(cpu_rates):,.0f} (what it does with a core to itself)")


async def group_commit_rate(directory: Path, writers: int, seconds: float) -> tuple[int, int, float]:
    with Log.open(directory) as log:
        commit = GroupCommit(log)
        stop = time.perf_counter() + seconds
        done = 0

        async def writer(w: int) -> None:
            nonlocal done
            i = 0
            while time.perf_counter() < stop:
                await commit.append([(body(w * 1_000_000 + i), b"")])
                i += 1
                done += 1

        t = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        await commit.close()
        return done, commit.fsyncs, time.perf_counter() - t


def fsync_per_append_rate(directory: Path, seconds: float) -> tuple[int, float]:
    with Log.open(directory) as log:
        t = time.perf_counter()
        stop = t + seconds
        n = 0
        while time.perf_counter() < stop:
            log.append([(body(n), b"")])
            log.sync()
            n += 1
        return n, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--dir", help="parent directory for the temporary log (default: see above)")
    args = parser.parse_args()

    directory = pick_directory(args.dir)
    load = ", load average %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"log directory: {directory} ({filesystem_of(directory)}), {os.cpu_count()} CPUs{load}")
    try:
        bench_read(directory, args.records)
        n, fsyncs, elapsed = asyncio.run(group_commit_rate(directory / "group", args.writers, args.seconds))
        print(f"durable appends, {args.writers} concurrent writers, GroupCommit: {n / elapsed:,.0f} appends/s"
              f" ({fsyncs:,} fsyncs, {n / max(1, fsyncs):.1f} appends per fsync)")
        n, elapsed = fsync_per_append_rate(directory / "single", args.seconds)
        print(f"durable appends, 1 writer, fsync per append: {n / elapsed:,.0f} appends/s"
              f" ({elapsed / n * 1e3:.2f} ms per fsync)")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
