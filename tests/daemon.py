"""A real daemon on a temporary home, for integration tests: started as a subprocess,
talked to through the real socket and the real CLI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from click.testing import CliRunner

from orchestra.shared import protocol as p
from orchestra.client import connect
from orchestra.main import cli
from orchestra.shared.paths import resolve
from orchestra.wire import DaemonUnreachable


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Wait until `condition()` is truthy; its value. Tests wait on conditions, not sleeps."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """The process runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Daemon:
    def __init__(self, home: Path | None = None) -> None:
        # Short paths: a Unix socket path must fit in 107 bytes.
        self.home = home or Path(tempfile.mkdtemp(prefix="orc-"))
        self.paths = resolve(self.home)
        self.proc: subprocess.Popen | None = None
        self.env = {**os.environ, "ORCHESTRA_HOME": str(self.home), "ORCHESTRA_NO_AUTOSTART": "1"}

    def start(self, *args: str) -> "Daemon":
        with open(self.home / "daemon.out", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrad", "--home", str(self.home), *args],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env,
            )
        wait_for(self._answers, 15, "the daemon to answer")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
        try:
            connect(self.paths, timeout=2).close()
            return True
        except DaemonUnreachable:
            return False

    def output(self) -> str:
        return (self.home / "daemon.out").read_text(errors="replace")

    def connect(self):
        return connect(self.paths, timeout=30)

    def call(self, request: p.Request, result_type: Any = None) -> Any:
        with self.connect() as conn:
            return conn.call(request, result_type)

    def submit(self, *argv: str, **kw) -> int:
        kw.setdefault("cwd", str(self.home))
        return self.call(p.Submit(argv=list(argv), **kw), p.TaskView).id

    def task(self, task_id: int) -> p.TaskView:
        return self.call(p.Show(task=task_id), p.TaskView)

    def tasks(self, **filters: Any) -> list[p.TaskView]:
        """Every task (previews) matching the ListTasks `filters`, in id order, page by page."""
        found: list[p.TaskView] = []
        before = None
        with self.connect() as conn:
            while True:
                page = conn.call(p.ListTasks(**filters, before=before), p.TaskPage)
                found += page.tasks
                if not page.more:
                    return found[::-1]
                before = page.next

    def wait_status(self, task_id: int, *statuses: p.Status, timeout: float = 15) -> p.TaskView:
        return wait_for(
            lambda: (t := self.task(task_id)).status in statuses and t,
            timeout,
            f"task {task_id} to be {'/'.join(s.value for s in statuses)}",
        )

    def output_of(self, task_id: int) -> bytes:
        with self.connect() as conn:
            return b"".join(c.data for c in conn.stream(p.Logs(task=task_id), p.LogChunk))

    def cli(self, *args: str, input: str | None = None):
        """The real CLI in-process (CliRunner)."""
        return CliRunner().invoke(cli, ["--home", str(self.home), "--no-autostart", *args], input=input, catch_exceptions=False)

    def run_cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """The real CLI as a subprocess, as a person runs it."""
        return subprocess.run(
            [sys.executable, "-m", "orchestra", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout,
        )

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


def claude_daemon(api, **config: Any) -> Daemon:
    """A started daemon whose claude agents are the real Claude Code CLI talking to `api` (a
    `tests.scripted_api.ScriptedAPI`), with `config` set; the test fails without the CLI."""
    import pytest

    from tests.scripted_api import INSTALL_HINT, find_claude

    claude = find_claude()
    if claude is None:
        pytest.fail(INSTALL_HINT)
    d = Daemon()
    d.env.update(api.env(d.env))
    d.start()
    for key, value in {"claude_path": claude, **config}.items():
        d.call(p.ConfigSet(key=key, value=value))
    return d
