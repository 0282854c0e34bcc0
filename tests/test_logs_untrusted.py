"""Output an agent wrote badly, an adapter that trips on output, and a stream the daemon
cannot go on with: the bytes are kept, `orchestra logs` shows what it can, and no client is
left waiting."""

from __future__ import annotations

import json

from orchestra.shared import protocol as p
from tests.daemon import Daemon

MALFORMED = [
    {"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"},
    {"type": "control_request", "request_id": "r1", "request": "not an object"},
    {"type": "result", "subtype": "success", "result": "ok", "total_cost_usd": "a lot", "duration_ms": "long"},
]


def fake_claude(path, lines: list[dict]) -> str:
    """A "claude" that prints `lines` as stream-json and exits."""
    body = "".join(json.dumps(line) + "\n" for line in lines)
    path.write_text(f"#!/bin/sh\ncat >/dev/null &\nprintf '%s' '{body}'\n")
    path.chmod(0o755)
    return str(path)


def test_logs_shows_lines_its_agent_kind_cannot_read_as_they_were_written(tmp_path):
    d = Daemon().start()
    try:
        d.call(p.ConfigSet(key="claude_path", value=fake_claude(tmp_path / "claude", MALFORMED)))
        task = d.call(p.Submit(prompt="hello", agent="claude", cwd=str(tmp_path))).id
        d.wait_status(task, *p.FINISHED)
        out = d.run_cli("logs", str(task), timeout=20)
        assert out.returncode == 0, out.stderr
        assert '"request": "not an object"' in out.stdout and '"total_cost_usd": "a lot"' in out.stdout
    finally:
        d.cleanup()


GOOD = [
    {"type": "system", "subtype": "init", "session_id": "s-1", "model": "m"},
    {"type": "result", "subtype": "success", "result": "ok", "is_error": False, "total_cost_usd": 0.5},
]


def broken_daemon(tmp_path, patch: str) -> Daemon:
    """A daemon with a fault injected: `patch`, run by sitecustomize before anything else."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(patch)
    d = Daemon()
    d.env["PYTHONPATH"] = f"{hook}:{d.env.get('PYTHONPATH', '')}"
    return d.start()


def test_output_an_adapter_trips_on_is_kept(tmp_path):
    d = broken_daemon(tmp_path, (
        "from orchestrad.agents.claude import ClaudeAgent\n"
        "def output(self, task, stream, chunk):\n"
        "    raise RuntimeError('adapter broke')\n"
        "ClaudeAgent.output = output\n"
    ))
    try:
        d.call(p.ConfigSet(key="claude_path", value=fake_claude(tmp_path / "claude", GOOD)))
        task = d.call(p.Submit(prompt="hello", agent="claude", cwd=str(tmp_path))).id
        assert d.wait_status(task, *p.FINISHED).status is p.Status.FAILED  # no result was read
        raw = d.run_cli("logs", "--raw", str(task), timeout=20).stdout
        assert '"result": "ok"' in raw and '"session_id": "s-1"' in raw
    finally:
        d.cleanup()


def test_a_stream_that_fails_ends_with_an_error_instead_of_hanging(tmp_path):
    d = broken_daemon(tmp_path, (
        "import orchestrad.server as s\n"
        "def broken(agent):\n"
        "    def render(stream, data):\n"
        "        raise RuntimeError('renderer broke')\n"
        "    return render\n"
        "s.renderer = broken\n"
    ))
    try:
        d.call(p.ConfigSet(key="claude_path", value=fake_claude(tmp_path / "claude", GOOD)))
        task = d.call(p.Submit(prompt="hello", agent="claude", cwd=str(tmp_path))).id
        assert d.wait_status(task, *p.FINISHED).status is p.Status.SUCCEEDED
        out = d.run_cli("logs", str(task), timeout=20)
        assert out.returncode != 0
        assert "could not go on with this stream" in out.stderr and "renderer broke" in out.stderr
        assert '"result": "ok"' in d.run_cli("logs", "--raw", str(task), timeout=20).stdout  # the daemon serves on
    finally:
        d.cleanup()
