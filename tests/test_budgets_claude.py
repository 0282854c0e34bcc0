"""Budgets that pause and ask, with the real Claude Code CLI through a real daemon against the
scripted Messages API (the pure rules are in test_budgets.py). Each scripted turn costs $0.001
(100 tokens in and 20 out at the default model's list prices, as the CLI computes it)."""

from __future__ import annotations


import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad.budgets import RAISED_MESSAGE
from tests.daemon import claude_daemon
from tests.scripted_api import ScriptedAPI, reply

FINISHED = tuple(p.FINISHED)


@pytest.fixture(scope="module")
def team():
    """One daemon for the module (each test has its own tasks and directory)."""
    api = ScriptedAPI().start()
    d = claude_daemon(api, max_concurrent=4, policy=["allow Bash(echo *)"])
    yield d, api
    d.cleanup()
    api.close()


def test_a_task_that_reaches_its_budget_waits_for_a_person_and_goes_on_with_its_session_when_raised(team, work):
    d, api = team
    api.add(reply.tool_use("Bash", {"command": "echo step1", "description": "first step"}), reply.text("Finished after the raise."))
    task = d.call(p.Submit(prompt="do the steps", cwd=str(work), budget_usd=0.0005), p.TaskView).id
    view = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert view.status is Status.WAITING, view.reason  # paused, not failed
    assert view.pid is None and view.waiting.kind == "budget" and view.cost_usd == pytest.approx(0.001)
    assert view.waiting.prompt == (
        f"task {task} spent $0.0010 of its $0.0005 budget; raise the budget (orchestra respond {task} --budget 1.001) "
        f"or stop it (orchestra stop {task})"
    )
    assert len(api.turn_requests) == 1  # the CLI stopped at the budget it was given: no second call
    listed = d.cli("ps").output
    assert f"asks: task {task} spent $0.0010 of its $0.0005 budget" in listed
    refused = d.run_cli("respond", str(task), "yes")
    assert refused.returncode != 0 and f"orchestra respond {task} --budget N" in refused.stderr

    said = d.cli("respond", str(task), "--budget", "0.05").output
    assert said.strip() in (f"raised the budget that paused task {task} to $0.05; it is {s}" for s in ("queued", "running"))
    done = d.wait_status(task, *FINISHED, timeout=60)
    assert done.status is Status.SUCCEEDED, done.reason
    assert done.result == "Finished after the raise." and done.attempts == 2 and done.budget_usd == 0.05
    first, second = api.turn_requests
    assert first.headers["x-claude-code-session-id"] == second.headers["x-claude-code-session-id"] == done.session_id
    assert "do the steps" in second.conversation_text()  # its session went on
    assert RAISED_MESSAGE.format(budget="$0.05") in second.last_user_text
    shown = d.cli("show", str(task)).output
    assert "budget $0.05" in shown and "cost       $0.0020" in shown


def test_a_workflow_that_spends_its_budget_pauses_the_step_that_reached_it_until_it_is_raised(team, work):
    d, api = team
    api.add(*(reply.text(f"reply {n}") for n in range(1, 6)))
    wf = d.call(p.RunWorkflow(template="bug-fix", goal="fix the parser", cwd=str(work), budget_usd=0.0015), p.WorkflowView)
    reproduce, fix, verify, review = (wf.steps[s] for s in ("reproduce", "fix", "verify", "review"))
    # reproduce spends $0.0010; fix is given the $0.0005 left, and its CLI stops there
    paused = d.wait_status(fix, Status.WAITING, *FINISHED, timeout=90)
    assert paused.status is Status.WAITING and paused.attempts == 1, paused.reason
    assert paused.waiting.prompt.startswith(f"workflow {wf.id} spent $0.0020 of its $0.0015 budget; raise the budget")
    assert [d.task(t).status for t in (reproduce, verify, review)] == [Status.SUCCEEDED, Status.QUEUED, Status.QUEUED]
    status = d.cli("workflow", "status", str(wf.id)).output
    assert f"workflow {wf.id} · bug-fix · waiting · $0.0020 of $0.0015" in status

    d.call(p.Respond(task=fix, budget_usd=1.0, via="cli"), p.TaskView)
    assert d.wait_status(review, *FINISHED, timeout=90).status is Status.SUCCEEDED
    fixed = d.task(fix)
    assert fixed.status is Status.SUCCEEDED and fixed.attempts == 2 and fixed.session_id == paused.session_id
    assert d.task(verify).status is Status.SUCCEEDED
    assert d.call(p.ShowWorkflow(workflow=wf.id), p.WorkflowView).budget_usd == 1.0


def test_a_role_s_budget_for_the_day_pauses_that_role_s_next_task_only(team, work):
    d, api = team
    api.add(reply.text("first doc"), reply.text("other role"), reply.text("second doc"))
    first = d.call(p.Submit(prompt="document it", cwd=str(work), role="documenter"), p.TaskView).id
    assert d.wait_status(first, *FINISHED, timeout=60).status is Status.SUCCEEDED
    d.call(p.ConfigSet(key="role_budgets", value={"documenter": 0.001}))  # what was spent today counts
    try:
        second = d.call(p.Submit(prompt="document more", cwd=str(work), role="documenter"), p.TaskView).id
        other = d.call(p.Submit(prompt="something else", cwd=str(work), role="generalist"), p.TaskView).id
        assert d.wait_status(other, *FINISHED, timeout=60).status is Status.SUCCEEDED  # another role is not held
        paused = d.wait_status(second, Status.WAITING, timeout=30)
        assert paused.attempts == 0  # it never started
        assert paused.waiting.prompt.startswith("role documenter spent $0.0010 of its $0.0010 budget for today; raise")
        d.call(p.Respond(task=second, budget_usd=0.01, via="mcp"), p.TaskView)
        done = d.wait_status(second, *FINISHED, timeout=60)
        assert done.status is Status.SUCCEEDED and done.result == "second doc"
    finally:
        d.call(p.ConfigSet(key="role_budgets", value={}))
