"""How fast is the event log? Replay reads, and durable appends with and without group commit.

    python bench/bench_log.py [--records 1000000] [--mixed-records 1000000] [--seconds 3] [--dir PATH]

Replay is measured on two logs of --records / --mixed-records records:

* small records: every record a ~60-byte body without data;
* the realistic mix: bodies of 40-120 bytes, and ~60% of the records carry data of 4-64 KiB
  (log-uniform), like agent output. The data goes to the .dat files, which replay never
  reads; 1,000,000 such records make about 13 GB of data, so this needs the disk space and
  a minute or two to write. --mixed-records 0 skips it.

Replay figures open the log afresh for each run, as the daemon does at start-up: sealed
segments are then checked in the same pass that replays them.

Prints figures; writes nothing outside a temporary directory, which it removes. The
directory must be on a real disk (fsync on tmpfs costs nothing and would flatter the
append figures), so /tmp is used only when it is on the same file system as this repo.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from orchestrad.commit import GroupCommit  # noqa: E402
from orchestrad.log import Log  # noqa: E402
from tests import logreaders  # noqa: E402  (read and replay: readers only tests and this use)


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

    t = time.perf_counter()
    log = Log.open(directory / "read")
    open_s = time.perf_counter() - t
    print(f"open (checks the active segment's records; sealed ones only by header): {open_s:.2f} s"
          f" ({len(log.segments())} segments)")
    rates, cpu_rates = [], []
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        n = 0
        for _entry in logreaders.read(log):
            n += 1
        elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        assert n == records
        rates.append(n / elapsed)
        cpu_rates.append(n / cpu)
    log.close()
    print(f"read(): {max(rates):,.0f} records/s (best of 3: {', '.join(f'{r:,.0f}' for r in rates)});"
          f" per CPU-second: {max(cpu_rates):,.0f} (what it does with a core to itself)")
    replay_figure("small records", directory / "read", records)


def replay_figure(what: str, directory: Path, records: int, runs: int = 3) -> None:
    """Time replay() over the whole log, opening it afresh each run (as start-up does)."""
    rates, cpu_rates = [], []
    for _ in range(runs):
        with Log.open(directory) as log:
            t, c = time.perf_counter(), time.process_time()
            n = 0
            for _seq, _body, _ref in logreaders.replay(log):
                n += 1
            elapsed, cpu = time.perf_counter() - t, time.process_time() - c
        assert n == records
        rates.append(n / elapsed)
        cpu_rates.append(n / cpu)
    print(f"replay(), {what}: {max(rates):,.0f} records/s (best of {runs}: {', '.join(f'{r:,.0f}' for r in rates)});"
          f" per CPU-second: {max(cpu_rates):,.0f}")


def mixed_batches(records: int, seed: int = 1):
    """The realistic mix, in batches of 512: bodies of 40-120 bytes, ~60% with 4-64 KiB of data."""
    rng = random.Random(seed)
    blob = os.urandom(64 << 10)
    batch: list[tuple[bytes, bytes]] = []
    for i in range(records):
        size = rng.randint(40, 120)
        event = body(i)[:size].ljust(size, b"x")
        data = blob[: int(4096 * 16 ** rng.random())] if rng.random() < 0.6 else b""  # log-uniform, 4-64 KiB
        batch.append((event, data))
        if len(batch) == 512:
            yield batch
            batch = []
    if batch:
        yield batch


def bench_replay_mixed(directory: Path, records: int) -> None:
    with_data = data_bytes = 0
    t = time.perf_counter()
    with Log.open(directory) as log:
        for batch in mixed_batches(records):
            log.append(batch)
            with_data += sum(1 for _, data in batch if data)
            data_bytes += sum(len(data) for _, data in batch)
        log.sync()
    write_s = time.perf_counter() - t
    seg = sum(p.stat().st_size for p in directory.glob("*.seg"))
    print(f"wrote the realistic mix: {records:,} records, {with_data / records:.0%} with data"
          f" ({data_bytes / 2**30:.1f} GiB in .dat files; {seg / records:.0f} bytes per record in .seg files)"
          f" in {write_s:.1f} s = {records / write_s:,.0f} records/s")
    os.sync()  # let writeback finish, so that it does not run during the replay figures
    t = time.perf_counter()
    with Log.open(directory) as log:
        segments = len(log.segments())
    print(f"open: {(time.perf_counter() - t) * 1e3:.0f} ms ({segments} segments; the active one checked"
          f" with its data, the sealed ones by header)")
    replay_figure("realistic mix", directory, records)


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
    parser.add_argument("--mixed-records", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--dir", help="parent directory for the temporary log (default: see above)")
    args = parser.parse_args()

    directory = pick_directory(args.dir)
    load = ", load average %.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"log directory: {directory} ({filesystem_of(directory)}), {os.cpu_count()} CPUs{load}")
    try:
        bench_read(directory, args.records)
        if args.mixed_records:
            bench_replay_mixed(directory / "mixed", args.mixed_records)
            shutil.rmtree(directory / "mixed")
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
