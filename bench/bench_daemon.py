"""End-to-end daemon benchmarks, orchestra beside task-spooler (`tsp`) and bare tools.

    .venv/bin/python bench/bench_daemon.py [--quick] [--only ps,drain,concurrent,ingest,idle]
                                           [--daemon-loop uvloop|asyncio] [--json PATH]

Needs task-spooler (`apt-get install -y task-spooler`, command `tsp`). Every benchmark starts
its own daemon on a fresh home under bench/out/ (on the repo's disk, not tmpfs: fsync must
cost what it costs) and removes it afterwards, stopping the daemon and `tsp -K`-ing its
task-spooler server.

1. ps       `orchestra ps` (the installed console script, a real subprocess, against a
            daemon holding a few tasks) vs `tsp -l` vs `python -I -c pass`; median and
            p90. Target: orchestra <= 3x the bare interpreter. Plus `-X importtime` of
            `import orchestra.main` and of a whole `orchestra ps` run.
2. drain    N `true` tasks with 2 slots, first submit to last finish; orchestra submits
            over one connection (the Submits pipelined with `Connection.call_many`, then
            `Wait`), tsp runs `tsp true` N times then waits. Target: orchestra <= 1.5x tsp.
3. concurrent  64 clients, each its own connection, submitting tasks that stay queued
            (max_concurrent 1, a blocking task holds the slot): submits/s, p50/p99.
            Target: >= 5,000 submits/s.
4. ingest   one child writes 1 GiB to stdout: MB/s from submit to finish, beside
            `head | cat > /dev/null` and a disk write; daemon peak RSS (VmHWM).
            Targets: >= 300 MB/s, peak RSS <= 150 MB.
5. idle     a daemon with 10,000 finished tasks, nothing running: CPU time over 60 s
            (10 s with --quick), also after a restart. Target: effectively zero.

`--quick` shrinks every benchmark (fewer runs, fewer tasks, 256 MiB, 10 s idle) to check the
script itself; only a full run gives the figures to quote. `--daemon-loop asyncio` runs the
daemon on the stdlib event loop instead of uvloop (a diagnostic; the daemon ships uvloop).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import msgspec

from orchestra.shared import protocol as p
from orchestra.client import connect
from orchestra.shared.paths import resolve
from orchestra.shared.framing import HEADER
from orchestra.wire import DaemonUnreachable, frame

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
BIN = Path(sys.executable).parent
ORCHESTRA = str(BIN / "orchestra") if (BIN / "orchestra").exists() else str(REPO / ".venv" / "bin" / "orchestra")
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
TSP = "tsp"  # or `ts`: set by tsp_path()
PY_SPY: str | None = None  # --py-spy: record each daemon's profile (raw flame-graph lines) under bench/out/

# ---------------------------------------------------------------------------------------
# Small helpers


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for what we measure. PYTHONDONTWRITEBYTECODE (set in some sandboxes)
    is dropped: with it, a module edited since its .pyc was written is compiled again on
    every start, which no installed copy does."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(extra)
    return env


def machine_jiffies() -> tuple[int, int]:
    """(all, idle) jiffies of every CPU so far, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values), values[3] + values[4]


def machine_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` (from /proc/stat), whoever uses them."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values), idle
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(limit: float, patience: float) -> float:
    """Wait (up to `patience` s) until the machine is under `limit` busy; the last reading."""
    deadline = time.monotonic() + patience
    busy = machine_busy()
    while busy > limit and time.monotonic() < deadline:
        busy = machine_busy(2.0)
    return busy


def fresh_dir(prefix: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=OUT))


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def proc_status(pid: int, key: str) -> int:
    """A kB figure (VmHWM, VmRSS) or a count from /proc/<pid>/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches summed over every thread: wake-ups."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_switches(pid: int) -> dict[str, int]:
    """Context switches per thread, keyed by `tid name` (from /proc/<pid>/task/<tid>/comm)."""
    found: dict[str, int] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            with open(f"/proc/{pid}/task/{task}/status") as f:
                found[f"{task} {name}"] = sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except FileNotFoundError:
            pass
    return found


# ---------------------------------------------------------------------------------------
# A daemon on a fresh home


class Daemon:
    def __init__(self, name: str, loop: str = "uvloop") -> None:
        self.home = fresh_dir(f"{name}-")
        self.paths = resolve(self.home)
        self.loop = loop
        self.env = clean_env(ORCHESTRA_HOME=str(self.home), ORCHESTRA_NO_AUTOSTART="1")
        self.proc: subprocess.Popen | None = None
        self.pid = 0
        self.start_seconds = 0.0
        self.name = name
        self.spy: subprocess.Popen | None = None
        self.profiles: list[Path] = []

    def start(self) -> "Daemon":
        if self.loop == "asyncio":  # make `import uvloop` fail, so run_loop uses asyncio.run
            argv = [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; "
                    "from orchestrad.__main__ import main; sys.exit(main(sys.argv[1:]))"]
        else:
            argv = [sys.executable, "-m", "orchestrad"]
        t0 = time.perf_counter()
        with open(self.home / "daemon.out", "ab") as log:
            self.proc = subprocess.Popen([*argv, "--home", str(self.home)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        wait_for(self._answers, 120, "the daemon to answer")
        self.start_seconds = time.perf_counter() - t0
        # The pid as a person would find it.
        out = subprocess.run([ORCHESTRA, "daemon", "status", "--json"], env=self.env, capture_output=True, text=True, check=True)
        self.pid = json.loads(out.stdout)["pid"]
        if self.pid != self.proc.pid:
            raise RuntimeError(f"daemon status says pid {self.pid}, but we started {self.proc.pid}")
        if PY_SPY:
            target = OUT / f"profile-{self.name}-{len(self.profiles) + 1}.txt"
            self.profiles.append(target)
            self.spy = subprocess.Popen([PY_SPY, "record", "--format", "raw", "--rate", "100", "--nonblocking", "--threads",
                                         "--output", str(target), "--pid", str(self.pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {self.proc.returncode}:\n{self.output()[-2000:]}")
        try:
            connect(self.paths, timeout=5).close()
            return True
        except DaemonUnreachable:
            return False

    def connect(self):
        return connect(self.paths, timeout=600)

    def call(self, request: p.Request, result_type: Any = Any) -> Any:
        with self.connect() as conn:
            return conn.call(request, result_type)

    def configure(self, **settings: Any) -> None:
        with self.connect() as conn:
            for key, value in settings.items():
                conn.call(p.ConfigSet(key=key, value=value))

    def output(self) -> str:
        try:
            return (self.home / "daemon.out").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def problems(self) -> list[str]:
        return [line for line in self.output().splitlines() if " ERROR " in line or "Traceback" in line or " CRITICAL " in line]

    def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            try:
                self.spy.wait(60)
            except subprocess.TimeoutExpired:
                self.spy.kill()
            print(f"  py-spy profile: {self.profiles[-1]}", flush=True)
            self.spy = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


class Spooler:
    """A task-spooler server of our own (its own socket and output directory)."""

    def __init__(self, name: str, slots: int = 2) -> None:
        self.dir = fresh_dir(f"{name}-")
        self.env = clean_env(TS_SOCKET=str(self.dir / "ts.sock"), TMPDIR=str(self.dir),
                             TS_SLOTS=str(slots), TS_MAXFINISHED="100000")
        self.run("-S", str(slots))  # starts the server

    def run(self, *args: str) -> str:
        return subprocess.run([TSP, *args], env=self.env, capture_output=True, text=True, check=True).stdout

    def submit(self, *argv: str) -> int:
        return int(self.run(*argv).strip())

    def states(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for line in self.run("-l").splitlines()[1:]:
            words = line.split()
            if len(words) > 1:
                counts[words[1]] = counts.get(words[1], 0) + 1
        return counts

    def all_finished(self) -> bool:
        states = self.states()
        return all(s in ("finished", "skipped") for s in states)

    def cleanup(self) -> None:
        subprocess.run([TSP, "-K"], env=self.env, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def tsp_path() -> str:
    global TSP
    for name in ("tsp", "ts"):
        path = shutil.which(name)
        if path and "spooler" in subprocess.run([path, "-V"], capture_output=True, text=True).stdout.lower():
            TSP = path
            return path
    raise SystemExit("task-spooler is not installed: apt-get install -y task-spooler")


# ---------------------------------------------------------------------------------------
# Results


class Table:
    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.sections: list[tuple[str, list[str]]] = []

    def add(self, bench: str, metric: str, orchestra: str, reference: str = "", ratio: str = "", target: str = "", verdict: str = "") -> None:
        self.rows.append(dict(bench=bench, metric=metric, orchestra=orchestra, reference=reference, ratio=ratio, target=target, verdict=verdict))
        print(f"  {bench:<11} {metric:<38} {orchestra:<18} {reference:<28} {ratio:<8} {target:<14} {verdict}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def render(self) -> str:
        heads = dict(bench="bench", metric="metric", orchestra="orchestra", reference="reference", ratio="ratio", target="target", verdict="")
        keys = list(heads)
        widths = {k: max(len(heads[k]), *(len(r[k]) for r in self.rows)) for k in keys} if self.rows else {k: len(heads[k]) for k in keys}
        lines = ["  ".join(heads[k].ljust(widths[k]) for k in keys).rstrip()]
        lines.append("  ".join("-" * widths[k] for k in keys))
        for row in self.rows:
            lines.append("  ".join(row[k].ljust(widths[k]) for k in keys).rstrip())
        return "\n".join(lines)

    def show(self, json_path: str | None = None) -> None:
        """Print the table; write its rows to `json_path` too, when given."""
        print()
        print(self.render())
        if json_path:
            Path(json_path).write_text(json.dumps(self.rows, indent=1))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


# ---------------------------------------------------------------------------------------
# 1. ps round trip, and import time


def timed_run(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def bench_ps(table: Table, args: argparse.Namespace) -> None:
    runs = 10 if args.quick else 30
    daemon = Daemon("ps", args.daemon_loop)
    spool = Spooler("ps-tsp")
    try:
        daemon.start()
        ids = [daemon.call(p.Submit(cwd=str(daemon.home), argv=["true"], title=f"task {i}"), p.TaskView).id for i in range(5)]
        daemon.call(p.Wait(tasks=ids))
        for _ in range(5):
            spool.submit("true")
        spool.run("-w")
        wait_for(spool.all_finished, 30, "tsp jobs")

        check = subprocess.run([ORCHESTRA, "ps"], env=daemon.env, capture_output=True, text=True)
        if check.returncode != 0 or check.stdout.count("succeeded") != 5:
            raise RuntimeError(f"orchestra ps did not list the 5 tasks: rc {check.returncode}\n{check.stdout}{check.stderr}")

        commands = {
            "orchestra ps": ([ORCHESTRA, "ps"], daemon.env),
            "tsp -l": ([TSP, "-l"], spool.env),
            "python -I -c pass": ([sys.executable, "-I", "-c", "pass"], clean_env()),
            # The same round trip through the full click CLI (msgspec, protocol types):
            # `--json` is not on the quick path.
            "orchestra ps --json (full CLI)": ([ORCHESTRA, "ps", "--json"], daemon.env),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for round_ in range(runs + 3):  # interleaved, so drift hits all alike; 3 warm-ups
            for name, (argv, env) in commands.items():
                elapsed = timed_run(argv, env)
                if round_ >= 3:
                    times[name].append(elapsed)
        base = statistics.median(times["python -I -c pass"])
        for name, values in times.items():
            med, p90 = statistics.median(values), pct(values, 90)
            if name == "orchestra ps":
                table.add("ps", f"{name} median / p90 ({runs} runs)", f"{ms(med)} / {ms(p90)}", f"python -I: {ms(base)}",
                          f"{med / base:.1f}x", "<= 3x python", verdict(med <= 3 * base))
            else:
                table.add("ps", f"{name} median / p90", "", f"{ms(med)} / {ms(p90)}", f"{med / base:.1f}x")
        importtime_report(table, daemon)
    finally:
        daemon.cleanup()
        spool.cleanup()


_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """(module, self us, cumulative us, depth) in the order Python printed them."""
    rows = []
    for line in stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2))
    return rows


def importtime_median(argv: list[str], env: dict[str, str], runs: int = 7) -> tuple[dict[str, tuple[int, int]], list[tuple[str, int, int, int]]]:
    """Per module: (median self us, median cumulative us) over `runs` warm runs; and the
    rows of the last run, in order (for the tree)."""
    samples: dict[str, list[tuple[int, int]]] = {}
    rows: list[tuple[str, int, int, int]] = []
    for i in range(runs + 1):
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        if i == 0:
            continue  # warm-up (byte-code caches)
        rows = parse_importtime(proc.stderr)
        for mod, self_us, cum_us, _depth in rows:
            samples.setdefault(mod, []).append((self_us, cum_us))
    return {m: (int(statistics.median(s[0] for s in v)), int(statistics.median(s[1] for s in v))) for m, v in samples.items()}, rows


def importtime_report(table: Table, daemon: Daemon) -> None:
    """What `orchestra ps` imports, from `python -X importtime` (median of 5 warm runs)."""
    ps, rows = importtime_median([sys.executable, "-X", "importtime", ORCHESTRA, "ps"], {**daemon.env, **clean_env()}, runs=5)
    total = sum(v[0] for v in ps.values())
    lines = [f"`python -X importtime {Path(ORCHESTRA).name} ps` (median of 5 warm runs): {total / 1e3:.1f} ms of imports "
             f"in {len(ps)} modules (sum of self times)", "  top-level imports (cumulative):"]
    for mod, _s, _c, _d in sorted((r for r in rows if r[3] == 0), key=lambda r: -ps[r[0]][1]):
        if ps[mod][1] >= 300:
            lines.append(f"    {ps[mod][1] / 1e3:7.2f} ms  {mod}")
    table.sections.append(("import time", lines))
    print("\n".join("  " + line for line in lines), flush=True)


# ---------------------------------------------------------------------------------------
# 2. queue drain


def bench_drain(table: Table, args: argparse.Namespace) -> None:
    n = 200 if args.quick else 1000
    daemon = Daemon("drain", args.daemon_loop)
    spool = Spooler("drain-tsp", slots=2)
    try:
        daemon.start()
        daemon.configure(max_concurrent=2)
        cwd = str(daemon.home)
        with daemon.connect() as conn:
            t0 = time.perf_counter()
            # Pipelined over the one connection, as a script submitting a batch would.
            ids = [v.id for v in conn.call_many([p.Submit(cwd=cwd, argv=["true"]) for _ in range(n)], p.TaskView)]
            t_submitted = time.perf_counter()
            views = conn.call(p.Wait(tasks=ids), list[p.TaskView])
            t_done = time.perf_counter()
        orc_submitting = t_submitted - t0
        bad = [v.id for v in views if v.status is not p.Status.SUCCEEDED]
        if bad:
            raise RuntimeError(f"{len(bad)} tasks did not succeed, e.g. {bad[:5]}")
        orc = t_done - t0

        t0 = time.perf_counter()
        last = 0
        for _ in range(n):
            last = spool.submit("true")
        t_tsp_submitted = time.perf_counter()
        spool.run("-w", str(last))
        wait_for(spool.all_finished, 600, "tsp to finish")
        ref = time.perf_counter() - t0
        states = spool.states()
        if states.get("finished", 0) != n:
            raise RuntimeError(f"tsp finished {states}")

        table.add("drain", f"{n} x true, 2 slots, submit->last finish", f"{orc:.2f} s", f"tsp: {ref:.2f} s",
                  f"{orc / ref:.2f}x", "<= 1.5x tsp", verdict(orc <= 1.5 * ref))
        table.add("drain", "  tasks/s", f"{n / orc:.0f}/s", f"tsp: {n / ref:.0f}/s")
        table.add("drain", "  of which submitting", f"{orc_submitting:.2f} s", f"tsp: {t_tsp_submitted - t0:.2f} s")
        starts = sorted(v.started_at for v in views if v.started_at)
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        queued = [v.started_at - v.submitted_at for v in views if v.started_at]
        table.add("drain", "  orchestra: start-to-start p50, queued p50", f"{ms(statistics.median(gaps))}, {ms(statistics.median(queued))}")
        for line in daemon.problems()[:5]:
            table.note(f"drain daemon log: {line}")
    finally:
        daemon.cleanup()
        spool.cleanup()


# ---------------------------------------------------------------------------------------
# 3. concurrent submitters


class _OkRaw(msgspec.Struct, tag_field="reply", tag="ok"):
    result: msgspec.Raw = msgspec.Raw(b"")  # left undecoded: the lean client only checks it is an Ok


class _ErrorRaw(msgspec.Struct, tag_field="reply", tag="error"):
    code: str = ""
    message: str = ""


def _submitter(home: str, cwd: str, count: int, lean: bool, ready, go, results) -> None:
    """One client on its own connection. `lean`: the Submit frame is encoded once and the
    reply is only checked to be an Ok (its TaskView is not decoded), so that 64 Python
    clients on a small machine cost as little CPU as they can and the daemon is what is
    measured. Otherwise each submit is `Connection.call(Submit)`, as orchestra's client does."""
    try:
        conn = connect(resolve(home), timeout=600)
        request = p.Submit(cwd=cwd, argv=["true"])
        payload = frame(request)
        decoder = msgspec.msgpack.Decoder(_OkRaw | _ErrorRaw)
        sock = conn.sock
        lat: list[float] = []
        ready.release()
        go.wait()
        start = time.perf_counter()
        for _ in range(count):
            t = time.perf_counter()
            if lean:
                sock.sendall(payload)
                (size,) = HEADER.unpack(conn._read_exactly(HEADER.size))
                reply = decoder.decode(conn._read_exactly(size))
                if not isinstance(reply, _OkRaw):
                    raise RuntimeError(f"submit refused: {reply.message}")
            else:
                conn.call(request)
            lat.append(time.perf_counter() - t)
        end = time.perf_counter()
        conn.close()
        results.put((start, end, lat, None))
    except BaseException as exc:  # report, never hang the parent
        results.put((0.0, 0.0, [], repr(exc)))


def bench_concurrent(table: Table, args: argparse.Namespace) -> None:
    for lean in (True, False):
        concurrent_run(table, args, lean)


def concurrent_run(table: Table, args: argparse.Namespace, lean: bool) -> None:
    clients, each = 64, (20 if args.quick else 100)
    kind = "lean clients" if lean else "Connection.call clients"
    daemon = Daemon("conc", args.daemon_loop)
    try:
        daemon.start()
        daemon.configure(max_concurrent=1)
        blocker = daemon.call(p.Submit(cwd=str(daemon.home), argv=["sleep", "3600"], title="blocker"), p.TaskView).id
        wait_for(lambda: daemon.call(p.Show(task=blocker), p.TaskView).status is p.Status.RUNNING, 30, "the blocker to run")

        ctx = mp.get_context("fork")
        ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        children0 = usage.ru_utime + usage.ru_stime
        procs = [ctx.Process(target=_submitter, args=(str(daemon.home), str(daemon.home), each, lean, ready, go, results)) for _ in range(clients)]
        for proc in procs:
            proc.start()
        for _ in procs:
            if not ready.acquire(timeout=120):
                raise RuntimeError("a client did not connect")
        cpu0 = proc_cpu_seconds(daemon.pid)
        machine0 = machine_jiffies()
        go.set()
        outcomes = [results.get(timeout=1800) for _ in procs]
        cpu1 = proc_cpu_seconds(daemon.pid)
        machine1 = machine_jiffies()
        for proc in procs:
            proc.join(30)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the joined clients (the daemon is not reaped yet)
        client_cpu = usage.ru_utime + usage.ru_stime - children0
        errors = [o[3] for o in outcomes if o[3]]
        if errors:
            raise RuntimeError(f"{len(errors)} clients failed: {errors[0]}")
        start = min(o[0] for o in outcomes)
        end = max(o[1] for o in outcomes)
        lat = [x for o in outcomes for x in o[2]]
        total = len(lat)
        rate = total / (end - start)
        table.add("concurrent", f"{clients} x {each} submits, {kind}: submits/s", f"{rate:,.0f}/s", "", "",
                  ">= 5,000/s", verdict(rate >= 5000))
        table.add("concurrent", "  latency p50 / p99 / max", f"{ms(pct(lat, 50))} / {ms(pct(lat, 99))} / {ms(max(lat))}")
        busy = 1 - (machine1[1] - machine0[1]) / max(1, machine1[0] - machine0[0])
        table.add("concurrent", "  CPU per submit: daemon, clients", f"{(cpu1 - cpu0) / total * 1e6:.0f} us, {client_cpu / total * 1e6:.0f} us",
                  f"machine {busy:.0%} busy meanwhile", "", "", "")
        # Does the rate hold as the queue grows? Rate over the first and the last fifth of
        # the submits, by completion time (each client's own clock is the same perf_counter).
        done = sorted(o[0] + sum(o[2][: i + 1]) for o in outcomes for i in range(len(o[2])))
        fifth = max(1, total // 5)
        first = fifth / (done[fifth - 1] - start)
        last = fifth / (done[-1] - done[-fifth - 1]) if done[-1] > done[-fifth - 1] else float("inf")
        table.add("concurrent", "  rate: first 20% / last 20% of submits", f"{first:,.0f}/s / {last:,.0f}/s")
        queued = daemon.call(p.Info(), p.DaemonStatus).counts.get("queued", 0)
        if queued != total:
            table.note(f"expected {total} queued tasks, the daemon holds {queued}")
        for line in daemon.problems()[:5]:
            table.note(f"concurrent daemon log: {line}")
    finally:
        daemon.cleanup()


# ---------------------------------------------------------------------------------------
# 4. output ingest


def bench_ingest(table: Table, args: argparse.Namespace) -> None:
    size = GIB // 4 if args.quick else GIB
    label = f"{size >> 20} MiB"
    daemon = Daemon("ingest", args.daemon_loop)
    try:
        daemon.start()
        rss_start = proc_status(daemon.pid, "VmRSS")
        cwd = str(daemon.home)
        peak_rss = [rss_start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                try:
                    peak_rss[0] = max(peak_rss[0], proc_status(daemon.pid, "VmRSS"))
                except (FileNotFoundError, ProcessLookupError):
                    return

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        cpu0 = proc_cpu_seconds(daemon.pid)
        with daemon.connect() as conn:
            t0 = time.perf_counter()
            task = conn.call(p.Submit(cwd=cwd, argv=["head", "-c", str(size), "/dev/zero"]), p.TaskView).id
            [view] = conn.call(p.Wait(tasks=[task]), list[p.TaskView])
            elapsed = time.perf_counter() - t0
        cpu1 = proc_cpu_seconds(daemon.pid)
        stop.set()
        sampler.join()
        hwm = proc_status(daemon.pid, "VmHWM")
        if view.status is not p.Status.SUCCEEDED or view.output_bytes != size:
            raise RuntimeError(f"task ended {view.status.value} with {view.output_bytes} bytes of output, expected {size}")
        log_bytes = sum(f.stat().st_size for f in (daemon.paths.log_dir).glob("*"))
        rate = size / elapsed / 1e6

        t0 = time.perf_counter()
        subprocess.run(["bash", "-c", f"head -c {size} /dev/zero | cat > /dev/null"], check=True)
        pipe = time.perf_counter() - t0
        target_file = daemon.home / "disk-ref"
        t0 = time.perf_counter()
        subprocess.run(["dd", "if=/dev/zero", f"of={target_file}", "bs=1M", f"count={size >> 20}", "conv=fdatasync"],
                       check=True, capture_output=True)
        disk = time.perf_counter() - t0
        target_file.unlink()

        table.add("ingest", f"{label} on stdout: MB/s submit->finish", f"{rate:,.0f} MB/s ({elapsed:.2f} s)",
                  f"head|cat: {size / pipe / 1e6:,.0f} MB/s", "", ">= 300 MB/s", verdict(rate >= 300))
        table.add("ingest", "  reference: dd to a file + fdatasync", "", f"{size / disk / 1e6:,.0f} MB/s ({disk:.2f} s)")
        table.add("ingest", "  daemon peak RSS (VmHWM)", f"{hwm / 1024:.0f} MB", f"at start: {rss_start / 1024:.0f} MB",
                  "", "<= 150 MB", verdict(hwm / 1024 <= 150))
        table.add("ingest", "  daemon CPU; log on disk", f"{cpu1 - cpu0:.2f} s CPU; {log_bytes / 1e6:,.0f} MB")
        for line in daemon.problems()[:5]:
            table.note(f"ingest daemon log: {line}")
    finally:
        daemon.cleanup()


# ---------------------------------------------------------------------------------------
# 5. idle with a long history


def fill_history(daemon: Daemon, n: int, real: bool) -> float:
    """`n` finished tasks. real: each runs `true` (max_concurrent 2). Otherwise they are
    cancelled without running: they wait on a blocker that is then stopped."""
    cwd = str(daemon.home)
    t0 = time.perf_counter()
    with daemon.connect() as conn:
        if real:
            conn.call(p.ConfigSet(key="max_concurrent", value=2))
            # Pipelined over the one connection, as a script submitting a batch would.
            ids = [v.id for v in conn.call_many([p.Submit(cwd=cwd, argv=["true"]) for _ in range(n)], p.TaskView)]
        else:
            conn.call(p.ConfigSet(key="max_concurrent", value=1))
            blocker = conn.call(p.Submit(cwd=cwd, argv=["sleep", "3600"]), p.TaskView).id
            ids = [conn.call(p.Submit(cwd=cwd, argv=["true"], after=[blocker]), p.TaskView).id for _ in range(n - 1)]
            conn.call(p.Stop(task=blocker))
            ids.append(blocker)
        views = conn.call(p.Wait(tasks=ids), list[p.TaskView])
    if not all(v.status.finished for v in views):
        raise RuntimeError("not every task finished")
    return time.perf_counter() - t0


def idle_window(daemon: Daemon, seconds: float, table: Table) -> tuple[float, int, int]:
    """(CPU seconds, context switches, threads) over `seconds` of doing nothing; notes which
    threads woke up."""
    cpu0, cs0, per0 = proc_cpu_seconds(daemon.pid), context_switches(daemon.pid), thread_switches(daemon.pid)
    time.sleep(seconds)
    cpu1, cs1, per1 = proc_cpu_seconds(daemon.pid), context_switches(daemon.pid), thread_switches(daemon.pid)
    woke = {t: per1[t] - per0.get(t, 0) for t in per1 if per1[t] - per0.get(t, 0) > 0}
    if woke:
        table.note("idle wake-ups by thread (tid name: switches/s): " + ", ".join(
            f"{t}: {n / seconds:.1f}" for t, n in sorted(woke.items(), key=lambda kv: -kv[1])))
    return cpu1 - cpu0, cs1 - cs0, thread_count(daemon.pid)


def bench_idle(table: Table, args: argparse.Namespace) -> None:
    n = 2_000 if args.quick else 10_000
    seconds = 10.0 if args.quick else 60.0
    real = not args.quick
    daemon = Daemon("idle", args.daemon_loop)
    try:
        daemon.start()
        filled = fill_history(daemon, n, real)
        how = "ran `true`" if real else "cancelled unrun"
        info = daemon.call(p.Info(), p.DaemonStatus)
        table.add("idle", f"history: {n:,} tasks ({how})", f"built in {filled:.1f} s", f"{info.last_seq:,} log records")
        time.sleep(3)  # let a background snapshot and the last fsyncs settle
        cpu, switches, threads = idle_window(daemon, seconds, table)
        limit = 0.01 * seconds  # "effectively zero": under 1% of one core, i.e. 10 ms/s
        table.add("idle", f"CPU over {seconds:.0f} s idle (after the run)", f"{cpu * 1e3:.0f} ms", f"{switches} ctx switches, {threads} threads",
                  f"{cpu / seconds * 100:.2f}%", "~0 (<1% core)", verdict(cpu <= limit))
        table.add("idle", "  daemon RSS holding the history", f"{proc_status(daemon.pid, 'VmRSS') / 1024:.0f} MB")
        daemon.stop()
        daemon.start()
        table.add("idle", "  restart with the history: time to answer", f"{daemon.start_seconds:.2f} s")
        time.sleep(1)
        cpu, switches, threads = idle_window(daemon, seconds, table)
        table.add("idle", f"CPU over {seconds:.0f} s idle (after a restart)", f"{cpu * 1e3:.0f} ms", f"{switches} ctx switches, {threads} threads",
                  f"{cpu / seconds * 100:.2f}%", "~0 (<1% core)", verdict(cpu <= limit))
        table.add("idle", "  daemon RSS after the restart", f"{proc_status(daemon.pid, 'VmRSS') / 1024:.0f} MB")
        for line in daemon.problems()[:5]:
            table.note(f"idle daemon log: {line}")
    finally:
        daemon.cleanup()


# ---------------------------------------------------------------------------------------

BENCHES = {"ps": bench_ps, "drain": bench_drain, "concurrent": bench_concurrent, "ingest": bench_ingest, "idle": bench_idle}


def machine() -> str:
    cpus = os.cpu_count()
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    fs = "?"
    best = ""
    with open("/proc/mounts") as f:
        for line in f:
            dev, mount, kind = line.split()[:3]
            if str(OUT).startswith(mount) and len(mount) > len(best):
                best, fs = mount, f"{kind} ({dev})"
    return f"{cpus} CPUs ({model}); bench/out on {fs}; Python {sys.version.split()[0]}"


def code_version() -> str:
    """The commit measured, and the files that differed from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "--", "orchestrad", "cli"],
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"{head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")


def run_each(chosen: list[str], benches: dict[str, Callable], table: "Table", args: argparse.Namespace,
             before: Callable[[str], None] | None = None) -> list[str]:
    """Run each chosen benchmark once the machine is quiet enough (or say it was not),
    with its time and load; one that fails is noted in `table` and the rest go on.
    Returns the names of those that failed."""
    failed: list[str] = []
    for name in chosen:
        if before is not None:
            before(name)
        busy = wait_quiet(args.busy_limit, args.wait_quiet)
        print(f"[{name}] machine {busy:.0%} busy before starting", flush=True)
        if busy > args.busy_limit:
            table.note(f"{name}: the machine was {busy:.0%} busy (other processes) when it started; its figures are pessimistic")
        t0 = time.perf_counter()
        load0 = os.getloadavg()[0]
        try:
            benches[name](table, args)
        except Exception as exc:  # one failing benchmark must not hide the others' figures
            failed.append(name)
            table.add(name, "FAILED", type(exc).__name__, str(exc).splitlines()[0][:90] if str(exc) else "")
            traceback.print_exc()
        print(f"  ({time.perf_counter() - t0:.0f} s; load average {load0:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, to check the script (not figures to quote)")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--daemon-loop", choices=("uvloop", "asyncio"), default="uvloop", help="event loop for the daemon (diagnostic)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--renice", type=int, default=0, metavar="N", help="run the benchmark (and so the daemons and tsp it starts) at this nice value, e.g. -10 on a machine others are using (needs root for < 0)")
    parser.add_argument("--py-spy", metavar="PATH", help="py-spy executable: profile every daemon (bench/out/profile-*.txt, raw flame-graph format)")
    parser.add_argument("--busy-limit", type=float, default=0.25, help="wait before each benchmark until the machine is less busy than this (fraction of all CPUs)")
    parser.add_argument("--wait-quiet", type=float, default=300, help="...for at most this many seconds")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    tsp_path()
    if args.renice:
        os.setpriority(os.PRIO_PROCESS, 0, args.renice)
    global PY_SPY
    PY_SPY = args.py_spy
    print(f"bench_daemon: {machine()}; daemon loop {args.daemon_loop}; nice {os.getpriority(os.PRIO_PROCESS, 0)}"
          f"{'; QUICK' if args.quick else ''}\ncode: {code_version()}", flush=True)
    table = Table()
    failed = run_each(chosen, BENCHES, table, args)
    print()
    print(table.render())
    for title, lines in table.sections:
        print(f"\n{title}:")
        print("\n".join(lines))
    if table.notes:
        print("\nnotes:")
        print("\n".join(f"- {n}" for n in table.notes))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "code": code_version(), "quick": args.quick, "loop": args.daemon_loop,
                                         "rows": table.rows, "notes": table.notes, "sections": dict(table.sections)}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
