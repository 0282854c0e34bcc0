"""The real Claude Code CLI as the agent, against a scripted stand-in of the Messages API.

These tests need the `claude` binary (`.ci/run` installs it into .local/npm). When it is
missing they fail with the install command: they never skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra import render
from orchestra.shared.protocol import Status
from orchestrad import roles
from tests.daemon import Daemon, wait_for
from tests.scripted_api import ScriptedAPI, reply

FINISHED = tuple(p.FINISHED)


@pytest.fixture
def team(claude):
    """A daemon whose claude tasks talk to a ScriptedAPI; yields (daemon, api)."""
    api = ScriptedAPI().start()
    d = Daemon()
    d.env.update(api.env(d.env))
    d.env["ORCHESTRA_HOME"] = str(d.home)
    d.start()
    d.call(p.ConfigSet(key="claude_path", value=claude))
    yield d, api
    d.cleanup()
    api.close()


def submit(d: Daemon, prompt: str, **kw) -> int:
    kw.setdefault("cwd", str(d.home))
    return d.call(p.Submit(prompt=prompt, **kw), p.TaskView).id


def test_a_task_that_writes_a_file_and_reports_cost(team):
    d, api = team
    target = d.home / "hello.txt"
    api.add(reply.tool_use("Write", {"file_path": str(target), "content": "hello\n"}), reply.text("Wrote hello.txt"))
    task = submit(d, "create hello.txt", role="implementer")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert target.read_text() == "hello\n"
    assert view.result == "Wrote hello.txt"
    assert view.session_id and view.cost_usd > 0 and view.input_tokens > 0 and view.output_tokens > 0
    shown = d.cli("show", str(task)).output
    assert f"cost       {render.cost(view.cost_usd)} (" in shown and f"{view.input_tokens} tokens in" in shown
    transcript = d.cli("logs", str(task)).output
    assert "» create hello.txt" in transcript and f"→ Write: {target}" in transcript and "✓ Wrote hello.txt" in transcript
    raw = d.cli("logs", "--raw", str(task)).output
    kinds = [json.loads(line)["type"] for line in raw.splitlines() if line.startswith("{")]
    assert {"system", "assistant", "user", "result"} <= set(kinds)


def test_the_roles_prompt_reaches_the_api(team):
    d, api = team
    api.add(reply.text("LGTM"))
    task = submit(d, "review the parser", role="reviewer")
    d.wait_status(task, Status.SUCCEEDED, timeout=60)
    [request] = api.turn_requests
    assert roles.get("reviewer").prompt in request.system_text
    assert "review the parser" in request.last_user_text


def test_bash_permission_allowed_runs_the_command(team):
    d, api = team
    api.add(reply.tool_use("Bash", {"command": "/bin/echo ran > allowed.txt", "description": "write a file"}), reply.text("done"))
    task = submit(d, "run it")
    waiting = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert waiting.status is Status.WAITING
    assert waiting.waiting.kind == "permission" and waiting.waiting.prompt.startswith("Bash: /bin/echo ran > allowed.txt")
    assert "asks: Bash: /bin/echo ran" in d.cli("ps").output
    allowed = d.cli("respond", str(task), "--allow")
    assert allowed.exit_code == 0 and allowed.output == f"sent to task {task}: allow\n"
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    assert (d.home / "allowed.txt").read_text() == "ran\n"
    assert "  allowed" in d.cli("logs", str(task)).output


def test_bash_permission_denied_does_not_run(team):
    d, api = team
    api.add(reply.tool_use("Bash", {"command": "/bin/echo ran > denied.txt"}), reply.text("ok, I will not"))
    task = submit(d, "run it")
    d.wait_status(task, Status.WAITING, timeout=60)
    denied = d.cli("respond", str(task), "--deny", "-m", "not today")
    assert denied.exit_code == 0 and denied.output == f"sent to task {task}: deny (not today)\n"
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    assert not (d.home / "denied.txt").exists()
    results = [r for r in api.turn_requests[-1].tool_results()]
    assert any("not today" in json.dumps(r) for r in results)
    assert "denied: not today" in d.cli("logs", str(task)).output


def test_a_question_answered_by_option_number(team):
    d, api = team
    question = {
        "questions": [
            {
                "question": "Which database should I use?",
                "header": "Database",
                "options": [
                    {"label": "SQLite", "description": "a file"},
                    {"label": "PostgreSQL", "description": "a server"},
                ],
                "multiSelect": False,
            }
        ]
    }
    api.add(reply.tool_use("AskUserQuestion", question), reply.text("Going with PostgreSQL"))
    task = submit(d, "set up storage")
    view = d.wait_status(task, Status.WAITING, timeout=60)
    assert view.waiting.kind == "question" and view.waiting.prompt == "Which database should I use?"
    assert view.waiting.options == ["SQLite", "PostgreSQL"]
    assert "2. PostgreSQL" in d.cli("show", str(task)).output
    answered = d.cli("respond", str(task), "2")
    assert answered.exit_code == 0 and answered.output == f"answered task {task}'s question with option 2: PostgreSQL\n"
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    answer = json.dumps(api.turn_requests[-1].tool_results())
    assert "PostgreSQL" in answer


def test_wait_on_a_task_that_waits_for_an_answer_says_so_once_and_keeps_waiting(team):
    d, api = team
    api.add(reply.tool_use("Bash", {"command": "/bin/echo ran > waited.txt", "description": "write a file"}), reply.text("done"))
    task = submit(d, "run it")
    err = d.home / "wait.err"
    with open(err, "w") as stderr:
        waiting = subprocess.Popen([sys.executable, "-m", "orchestra", "wait", str(task)], env=d.env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        asks = d.wait_status(task, Status.WAITING, timeout=60).waiting.prompt
        assert asks.startswith("Bash: /bin/echo ran > waited.txt")
        notice = f"orchestra: task {task} is waiting for an answer ({asks}): orchestra respond {task} --allow, or --deny\n"
        wait_for(lambda: err.read_text() == notice, 30, "the notice on stderr")
        assert waiting.poll() is None  # still waiting
        assert d.cli("respond", str(task), "--allow").exit_code == 0
        out, _ = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0 and out == f"task {task} succeeded\n"
    assert err.read_text() == notice  # once


def test_a_follow_up_continues_the_same_conversation(team):
    d, api = team
    api.add(reply.text("The answer is 42."), reply.text("Because I said so."))
    task = submit(d, "what is the answer?")
    first = d.wait_status(task, Status.SUCCEEDED, timeout=60)
    assert d.cli("respond", str(task), "why?").exit_code == 0
    wait_for(lambda: d.task(task).attempts == 2, 30, "the second attempt")
    second = d.wait_status(task, *FINISHED, timeout=60)
    assert second.status is Status.SUCCEEDED and second.result == "Because I said so."
    assert second.session_id == first.session_id
    conversation = api.turn_requests[-1].conversation_text()
    assert "The answer is 42." in conversation and "why?" in conversation
    transcript = d.cli("logs", str(task)).output
    assert transcript.index("» what is the answer?") < transcript.index("» why?")


def test_an_api_error_fails_the_task_with_the_reason(team):
    d, api = team
    api.add(reply.error(401, message="invalid x-api-key"))
    task = submit(d, "anything")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.FAILED
    assert "401" in view.reason or "invalid x-api-key" in view.reason or "API" in view.reason, view.reason


def test_claude_not_found_says_what_to_do(team):
    d, api = team
    d.call(p.ConfigSet(key="claude_path", value="/nonexistent/claude"))
    task = submit(d, "anything")
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.FAILED
    assert view.reason.startswith("claude not found: install @anthropic-ai/claude-code or set the agent path in config")


def test_kill9_while_waiting_then_restart_and_resume(team):
    d, api = team
    # The orphaned CLI may still send a request after the daemon died (its permission
    # request can no longer be answered), so the last reply answers every request from then on.
    api.add(reply.tool_use("Bash", {"command": "/bin/echo once > resumed.txt"}), reply.text("Picking up where I left off: done.", repeat=None))
    task = submit(d, "do the thing")
    waiting = d.wait_status(task, Status.WAITING, timeout=60)
    claude_pid = waiting.pid
    d.kill9()
    d.start()
    view = d.wait_status(task, Status.INTERRUPTED, timeout=30)
    assert view.session_id == waiting.session_id
    wait_for(lambda: not _alive(claude_pid), 15, "the orphaned claude process to be killed")
    assert d.cli("resume", str(task)).exit_code == 0
    done = d.wait_status(task, *FINISHED, timeout=60)
    assert done.status is Status.SUCCEEDED and done.attempts == 2
    assert done.result == "Picking up where I left off: done."
    assert "You were interrupted" in api.turn_requests[-1].last_user_text


def test_unanswered_permission_is_denied_after_the_configured_wait(team):
    d, api = team
    d.call(p.ConfigSet(key="auto_deny_after", value=0.5))
    api.add(reply.tool_use("Bash", {"command": "/bin/echo x > never.txt"}), reply.text("understood"))
    task = submit(d, "try")
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    assert not (d.home / "never.txt").exists()
    assert "no answer came within 0.5 s" in d.cli("logs", str(task)).output


def test_never_started_with_permission_bypass_unless_configured(team, tmp_path):
    d, api = team
    recorder = tmp_path / "fake-claude"
    recorder.write_text(f"#!{sys.executable}\nimport sys, json\nopen({str(tmp_path / 'argv.json')!r}, 'a').write(json.dumps(sys.argv) + '\\n')\n")
    recorder.chmod(0o755)
    d.call(p.ConfigSet(key="claude_path", value=str(recorder)))
    for role in roles.NAMES:
        d.wait_status(submit(d, "x", role=role), *FINISHED, timeout=30)
    runs = [json.loads(line) for line in (tmp_path / "argv.json").read_text().splitlines()]
    assert len(runs) == len(roles.NAMES)
    assert all("bypassPermissions" not in run for run in runs)
    d.call(p.ConfigSet(key="permission_mode", value="bypassPermissions"))
    d.wait_status(submit(d, "x"), *FINISHED, timeout=30)
    last = json.loads((tmp_path / "argv.json").read_text().splitlines()[-1])
    assert last[last.index("--permission-mode") + 1] == "bypassPermissions"


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_built_in_roles_deny_only_tools_the_cli_knows(claude):
    """A denied tool the CLI does not know is named as unknown in every transcript."""
    from tests.scripted_api import run_claude

    with ScriptedAPI([reply.text("hi")]) as api:
        run = run_claude(api, "hello", claude=claude)
    [init] = [m for m in run.messages if m.get("type") == "system" and m.get("subtype") == "init"]
    known = set(init["tools"])
    unknown = {(r.name, t) for r in roles.BUILTIN.values() for t in r.disallowed_tools if t not in known}
    assert not unknown, f"built-in roles deny tools this Claude Code does not have: {sorted(unknown)}"
