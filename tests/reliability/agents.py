"""Misbehaving agents, as reusable pieces: what each one runs and how it must end. Used by
test_misbehaving_agents.py and by bench/reliability.py."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.reliability.harness import PY

FLOOD = 100_000_000


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: Callable[[p.TaskView], bool]  # the view it must end with
    how: str  # what that means, for the failure message
    kw: dict = field(default_factory=dict)


def ended(status: Status, *words: str) -> Callable[[p.TaskView], bool]:
    return lambda v: v.status is status and all(w in v.reason for w in words)


def script(tmp: Path, name: str, text: str, mode: int = 0o755) -> str:
    path = tmp / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def cases(tmp: Path) -> list[Case]:
    not_executable = script(tmp, "not-executable", "#!/bin/sh\necho hi\n", 0o644)
    bad_interpreter = script(tmp, "bad-interpreter", "#!/nonexistent/interpreter\necho hi\n")
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(300)"
    return [
        Case("ignores SIGTERM, times out", [PY, "-c", ignore_term],
             lambda v: v.status is Status.TIMED_OUT and v.signal == signal.SIGKILL and v.reason.startswith("timed out after 1 s"),
             "timed_out, killed by SIGKILL after the grace", {"timeout": 1.0}),
        Case("a grandchild in its group outlives it", ["sh", "-c", "sleep 300 & echo spawned"],
             ended(Status.SUCCEEDED), "succeeded (the grandchild is killed with the group)"),
        Case("100 MB without a newline", [PY, "-c", f"import sys; sys.stdout.buffer.write(b'x' * {FLOOD})"],
             lambda v: v.status is Status.SUCCEEDED and v.output_bytes == FLOOD, f"succeeded with {FLOOD:,} bytes stored"),
        Case("invalid UTF-8 and binary",
             [PY, "-c", "import sys; sys.stdout.buffer.write(bytes(range(256)) * 64 + b'\\xff\\xfe\\xc3\\x28\\n')"],
             lambda v: v.status is Status.SUCCEEDED and v.output_bytes == 256 * 64 + 5, "succeeded, every byte kept"),
        Case("closes its output and keeps running", [PY, "-c", "import os, time; os.close(1); os.close(2); time.sleep(2)"],
             lambda v: v.status is Status.SUCCEEDED and v.runtime >= 2, "succeeded once it exits, 2 s later"),
        Case("closes its output and runs forever", [PY, "-c", "import os, time; os.close(1); os.close(2); time.sleep(300)"],
             ended(Status.TIMED_OUT, "timed out"), "timed_out", {"timeout": 1.0}),
        Case("exits at once", ["true"], ended(Status.SUCCEEDED), "succeeded"),
        Case("fails at once", ["false"], ended(Status.FAILED, "exited with code 1"), "failed: exited with code 1"),
        Case("dies of a signal", ["sh", "-c", "kill -SEGV $$"], ended(Status.FAILED, "killed by SIGSEGV"),
             "failed: killed by SIGSEGV"),
        Case("floods stderr", [PY, "-c", "import sys\nline = 'e' * 999 + '\\n'\nfor _ in range(50_000): sys.stderr.write(line)"],
             lambda v: v.status is Status.SUCCEEDED and v.output_bytes == 50_000_000, "succeeded with 50 MB of stderr"),
        Case("no such program (path)", ["/nonexistent/agent", "--flag"],
             ended(Status.FAILED, "no such program", "/nonexistent/agent"), "failed, naming the program"),
        Case("no such program (name)", ["no-such-agent-cli-xyz"],
             ended(Status.FAILED, "no such program", "no-such-agent-cli-xyz", "PATH"), "failed: not on PATH"),
        Case("not executable", [not_executable], ended(Status.FAILED, "not executable", not_executable),
             "failed: not executable"),
        Case("a directory", [str(tmp)], ended(Status.FAILED, "not executable", "directory"), "failed: it is a directory"),
        Case("its interpreter is missing", [bad_interpreter], ended(Status.FAILED, "/nonexistent/interpreter"),
             "failed, naming the interpreter"),
    ]


def fake_claude_paths(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """claude_path values that are not Claude Code, and a word the failure reason must hold."""
    return {
        "a directory": (str(tmp_path), "not executable"),
        "not executable": (script(tmp_path, "claude-noexec", "#!/bin/sh\n", 0o644), "not executable"),
        "exits at once with garbage": (script(tmp_path, "claude-garbage", "#!/bin/sh\necho 'this is not json'\nexit 0\n"), ""),
        "20 MB without a newline, then fails": (
            script(tmp_path, "claude-flood", f"#!{PY}\nimport sys\nsys.stdout.buffer.write(b'{{' * 20_000_000)\n"
                                             "sys.stderr.write('fake claude: out of cheese\\n')\nsys.exit(2)\n"),
            "out of cheese"),
    }
