"""The local executor: start, feed and stop child processes on this machine; report their
output and their exits (the interface, and what it promises, is `orchestrad.executor`'s).

Process mechanics only: this module knows nothing of events, logs or state. The engine
calls `Supervisor.start`, `write`, `close_stdin`, `terminate` and `shutdown`; the
supervisor calls back `on_output(task_id, stream, chunk)` and, once per process,
`on_exit(task_id, pid, exit_code, signal)`. Nothing here blocks or polls: it wakes when a
pipe is readable, when a process exits and when one of its timers fires.

Spawning. A child is started with `subprocess.Popen` (vfork and exec, about 0.4 ms here;
the event loop's own `subprocess_exec` takes 1.5 ms under asyncio and 6 ms under uvloop,
which forks the whole daemon), its pipes are handed to the loop as pipe transports, and its
exit is watched through a pidfd the loop polls like any other file (Linux 5.3 and later;
elsewhere a thread waits for it). A program that cannot be executed fails `start` at once.

Process groups. Every child starts in a session of its own, so its process group id is its
pid, and a signal sent to the group reaches everything it started that stayed in the
group. `terminate` sends SIGTERM to the group at once and SIGKILL to the group after the
grace period if the child has not exited by then. When the child has exited, the group is
sent SIGKILL too, so no member outlives it.

Escaped grandchildren. A grandchild that calls setsid() leaves the group and cannot be
signalled through it; if it inherited our stdout or stderr, those pipes stay open after
the child has gone. So once the child has been reaped, the supervisor waits at most
`EOF_GRACE` seconds for end-of-file on both pipes, then closes its own ends (flushing what
it has read) and reports the exit anyway. The supervisor cannot reach the escaped process
through the group; the engine finds it by the mark every agent carries in its environment
(`orchestrad.orphans`) and kills it when the task ends.

Output. stdout and stderr are read concurrently, in large reads, and each is coalesced on
its own: a chunk is delivered when `coalesce_bytes` have gathered, or `coalesce_delay`
seconds after the first byte of the chunk arrived, whichever comes first, and whatever
is left is delivered at end-of-file. But while fewer than `BURST_CHUNKS` chunks of a
stream went out in the last `coalesce_delay`, a read is delivered at once when nothing of it
is pending, and so is the first read after the child was sent input: an agent speaking a
protocol (a message, then a request, then it waits for the answer) is not kept waiting
`coalesce_delay` on every exchange, and a burst of output still costs at most
`BURST_CHUNKS` chunks a `coalesce_delay` (and one more for each input sent). Chunks are
raw bytes, never longer than `coalesce_bytes`, cut wherever the limit falls (not at line
ends), so a stream without a newline costs no more memory than one with. Splitting into lines is the reader's job.

Order of callbacks. Nothing is reported for a process before `start` has returned its
pid; `on_exit` comes after the last `on_output` of both streams, exactly once.

Back-pressure. `pause_output` stops reading every child's pipes (the engine calls it when
the log cannot take output, e.g. the disk is full): a child then blocks on its next write
once its pipe is full, and the daemon holds no more than it had read. `resume_output`
reads on.

Input. `write` hands bytes to the stdin pipe without waiting. A child that does not read
its input can have at most `STDIN_LIMIT` bytes waiting for it; beyond that `write`
raises `WriteError` rather than buffer without bound.

It is long because spawning, pipes, signals, back-pressure and exits interact (an exit is
reported only after both pipes drained), so they are kept in one place.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence

from orchestrad.containment import Cgroups
from orchestrad.executor import ExitCallback, OutputCallback, SpawnError, WriteError

__all__ = ["EOF_GRACE", "STDIN_LIMIT", "SpawnError", "Supervisor", "WriteError", "kill_process_group"]

EOF_GRACE = 1.0
"""Seconds to wait for end-of-file on stdout and stderr once the child has been reaped."""

STDIN_LIMIT = 1 << 20
"""Bytes that may wait in a child's stdin buffer before `write` refuses more."""

COALESCE_BYTES = 1 << 20
"""The largest output chunk, by default. Large: a chatty child costs one recorded event
per MiB instead of one per pipe read."""

BURST_CHUNKS = 4
"""Chunks of one stream delivered in a `coalesce_delay` before reads are held back to
coalesce. Four: a Claude Code tool call is a message and a permission request a few ms
apart, and a turn's end its last message and the result; one at once and the next held
cost an agent 50 ms an exchange (bench/bench_claude.py showed +115 ms a run)."""

PIPE_BYTES = 256 << 10
"""The capacity asked for the stdout and stderr pipes (Linux; the default is 64 KiB), so a
fast writer is read in fewer, larger reads: the event loop reads up to 256 KiB at a time.
Not more: pipe buffers count against a per-user budget (fs.pipe-user-pages-soft, 64 MiB by
default), past which every new pipe the user makes gets a single page; at this size 64
running tasks fit in it."""

_STREAMS = {1: "stdout", 2: "stderr"}


class Supervisor:
    """Runs one process per task id here and reports what they do through two callbacks: an
    `orchestrad.executor.Executor`."""

    name = "local"

    def __init__(
        self,
        *,
        on_output: OutputCallback,
        on_exit: ExitCallback,
        coalesce_bytes: int = COALESCE_BYTES,
        coalesce_delay: float = 0.05,
    ) -> None:
        if coalesce_bytes < 1:
            raise ValueError("coalesce_bytes must be at least 1")
        if coalesce_delay < 0:
            raise ValueError("coalesce_delay must not be negative")
        self.on_output = on_output
        self.on_exit = on_exit
        self.coalesce_bytes = coalesce_bytes
        self.coalesce_delay = coalesce_delay
        self._procs: dict[int, _Process] = {}
        self._closing = False
        self.cgroups: Cgroups | None = None  # set where a cgroup per process can be had
        self.output_paused = False

    async def workdir(self, task_id: int, attempt: int, cwd: str, env: dict[str, str]) -> str:
        return cwd  # this machine's processes work where they are told

    async def start(
        self, task_id: int, argv: list[str], *, cwd: str, env: dict[str, str], stdin: bool = True, cgroup: str = "",
        attempt: int = 0, labels: Sequence[str] = (), carry: Sequence[tuple[str, str]] = (),
    ) -> int:
        """Start `argv` in `cwd` with exactly `env`, in a new session; return its pid.

        stdin is a pipe (see `write`) when `stdin` is true, else /dev/null. With `cgroup`
        (and `cgroups` set), the process is born in that cgroup, which is killed whole when
        the process exits or is stopped, and removed once empty. `attempt` and `labels`
        are not needed here: a local start is never retried, and this machine is the one.
        """
        if self._closing:
            raise SpawnError("not starting new processes: the supervisor is shutting down")
        if not argv:
            raise SpawnError("nothing to run: the command is empty")
        if task_id in self._procs:
            raise SpawnError(f"task {task_id} already has a process running (pid {self._procs[task_id].pid})")
        _check_cwd(cwd)
        loop = asyncio.get_running_loop()
        proc = _Process(self, loop, task_id, stdin)
        proc.cgroup = cgroup if self.cgroups is not None else ""
        self._procs[task_id] = proc
        try:
            await proc.spawn(argv, cwd=cwd, env=env)
        except (OSError, ValueError) as exc:
            proc.abandon()
            raise _spawn_error(exc, argv[0], cwd, env) from exc
        except BaseException:  # cancelled while starting: leave nothing behind
            proc.abandon()
            raise
        loop.call_soon(proc.release)  # callbacks may flow once our caller has the pid
        return proc.pid

    def write(self, task_id: int, data: bytes) -> None:
        """Queue `data` for the process's stdin without waiting for it to be read."""
        self._writable(task_id, len(data)).write(data)

    def check_writable(self, task_id: int, size: int = 1) -> None:
        """WriteError, saying why, if `size` more bytes could not be queued for its stdin now
        (so a person's answer is refused rather than accepted and then dropped)."""
        self._writable(task_id, size).check(size)

    def _writable(self, task_id: int, size: int) -> "_Process":
        proc = self._procs.get(task_id)
        if proc is None or proc.returncode is not None:
            raise WriteError(f"cannot send input to task {task_id}: it has no running process")
        return proc

    def close_stdin(self, task_id: int) -> None:
        """Close the process's stdin once what was written has been delivered. Idempotent."""
        proc = self._procs.get(task_id)
        if proc is not None:
            proc.close_stdin()

    def terminate(self, task_id: int, grace: float) -> None:
        """SIGTERM the process group now, SIGKILL it after `grace` seconds if the process
        is still alive. Idempotent: a second call never postpones the SIGKILL, but an
        earlier deadline wins."""
        proc = self._procs.get(task_id)
        if proc is not None:
            proc.terminate(grace)

    def cgroup_of(self, task_id: int) -> str:
        """The cgroup the task's process was born in ("" if none)."""
        proc = self._procs.get(task_id)
        return proc.cgroup if proc is not None else ""

    def pause_output(self) -> None:
        """Stop reading every process's output (the log cannot take it now): their pipes
        fill and they block on write, so what waits in the daemon stays bounded."""
        self.output_paused = True
        for proc in self._procs.values():
            proc.set_reading(False)

    def resume_output(self) -> None:
        self.output_paused = False
        for proc in self._procs.values():
            proc.set_reading(True)

    def pids(self) -> dict[int, int]:
        """task_id -> pid of every process that is running (started and not yet reaped)."""
        return {t: p.pid for t, p in self._procs.items() if p.pid and p.returncode is None}

    async def shutdown(self, grace: float) -> None:
        """Refuse new processes, terminate all (SIGKILL after `grace`), and return once
        every `on_exit` has been called."""
        self._closing = True
        procs = list(self._procs.values())
        for proc in procs:
            proc.terminate(grace)
        await asyncio.gather(*(proc.reported for proc in procs))

    # -- called by _Process ----------------------------------------------------------

    def _forget(self, proc: _Process) -> None:
        if self._procs.get(proc.task_id) is proc:
            del self._procs[proc.task_id]


def kill_process_group(pgid: int) -> bool:
    """SIGKILL the process group `pgid`, left over from a previous daemon.

    True if there was such a group and it was signalled (a group whose members are all
    zombies still counts); False if there is none, or it belongs to someone else and so is
    not ours to kill. Refuses (ValueError) our own group and the ids 0 and 1.
    """
    if pgid <= 1 or pgid == os.getpgrp():
        raise ValueError(f"refusing to kill process group {pgid}")
    return _signal_group(pgid, signal.SIGKILL)


class _Process:
    """One child: its pipes, its output buffers, its timers, and when to report its exit."""

    def __init__(self, supervisor: Supervisor, loop: asyncio.AbstractEventLoop, task_id: int, stdin: bool) -> None:
        self.sup = supervisor
        self.loop = loop
        self.task_id = task_id
        self.has_stdin = stdin
        self.pid = 0
        self.popen: subprocess.Popen | None = None
        self.watching = False  # for its exit (once its pipes are connected)
        self.pipes: dict[int, asyncio.BaseTransport] = {}  # fd in the child -> its transport
        self.returncode: int | None = None
        self.open_streams = set(_STREAMS)
        self.pending: dict[int, deque[bytes | memoryview]] = {fd: deque() for fd in _STREAMS}  # read, not yet delivered
        self.pending_bytes = dict.fromkeys(_STREAMS, 0)
        self.flush_timers: dict[int, asyncio.TimerHandle] = {}
        self.delivered: dict[int, deque[float]] = {fd: deque() for fd in _STREAMS}  # when the latest chunks went (loop time)
        self.answered: set[int] = set()  # streams written nothing since the child was last sent input
        self.kill_timer: asyncio.TimerHandle | None = None
        self.kill_deadline: float | None = None
        self.terminating = False
        self.eof_timer: asyncio.TimerHandle | None = None
        self.stdin_open = stdin
        self.held: list[tuple[Callable[..., None], tuple]] | None = []  # until start() returns
        self.finished = False
        self.reported: asyncio.Future[None] = loop.create_future()
        self.cgroup = ""  # the cgroup it is born in, when the supervisor has cgroups

    async def spawn(self, argv: list[str], *, cwd: str, env: dict[str, str]) -> None:
        """Start the child, watch for its exit, and connect its pipes to the loop."""

        def popen() -> subprocess.Popen:
            return subprocess.Popen(
                argv,
                bufsize=0,
                stdin=subprocess.PIPE if self.has_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )

        cgroups = self.sup.cgroups
        if self.cgroup and cgroups is not None:
            try:
                self.popen = cgroups.spawn_in(self.cgroup, popen)
            except PermissionError as exc:  # the cgroup, not the program: start it without one
                if self.popen is None:
                    self.cgroup = ""
                    self.popen = popen()
                self.loop.call_exception_handler({"message": f"task {self.task_id}: no cgroup for it", "exception": exc})
        else:
            self.popen = popen()
        popen_ = self.popen
        self.pid = popen_.pid
        for fd, pipe in ((1, popen_.stdout), (2, popen_.stderr)):
            _enlarge(pipe.fileno())
            self.pipes[fd], _ = await self.loop.connect_read_pipe(lambda fd=fd: _Reader(self, fd), pipe)
        if self.sup.output_paused:
            self.set_reading(False)
        if popen_.stdin is not None:
            self.pipes[0], _ = await self.loop.connect_write_pipe(lambda: _Writer(self), popen_.stdin)
        # Only now: its exit must not tear the pipes down while they are being connected.
        self._watch()

    def _watch(self) -> None:
        if not self.watching:
            self.watching = True
            assert self.popen is not None
            _watch_exit(self.loop, self.popen, self._exited)

    # -- from the pipes and the exit watch -----------------------------------------------

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd not in self.open_streams:
            return
        if not self.pending_bytes[fd] and len(data) < self.sup.coalesce_bytes:
            if fd in self.answered or self._recent(fd) < BURST_CHUNKS:
                self.answered.discard(fd)  # a reply to what it was sent, or no burst going on: at once
                self._send_out(fd, data)
                return
        self.pending[fd].append(data)
        self.pending_bytes[fd] += len(data)
        limit = self.sup.coalesce_bytes
        if self.pending_bytes[fd] >= limit:
            self._cancel_flush(fd)
            while self.pending_bytes[fd] >= limit:
                self._emit(fd, self._take(fd, limit))
        if self.pending_bytes[fd] and fd not in self.flush_timers:
            self.flush_timers[fd] = self.loop.call_later(self.sup.coalesce_delay, self._flush, fd)

    def pipe_connection_lost(self, fd: int) -> None:
        if fd == 0:
            self.stdin_open = False
        elif fd in self.open_streams:
            self._close_stream(fd)
            self._maybe_finish()

    def _exited(self, returncode: int) -> None:
        self.returncode = returncode
        if self.kill_timer is not None:
            self.kill_timer.cancel()
            self.kill_timer = None
        _signal_group(self.pid, signal.SIGKILL)  # members it left behind in its group
        self._kill_cgroup()  # and everything else it started, however it detached
        if self.finished:
            return  # abandoned while starting: it only had to be reaped
        if self.open_streams:
            # Something outside the group may still hold the pipes: do not wait forever.
            self.eof_timer = self.loop.call_later(EOF_GRACE, self._abandon_streams)
        self._maybe_finish()

    # -- what the supervisor asks ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        self.check(len(data)).write(data)
        self.answered.update(_STREAMS)  # what it writes next is likely its reply

    def check(self, size: int) -> asyncio.WriteTransport:
        """The stdin pipe, if `size` more bytes may be queued on it; WriteError otherwise."""
        if not self.has_stdin:
            raise WriteError(f"cannot send input to task {self.task_id}: it was started without an input pipe")
        pipe = self._stdin_pipe()
        if pipe is None:
            raise WriteError(f"cannot send input to task {self.task_id}: its input is closed")
        pending = pipe.get_write_buffer_size()
        if pending and pending + size > STDIN_LIMIT:
            raise WriteError(
                f"cannot send input to task {self.task_id}: it is not reading its input "
                f"({pending} bytes are still waiting; the limit is {STDIN_LIMIT})"
            )
        return pipe

    def set_reading(self, reading: bool) -> None:
        for fd in _STREAMS:
            pipe = self.pipes.get(fd)
            if pipe is not None and not pipe.is_closing():
                if reading:
                    pipe.resume_reading()  # type: ignore[attr-defined]
                else:
                    pipe.pause_reading()  # type: ignore[attr-defined]

    def close_stdin(self) -> None:
        pipe = self._stdin_pipe()
        self.stdin_open = False
        if pipe is not None:
            pipe.close()  # after what is buffered has been written

    def terminate(self, grace: float) -> None:
        if self.finished or self.returncode is not None:
            return
        if not self.terminating:
            self.terminating = True
            _signal_group(self.pid, signal.SIGTERM)
            if self.cgroup and self.sup.cgroups is not None:
                self.sup.cgroups.signal(self.cgroup, signal.SIGTERM)
        deadline = self.loop.time() + max(0.0, grace)
        if self.kill_deadline is None or deadline < self.kill_deadline:
            if self.kill_timer is not None:
                self.kill_timer.cancel()
            self.kill_deadline = deadline
            self.kill_timer = self.loop.call_at(deadline, self._kill)

    def release(self) -> None:
        """start() has returned: deliver what was held back, and stop holding."""
        held, self.held = self.held, None
        for fn, args in held or ():
            self._call(fn, *args)

    def abandon(self) -> None:
        """start() failed or was cancelled: make sure nothing is left running or open."""
        self.finished = True
        self.sup._forget(self)
        for timer in (*self.flush_timers.values(), self.kill_timer, self.eof_timer):
            if timer is not None:
                timer.cancel()
        if self.popen is not None:
            if self.returncode is None:
                _signal_group(self.pid, signal.SIGKILL)
                self._kill_cgroup()
            self._close_pipes()
            self._remove_cgroup()
            self._watch()  # to reap it
        if not self.reported.done():
            self.reported.set_result(None)

    # -- inside ----------------------------------------------------------------------

    def _stdin_pipe(self) -> asyncio.WriteTransport | None:
        if not self.stdin_open:
            return None
        pipe = self.pipes.get(0)
        if pipe is None or pipe.is_closing():
            return None
        return pipe  # type: ignore[return-value]

    def _kill(self) -> None:
        self.kill_timer = None
        if self.returncode is None:
            _signal_group(self.pid, signal.SIGKILL)
            self._kill_cgroup()

    def _kill_cgroup(self) -> None:
        if self.cgroup and self.sup.cgroups is not None:
            self.sup.cgroups.kill(self.cgroup)

    def _remove_cgroup(self, delay: float = 0.02) -> None:
        """Remove the emptied cgroup; its processes take a moment to die, so try again a
        few times, then leave it to the next start-up's sweep."""
        cgroups = self.sup.cgroups
        if not self.cgroup or cgroups is None:
            return
        try:
            if cgroups.remove(self.cgroup):
                return
        except OSError as exc:
            self.loop.call_exception_handler({"message": f"could not remove cgroup {self.cgroup}", "exception": exc})
            return
        cgroups.kill(self.cgroup)
        if delay < 5:
            self.loop.call_later(delay, self._remove_cgroup, delay * 3)

    def _flush(self, fd: int) -> None:
        self._cancel_flush(fd)
        if self.pending_bytes[fd]:
            self._send_out(fd, self._take(fd, self.pending_bytes[fd]))

    def _recent(self, fd: int) -> int:
        """How many chunks of `fd` were delivered in the last `coalesce_delay`."""
        times, since = self.delivered[fd], self.loop.time() - self.sup.coalesce_delay
        while times and times[0] <= since:
            times.popleft()
        return len(times)

    def _send_out(self, fd: int, data: bytes | memoryview) -> None:
        """Deliver a chunk now, counting it against the burst allowance."""
        times = self.delivered[fd]
        times.append(self.loop.time())
        if len(times) > BURST_CHUNKS:
            times.popleft()
        self._emit(fd, data)

    def _take(self, fd: int, size: int) -> bytes:
        """The first `size` pending bytes of `fd`, copied once (not at all when they are
        exactly one read)."""
        pieces = self.pending[fd]
        parts: list[bytes | memoryview] = []
        need = size
        while need:
            piece = pieces[0]
            if len(piece) <= need:
                parts.append(pieces.popleft())
                need -= len(piece)
            else:
                view = memoryview(piece)
                parts.append(view[:need])
                pieces[0] = view[need:]
                need = 0
        self.pending_bytes[fd] -= size
        only = parts[0]
        return only if len(parts) == 1 and type(only) is bytes else b"".join(parts)

    def _cancel_flush(self, fd: int) -> None:
        timer = self.flush_timers.pop(fd, None)
        if timer is not None:
            timer.cancel()

    def _close_stream(self, fd: int) -> None:
        self._flush(fd)
        self.open_streams.discard(fd)

    def _abandon_streams(self) -> None:
        self.eof_timer = None
        for fd in sorted(self.open_streams):
            self._close_stream(fd)
            pipe = self.pipes.get(fd)
            if pipe is not None:
                pipe.close()
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.finished or self.returncode is None or self.open_streams:
            return
        self.finished = True
        if self.eof_timer is not None:
            self.eof_timer.cancel()
            self.eof_timer = None
        stdin = self.pipes.get(0)
        if stdin is not None and (not stdin.is_closing() or stdin.get_write_buffer_size()):
            stdin.abort()  # type: ignore[attr-defined]  # nobody is left to read what it still holds
        self._close_pipes()
        self.sup._forget(self)
        self._remove_cgroup()
        rc = self.returncode
        code, sig = (rc, None) if rc >= 0 else (None, -rc)
        self._deliver(self._report_exit, code, sig)

    def _close_pipes(self) -> None:
        """Close every pipe: the transports, and the ends not yet handed to one."""
        assert self.popen is not None
        for fd, end in enumerate((self.popen.stdin, self.popen.stdout, self.popen.stderr)):
            transport = self.pipes.get(fd)
            if transport is not None:
                transport.close()
            elif end is not None:
                try:
                    end.close()
                except OSError:  # a transport that failed to start closed it already
                    pass

    def _report_exit(self, code: int | None, sig: int | None) -> None:
        try:
            self.sup.on_exit(self.task_id, self.pid, code, sig)
        finally:
            self.reported.set_result(None)

    def _emit(self, fd: int, chunk: bytes) -> None:
        self._deliver(self.sup.on_output, self.task_id, _STREAMS[fd], chunk)

    def _deliver(self, fn: Callable[..., None], *args: object) -> None:
        if self.held is not None:
            self.held.append((fn, args))
        else:
            self._call(fn, *args)

    def _call(self, fn: Callable[..., None], *args: object) -> None:
        # A failing callback must not break the bookkeeping of this process or others.
        try:
            fn(*args)
        except Exception as exc:
            self.loop.call_exception_handler(
                {"message": f"supervisor callback for task {self.task_id} failed", "exception": exc}
            )


class _Reader(asyncio.Protocol):
    """stdout or stderr of a child, read into its `_Process`."""

    def __init__(self, proc: _Process, fd: int) -> None:
        self.proc = proc
        self.fd = fd

    def data_received(self, data: bytes) -> None:
        self.proc.pipe_data_received(self.fd, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proc.pipe_connection_lost(self.fd)


class _Writer(asyncio.BaseProtocol):
    """The stdin pipe of a child."""

    def __init__(self, proc: _Process) -> None:
        self.proc = proc

    def connection_lost(self, exc: Exception | None) -> None:
        self.proc.pipe_connection_lost(0)


def _enlarge(fd: int) -> None:
    """Ask for a PIPE_BYTES pipe where the platform allows it; keep what it has otherwise."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        try:
            fcntl.fcntl(fd, setpipe, PIPE_BYTES)
        except OSError:  # over /proc/sys/fs/pipe-max-size for this user, or no memory
            pass


def _watch_exit(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen, on_exit: Callable[[int], None]) -> None:
    """Reap `popen` once it exits and call `on_exit(returncode)` on the loop (negative: the
    signal that killed it). The loop polls a pidfd for the exit where the kernel has them;
    elsewhere a thread blocks in waitpid for it."""
    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):  # not Linux 5.3+: no pidfd
        threading.Thread(target=_wait_in_thread, args=(loop, popen, on_exit), daemon=True).start()
        return

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        on_exit(popen.wait())  # a zombie by now: returns at once

    loop.add_reader(pidfd, exited)


def _wait_in_thread(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen, on_exit: Callable[[int], None]) -> None:
    returncode = popen.wait()
    try:
        loop.call_soon_threadsafe(on_exit, returncode)
    except RuntimeError:  # the loop is closed: nobody is left to tell
        pass


def _signal_group(pgid: int, sig: int) -> bool:
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _check_cwd(cwd: str) -> None:
    if not os.path.isdir(cwd):
        if os.path.exists(cwd):
            raise SpawnError(f"working directory {cwd} is not a directory")
        raise SpawnError(f"working directory {cwd} does not exist")
    if not os.access(cwd, os.X_OK):
        raise SpawnError(f"working directory {cwd} cannot be entered (permission denied)")


def _spawn_error(exc: OSError | ValueError, program: str, cwd: str, env: dict[str, str]) -> SpawnError:
    """Say, for a person, why `program` did not start."""
    if isinstance(exc, ValueError):
        return SpawnError(f"cannot start {program!r}: {exc}")
    try:
        _check_cwd(cwd)  # it may have gone away since the first check
    except SpawnError as gone:
        return gone
    search = env.get("PATH", os.defpath)
    if "/" in program:
        path: str | None = os.path.normpath(os.path.join(cwd, program))
    else:
        path = _find_on_path(program, search)
    if isinstance(exc, FileNotFoundError):
        if path is None:
            return SpawnError(f"no such program: {program!r} (not on PATH)")
        if not os.path.exists(path):
            return SpawnError(f"no such program: {path} (no such file)")
        interpreter = _interpreter(path)
        if interpreter is not None:
            return SpawnError(f"cannot run {path}: its interpreter {interpreter} does not exist (see its #! line)")
        return SpawnError(f"cannot run {path}: {exc.strerror}")
    if isinstance(exc, PermissionError):
        if path is not None and os.path.isdir(path):
            return SpawnError(f"not executable: {path} (it is a directory)")
        return SpawnError(f"not executable: {path or program}")
    return SpawnError(f"cannot start {path or program!r}: {exc.strerror or exc}")


def _find_on_path(program: str, search: str) -> str | None:
    """The file exec would have tried: the first executable, else the first that exists."""
    found = shutil.which(program, path=search)
    if found is not None:
        return found
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.path.exists(candidate):
            return candidate
    return None


def _interpreter(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(256)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].split()
    return os.fsdecode(words[0]) if words else None
