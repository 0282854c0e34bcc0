"""What the reliability tests share: a daemon whose console output lives outside its home,
a way to find every process an agent started (however far it strayed), raw frames on the
socket, a well-behaved client that measures its own latency, and reading a stopped log.

Agent processes are found by a marker: every task a test submits carries
`MARK_VAR=<marker>` in its environment, which every child and grandchild inherits, even
one that called setsid(). Scanning /proc for the marker finds them all, and only them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from orchestra.shared import protocol as p
from orchestra.client import connect
from orchestra.wire import DaemonUnreachable
from orchestrad import events as ev
from orchestrad.log import DataRef, Log
from tests import logreaders
from tests.daemon import Daemon, wait_for

PY = sys.executable
MARK_VAR = "ORCHESTRA_RELIABILITY_MARK"
FINISHED = tuple(p.FINISHED)


class RDaemon(Daemon):
    """A real daemon for reliability tests.

    Differences from `tests.daemon.Daemon`: the console output goes to a file outside the
    home (a full or damaged home must not lose the diagnostics), the arguments given to
    the first `start` are reused by later ones (`--segment-bytes` survives a restart),
    and every task it submits carries this daemon's marker.
    """

    def __init__(self, home: Path | None = None, *, nofile: tuple[int, int] | None = None) -> None:
        super().__init__(home)
        self.outdir = Path(tempfile.mkdtemp(prefix="orc-out-"))
        self.out = self.outdir / "daemon.out"
        self.marker = uuid.uuid4().hex
        self.args: tuple[str, ...] = ()
        self.nofile = nofile  # the (soft, hard) open-files limit the daemon starts under

    def argv(self, *args: str) -> list[str]:
        """The daemon's command line. Under `nofile`, a small Python sets the limit and
        execs the daemon: the same pid, and no preexec_fn in this threaded test process."""
        daemon = [PY, "-m", "orchestrad", "--home", str(self.home), *args]
        if self.nofile is None:
            return daemon
        setup = ("import os, resource, sys\n"
                 f"resource.setrlimit(resource.RLIMIT_NOFILE, {self.nofile!r})\n"
                 "os.execv(sys.argv[1], sys.argv[1:])")
        return [PY, "-c", setup, *daemon]

    def start(self, *args: str) -> "RDaemon":
        if args:
            self.args = args
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(self.argv(*self.args), stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=self.env)
        wait_for(self._answers, 20, "the daemon to answer")
        return self

    def output(self) -> str:
        try:
            return self.out.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the daemon is not running"
        return self.proc.pid

    def rss_kb(self) -> int:
        return vm_rss_kb(self.pid)

    def task_env(self, **extra: str) -> dict[str, str]:
        return {MARK_VAR: self.marker, **extra}

    def submit(self, *argv: str, **kw) -> int:
        kw["env"] = {**self.task_env(), **kw.get("env", {})}
        return super().submit(*argv, **kw)

    def submit_prompt(self, prompt: str, **kw) -> int:
        kw.setdefault("cwd", str(self.home))
        kw["env"] = {**self.task_env(), **kw.get("env", {})}
        return self.call(p.Submit(prompt=prompt, **kw), p.TaskView).id

    def orchestrad(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`orchestrad --home <home> ARGS` (for --verify and --repair), as a person runs it."""
        return subprocess.run([PY, "-m", "orchestrad", "--home", str(self.home), *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def try_start(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess | None:
        """Start the daemon; None if it serves, else the refused run (its code and stderr)."""
        with open(self.out, "ab") as out:
            proc = subprocess.Popen(self.argv(*(args or self.args)), stdout=out, stderr=subprocess.PIPE,
                                    stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                if proc.stderr:
                    proc.stderr.close()
                return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)
            try:
                connect(self.paths, timeout=2).close()
            except DaemonUnreachable:
                time.sleep(0.02)
                continue
            # It serves. Keep its stderr flowing into our file from here on, and wait until
            # what it said while starting (the "listening" line comes last) is there.
            self.proc = proc
            listening = threading.Event()
            threading.Thread(target=_drain, args=(proc.stderr, self.out, listening), daemon=True).start()
            wait_for(listening.is_set, 10, "the daemon's start-up messages")
            return None
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
        raise AssertionError(f"the daemon neither served nor exited within {timeout} s")

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            kill_marked(self.marker)
            shutil.rmtree(self.home, ignore_errors=True)
            shutil.rmtree(self.outdir, ignore_errors=True)


def _drain(pipe, path: Path, listening: threading.Event) -> None:
    with open(path, "ab") as out:
        for line in pipe:
            out.write(line)
            out.flush()
            if b"listening on" in line:
                listening.set()
    pipe.close()
    listening.set()


# ---------------------------------------------------------------------------------------
# Processes


class ProcStat(NamedTuple):
    pid: int
    state: str
    ppid: int
    pgrp: int
    session: int


def proc_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(") ", 1)[1].split()
    return ProcStat(pid, fields[0], int(fields[1]), int(fields[2]), int(fields[3]))


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie."""
    if not pid:
        return False
    st = proc_stat(pid)
    return st is not None and st.state not in ("Z", "X")


def has_marker(pid: int, marker: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return f"{MARK_VAR}={marker}".encode() in environ.split(b"\0")


def marked(marker: str) -> list[ProcStat]:
    """Every live process whose environment carries `marker`: agents and all they started."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if has_marker(pid, marker):
            st = proc_stat(pid)
            if st is not None and st.state not in ("Z", "X"):
                found.append(st)
    return found


def kill_marked(marker: str) -> list[int]:
    """SIGKILL, by pid, every process carrying `marker` (what our daemons started for us)."""
    killed = []
    for _ in range(5):  # a dying parent may fork once more
        procs = marked(marker)
        if not procs:
            break
        for st in procs:
            try:
                os.kill(st.pid, signal.SIGKILL)
                killed.append(st.pid)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    return killed


def strays(marker: str, active_pids: set[int]) -> list[ProcStat]:
    """Marked processes that belong to no active task: their session is not one of the
    process groups the daemon runs (each agent leads a session of its own)."""
    return [st for st in marked(marker) if st.session not in active_pids]


def vm_rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmRSS")


def vm_hwm_kb(pid: int) -> int:
    """The process's peak resident memory so far (the kernel keeps it: no sampling gaps)."""
    return _status_kb(pid, "VmHWM")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class RssSampler(threading.Thread):
    """The peak VmRSS of a process, sampled every 50 ms until `halt` is set."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.peak = max(self.peak, vm_rss_kb(self.pid))
            except (FileNotFoundError, AssertionError):
                return
            self.halt.wait(0.05)


def raise_nofile(want: int) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------------------
# Raw frames


class Raw:
    """A client that speaks raw bytes: for frames no real client would send."""

    def __init__(self, path: Path | str, *, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.last_size = 0
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    self.sock.connect(str(path))
                    break
                except BlockingIOError:  # the listen backlog is full: a storm of connects
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self) -> "Raw":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def frame(self, body: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def hello(self) -> dict:
        self.frame(msgspec.msgpack.encode(p.Hello(version=p.PROTOCOL_VERSION, client="reliability")))
        reply = self.reply()
        assert reply is not None and reply.get("reply") == "ok", reply
        return reply

    def reply(self) -> dict | None:
        """The next reply frame, decoded; None when the daemon closed the connection."""
        header = self._exactly(4)
        if header is None:
            return None
        (size,) = struct.unpack(">I", header)
        self.last_size = size
        body = self._exactly(size)
        if body is None:
            return None
        return msgspec.msgpack.decode(body)

    def _exactly(self, n: int) -> bytes | None:
        data = bytearray()
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return bytes(data)


def encode_map(**fields: Any) -> bytes:
    return msgspec.msgpack.encode(fields)


# ---------------------------------------------------------------------------------------
# A well-behaved client that measures itself


@dataclass
class Latency:
    samples: list[float]
    failures: list[str]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def worst(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    def p(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> str:
        return (f"{len(self.samples)} calls, p50 {self.p50 * 1000:.2f} ms, p99 {self.p(0.99) * 1000:.2f} ms, "
                f"worst {self.worst * 1000:.1f} ms, {len(self.failures)} failures")


def baseline(daemon: Daemon, n: int = 100, request: p.Request | None = None) -> Latency:
    """The latency of `request` (Info) on an idle daemon: what "normal" means here."""
    request = request or p.Info()
    samples = []
    with daemon.connect() as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.call(request)
            samples.append(time.perf_counter() - t0)
    return Latency(samples, [])


class Probe(threading.Thread):
    """A well-behaved client asking, over its own connection, again and again, while the
    daemon is under attack. Each call has `hard` seconds to be answered (the liveness
    bound); a call that is not answered in time is a failure, not a slow sample."""

    def __init__(self, daemon: Daemon, *, hard: float = 5.0, interval: float = 0.01,
                 requests: tuple[p.Request, ...] = (p.Info(), p.ListTasks(status=[p.Status.RUNNING]))) -> None:
        super().__init__(daemon=True, name="probe")
        self.paths = daemon.paths
        self.hard = hard
        self.interval = interval
        self.requests = requests
        self.latency = Latency([], [])
        self._halt = threading.Event()

    def run(self) -> None:
        conn = None
        i = 0
        try:
            while not self._halt.is_set():
                try:
                    if conn is None:
                        conn = connect(self.paths, timeout=self.hard)
                    t0 = time.perf_counter()
                    conn.call(self.requests[i % len(self.requests)])
                    self.latency.samples.append(time.perf_counter() - t0)
                except (OSError, DaemonUnreachable, p.OrchestraError) as exc:
                    self.latency.failures.append(f"{type(exc).__name__}: {exc}")
                    if conn is not None:
                        conn.close()
                        conn = None
                i += 1
                self._halt.wait(self.interval)
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self) -> "Probe":
        self.start()
        wait_for(lambda: self.latency.samples or self.latency.failures, 10, "the probe's first answer")
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self.join(30)


# ---------------------------------------------------------------------------------------
# A stopped daemon's log, through the log's public API


@dataclass(frozen=True)
class Rec:
    seq: int
    segment: int  # first seq of its segment (the file's name)
    offset: int  # of the record header in that file
    end: int  # where the next record starts (or the file ends)
    body: bytes
    data: DataRef | None

    @property
    def event(self) -> ev.Event:
        return ev.decode(self.body).event

    @property
    def ts(self) -> float:
        return ev.decode(self.body).ts


def segment_path(log_dir: Path, first: int) -> Path:
    return log_dir / f"{first:020d}.seg"


def read_log(log_dir: Path) -> list[Rec]:
    """Every record of a log that no daemon has open (Log.open may cut a torn tail)."""
    with Log.open(log_dir) as log:
        entries = [(e.seq, e.position.segment, e.position.offset, bytes(e.body), e.data) for e in logreaders.read(log)]
    recs = []
    for i, (seq, segment, offset, body, data) in enumerate(entries):
        if i + 1 < len(entries) and entries[i + 1][1] == segment:
            end = entries[i + 1][2]
        else:
            end = segment_path(log_dir, segment).stat().st_size
        recs.append(Rec(seq, segment, offset, end, body, data))
    return recs


def events_of(recs: list[Rec], kind: type) -> list:
    out = []
    for r in recs:
        event = r.event
        if isinstance(event, kind):
            out.append(event)
    return out


def flip(path: Path, offset: int, mask: int = 0x5A) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


def tasks(daemon: Daemon) -> list[p.TaskView]:
    return daemon.tasks()


def settle(daemon: Daemon, ids: list[int], timeout: float = 30) -> dict[int, p.TaskView]:
    """Wait until every task in `ids` has finished; their views."""
    views: dict[int, p.TaskView] = {}

    def done() -> bool:
        for t in tasks(daemon):
            views[t.id] = t
        return all(i in views and views[i].status.finished for i in ids)

    wait_for(done, timeout, f"tasks {ids} to finish")
    return {i: views[i] for i in ids}
