"""What every executor promises the engine (orchestrad.executor), tested the same way for each.

The `made` fixture makes executors of each kind: local, and Ray on the tests' shared cluster
(`ray_cluster`). A new executor (Kubernetes) joins its parameters and must pass every test
here unchanged. The supervisor's own mechanics (coalescing, pipes, escaped
grandchildren) are tested in tests/test_supervisor.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
import uvloop

from orchestrad.executor import Executor, SpawnError, WriteError
from orchestrad.remote.rayexec import RayExecutor
from orchestrad.supervisor import Supervisor
from tests.daemon import alive


class Recorder:
    """The two callbacks, recording what an executor reports."""

    def __init__(self) -> None:
        self.output: dict[tuple[int, str], bytearray] = {}
        self.exits: dict[int, list[tuple[int, int | None, int | None]]] = {}
        self.events: list[tuple[str, int]] = []  # ("output" | "exit", task) in the order reported
        self.changed = asyncio.Event()

    def on_output(self, task: int, stream: str, chunk: bytes) -> None:
        self.output.setdefault((task, stream), bytearray()).extend(chunk)
        self.events.append(("output", task))
        self.changed.set()

    def on_exit(self, task: int, pid: int, code: int | None, sig: int | None, lost: str = "") -> None:
        assert not lost, lost  # no executor here loses a process
        self.exits.setdefault(task, []).append((pid, code, sig))
        self.events.append(("exit", task))
        self.changed.set()

    def out(self, task: int, stream: str = "stdout") -> bytes:
        return bytes(self.output.get((task, stream), b""))

    async def until(self, condition: Callable[[], object], timeout: float = 20.0) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(wait(), timeout)

    async def exit_of(self, task: int) -> tuple[int, int | None, int | None]:
        await self.until(lambda: task in self.exits)
        return self.exits[task][0]


_MADE: list[Executor] = []  # the executors of the running test, let go of by `run`


@pytest.fixture(params=["local", "ray"])
def made(request) -> Callable[[Recorder], Executor]:
    """A factory of executors of one kind, reporting to a Recorder."""
    address = request.getfixturevalue("ray_cluster").address if request.param == "ray" else ""
    cache = request.getfixturevalue("tmp_path") / "cache"

    def make(rec: Recorder) -> Executor:
        if request.param == "local":
            executor = Supervisor(on_output=rec.on_output, on_exit=rec.on_exit)
        else:
            executor = RayExecutor(on_output=rec.on_output, on_exit=rec.on_exit, address=address, namespace="contract",
                                   env={**os.environ, "XDG_CACHE_HOME": str(cache)})  # the nodes' checkouts, removed after
        _MADE.append(executor)
        return executor

    yield make
    for executor in _MADE:
        if isinstance(executor, RayExecutor):
            executor.abandon()
    _MADE.clear()


def run(coro_fn) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(coro_fn(), 60)
        finally:
            for executor in _MADE:
                if isinstance(executor, RayExecutor):
                    await asyncio.wait_for(executor.detach(), 30)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


@pytest.fixture
def checkout(tmp_path):
    """A git checkout to work in: a remote executor's process works in a copy of it."""
    path = tmp_path / "checkout"
    path.mkdir()
    (path / "marker").write_text("committed")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m", "one"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    return path


def test_it_is_an_executor_with_a_name(made):
    executor = made(Recorder())
    assert isinstance(executor, Executor) and executor.name


def test_output_in_order_then_one_exit_after_the_last_output(made, checkout):
    async def main():
        rec = Recorder()
        ex = made(rec)
        code = "import sys\nfor i in range(300): print(i); print(-i, file=sys.stderr)\nsys.exit(3)"
        pid = await ex.start(1, py(code), cwd=str(checkout), env=ENV)
        assert rec.events == []  # nothing before start returned the pid
        assert await rec.exit_of(1) == (pid, 3, None)
        await asyncio.sleep(0.2)
        assert rec.exits[1] == [(pid, 3, None)]  # once
        assert rec.events[-1] == ("exit", 1)
        assert rec.out(1) == "".join(f"{i}\n" for i in range(300)).encode()
        assert rec.out(1, "stderr") == "".join(f"{-i}\n" for i in range(300)).encode()
        assert ex.pids() == {}

    run(main)


def test_the_environment_is_exactly_what_was_given_and_the_directory_its_checkout(made, checkout):
    async def main():
        rec = Recorder()
        ex = made(rec)
        code = "import os; print(sorted(os.environ.items())); print(os.getcwd()); print(open('marker').read())"
        await ex.start(1, py(code), cwd=str(checkout), env={**ENV, "ONLY_THIS": "1"})
        await rec.exit_of(1)
        env_line, cwd_line, marker = rec.out(1).decode().splitlines()
        names = {k for k, _ in eval(env_line)} - {"LC_CTYPE"}  # Python may set LC_CTYPE for itself
        assert names == {"PATH", "ONLY_THIS"} and marker == "committed"
        assert cwd_line == await ex.workdir(1, 0, str(checkout), ENV)  # on this machine: the directory itself
        assert isinstance(ex, RayExecutor) or cwd_line == str(checkout)

    run(main)


def test_what_a_process_leaves_in_its_directory_is_there_when_its_exit_is_reported(made, checkout, tmp_path):
    async def main():
        rec = Recorder()
        here = tmp_path / "state-here"
        here.mkdir()
        (here / "before").write_text("given")
        seen = []

        def on_exit(task, pid, code, sig):  # what is here at the moment the exit is reported
            seen.append(((checkout / "made.txt").exists(), (checkout / "marker").exists(), (here / "after").exists()))
            rec.on_exit(task, pid, code, sig)

        ex = made(rec)
        ex.on_exit = on_exit
        there = str(tmp_path / "state-there") if isinstance(ex, RayExecutor) else str(here)  # where it runs
        code = f"""
            import os, pathlib
            pathlib.Path("made.txt").write_text("left\\n")
            os.remove("marker")
            state = pathlib.Path({there!r})
            print((state / "before").read_text())
            (state / "after").write_text("kept")
            """
        await ex.start(1, py(code), cwd=str(checkout), env=ENV, carry=[(str(here), there)])
        assert (await rec.exit_of(1))[1:] == (0, None), rec.out(1, "stderr")
        assert rec.out(1) == b"given\n" and seen == [(True, False, True)]
        assert (checkout / "made.txt").read_text() == "left\n" and (here / "after").read_text() == "kept"

    run(main)


def test_stdin_takes_writes_and_closes_after_delivering_them(made, checkout):
    async def main():
        rec = Recorder()
        ex = made(rec)
        pid = await ex.start(1, ["cat"], cwd=str(checkout), env=ENV)
        assert ex.pids() == {1: pid}
        ex.check_writable(1, 6)
        ex.write(1, b"hello\n")
        await rec.until(lambda: rec.out(1) == b"hello\n")  # a reply comes while the process runs
        ex.write(1, b"bye\n")
        ex.close_stdin(1)
        ex.close_stdin(1)  # idempotent
        assert (await rec.exit_of(1))[1:] == (0, None)
        assert rec.out(1) == b"hello\nbye\n"
        with pytest.raises(WriteError, match="no running process"):
            ex.check_writable(1)

    run(main)


def test_a_process_without_stdin_reads_end_of_file(made, checkout):
    async def main():
        rec = Recorder()
        ex = made(rec)
        await ex.start(1, py("import sys; print(repr(sys.stdin.read()))"), cwd=str(checkout), env=ENV, stdin=False)
        assert (await rec.exit_of(1))[1:] == (0, None) and rec.out(1) == b"''\n"
        with pytest.raises(WriteError):
            ex.write(1, b"x")

    run(main)


def test_terminate_is_sigterm_then_sigkill_after_the_grace_to_the_whole_group(made, checkout):
    async def main():
        rec = Recorder()
        ex = made(rec)
        # It ignores SIGTERM and has started a child that would outlive it.
        code = """
            import os, signal, subprocess, sys, time
            signal.signal(signal.SIGTERM, lambda *a: os.write(1, b"term\\n"))
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            print(child.pid, flush=True)
            time.sleep(60)
            """
        await ex.start(1, py(code), cwd=str(checkout), env=ENV)
        await rec.until(lambda: rec.out(1).strip().isdigit())
        child = int(rec.out(1))
        loop = asyncio.get_running_loop()
        started = loop.time()
        ex.terminate(1, 0.5)
        ex.terminate(1, 30)  # never postpones the kill
        assert (await rec.exit_of(1))[1:] == (None, signal.SIGKILL), rec.out(1, "stderr")
        assert 0.4 <= loop.time() - started < 10
        assert rec.out(1).endswith(b"term\n")  # SIGTERM came first
        await rec.until(lambda: not alive(child), timeout=5)  # the group went with it

    run(main)


def test_a_program_that_cannot_start_raises_spawn_error_for_a_person(made, checkout):
    async def main():
        rec = Recorder()
        ex = made(rec)
        with pytest.raises(SpawnError, match="no-such-program"):
            await ex.start(1, ["no-such-program-here"], cwd=str(checkout), env=ENV)
        with pytest.raises(SpawnError):
            await ex.start(2, [], cwd=str(checkout), env=ENV)
        await asyncio.sleep(0.1)
        assert rec.events == [] and ex.pids() == {}

    run(main)


def test_paused_output_is_not_read_until_resumed(made, checkout):
    async def main():
        rec = Recorder()
        ex = made(rec)
        ex.pause_output()
        assert ex.output_paused
        await ex.start(1, py("print('held')"), cwd=str(checkout), env=ENV)
        await asyncio.sleep(0.5)
        assert rec.out(1) == b"" and 1 not in rec.exits  # not even its exit: it comes after the output
        ex.resume_output()
        assert not ex.output_paused
        assert (await rec.exit_of(1))[1:] == (0, None) and rec.out(1) == b"held\n"

    run(main)


def test_shutdown_stops_everything_reports_every_exit_and_refuses_new_work(made, checkout):
    async def main():
        rec = Recorder()
        ex = made(rec)
        for task in (1, 2):
            await ex.start(task, ["sleep", "60"], cwd=str(checkout), env=ENV)
        await ex.shutdown(2.0)
        assert sorted(rec.exits) == [1, 2] and all(sig == signal.SIGTERM for _, _, sig in (rec.exits[1][0], rec.exits[2][0]))
        with pytest.raises(SpawnError, match="shutting down"):
            await ex.start(3, ["true"], cwd=str(checkout), env=ENV)

    run(main)



def test_an_identity_is_free_again_once_its_exit_is_reported_even_if_the_executor_lets_go_at_once(made, checkout):
    async def main():
        for run_no in range(3):  # each time a new executor, right after the last one let go
            rec = Recorder()
            ex = made(rec)
            await ex.start(1, py(f"print({run_no})"), cwd=str(checkout), env=ENV)
            assert (await rec.exit_of(1))[1:] == (0, None)
            assert rec.out(1) == f"{run_no}\n".encode()  # not what the same identity printed before
            if isinstance(ex, RayExecutor):
                await ex.detach()

    run(main)
