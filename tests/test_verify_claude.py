"""Acceptance checks and review with the real Claude Code CLI through a real daemon against
the scripted Messages API: what the model is told when a check fails or a person rejects
its work, in the same session. (The pure rules: test_verify.py; command agents:
test_verify_daemon.py.)"""

from __future__ import annotations

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import claude_daemon
from tests.scripted_api import ScriptedAPI, reply

FINISHED = tuple(p.FINISHED)


@pytest.fixture(scope="module")
def team():
    """One daemon for the module (each test has its own tasks and directory)."""
    api = ScriptedAPI().start()
    d = claude_daemon(api, max_concurrent=2)
    yield d, api
    d.cleanup()
    api.close()


def sessions(requests) -> set[str]:
    return {r.headers["x-claude-code-session-id"] for r in requests}


def test_a_check_that_fails_once_goes_back_to_the_agent_which_fixes_it(team, work):
    d, api = team
    before = len(api.turn_requests)
    check = "test -f done.txt || { echo 'done.txt is missing from' $(pwd); exit 1; }"
    api.add(
        reply.text("Done, I think."),
        reply.tool_use("Write", {"file_path": str(work / "done.txt"), "content": "ok\n"}),
        reply.text("Fixed: wrote done.txt."),
    )
    task = d.call(p.Submit(prompt="make done.txt", cwd=str(work), role="implementer", checks=[check]), p.TaskView).id
    view = d.wait_status(task, *FINISHED, timeout=90)
    assert view.status is Status.SUCCEEDED, view.reason
    assert (work / "done.txt").read_text() == "ok\n"
    assert view.attempts == 2 and view.check_round == 2 and view.result == "Fixed: wrote done.txt."
    assert [c.passed for c in view.check_results] == [True]
    first, second, third = api.turn_requests[before:]
    assert sessions([first, second, third]) == {view.session_id}  # the same conversation went on
    told = second.last_user_text
    assert f"The check `{check}` failed (exit 1); its output ends with:" in told
    assert f"done.txt is missing from {work.resolve()}" in told  # the check's own output, quoted
    assert "Round 1 of 2" in told
    logs = d.cli("logs", str(task)).output
    assert "done.txt is missing from" in logs  # the check's output is the task's too


def test_a_check_that_never_passes_fails_the_task_after_its_rounds_with_the_output(team, work):
    d, api = team
    before = len(api.turn_requests)
    api.add(reply.text("Done."), reply.text("Done again."), reply.text("And again."))
    task = d.call(
        p.Submit(prompt="make it pass", cwd=str(work), checks=["echo 'E   assert 1 == 2'; exit 1"], check_rounds=3),
        p.TaskView,
    ).id
    view = d.wait_status(task, *FINISHED, timeout=120)
    assert view.status is Status.FAILED
    assert view.reason == "check failed: echo 'E   assert 1 == 2'; exit 1 exited 1; its output ends with:\nE   assert 1 == 2"
    assert view.attempts == 3 and view.check_round == 3
    turns = api.turn_requests[before:]
    assert len(turns) == 3 and sessions(turns) == {view.session_id}
    assert "Round 2 of 3" in turns[2].last_user_text and "E   assert 1 == 2" in turns[2].last_user_text


def test_reject_then_approve(team, work):
    d, api = team
    before = len(api.turn_requests)
    api.add(reply.text("I added foo()."), reply.text("Renamed foo() to bar()."))
    task = d.call(p.Submit(prompt="add a helper", cwd=str(work), checks=["true"], review=True), p.TaskView).id
    view = d.wait_status(task, Status.REVIEW, *FINISHED, timeout=90)
    assert view.status is Status.REVIEW, view.reason
    assert view.pid is None and view.result == "I added foo()."
    shown = d.cli("review", str(task)).output
    assert "summary    I added foo()." in shown and "1. true: passed" in shown

    said = d.cli("respond", str(task), "--reject", "-m", "call it bar, not foo").output
    assert said.strip().startswith(f"rejected task {task}; it is ")
    view = d.wait_status(task, Status.REVIEW, *FINISHED, timeout=90)
    assert view.status is Status.REVIEW and view.result == "Renamed foo() to bar()." and view.attempts == 2
    first, second = api.turn_requests[before:]
    assert sessions([first, second]) == {view.session_id}
    assert "call it bar, not foo" in second.last_user_text
    assert "add a helper" in second.conversation_text()  # the same conversation

    d.cli("respond", str(task), "--approve")
    view = d.task(task)
    assert view.status is Status.SUCCEEDED and view.reason == "approved in review by a person (cli)"
    assert [(r.approved, r.message) for r in view.reviews] == [(False, "call it bar, not foo"), (True, "")]
