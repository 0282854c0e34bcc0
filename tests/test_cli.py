"""The `orchestra` CLI against a real daemon: output, --json, and exit codes that mean something."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys

from click.testing import CliRunner

from orchestra.shared import protocol as p
from orchestra.main import Exit
from orchestra.shared.protocol import FINISHED
from tests.daemon import Daemon, wait_for


def test_submit_prints_the_id_and_ps_json_has_the_fields(daemon):
    first = daemon.cli("submit", "--title", "gate", "--", sys.executable, "-c", "input()")
    assert first.exit_code == 0 and first.output.strip() == "1"
    second = daemon.cli("submit", "--priority", "high", "--after", "1", "--role", "tester", "--", "echo", "hi")
    assert second.output.strip() == "2"
    rows = json.loads(daemon.cli("ps", "--json").output)
    assert [r["id"] for r in rows] == [1, 2]
    for key in ("id", "status", "role", "agent", "priority", "after"):
        assert key in rows[1]
    assert rows[1]["priority"] == 10 and rows[1]["after"] == [1] and rows[1]["role"] == "tester"
    assert rows[1]["agent"] == "command" and rows[1]["status"] == "queued"
    table = daemon.cli("ps").output
    assert "STATUS" in table and "gate" in table
    only = json.loads(daemon.cli("ps", "--json", "--role", "tester").output)
    assert [r["id"] for r in only] == [2]
    daemon.cli("respond", "1", "go")
    assert daemon.cli("wait", "1", "2").exit_code == 0
    assert daemon.cli("logs", "2").output == "hi\n"


def test_exit_codes(daemon):
    assert daemon.cli("show", "99").exit_code == Exit.NOT_FOUND
    bad = daemon.cli("submit", "--priority", "soonish", "--", "true")
    assert bad.exit_code == Exit.BAD_INPUT and "soonish" in bad.output
    assert daemon.cli("submit", "--role", "chef", "--", "true").exit_code == Exit.BAD_INPUT
    done = daemon.cli("submit", "--", "true").output.strip()
    assert daemon.cli("wait", done).exit_code == 0
    conflict = daemon.cli("queue", "remove", done)
    assert conflict.exit_code == Exit.CONFLICT and "no longer in the queue" in conflict.output
    failing = daemon.cli("submit", "--", "false").output.strip()
    result = daemon.cli("wait", failing)
    assert result.exit_code == Exit.TASK_FAILED and "exited with code 1" in result.output


def test_errors_are_one_line_with_what_to_do(daemon):
    result = daemon.run_cli("respond", "7", "hello")
    assert result.returncode == Exit.NOT_FOUND
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("orchestra: no task 7") and "orchestra ps" in result.stderr


def test_unreachable_daemon_exit_code(tmp_path):
    home = tmp_path / "home"
    result = subprocess.run(
        [sys.executable, "-m", "orchestra", "--home", str(home), "--no-autostart", "ps"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == Exit.UNREACHABLE
    assert "no daemon is listening" in result.stderr and "orchestra daemon start" in result.stderr


def test_a_client_that_finds_no_daemon_starts_one():
    d = Daemon()
    d.env.pop("ORCHESTRA_NO_AUTOSTART")
    try:
        result = d.run_cli("submit", "--", "echo", "auto")
        assert result.returncode == 0, result.stderr
        assert "starting one" in result.stderr
        task = int(result.stdout)
        assert d.wait_status(task, *FINISHED).exit_code == 0
        status = d.run_cli("daemon", "status")
        assert status.returncode == 0 and "running: pid" in status.stdout
        stopped = d.run_cli("daemon", "stop")
        assert stopped.returncode == 0 and "stopped orchestrad" in stopped.stdout
        assert d.run_cli("daemon", "status").returncode == Exit.UNREACHABLE
    finally:
        d.run_cli("daemon", "stop")
        d.cleanup()


def test_daemon_start_is_idempotent():
    d = Daemon()
    try:
        started = d.run_cli("daemon", "start")
        assert started.returncode == 0 and "started orchestrad" in started.stdout
        again = d.run_cli("daemon", "start")
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        d.run_cli("daemon", "stop")
        d.cleanup()


def test_queue_order_priority_and_remove(daemon):
    daemon.cli("config", "set", "max_concurrent", "1")
    gate = daemon.cli("submit", "--", sys.executable, "-c", "input()").output.strip()
    wait_for(lambda: json.loads(daemon.cli("show", "--json", gate).output)["status"] == "running")
    a = daemon.cli("submit", "--", "true").output.strip()
    b = daemon.cli("submit", "--", "true").output.strip()
    assert daemon.cli("queue", "priority", b, "urgent").output.strip() == f"task {b} has priority 20"
    order = [t["id"] for t in json.loads(daemon.cli("queue", "--json").output)]
    assert order == [int(b), int(a)]
    assert daemon.cli("queue", "remove", a).exit_code == 0
    assert [t["id"] for t in json.loads(daemon.cli("queue", "--json").output)] == [int(b)]
    assert daemon.cli("stop", gate).exit_code == 0


def test_config_get_and_set(daemon):
    assert daemon.cli("config", "set", "role_limits", '{"tester": 1}').output.strip() == 'role_limits = {"tester":1}'
    assert json.loads(daemon.cli("config", "get", "--json").output)["role_limits"] == {"tester": 1}
    bad = daemon.cli("config", "set", "max_concurrent", "zero")
    assert bad.exit_code == Exit.BAD_INPUT and "at least 1" in bad.output


def test_show_and_logs_of_stderr(daemon):
    task = daemon.cli("submit", "--timeout", "30", "--env", "A=1", "--", "sh", "-c", "echo to-err >&2").output.strip()
    daemon.cli("wait", task)
    shown = daemon.cli("show", task).output
    assert "succeeded" in shown and "timeout 30.0s" in shown and "env        A" in shown
    assert daemon.cli("logs", task).output == "to-err\n"
    assert json.loads(daemon.cli("logs", "--json", task).output) == [{"stream": "stderr", "text": "to-err\n"}]
    bad_env = daemon.cli("submit", "--env", "NOEQUALS", "--", "true")
    assert bad_env.exit_code == Exit.BAD_INPUT and "NAME=VALUE" in bad_env.output


def test_ps_show_and_queue_say_what_a_queued_task_waits_for(daemon):
    daemon.cli("config", "set", "max_concurrent", "1")
    daemon.cli("config", "set", "role_limits", '{"reviewer": 0}')
    gate = daemon.cli("submit", "--title", "gate", "--", "sleep", "30").output.strip()
    wait_for(lambda: json.loads(daemon.cli("show", "--json", gate).output)["status"] == "running", what="the gate to run")
    slot = daemon.cli("submit", "--title", "slot", "--", "true").output.strip()
    held = daemon.cli("submit", "--role", "reviewer", "--title", "held", "--", "true").output.strip()
    later = daemon.cli("submit", "--after", gate, "--title", "later", "--", "true").output.strip()
    shown = daemon.cli("show", slot).output
    assert "waits for  a free slot (1 of 1 running)" in shown, shown
    ps = daemon.run_cli("ps")  # the quick path
    assert "slot · waits for a free slot" in ps.stdout, ps.stdout
    assert "held · waits for role_limits allows no reviewer task" in ps.stdout, ps.stdout
    assert f"later · waits for task {gate} to succeed" in ps.stdout, ps.stdout
    queue = json.loads(daemon.cli("queue", "--json").output)
    assert [str(t["id"]) for t in queue] == [slot, later, held]  # later waits on a running task: its place
    daemon.cli("stop", gate)


def test_a_command_imports_only_the_module_it_lives_in(tmp_path):
    """The group is lazy: `orchestra ps --json` loads `orchestra.commands.tasks` and none of
    the other command modules, nor the MCP SDK or the dashboard."""
    probe = ("import json, sys; sys.argv = ['orchestra', '--no-autostart', 'ps', '--json']\n"
             "from orchestra.main import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('orchestra.', 'mcp')))))")
    result = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "ORCHESTRA_HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=30)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    commands = [m for m in loaded if m.startswith("orchestra.commands.")]
    assert commands == ["orchestra.commands.base", "orchestra.commands.tasks"], loaded
    assert not [m for m in loaded if m.startswith(("mcp", "orchestra.mcp", "orchestra.dashboard"))], loaded


def test_every_command_the_group_names_is_there():
    from orchestra.main import COMMANDS, cli

    with cli.make_context("orchestra", ["--no-autostart", "ps"], resilient_parsing=True) as ctx:
        for name in COMMANDS:
            command = cli.get_command(ctx, name)
            assert command is not None and command.name == name


# ---------------------------------------------------------------------------------------
# what a new user tripped on


def test_config_set_refuses_a_value_of_the_wrong_shape_with_a_sentence(daemon):
    for value in ("[1]", '{"tester": 1.5}'):
        bad = daemon.cli("config", "set", "role_limits", value)
        assert bad.exit_code == Exit.BAD_INPUT, bad.output
        assert bad.output.startswith("orchestra: role_limits must be a table of role name to a whole number of at least 0, not "), bad.output
        assert "Expected" not in bad.output and bad.output.count("\n") == 1


def test_config_set_takes_none_as_the_message_offers_and_negative_numbers_as_values(daemon):
    assert daemon.cli("config", "set", "default_timeout", "600").output == "default_timeout = 600\n"
    cleared = daemon.cli("config", "set", "default_timeout", "none")
    assert cleared.exit_code == 0 and cleared.output == "default_timeout = null\n", cleared.output
    negative = daemon.cli("config", "set", "max_concurrent", "-3")
    assert negative.exit_code == Exit.BAD_INPUT
    assert negative.output == "orchestra: max_concurrent must be a whole number of at least 1, not -3\n"


def test_a_long_prompt_comes_from_stdin_or_a_file_and_show_shortens_it(daemon, tmp_path):
    gate = daemon.submit(sys.executable, "-c", "input()")  # the prompts stay queued behind it
    prompt = "\n".join(f"line {i}: " + "word " * 20 for i in range(200))
    from_stdin = daemon.cli("submit", "--agent", "claude", "--after", str(gate), "-", input=prompt)
    assert from_stdin.exit_code == 0, from_stdin.output
    task = int(from_stdin.output)
    assert daemon.task(task).prompt == prompt
    path = tmp_path / "prompt.md"
    path.write_text(prompt)
    from_file = daemon.cli("submit", "--agent", "claude", "--after", str(gate), "--prompt-file", str(path))
    assert from_file.exit_code == 0, from_file.output
    assert daemon.task(int(from_file.output)).prompt == prompt
    shown = daemon.cli("show", str(task)).output
    assert "line 0: word" in shown and "line 199:" not in shown and len(shown) < 3000
    assert f"orchestra show --full {task}" in shown
    assert "line 199: word" in daemon.cli("show", "--full", str(task)).output
    both = daemon.cli("submit", "--prompt-file", str(path), "and", "words")
    assert both.exit_code == Exit.BAD_INPUT and "--prompt-file" in both.output
    missing = daemon.cli("submit", "--prompt-file", str(tmp_path / "nope.md"))
    assert missing.exit_code == Exit.BAD_INPUT and "nope.md" in missing.output
    daemon.call(p.Stop(task=gate))


def test_respond_says_what_it_sent(daemon):
    task = daemon.submit(sys.executable, "-c", "print('got', input())")
    daemon.wait_status(task, p.Status.RUNNING)
    sent = daemon.cli("respond", str(task), "hello", "there")
    assert sent.exit_code == 0 and sent.output == f"sent to task {task}: hello there\n"
    assert daemon.wait_status(task, *FINISHED).status is p.Status.SUCCEEDED


def test_resume_says_what_it_does():
    from orchestra.main import cli

    listed = CliRunner().invoke(cli, ["--help"]).output
    line = next(x for x in listed.splitlines() if x.strip().startswith("resume "))
    assert "Run a finished task again" not in line and "Continue" in line


def test_stop_then_start_at_once_with_a_task_running(tmp_path):
    """`daemon stop` returns once the daemon is gone (its process ended, its lock free),
    so a `daemon start` right after it starts a new one; several times in a row, each
    time with a task running."""
    d = Daemon()
    try:
        assert d.run_cli("daemon", "start").returncode == 0
        for _ in range(3):
            task = d.submit(sys.executable, "-c", "import time; time.sleep(60)")
            d.wait_status(task, p.Status.RUNNING)
            pid = d.call(p.Info(), p.DaemonStatus).pid
            stopped = d.cli("daemon", "stop")
            assert stopped.exit_code == 0 and stopped.output == f"stopped orchestrad (pid {pid})\n", stopped.output
            assert not _running(pid)
            with open(d.paths.lock, "rb") as lock:  # the old daemon holds it no longer
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            started = d.run_cli("daemon", "start")
            assert started.returncode == 0, started.stderr
            assert d.task(task).status is p.Status.INTERRUPTED
    finally:
        d.run_cli("daemon", "stop")
        d.cleanup()


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_start_says_why_the_daemon_did_not_start(tmp_path):
    d = Daemon()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(d.paths.lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = d.run_cli("daemon", "start")
        assert started.returncode == Exit.UNREACHABLE
        assert f"another orchestrad (pid {holder.pid}) is already running" in started.stderr, started.stderr
        assert started.stderr.count("\n") == 1
    finally:
        holder.kill()
        holder.communicate()
        d.cleanup()


HOLD_LOCK = """
import fcntl, os, sys, time
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("holding", flush=True)
time.sleep(60)
"""
