"""The processes of one node, run for the daemon: what the Ray actor on a node holds.

Plain Python and threads, no Ray: the actor wraps a `NodeProcs` and calls it from several
threads at once (one read per process in flight, writes, stops). A process is keyed by
(task, attempt), so a start that is retried after a lost reply finds the one already
running instead of running the task twice.

Output is pulled, not pushed: `read(key, acked, ...)` drops what the daemon says it has
(byte offsets per stream), waits a little for more, and returns what is there past those
offsets, at most `max_bytes`. A reader thread per stream reads the pipe into a buffer of at
most `BUFFER_LIMIT` bytes not yet acknowledged and then stops reading, so a daemon that
stops asking (back-pressure, or it is restarting) leaves the process blocked on its next
write rather than the node's memory filling.

Stopping is the local executor's grace ladder: SIGTERM to the process group, SIGKILL after
the grace if the process still runs, and SIGKILL to the group once it has exited.

A process works in a checkout made for it (`workdir.checkout`) from what the daemon sent.
Once it has exited, what it left there is read (`workdir.collect`) before its exit is
shown, so a reader that sees the exit can take that too (`returned`); `forget` removes
the checkout once the daemon has both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

from orchestrad.remote import workdir

__all__ = ["BUFFER_LIMIT", "NodeProcs", "StartFailed"]

BUFFER_LIMIT = 8 << 20
"""Bytes of a stream read and not yet acknowledged, past which its pipe is not read."""

EOF_GRACE = 1.0
"""Seconds to wait for end-of-file on the pipes once the process has been reaped."""

STDIN_LIMIT = 1 << 20


class StartFailed(Exception):
    """The process could not be started; the message is written for a person."""


class _Stream:
    def __init__(self) -> None:
        self.data = bytearray()
        self.base = 0  # the offset of data[0] in the stream
        self.eof = False


class _Proc:
    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.streams = {"stdout": _Stream(), "stderr": _Stream()}
        self.exit: tuple[int | None, int | None] | None = None  # (code, signal) once reaped, drained and collected
        self.kill_at: float | None = None
        self.work: dict = {}  # where it worked: root, mirror, the commit it started at, the digest of the patch it was sent
        self.carry: list[str] = []  # the agent's own state to bring back
        self.back: dict | None = None  # what it left: `workdir.collect`, and "carry": [(directory, tar)]; or "error"


class NodeProcs:
    def __init__(self) -> None:
        self._procs: dict[str, _Proc] = {}
        self._lock = threading.Condition()
        self._key_locks: dict[str, threading.Lock] = {}
        self._mirror_locks: dict[str, threading.Lock] = {}

    # -- starting -------------------------------------------------------------------------

    def start(self, key: str, argv: list[str], env: dict[str, str], stdin: bool, work: dict,
              carry: list[tuple[str, bytes | None]]) -> int:
        """Make the task's checkout (`workdir.checkout` of `work`, under `work["root"]`),
        put the agent's own state of `carry` in place (directory, its tar), and start
        `argv` there with exactly `env`, in a session of its own; its pid. The same key
        again returns the pid of the process that key started."""
        with self._starting(key):
            with self._lock:
                if key in self._procs:
                    return self._procs[key].pid
            node = os.uname().nodename
            try:
                with self._mirror(work["mirror"]):
                    cwd = workdir.checkout(work["root"], key, work)
                for path, data in carry:
                    if data is not None:
                        workdir.unpack_dir(data, path)
            except (workdir.WorkError, OSError) as exc:
                raise StartFailed(f"could not make its working directory on node {node}: {exc}") from None
            try:
                popen = subprocess.Popen(
                    argv, cwd=cwd, env=env, start_new_session=True, close_fds=True,
                    stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )
            except OSError as exc:
                with self._mirror(work["mirror"]):
                    workdir.discard(work["root"], key, work["mirror"])
                if isinstance(exc, FileNotFoundError):
                    raise StartFailed(f"no such program: {argv[0]} (not found on node {node})") from None
                if isinstance(exc, PermissionError):
                    raise StartFailed(f"cannot run {argv[0]}: permission denied") from None
                raise StartFailed(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
            proc = _Proc(popen)
            proc.work = {"root": work["root"], "mirror": work["mirror"], "start": work["head"],
                         "sent": workdir.digest(work["patch"])}
            proc.carry = [path for path, _ in carry]
            with self._lock:
                self._procs[key] = proc
        readers = [threading.Thread(target=self._pump, args=(proc, name, pipe), daemon=True)
                   for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr))]
        for reader in readers:
            reader.start()
        threading.Thread(target=self._reap, args=(key, proc, readers), daemon=True).start()
        return proc.pid

    @contextlib.contextmanager
    def _starting(self, key: str):
        """Held while `key` starts: a retried start waits for the first, then finds it."""
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def _mirror(self, name: str) -> threading.Lock:
        """Held while a mirror's checkouts are made or removed (one at a time in a mirror)."""
        with self._lock:
            return self._mirror_locks.setdefault(name, threading.Lock())

    # -- output ---------------------------------------------------------------------------

    def read(self, key: str, acked: tuple[int, int], max_bytes: int, wait: float) -> dict:
        """Drop what was acknowledged (stdout, stderr offsets), wait up to `wait` seconds for
        something past it, and return {"stdout": bytes, "stderr": bytes, "exit": (code,
        signal) or None, "at": (stdout, stderr) offsets of the bytes returned} (the exit
        only once every byte before it was read). A reader that has not read here before
        (a bridge started anew) acknowledges (0, 0) and gets what is still kept."""
        deadline = time.monotonic() + wait
        with self._lock:
            proc = self._procs.get(key)
            if proc is None:
                return {"stdout": b"", "stderr": b"", "exit": None, "unknown": True, "at": (0, 0)}
            for (name, stream), offset in zip(proc.streams.items(), acked):
                drop = min(max(0, offset - stream.base), len(stream.data))
                if drop:
                    del stream.data[:drop]
                    stream.base += drop
            self._lock.notify_all()  # readers waiting for room
            while (not any(s.data for s in proc.streams.values()) and proc.exit is None
                   and (left := deadline - time.monotonic()) > 0):
                self._lock.wait(left)
            out, err = proc.streams["stdout"].data, proc.streams["stderr"].data
            a = bytes(out[:max_bytes])
            b = bytes(err[:max(0, max_bytes - len(a))])
            done = proc.exit if len(a) == len(out) and len(b) == len(err) else None
            at = (proc.streams["stdout"].base, proc.streams["stderr"].base)
            return {"stdout": a, "stderr": b, "exit": done, "unknown": False, "at": at}

    def _pump(self, proc: _Proc, name: str, pipe) -> None:
        stream = proc.streams[name]
        fd = pipe.fileno()
        try:
            while True:
                with self._lock:
                    while len(stream.data) >= BUFFER_LIMIT:
                        self._lock.wait()
                chunk = os.read(fd, 256 << 10)
                if not chunk:
                    break
                with self._lock:
                    stream.data += chunk
                    self._lock.notify_all()
        except OSError:
            pass
        finally:
            with self._lock:
                stream.eof = True
                self._lock.notify_all()

    def _reap(self, key: str, proc: _Proc, readers: list[threading.Thread]) -> None:
        code = proc.popen.wait()
        _kill_group(proc.pid)  # nothing of its group outlives it
        for reader in readers:
            reader.join(EOF_GRACE)
        for pipe in (proc.popen.stdout, proc.popen.stderr):
            try:
                pipe.close()
            except OSError:
                pass
        try:
            back = workdir.collect(proc.work["root"], key, proc.work["start"], proc.work["sent"])
            back["carry"] = [(path, workdir.pack_dir(path)) for path in proc.carry]
        except Exception as exc:  # noqa: BLE001 - told to the daemon, which ends the task saying so
            back = {"error": f"what it left on node {os.uname().nodename} could not be read: {exc}"}
        with self._lock:
            proc.back = back
            proc.exit = (code, None) if code >= 0 else (None, -code)
            self._lock.notify_all()

    def returned(self, key: str) -> dict | None:
        """What the process left in its checkout, once it has exited (see `_Proc.back`)."""
        with self._lock:
            proc = self._procs.get(key)
            return proc.back if proc is not None and proc.exit is not None else None

    # -- input and stopping ------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> bool:
        proc = self._procs.get(key)
        if proc is None or proc.popen.stdin is None or proc.exit is not None:
            return False
        try:
            proc.popen.stdin.write(data)
            proc.popen.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def close_stdin(self, key: str) -> None:
        proc = self._procs.get(key)
        if proc is not None and proc.popen.stdin is not None:
            try:
                proc.popen.stdin.close()
            except (OSError, ValueError):
                pass

    def terminate(self, key: str, grace: float) -> None:
        proc = self._procs.get(key)
        if proc is None or proc.exit is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        kill_at = time.monotonic() + grace
        if proc.kill_at is not None and proc.kill_at <= kill_at:
            return  # an earlier deadline stands
        proc.kill_at = kill_at

        def kill() -> None:
            while proc.popen.poll() is None and proc.kill_at is not None and time.monotonic() < proc.kill_at:
                time.sleep(min(0.05, max(0.0, proc.kill_at - time.monotonic())))
            if proc.popen.poll() is None:
                _signal_group(proc.pid, signal.SIGKILL)

        threading.Thread(target=kill, daemon=True).start()

    def forget(self, key: str) -> None:
        """The daemon has the process's exit and what it left: let it go, and its checkout."""
        with self._lock:
            proc = self._procs.get(key)
            if proc is None or proc.exit is None:
                return
            del self._procs[key]
            self._key_locks.pop(key, None)
        with self._mirror(proc.work["mirror"]):
            workdir.discard(proc.work["root"], key, proc.work["mirror"])

    def pid_of(self, key: str) -> int | None:
        """The pid of the process `key` started, while this node keeps it."""
        with self._lock:
            proc = self._procs.get(key)
            return proc.pid if proc is not None else None

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._procs)

    def kill_all(self) -> None:
        for proc in list(self._procs.values()):
            _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(pgid: int) -> None:
    _signal_group(pgid, signal.SIGKILL)
