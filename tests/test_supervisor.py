"""The supervisor with real processes and real signals, under plain asyncio and uvloop.

Every test checks that nothing it started is left alive: each process group the
supervisor reported, and every escaped grandchild a test knew of, must be gone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from orchestrad.supervisor import BURST_CHUNKS, COALESCE_BYTES, STDIN_LIMIT, SpawnError, Supervisor, WriteError, kill_process_group

PY = sys.executable
ENV = {"PATH": os.environ.get("PATH", os.defpath)}
TEST_TIMEOUT = 5.0

_groups: list[int] = []  # process groups started in the current test
_strays: list[int] = []  # escaped processes a test must clean up itself


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def run(main: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(asyncio.wait_for(main, TEST_TIMEOUT))

    return run


@pytest.fixture(autouse=True)
def nothing_left_behind():
    _groups.clear()
    _strays.clear()
    yield
    try:
        for pid in _strays:
            _kill(pid)
        for pgid in _groups:
            assert _settled(lambda: not _live_members(pgid)), f"process group {pgid} outlived the test"
        for pid in _strays:
            assert _settled(lambda: not _alive(pid)), f"stray process {pid} outlived the test"
    finally:
        for pgid in _groups:
            for pid in _live_members(pgid):
                _kill(pid)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _settled(condition: Callable[[], bool], within: float = 2.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _stat(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()  # [state, ppid, pgrp, ...]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    if os.path.isdir("/proc"):
        fields = _stat(pid)
        return fields is not None and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _live_members(pgid: int) -> list[int]:
    if not os.path.isdir("/proc"):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(entry)
            if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry))
    return members


def script(source: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(source)]


class Harness:
    """A supervisor whose callbacks are recorded, with ways to wait on what they saw."""

    def __init__(self, **options: Any) -> None:
        self.output: list[tuple[int, str, bytes]] = []
        self.exits: dict[int, tuple[int, int | None, int | None]] = {}
        self.exit_count = 0
        self.returned: set[int] = set()  # tasks whose start() has returned
        self.early: list[int] = []  # tasks reported on before start() returned
        self._changed = asyncio.Event()
        self.sup = Supervisor(on_output=self._on_output, on_exit=self._on_exit, **options)

    def _on_output(self, task: int, stream: str, chunk: bytes) -> None:
        assert isinstance(chunk, bytes)
        if task not in self.returned:
            self.early.append(task)
        self.output.append((task, stream, chunk))
        self._changed.set()

    def _on_exit(self, task: int, pid: int, code: int | None, sig: int | None) -> None:
        if task not in self.returned:
            self.early.append(task)
        assert task not in self.exits, "on_exit called twice"
        self.exits[task] = (pid, code, sig)
        self.exit_count += 1
        self._changed.set()

    async def start(self, task: int, argv: list[str], *, cwd: str = "/", env: dict[str, str] = ENV, **kw: Any) -> int:
        pid = await self.sup.start(task, argv, cwd=cwd, env=env, **kw)
        self.returned.add(task)
        _groups.append(pid)
        return pid

    def out(self, task: int, stream: str = "stdout") -> bytes:
        return b"".join(c for t, s, c in self.output if t == task and s == stream)

    def chunks(self, task: int, stream: str = "stdout") -> list[bytes]:
        return [c for t, s, c in self.output if t == task and s == stream]

    async def until(self, condition: Callable[[], bool], timeout: float = 3.0) -> None:
        async def wait() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)

    async def exit_of(self, task: int, timeout: float = 3.0) -> tuple[int, int | None, int | None]:
        await self.until(lambda: task in self.exits, timeout)
        return self.exits[task]


# -- output ------------------------------------------------------------------------------


def test_output_arrives_in_order(run):
    async def main():
        h = Harness()
        pid = await h.start(1, script("for i in range(2000): print(i)"))
        assert await h.exit_of(1) == (pid, 0, None)
        assert h.out(1) == "".join(f"{i}\n" for i in range(2000)).encode()
        assert h.early == []

    run(main())


def test_stdout_and_stderr_are_kept_apart(run):
    async def main():
        h = Harness()
        await h.start(1, script("import sys; print('to out'); print('to err', file=sys.stderr)"))
        await h.exit_of(1)
        assert h.out(1, "stdout") == b"to out\n"
        assert h.out(1, "stderr") == b"to err\n"

    run(main())


def test_many_small_writes_arrive_as_few_chunks(run):
    async def main():
        h = Harness(coalesce_delay=0.2)
        await h.start(
            1,
            script(
                """
                import sys
                for i in range(500):
                    sys.stdout.write(f"line {i}\\n"); sys.stdout.flush()
                """
            ),
        )
        await h.exit_of(1)
        assert h.out(1) == "".join(f"line {i}\n" for i in range(500)).encode()
        assert len(h.chunks(1)) <= BURST_CHUNKS + 2

    run(main())


def test_a_chunk_never_exceeds_coalesce_bytes(run):
    async def main():
        h = Harness(coalesce_bytes=1000)
        await h.start(1, script("import sys; sys.stdout.buffer.write(b'a' * 50_001)"))
        await h.exit_of(1)
        chunks = h.chunks(1)
        assert b"".join(chunks) == b"a" * 50_001
        assert max(map(len, chunks)) == 1000
        assert len(chunks) == 51

    run(main())


def test_a_long_stream_without_newlines_comes_in_bounded_chunks(run):
    async def main():
        sizes: list[int] = []
        exited = asyncio.Event()
        sup = Supervisor(
            on_output=lambda task, stream, chunk: sizes.append(len(chunk)),
            on_exit=lambda *_: exited.set(),
        )
        pid = await sup.start(
            1,
            script("import sys\nfor _ in range(64): sys.stdout.buffer.write(b'x' * (1 << 20))"),
            cwd="/",
            env=ENV,
        )
        _groups.append(pid)
        await exited.wait()
        assert sum(sizes) == 64 << 20
        assert max(sizes) <= COALESCE_BYTES

    run(main())


def test_output_is_passed_through_byte_exact(run):
    payload = bytes(range(256)) * 300 + b"\xff\xfe\x80 not utf-8 \xc3\x28"
    source = "bytes(range(256)) * 300 + b'\\xff\\xfe\\x80 not utf-8 \\xc3\\x28'"

    async def main():
        h = Harness(coalesce_bytes=4096)
        await h.start(1, script(f"import sys; sys.stdout.buffer.write({source}); sys.stderr.buffer.write(b'\\x00\\xff')"))
        await h.exit_of(1)
        assert h.out(1) == payload
        assert h.out(1, "stderr") == b"\x00\xff"

    run(main())


# -- environment -------------------------------------------------------------------------


def test_the_child_gets_exactly_the_env_and_cwd_given(run, tmp_path):
    async def main():
        h = Harness()
        await h.start(1, ["env"], env={"PATH": ENV["PATH"], "ONLY": "this"})
        await h.start(2, ["pwd"], cwd=str(tmp_path))
        await h.exit_of(1)
        await h.exit_of(2)
        assert sorted(h.out(1).decode().splitlines()) == [f"PATH={ENV['PATH']}", "ONLY=this"][::-1]
        assert h.out(2).decode().strip() == str(tmp_path)

    run(main())


# -- input -------------------------------------------------------------------------------


def test_a_line_written_to_stdin_is_answered(run):
    async def main():
        h = Harness(coalesce_delay=0.01)
        await h.start(1, script("import sys\nfor line in sys.stdin: print('got', line.strip(), flush=True)"))
        h.sup.write(1, b"hello\n")
        await h.until(lambda: h.out(1) == b"got hello\n")
        h.sup.write(1, b"again\n")
        await h.until(lambda: h.out(1) == b"got hello\ngot again\n")
        h.sup.close_stdin(1)
        assert (await h.exit_of(1))[1:] == (0, None)

    run(main())


def test_a_request_after_a_quiet_spell_is_delivered_without_waiting_for_the_coalescing_timer(run):
    """A protocol exchange (the agent asks, then waits for the answer) is not held back by
    `coalesce_delay`: here a minute, far past the test's own timeout."""
    async def main():
        h = Harness(coalesce_delay=60.0)
        await h.start(1, script("""
            import sys
            for n in range(3):
                print(f"request {n}", flush=True)
                assert sys.stdin.readline() == f"answer {n}\\n"
            print("done", flush=True)
            sys.stdout.close()
            """))
        for n in range(3):
            await h.until(lambda: h.out(1).endswith(f"request {n}\n".encode()))
            h.sup.write(1, f"answer {n}\n".encode())
        assert (await h.exit_of(1))[1:] == (0, None)
        assert h.chunks(1) == [b"request 0\n", b"request 1\n", b"request 2\n", b"done\n"]

    run(main())


def test_a_message_then_a_request_a_moment_later_are_both_delivered_at_once(run):
    """Claude Code's tool call: the assistant's message, then a permission request a few ms
    later, then it waits. Holding the second back for `coalesce_delay` (here a minute) would
    stall every exchange; so would the end of a turn, its last message then its result."""
    async def main():
        h = Harness(coalesce_delay=60.0)
        await h.start(1, script("""
            import sys, time
            print("message", flush=True); time.sleep(0.02)
            print("request", flush=True)
            assert sys.stdin.readline() == "answer\\n"
            print("reply", flush=True); time.sleep(0.02)
            print("result", flush=True)
            assert sys.stdin.readline() == ""
            """))
        await h.until(lambda: h.out(1).endswith(b"request\n"))
        h.sup.write(1, b"answer\n")
        await h.until(lambda: h.out(1).endswith(b"result\n"))
        h.sup.close_stdin(1)
        assert (await h.exit_of(1))[1:] == (0, None)
        assert h.chunks(1) == [b"message\n", b"request\n", b"reply\n", b"result\n"]

    run(main())


def test_a_burst_past_the_allowance_is_held_and_coalesced(run):
    """Past `BURST_CHUNKS` chunks in a `coalesce_delay`, reads wait to be coalesced."""
    async def main():
        h = Harness(coalesce_delay=60.0)
        await h.start(1, script("""
            import sys, time
            for i in range(10):
                print(f"line {i}", flush=True); time.sleep(0.02)
            print("written", file=sys.stderr, flush=True)
            sys.stdin.readline()
            """))
        await h.until(lambda: h.out(1, "stderr") == b"written\n")
        await asyncio.sleep(0.1)
        assert len(h.chunks(1)) == BURST_CHUNKS  # the other six lines are held, not delivered
        h.sup.close_stdin(1)
        assert (await h.exit_of(1))[1:] == (0, None)  # end-of-file delivers them, as one chunk
        assert h.out(1) == "".join(f"line {i}\n" for i in range(10)).encode()
        assert len(h.chunks(1)) == BURST_CHUNKS + 1

    run(main())


def test_close_stdin_ends_cat_after_delivering_what_was_written(run):
    async def main():
        h = Harness()
        await h.start(1, ["cat"])
        h.sup.write(1, b"hello\n")
        h.sup.close_stdin(1)
        h.sup.close_stdin(1)  # idempotent
        assert (await h.exit_of(1))[1:] == (0, None)
        assert h.out(1) == b"hello\n"

    run(main())


def test_without_stdin_the_child_reads_end_of_file(run):
    async def main():
        h = Harness()
        await h.start(1, ["cat"], stdin=False)
        assert (await h.exit_of(1))[1:] == (0, None)
        assert h.out(1) == b""

    run(main())


def test_write_errors_say_what_is_wrong(run):
    async def main():
        h = Harness()
        with pytest.raises(WriteError, match="no running process"):
            h.sup.write(7, b"x")
        await h.start(1, ["sleep", "5"], stdin=False)
        with pytest.raises(WriteError, match="without an input pipe"):
            h.sup.write(1, b"x")
        await h.start(2, ["sleep", "5"])
        h.sup.close_stdin(2)
        with pytest.raises(WriteError, match="input is closed"):
            h.sup.write(2, b"x")
        h.sup.terminate(1, 1)
        h.sup.terminate(2, 1)
        await h.exit_of(1)
        await h.exit_of(2)
        with pytest.raises(WriteError, match="no running process"):
            h.sup.write(1, b"x")

    run(main())


def test_stdin_of_a_child_that_never_reads_is_bounded(run):
    async def main():
        h = Harness()
        await h.start(1, ["sleep", "5"])
        block = b"x" * 64 * 1024
        accepted = 0
        with pytest.raises(WriteError, match="not reading its input"):
            for _ in range(100):
                h.sup.write(1, block)
                accepted += len(block)
        # At most the limit waits in our buffer, plus what the kernel's pipe holds.
        assert STDIN_LIMIT <= accepted <= STDIN_LIMIT + 1024 * 1024
        h.sup.terminate(1, 1)
        assert (await h.exit_of(1))[2] == signal.SIGTERM

    run(main())


# -- exits -------------------------------------------------------------------------------


def test_exit_code_is_reported(run):
    async def main():
        h = Harness()
        pid = await h.start(1, script("raise SystemExit(3)"))
        assert await h.exit_of(1) == (pid, 3, None)
        assert h.sup.pids() == {}

    run(main())


def test_death_by_signal_is_reported(run):
    async def main():
        h = Harness()
        pid = await h.start(1, script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
        assert await h.exit_of(1) == (pid, None, signal.SIGKILL)

    run(main())


def test_exits_are_watched_by_a_thread_where_there_is_no_pidfd(run, monkeypatch):
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)  # as on macOS, or Linux before 5.3

    async def main():
        h = Harness()
        pids = [await h.start(1, script("raise SystemExit(5)")), await h.start(2, ["sleep", "5"])]
        h.sup.terminate(2, 1)
        assert await h.exit_of(1) == (pids[0], 5, None)
        assert await h.exit_of(2) == (pids[1], None, signal.SIGTERM)

    run(main())


def test_a_process_that_exits_at_once_is_reported_after_start_returns(run):
    async def main():
        h = Harness()
        pid = await h.start(1, ["true"], stdin=False)
        assert await h.exit_of(1) == (pid, 0, None)
        assert h.early == []

    run(main())


def test_a_process_that_closes_its_output_is_reported_when_it_exits(run):
    async def main():
        h = Harness()
        await h.start(1, script("import os, time; os.close(1); os.close(2); time.sleep(0.5)"))
        started = time.monotonic()
        assert (await h.exit_of(1))[1:] == (0, None)
        assert time.monotonic() - started >= 0.4

    run(main())


def test_a_process_that_closes_its_output_can_be_terminated(run):
    async def main():
        h = Harness()
        pid = await h.start(1, script("import os, time; print('bye', flush=True); os.close(1); os.close(2); time.sleep(30)"))
        await h.until(lambda: h.out(1) == b"bye\n")
        assert h.sup.pids() == {1: pid}
        h.sup.terminate(1, 2)
        assert await h.exit_of(1) == (pid, None, signal.SIGTERM)

    run(main())


def test_a_failing_callback_does_not_stop_the_reporting(run):
    async def main():
        problems: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: problems.append(context))
        exits: list[tuple[int, int | None, int | None]] = []
        exited = asyncio.Event()

        def on_output(task: int, stream: str, chunk: bytes) -> None:
            raise RuntimeError("a bug in the caller")

        def on_exit(task: int, pid: int, code: int | None, sig: int | None) -> None:
            exits.append((pid, code, sig))
            exited.set()

        sup = Supervisor(on_output=on_output, on_exit=on_exit)
        pid = await sup.start(1, ["echo", "hi"], cwd="/", env=ENV, stdin=False)
        _groups.append(pid)
        await exited.wait()
        assert exits == [(pid, 0, None)]
        assert [type(p["exception"]) for p in problems] == [RuntimeError]
        assert sup.pids() == {}

    run(main())


# -- stopping ----------------------------------------------------------------------------

IGNORES_SIGTERM = script(
    """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print('ready', flush=True)
    time.sleep(30)
    """
)


def test_terminate_kills_a_process_that_ignores_sigterm_after_grace(run):
    async def main():
        h = Harness(coalesce_delay=0.01)
        pid = await h.start(1, IGNORES_SIGTERM)
        await h.until(lambda: h.out(1) == b"ready\n")
        began = time.monotonic()
        h.sup.terminate(1, 0.5)
        h.sup.terminate(1, 10)  # idempotent: a later call does not postpone the kill
        assert await h.exit_of(1) == (pid, None, signal.SIGKILL)
        assert 0.45 <= time.monotonic() - began < 2

    run(main())


def test_terminate_of_an_unknown_task_does_nothing(run):
    async def main():
        h = Harness()
        h.sup.terminate(42, 0)
        h.sup.close_stdin(42)
        assert h.sup.pids() == {}

    run(main())


def test_terminate_reaches_grandchildren_in_the_group(run):
    async def main():
        h = Harness(coalesce_delay=0.01)
        await h.start(1, ["sh", "-c", "sleep 30 & echo $!; wait"])
        await h.until(lambda: h.out(1).endswith(b"\n"))
        grandchild = int(h.out(1))
        assert _alive(grandchild)
        h.sup.terminate(1, 2)
        await h.exit_of(1)
        assert _settled(lambda: not _alive(grandchild))

    run(main())


def test_group_members_left_behind_are_killed_when_the_child_exits(run):
    async def main():
        h = Harness(coalesce_delay=0.01)
        started = time.monotonic()
        # The background sleep keeps stdout open; it is killed with the group, so the
        # exit is reported at once rather than after the pipe grace.
        pid = await h.start(1, ["sh", "-c", "sleep 30 & echo $!"])
        assert await h.exit_of(1) == (pid, 0, None)
        assert time.monotonic() - started < 0.9
        assert _settled(lambda: not _alive(int(h.out(1))))

    run(main())


def test_an_escaped_grandchild_holding_the_pipes_does_not_hang_the_exit(run):
    async def main():
        h = Harness(coalesce_delay=0.01)
        await h.start(
            1,
            script(
                """
                import subprocess
                p = subprocess.Popen(["sleep", "30"], start_new_session=True)
                print(p.pid, flush=True)
                """
            ),
        )
        await h.until(lambda: h.out(1).endswith(b"\n"))
        escaped = int(h.out(1))
        _strays.append(escaped)
        began = time.monotonic()
        assert (await h.exit_of(1))[1:] == (0, None)
        assert time.monotonic() - began < 2
        assert _alive(escaped)  # not ours to kill: the test cleans it up

    run(main())


def test_shutdown_stops_everything_and_reports_every_exit(run):
    async def main():
        h = Harness(coalesce_delay=0.01)
        await h.start(1, ["sleep", "30"])
        await h.start(2, IGNORES_SIGTERM)
        await h.start(3, ["cat"])
        await h.until(lambda: h.out(2) == b"ready\n")
        assert set(h.sup.pids()) == {1, 2, 3}
        await h.sup.shutdown(0.3)
        assert h.exits[1][2] == signal.SIGTERM
        assert h.exits[2][2] == signal.SIGKILL
        assert h.exits[3][2] == signal.SIGTERM
        assert h.exit_count == 3
        assert h.sup.pids() == {}
        with pytest.raises(SpawnError, match="shutting down"):
            await h.sup.start(4, ["true"], cwd="/", env=ENV)

    run(main())


# -- spawn errors ------------------------------------------------------------------------


def test_a_missing_program_is_a_spawn_error_naming_path(run):
    async def main():
        h = Harness()
        with pytest.raises(SpawnError) as caught:
            await h.sup.start(1, ["no-such-program-xyz"], cwd="/", env=ENV)
        assert str(caught.value) == "no such program: 'no-such-program-xyz' (not on PATH)"
        with pytest.raises(SpawnError, match="no such program: /nope/prog"):
            await h.sup.start(1, ["/nope/prog"], cwd="/", env=ENV)
        assert h.sup.pids() == {}

    run(main())


def test_a_file_that_is_not_executable_is_a_spawn_error(run, tmp_path):
    target = tmp_path / "script.sh"
    target.write_text("echo hi\n")

    async def main():
        h = Harness()
        with pytest.raises(SpawnError) as caught:
            await h.sup.start(1, [str(target)], cwd="/", env=ENV)
        assert str(caught.value) == f"not executable: {target}"
        with pytest.raises(SpawnError, match="it is a directory"):
            await h.sup.start(1, [str(tmp_path)], cwd="/", env=ENV)

    run(main())


def test_a_missing_interpreter_is_named(run, tmp_path):
    target = tmp_path / "script"
    target.write_text("#!/no/such/interpreter\necho hi\n")
    target.chmod(0o755)

    async def main():
        h = Harness()
        with pytest.raises(SpawnError, match="its interpreter /no/such/interpreter does not exist"):
            await h.sup.start(1, [str(target)], cwd="/", env=ENV)

    run(main())


def test_a_missing_working_directory_is_a_spawn_error(run, tmp_path):
    async def main():
        h = Harness()
        missing = tmp_path / "gone"
        with pytest.raises(SpawnError) as caught:
            await h.sup.start(1, ["true"], cwd=str(missing), env=ENV)
        assert str(caught.value) == f"working directory {missing} does not exist"
        afile = tmp_path / "file"
        afile.write_text("")
        with pytest.raises(SpawnError, match="is not a directory"):
            await h.sup.start(1, ["true"], cwd=str(afile), env=ENV)

    run(main())


def test_a_task_runs_one_process_at_a_time(run):
    async def main():
        h = Harness()
        await h.start(1, ["sleep", "30"])
        with pytest.raises(SpawnError, match="already has a process"):
            await h.sup.start(1, ["true"], cwd="/", env=ENV)
        h.sup.terminate(1, 1)
        await h.exit_of(1)
        del h.exits[1]
        pid = await h.start(1, ["true"])  # once reported, the task id is free again
        assert await h.exit_of(1) == (pid, 0, None)

    run(main())


# -- leftovers from a previous daemon ----------------------------------------------------


def test_kill_process_group_kills_a_leftover_group():
    # Two processes in one group, as a previous daemon's agent and its helper would be.
    # Both are our children (so that we can reap them and see the group vanish), and so
    # in our session: a process may only join a group of its own session.
    leader = subprocess.Popen(["sleep", "30"], process_group=0)
    member = subprocess.Popen(["sleep", "30"], process_group=leader.pid)
    _groups.append(leader.pid)
    try:
        assert kill_process_group(leader.pid) is True
        assert leader.wait(timeout=2) == -signal.SIGKILL
        assert member.wait(timeout=2) == -signal.SIGKILL
        assert kill_process_group(leader.pid) is False  # nothing there any more
    finally:
        for proc in (leader, member):
            proc.kill()
            proc.wait()
    with pytest.raises(ValueError):
        kill_process_group(os.getpgrp())
    with pytest.raises(ValueError):
        kill_process_group(0)
