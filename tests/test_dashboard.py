"""`orchestra dashboard`: the picture as text (a pure function, also what the MCP tool
`status-dashboard` returns) and the live screen in a real terminal (tmux), driven by a real
daemon: command tasks going running -> succeeded, and a Claude Code task (the real CLI
against tests/scripted_api.py) that waits for an answer to its question."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.dashboard import render
from orchestra.shared.protocol import Question, Status, TaskView, WorkflowView
from tests.daemon import Daemon, wait_for
from tests.scripted_api import INSTALL_HINT, ScriptedAPI, find_claude, reply

ASK_COLOR = {"questions": [{"question": "Which color should the button be?", "header": "Color", "multiSelect": False,
                            "options": [{"label": "Red", "description": "warm"}, {"label": "Blue", "description": "cool"}]}]}


def view(task_id: int, status: Status = Status.RUNNING, **kw) -> TaskView:
    fields = dict(id=task_id, status=status, role="tester", agent="claude", priority=0, after=[], title=f"task {task_id}",
                  prompt="", argv=[], cwd="/work", submitted_at=float(task_id), runtime=12.5)
    return TaskView(**{**fields, **kw})


# ---------------------------------------------------------------------------------------
# the picture as text


def test_waiting_tasks_come_first_with_their_question_options_and_the_command_that_answers():
    question = view(3, Status.WAITING, waiting=Question(request_id="q", kind="question", prompt="Which color?", options=["Red", "Blue"]))
    permission = view(4, Status.WAITING, role="devops", waiting=Question(request_id="r", kind="permission", prompt="Bash: rm -rf build", tool="Bash"))
    text = render([view(1), question, permission], [], width=120)
    lines = text.splitlines()
    assert lines[0] == "orchestra · 2 waiting · 1 running · cost $0.00"
    assert lines.index("WAITING FOR YOU (2)") < lines.index("RUNNING (1)")
    assert "      asks: Which color?" in lines and "        1. Red" in lines and "        2. Blue" in lines
    assert any("orchestra respond 3 1" in line for line in lines)
    assert "      asks permission: Bash: rm -rf build" in lines
    assert any("orchestra respond 4 --allow   or   orchestra respond 4 --deny" in line for line in lines)
    assert lines[-1].startswith("q quit · answer: orchestra respond 3 1|\"words\"")


def test_runtime_cost_queue_order_workflows_and_finished_tasks():
    running = view(1, runtime=75.0, cost_usd=0.42, activity="Bash: pytest -q")
    queued = [view(5, Status.QUEUED, priority=20, after=[1], runtime=None), view(2, Status.QUEUED, runtime=None)]
    done = view(6, Status.FAILED, reason="exited with code 3", finished_at=100.0)
    workflow = WorkflowView(id=1, template="bug-fix", goal="fix the parser", status="running", cost_usd=0.42, created_at=0.0,
                            cwd="/work", worktree="", steps={"reproduce": 1, "fix": 5}, tasks=[running, queued[0]])
    text = render([running, *queued, done], queued, [workflow], width=120)
    assert re.search(r"^  #1 +tester +claude +1m15s +\$0\.42  task 1  · Bash: pytest -q$", text, re.M)
    assert "QUEUE IN RUN ORDER (2)\n   1. #5    tester      claude  task 5  (priority 20; after #1)\n   2. #2 " in text
    assert "workflow 1 · bug-fix · running · $0.42 · fix the parser\n    ● reproduce #1 → ○ fix #5" in text
    assert "FINISHED (1)\n  ✗ #6    failed" in text and "(exited with code 3)" in text
    assert text.splitlines()[0] == "orchestra · 1 running · 2 queued · 1 failed · cost $0.42"


def test_running_tasks_say_whether_they_work_or_have_been_silent_and_held_ones_until_when():
    now = 10_000.0
    busy = view(1, last_activity=now - 600, cpu_at=now - 3, silent_after=60.0)  # no output for 10 min, CPU 3 s ago
    quiet = view(2, last_activity=now - 720, cpu_at=None, silent_after=60.0)
    parked = view(3, Status.QUEUED, runtime=None, hold="parked", hold_until=now + 600, hold_reason="usage limit")
    text = render([busy, quiet], [parked], now=now, width=120)
    assert re.search(r"^  #1 .* working +task 1$", text, re.M), text
    assert re.search(r"^  #2 .* silent 12 min +task 2$", text, re.M), text
    assert re.search(r"^   1\. #3 .* task 3  \(parked until \d\d:\d\d \(usage limit\)\)$", text, re.M), text


def test_the_merge_queue_shows_what_merges_and_who_resolves_it():
    merges = [
        p.MergeView(id=1, status="merging", branch="orchestra/3-fix", target="main", repo="/r", mode="merge", task=3),
        p.MergeView(id=2, status="resolving", branch="orchestra/w1-feature", target="main", repo="/r", mode="merge", workflow=1, resolver=9),
    ]
    text = render([], [], merges=merges, width=120)
    assert "MERGE QUEUE (2)" in text
    assert "  merge 1    merging    orchestra/3-fix → main  (#3)" in text
    assert "  merge 2    resolving  orchestra/w1-feature → main  (resolver #9)" in text


def test_lines_fit_the_width_and_an_empty_team_says_how_to_start():
    long = view(1, title="x" * 300)
    assert all(len(line) <= 60 for line in render([long], [], width=60).splitlines())
    empty = render([], [], [])
    assert "orchestra · idle" in empty and "orchestra submit" in empty
    assert "q quit" not in render([], [], [], hint=False)


# ---------------------------------------------------------------------------------------
# the live screen


class Terminal:
    """A tmux server of its own with one 160x50 window running a command."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.socket = f"orc-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.config = home / "tmux.conf"
        self.config.write_text("set -g remain-on-exit on\nset -g status off\n")
        self.status_file = home / "dashboard.status"

    def tmux(self, *args: str) -> str:
        out = subprocess.run(["tmux", "-L", self.socket, "-f", str(self.config), *args],
                             env=self.env, capture_output=True, text=True, timeout=10)
        assert out.returncode == 0, out.stderr
        return out.stdout

    def start(self, command: list[str]) -> None:
        # A shell records the exit status: tmux 3.3 sometimes leaves a finished pane process
        # unreaped for seconds, so its own pane_dead_status cannot be waited on.
        self.status_file.unlink(missing_ok=True)
        script = f"trap true INT; {shlex.join(command)}; echo $? > {shlex.quote(str(self.status_file))}"  # Ctrl-C is for the dashboard
        self.tmux("new-session", "-d", "-s", "dash", "-x", "160", "-y", "50", shlex.join(["sh", "-c", script]))

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "dash")

    def wait_for(self, pattern: str, timeout: float = 15.0) -> str:
        """The screen once `pattern` (a regular expression) is on it."""
        last = [""]

        def shows() -> bool:
            last[0] = self.screen()
            return re.search(pattern, last[0], re.M) is not None

        try:
            wait_for(shows, timeout, what=f"{pattern!r} on the screen")
        except AssertionError:
            raise AssertionError(f"{pattern!r} did not appear; the screen:\n{last[0]}") from None
        return last[0]

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "dash", *keys)

    def exited(self) -> str | None:
        """The command's exit status once it has ended, else None."""
        try:
            return self.status_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True, timeout=10)


@contextmanager
def dashboard(daemon: Daemon):
    term = Terminal(daemon.env, daemon.home)
    try:
        term.start([sys.executable, "-m", "orchestra", "--home", str(daemon.home), "--no-autostart", "dashboard"])
        yield term
    finally:
        term.kill()


def test_the_live_screen_follows_tasks_from_running_to_succeeded_and_q_restores_the_terminal(daemon):
    with dashboard(daemon) as term:
        term.wait_for(r"^orchestra · idle")
        gate = daemon.submit(sys.executable, "-c", "print('got', input())", title="gated step")
        first = term.wait_for(r"^RUNNING \(1\)")
        assert re.search(rf"#{gate} +generalist +command +\S+s .*gated step", first)
        assert f"stop: orchestra stop {gate}" in first
        # no task changes while it waits on stdin: only the runtime column ticks on
        runtime = lambda screen: float(re.search(rf"#{gate} +generalist +command +([\d.]+)s", screen).group(1))
        start = runtime(first)
        term.wait_for(rf"#{gate} +generalist +command +(?!{re.escape(f'{start:.1f}')}s)[\d.]+s")
        later = daemon.submit("echo", "next", title="queued step", after=[gate])
        term.wait_for(rf"^QUEUE IN RUN ORDER \(1\)\n +1\. #{later} .*queued step  \(after #{gate}\)")
        daemon.call(p.Respond(task=gate, text="go"))
        done = term.wait_for(r"^FINISHED \(2\)")
        assert re.search(rf"✓ #{later} +succeeded", done) and re.search(rf"✓ #{gate} +succeeded", done)
        assert "RUNNING" not in done and "QUEUE" not in done
        assert done.splitlines()[0].startswith("orchestra · 2 succeeded")
        term.keys("q")
        wait_for(lambda: term.exited() is not None, what="the dashboard to quit")
        assert term.exited() == "0"
        assert "FINISHED" not in term.screen()  # back on the normal screen, not the dashboard's


def test_the_live_screen_waits_for_a_daemon_that_restarts_and_follows_the_new_one(daemon):
    with dashboard(daemon) as term:
        term.wait_for(r"^orchestra · idle")
        daemon.stop()
        term.wait_for(r"^  the daemon is not answering .*; reconnecting")
        assert term.exited() is None  # still there, waiting
        daemon.start()
        task = daemon.submit(sys.executable, "-c", "input()", title="after the restart")
        screen = term.wait_for(r"^RUNNING \(1\)")
        assert re.search(rf"#{task} +generalist +command .*after the restart", screen) and "reconnecting" not in screen
        daemon.call(p.Stop(task=task))
        term.wait_for(r"^FINISHED \(1\)")
        term.keys("q")
        wait_for(lambda: term.exited() is not None, what="the dashboard to quit")
        assert term.exited() == "0"


def test_the_live_screen_shows_what_a_waiting_claude_task_asks_and_how_to_answer():
    claude = find_claude()
    if not claude:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with ScriptedAPI([reply.tool_use("AskUserQuestion", ASK_COLOR), reply.text("Blue it is.")]) as api:
        daemon = Daemon()
        daemon.env.update(api.env())
        try:
            daemon.start()
            daemon.call(p.ConfigSet(key="claude_path", value=claude))
            with dashboard(daemon) as term:
                term.wait_for(r"^orchestra · idle")
                task = daemon.call(p.Submit(cwd=str(daemon.home), prompt="style the button", agent="claude"), p.TaskView).id
                screen = term.wait_for(r"^WAITING FOR YOU \(1\)")
                assert re.search(rf"#{task} +generalist +claude .*style the button", screen)
                assert "      asks: Which color should the button be?" in screen
                assert "        1. Red\n        2. Blue" in screen
                assert f"answer: orchestra respond {task} 1" in screen
                daemon.call(p.Respond(task=task, text="2"))
                done = term.wait_for(r"^FINISHED \(1\)")
                assert "WAITING" not in done and re.search(rf"✓ #{task} +succeeded", done)
                term.keys("C-c")
                wait_for(lambda: term.exited() is not None, what="the dashboard to quit on Ctrl-C")
                assert term.exited() == "0", term.screen()
        finally:
            daemon.cleanup()


def test_without_a_terminal_the_picture_is_printed_once(daemon):
    daemon.wait_status(daemon.submit("echo", "hi", title="greet"), Status.SUCCEEDED)
    result = daemon.run_cli("--home", str(daemon.home), "dashboard")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("orchestra · 1 succeeded") and "✓ #1" in result.stdout and "\x1b[" not in result.stdout
