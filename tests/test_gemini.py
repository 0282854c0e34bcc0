"""The real Gemini CLI as the agent (its Agent Client Protocol mode), against a scripted
stand-in of the Gemini API, through a real daemon.

These tests need the `gemini` program (`.ci/run` installs it into .local/npm-gemini). When it
is missing they fail with the install command: they never skip.
"""

from __future__ import annotations

import json
import os

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import roles
from orchestrad.agents import gemini
from tests.daemon import Daemon
from tests.scripted_gemini import GEMINI_INSTALL_HINT, ScriptedGemini, find_gemini, reply

FINISHED = tuple(p.FINISHED)
MODEL = "gemini-2.5-pro"


@pytest.fixture
def team():
    """A daemon whose gemini tasks talk to a ScriptedGemini; yields (daemon, api, work)."""
    path = find_gemini()
    if path is None:
        pytest.fail(GEMINI_INSTALL_HINT)
    api = ScriptedGemini().start()
    d = Daemon()
    d.env.update(api.env(d.home / "h"))
    d.env["PATH"] = f"{os.path.dirname(path)}:{d.env.get('PATH', '')}"  # the kind's CLI by its name
    d.start()
    work = d.home / "work"
    work.mkdir()
    yield d, api, work
    d.cleanup()
    api.close()


def submit(d: Daemon, work, prompt: str, **kw) -> int:
    kw.setdefault("model", MODEL)
    return d.call(p.Submit(prompt=prompt, agent="gemini", cwd=str(work), **kw), p.TaskView).id


def test_a_file_write_is_asked_for_allowed_and_costed(team):
    d, api, work = team
    target = work / "hello.txt"
    api.add(reply.call("write_file", {"file_path": str(target), "content": "hello\n"}, prompt_tokens=1000, output_tokens=100),
            reply.text("Wrote hello.txt", prompt_tokens=2000, output_tokens=50))
    task = submit(d, work, "create hello.txt", role="reviewer")  # a role no rule lets edit
    view = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert view.status is Status.WAITING, view.reason
    assert view.waiting.kind == "permission" and view.waiting.prompt == f"Write: {target}"
    assert not target.exists()
    assert d.cli("respond", str(task), "--allow").exit_code == 0
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert target.read_text() == "hello\n"
    assert view.result == "Wrote hello.txt"
    assert view.session_id and view.input_tokens == 3000 and view.output_tokens == 150
    assert view.cost_usd == pytest.approx((3000 * 1.25 + 150 * 10.0) / 1e6)
    transcript = d.cli("logs", str(task)).output
    assert api.turns[0].last_user_text.startswith(roles.get("reviewer").prompt)  # the role's prompt goes first
    assert "create hello.txt" in transcript and "? permission for edit: Writing to hello.txt" in transcript
    assert "  allowed (proceed_once)" in transcript and "Wrote hello.txt" in transcript and "✓ end_turn" in transcript


def test_a_command_denied_does_not_run(team):
    d, api, work = team
    api.add(reply.call("run_shell_command", {"command": "touch denied.txt", "description": "write"}), reply.text("ok, I will not"))
    task = submit(d, work, "run it")
    view = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert view.status is Status.WAITING and view.waiting.prompt == "Bash: touch denied.txt"
    assert d.cli("respond", str(task), "--deny").exit_code == 0
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    assert not (work / "denied.txt").exists()
    [response] = api.turns[-1].function_responses()
    assert response["name"] == "run_shell_command" and "canceled by the user" in response["response"]["error"]
    assert "  denied" in d.cli("logs", str(task)).output


def test_the_policy_rules_before_every_call_even_a_read(team):
    d, api, work = team
    (work / "notes.txt").write_text("secret plans\n")
    d.call(p.ConfigSet(key="policy", value=[f"deny Read({work}/notes.txt)", "allow Bash(echo *)"]))
    api.add(reply.call("read_file", {"file_path": str(work / "notes.txt")}),
            reply.call("run_shell_command", {"command": "echo fine > ok.txt"}),
            reply.text("done"))
    task = submit(d, work, "read then write")
    view = d.wait_status(task, *FINISHED, Status.WAITING, timeout=60)
    assert view.status is Status.SUCCEEDED, (view.status, view.reason, view.waiting)
    read, shell = api.turns[1].function_responses()[-1], api.turns[2].function_responses()[-1]
    assert "canceled" in read["response"]["error"] and "secret plans" not in json.dumps(api.turns[2].body)
    assert (work / "ok.txt").read_text() == "fine\n" and shell["response"].get("output") is not None
    chosen = [json.loads(e)["result"]["outcome"]["optionId"] for e in d.cli("logs", "--raw", str(task)).output.splitlines() if '"outcome"' in e]
    assert chosen == ["cancel", "proceed_once"]  # by the policy, no person asked


def test_a_write_a_rule_allows_runs_without_asking(team):
    d, api, work = team
    api.add(reply.call("write_file", {"file_path": str(work / "a.txt"), "content": "a\n"}), reply.text("done"))
    task = submit(d, work, "write a.txt")  # the generalist role: allow Edit(./**)
    view = d.wait_status(task, *FINISHED, Status.WAITING, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert (work / "a.txt").read_text() == "a\n"


def test_an_unruled_read_runs_as_gemini_would_let_it(team):
    d, api, work = team
    (work / "x.txt").write_text("content\n")
    api.add(reply.call("read_file", {"file_path": str(work / "x.txt")}), reply.text("read it"))
    task = submit(d, work, "read x")
    view = d.wait_status(task, *FINISHED, Status.WAITING, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert api.turns[1].function_responses()[0]["response"]["output"] == "content\n"


def test_a_follow_up_resumes_the_session(team):
    d, api, work = team
    api.add(reply.text("The answer is 42."), reply.text("You asked about the answer."))
    task = submit(d, work, "what is the answer?")
    first = d.wait_status(task, *FINISHED, timeout=60)
    assert first.status is Status.SUCCEEDED, first.reason
    d.call(p.Respond(task=task, text="what did I ask?"))
    second = d.wait_status(task, *FINISHED, timeout=60)
    assert second.status is Status.SUCCEEDED and second.attempts == 2, second.reason
    assert second.session_id == first.session_id and second.result == "You asked about the answer."
    # The second turn carried the first one: the session was loaded, not begun again.
    texts = api.turns[-1].texts()
    assert any(t.endswith("what is the answer?") for t in texts) and "The answer is 42." in texts and texts[-1] == "what did I ask?"
    assert second.input_tokens == 240 and second.cost_usd > first.cost_usd


def test_an_api_error_fails_the_task_with_the_error_in_its_reason(team):
    d, api, work = team
    api.add(reply.error(400, "API key not valid. Please pass a valid API key."))
    d.call(p.ConfigSet(key="retries", value=0))
    task = submit(d, work, "hello")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.FAILED
    assert "API key not valid" in view.reason
    assert len(api.turns) == 1  # the CLI did not retry it (general.maxAttempts 1)


def test_a_server_error_is_retried_by_the_daemon(team):
    d, api, work = team
    api.add(reply.error(500, "internal"), reply.text("fine now"))
    d.call(p.ConfigSet(key="retry_base", value=0.1))
    task = submit(d, work, "hello")
    view = d.wait_status(task, *FINISHED, timeout=90)
    assert view.status is Status.SUCCEEDED, view.reason
    assert view.result == "fine now" and len(api.turns) == 2


def test_move_aside_renames_only_a_session_file_of_this_minute(tmp_path):
    import datetime

    chats = tmp_path / "tmp" / "work" / "chats"
    chats.mkdir(parents=True)
    now = datetime.datetime(2026, 12, 3, 17, 35, 20, tzinfo=datetime.timezone.utc)
    this = chats / "session-2026-12-03T17-35-aafc478a.jsonl"
    older = chats / "session-2026-12-03T17-34-bbbb0000.jsonl"
    this.write_text("{}\n")
    older.write_text("{}\n")
    gemini._move_aside(str(tmp_path / "tmp"), "aafc478a-8a1a-4906-8d32-a6737e348b3a", now)
    gemini._move_aside(str(tmp_path / "tmp"), "bbbb0000-8a1a-4906-8d32-a6737e348b3a", now)
    assert sorted(os.listdir(chats)) == ["session-2026-12-03T17-34-bbbb0000.jsonl", "session-2026-12-03T17-35-aafc478a-resumed.jsonl"]
