"""Usage limits and transient errors, in the pure core: what the Claude adapter makes of the
CLI's stream, and what decide, the fold and the scheduler make of that (orchestrad.retries).

The stream lines below are what Claude Code 2.1.197 printed against tests/scripted_api.py
(tests/claude_notes.md, "Usage limits and transient errors"); test_limits.py runs the real
CLI through a real daemon."""

from __future__ import annotations

import json

import msgspec
import pytest

from orchestra import render
from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import agentenv, config as config_mod, events as ev, launch, retries, scheduler
from orchestrad.agents import agent_for
from orchestrad.state import from_snapshot, to_snapshot, view
from tests.core import Core

RESET = 1_000_600  # epoch seconds: ten minutes after the Core's clock starts (1_000_000)
SESSION = "19ac1fbf-b71a-4443-8a43-70116aa20174"


def _synthetic(text: str, error: str) -> dict:
    return {"type": "assistant", "message": {"model": "<synthetic>", "role": "assistant", "content": [{"type": "text", "text": text}]},
            "parent_tool_use_id": None, "session_id": SESSION, "error": error}


def _result(text: str, status: int | None, *, is_error: bool = True) -> dict:
    return {"type": "result", "subtype": "success", "is_error": is_error, "api_error_status": status, "duration_ms": 100,
            "num_turns": 1, "result": text, "session_id": SESSION, "total_cost_usd": 0, "usage": {}}


def _limit_event(status: str, resets_at: int | None = RESET) -> dict:
    info = {"status": status, "rateLimitType": "five_hour", "isUsingOverage": False}
    if resets_at is not None:
        info["resetsAt"] = resets_at
    return {"type": "rate_limit_event", "rate_limit_info": info, "uuid": "u", "session_id": SESSION}


INIT = {"type": "system", "subtype": "init", "session_id": SESSION, "model": "claude-sonnet-5"}
USAGE_LIMIT = [INIT, _limit_event("rejected"), _synthetic("You've hit your session limit · resets 12:56pm (UTC)", "rate_limit"),
               _result("You've hit your session limit · resets 12:56pm (UTC)", 429)]
OVERLOADED_TEXT = "API Error: 529 Overloaded. This is a server-side issue, usually temporary — try again in a moment."
OVERLOADED = [INIT, _synthetic(OVERLOADED_TEXT, "server_error"), _result(OVERLOADED_TEXT, 529)]


def agent_result(lines: list[dict], task: int = 1) -> ev.AgentResult:
    """The AgentResult the Claude adapter makes of these stdout lines."""
    core = Core()
    core.submit(prompt="x", agent="claude")
    agent = agent_for("claude")
    reaction = agent.output(core.state.tasks[1], "stdout", b"".join(json.dumps(m).encode() + b"\n" for m in lines))
    [result] = [e for e in reaction.items if isinstance(e, ev.AgentResult)]
    return result


# ---------------------------------------------------------------------------------------
# The adapter: which errors are about the API's availability


def test_a_rejected_rate_limit_event_with_a_reset_is_a_usage_limit():
    result = agent_result(USAGE_LIMIT)
    assert (result.is_error, result.api_error, result.resets_at) == (True, "usage limit", float(RESET))


@pytest.mark.parametrize(("lines", "kind"), [
    (OVERLOADED, "overloaded"),
    ([INIT, _synthetic("API Error: 500 scripted api_error.", "server_error"), _result("API Error: 500 scripted api_error.", 500)], "server error"),
    ([INIT, _synthetic("API Error: Request rejected (429) · slow down", "rate_limit"), _result("API Error: Request rejected (429) · slow down", 429)], "rate limited"),
    # the server throttling, not the account's limit: rejected, and no reset time
    ([INIT, _limit_event("rejected", None), _synthetic("API Error: Server is temporarily limiting requests (not your usage limit) · rl", "rate_limit"),
      _result("API Error: Server is temporarily limiting requests (not your usage limit) · rl", 429)], "rate limited"),
    ([INIT, _synthetic("API Error: Unable to connect to API (ConnectionRefused)", "server_error"),
      _result("API Error: Unable to connect to API (ConnectionRefused)", None)], "connection error"),
])
def test_transient_errors_are_told_apart(lines, kind):
    result = agent_result(lines)
    assert (result.api_error, result.resets_at) == (kind, None)


@pytest.mark.parametrize("lines", [
    [INIT, _synthetic("Invalid API key · Fix external API key", "authentication_failed"), _result("Invalid API key · Fix external API key", 401)],
    [INIT, _synthetic("API Error: 400 prompt is too long", "invalid_request"), _result("API Error: 400 prompt is too long", 400)],
    [INIT, {**_result("", None), "subtype": "error_max_budget_usd", "result": None, "errors": ["Reached maximum budget ($0.01)"]}],
    [INIT, _limit_event("allowed"), _result("fine", None, is_error=False)],
])
def test_errors_retrying_cannot_mend_and_successes_are_not_availability_errors(lines):
    assert agent_result(lines).api_error == ""


def test_the_older_clis_usage_limit_text_carries_its_reset():
    text = "Claude AI usage limit reached|1748268000"
    result = agent_result([INIT, _synthetic(text, "rate_limit"), _result(text, 429)])
    assert (result.api_error, result.resets_at) == ("usage limit", 1748268000.0)


def test_the_cli_is_told_not_to_retry_unless_the_environment_says_otherwise():
    agent = agent_for("claude")
    config = config_mod.DEFAULT
    assert launch.environment({"PATH": "/bin"}, agent, config, {}, "m")["CLAUDE_CODE_MAX_RETRIES"] == "0"
    assert launch.environment({"CLAUDE_CODE_MAX_RETRIES": "3"}, agent, config, {}, "m")["CLAUDE_CODE_MAX_RETRIES"] == "3"
    assert launch.environment({}, agent, config, {"CLAUDE_CODE_MAX_RETRIES": "2"}, "m")["CLAUDE_CODE_MAX_RETRIES"] == "2"
    assert "CLAUDE_CODE_MAX_RETRIES" not in launch.environment({}, agent_for("command"), config, {}, "m")


def test_an_account_is_named_by_a_hash_never_by_its_credentials():
    names = agent_for("claude").traits.credentials
    key = "sk-ant-api03-secret-value"
    one = agentenv.account("claude", {"ANTHROPIC_API_KEY": key}, names)
    assert one.startswith("claude:") and key not in one and "secret" not in one
    assert one == agentenv.account("claude", {"ANTHROPIC_API_KEY": key, "PATH": "/bin"}, names)
    assert one != agentenv.account("claude", {"ANTHROPIC_API_KEY": key + "2"}, names)
    assert one != agentenv.account("claude", {"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": "http://127.0.0.1:1"}, names)


# ---------------------------------------------------------------------------------------
# decide, the fold, the scheduler


def claude_core(**config) -> Core:
    core = Core()
    core.apply([ev.DaemonStarted(pid=1, version="t", accounts={"claude": "claude:abc"})])
    for key, value in {"max_concurrent": 4, **config}.items():
        core.do(p.ConfigSet(key=key, value=value))
    return core


def run_into(core: Core, task: int, lines: list[dict], code: int = 1) -> None:
    """The task's process prints `lines` (a session, then its result) and exits."""
    core.apply([ev.SessionStarted(task=task, session_id=SESSION)])
    result = agent_result(lines)
    core.apply([msgspec.structs.replace(result, task=task)])
    core.exit(task, code)


def test_a_usage_limit_parks_the_task_until_the_reset_holding_no_slot():
    core = claude_core()
    task = core.submit(prompt="refactor the cache", agent="claude")
    assert core.tick() == [task]
    run_into(core, task, USAGE_LIMIT)
    t = core.state.tasks[task]
    assert t.status is Status.QUEUED and not t.status.finished
    assert task not in core.state.active and task in core.state.queued
    assert (t.not_before, t.hold, t.hold_reason) == (RESET, "parked", "usage limit")
    assert t.session_id == SESSION and t.continued == "resume" and t.pending_message == retries.LIMIT_MESSAGE
    assert core.state.limits == {"claude:abc": RESET}
    assert [(s.attempt, s.kind, s.error, s.until) for s in t.setbacks] == [(1, "parked", "usage limit", RESET)]
    plan = core.plan()
    assert plan.start == [] and plan.wake_at == RESET
    assert core.replayed() == core.state


def test_while_parked_no_other_task_of_the_account_starts_but_others_do():
    core = claude_core()
    parked = core.submit(prompt="a", agent="claude")
    core.tick()
    run_into(core, parked, USAGE_LIMIT)
    same = core.submit(prompt="b", agent="claude")
    own_key = core.submit(prompt="c", agent="claude", env={"ANTHROPIC_API_KEY": "another"})
    command = core.submit(argv=["true"])
    assert core.tick() == [own_key, command]
    assert scheduler.hold(core.state, core.state.tasks[same], core.now) == ("account", RESET, "usage limit")
    assert scheduler.hold(core.state, core.state.tasks[parked], core.now) == ("parked", RESET, "usage limit")
    core.now = RESET
    assert core.tick() == [parked, same]
    t = core.state.tasks[parked]
    assert (t.attempts, t.not_before, t.hold) == (2, None, "")
    argv = agent_for("claude").command(t, core.state.config, {})
    assert argv[argv.index("--resume") + 1] == SESSION


def test_dependents_of_a_parked_task_wait_and_wait_sees_it_unfinished():
    core = claude_core()
    first = core.submit(prompt="a", agent="claude")
    after = core.submit(argv=["true"], after=[first])
    core.tick()
    run_into(core, first, USAGE_LIMIT)
    assert core.tick() == []
    assert core.status(after) is Status.QUEUED and "task 1 to succeed" in scheduler.waits_for(core.state, core.state.tasks[after])


def test_a_stopped_parked_task_is_cancelled_and_its_account_stays_held():
    core = claude_core()
    parked = core.submit(prompt="a", agent="claude")
    core.tick()
    run_into(core, parked, USAGE_LIMIT)
    core.do(p.Stop(task=parked))
    assert core.status(parked) is Status.CANCELLED and core.state.tasks[parked].reason == "stopped while parked on a usage limit"
    other = core.submit(prompt="b", agent="claude")
    assert core.tick() == [] and core.plan().wake_at == RESET
    core.now = RESET + 1
    assert core.tick() == [other]


def test_with_resume_after_limit_off_the_task_fails_saying_how_to_resume_it():
    core = claude_core(resume_after_limit=False)
    task = core.submit(prompt="a", agent="claude")
    core.tick()
    run_into(core, task, USAGE_LIMIT)
    t = core.state.tasks[task]
    assert t.status is Status.FAILED
    assert t.reason.startswith(f"its account met its usage limit; after the reset `orchestra resume {task}` continues it (resume_after_limit is off)")
    assert "resets 12:56pm" in t.reason
    assert core.state.limits == {}


def test_a_limit_whose_reset_has_passed_is_retried_not_parked():
    core = claude_core(retry_base=1.0)
    task = core.submit(prompt="a", agent="claude")
    core.tick()
    core.now = RESET + 5
    run_into(core, task, USAGE_LIMIT)
    t = core.state.tasks[task]
    assert (t.hold, t.not_before, t.hold_reason) == ("retry", RESET + 6, "attempt 2 of 5: usage limit")


def test_transient_errors_back_off_exponentially_up_to_the_cap_then_fail_with_the_last_error():
    core = claude_core(retries=5, retry_base=2.0, retry_cap=10.0)
    task = core.submit(prompt="a", agent="claude")
    waits = []
    for attempt in range(1, 7):
        assert core.tick() == [task]
        assert core.state.tasks[task].attempts == attempt
        run_into(core, task, OVERLOADED)
        t = core.state.tasks[task]
        if t.status.finished:
            break
        waits.append(t.not_before - core.now)
        assert t.hold_reason == f"attempt {attempt + 1} of 6: overloaded"
        assert core.plan().wake_at == t.not_before and core.tick() == []
        core.now = t.not_before
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0]
    t = core.state.tasks[task]
    assert t.status is Status.FAILED and t.attempts == 6
    assert t.reason == f"overloaded on each of 6 attempts; the last said: {OVERLOADED_TEXT}"
    assert [s.attempt for s in t.setbacks] == [1, 2, 3, 4, 5] and {s.kind for s in t.setbacks} == {"retry"}
    assert core.replayed() == core.state


def test_a_retry_continues_the_session_and_a_success_ends_the_run():
    core = claude_core(retry_base=0.5)
    task = core.submit(prompt="a", agent="claude")
    core.tick()
    run_into(core, task, OVERLOADED)
    t = core.state.tasks[task]
    assert t.continued == "resume" and t.pending_message == retries.RETRY_MESSAGE.format(error="overloaded")
    core.now += 0.5
    assert core.tick() == [task]
    core.exit(task, 0, result="done")
    t = core.state.tasks[task]
    assert t.status is Status.SUCCEEDED and t.retried == 0 and len(t.setbacks) == 1


def test_an_attempt_that_never_started_a_session_starts_over_from_its_prompt():
    core = claude_core()
    task = core.submit(prompt="a", agent="claude")
    core.tick()
    core.apply([ev.AgentResult(task=task, text="API Error: Unable to connect to API (ConnectionRefused)", is_error=True, api_error="connection error")])
    core.exit(task, 1)
    t = core.state.tasks[task]
    assert (t.hold, t.continued, t.pending_message) == ("retry", "retry", "")
    assert "--resume" not in agent_for("claude").command(t, core.state.config, {})


def test_with_retries_off_a_transient_error_fails_at_once():
    core = claude_core(retries=0)
    task = core.submit(prompt="a", agent="claude")
    core.tick()
    run_into(core, task, OVERLOADED)
    t = core.state.tasks[task]
    assert t.status is Status.FAILED and t.reason.startswith("overloaded, not retried (the retries setting is 0): API Error: 529")


def test_other_errors_fail_as_before():
    core = claude_core()
    task = core.submit(prompt="a", agent="claude")
    core.tick()
    run_into(core, task, [INIT, _synthetic("Invalid API key", "authentication_failed"), _result("Invalid API key", 401)])
    t = core.state.tasks[task]
    assert t.status is Status.FAILED and t.reason == "the agent reported an error: Invalid API key" and t.setbacks == []


def test_a_stop_requested_while_it_ran_wins_over_a_retry():
    core = claude_core()
    task = core.submit(prompt="a", agent="claude")
    core.tick()
    core.do(p.Stop(task=task))
    run_into(core, task, OVERLOADED)
    assert core.status(task) is Status.CANCELLED


def test_the_queue_order_gives_no_slot_to_held_tasks():
    core = claude_core(max_concurrent=1)
    parked = core.submit(prompt="a", agent="claude")
    core.tick()
    run_into(core, parked, USAGE_LIMIT)
    command = core.submit(argv=["true"])
    order = list(scheduler.start_order(core.state, core.now))
    assert order == [(parked, "parked"), (command, "")]


def test_views_and_snapshots_carry_holds_and_setbacks():
    core = claude_core()
    task = core.submit(prompt="a", agent="claude")
    core.tick()
    run_into(core, task, USAGE_LIMIT)
    t = core.state.tasks[task]
    shown = view(t, core.now, hold=scheduler.hold(core.state, t, core.now))
    assert (shown.hold, shown.hold_until, shown.hold_reason) == ("parked", RESET, "usage limit")
    assert [s.kind for s in shown.setbacks] == ["parked"]
    assert view(t, core.now, preview=200).setbacks == []
    assert from_snapshot(to_snapshot(core.state)) == core.state
    decoded = msgspec.json.decode(msgspec.json.encode(shown), type=p.TaskView)
    assert decoded == shown


def test_ps_and_show_say_what_holds_a_task_in_local_time(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    try:
        until = 1_796_302_560.0  # 2026-12-03 12:56:00 UTC
        base = dict(id=3, status=Status.QUEUED, role="implementer", agent="claude", priority=0, after=[], title="fix it",
                    prompt="fix it", argv=[], cwd="/w", submitted_at=until - 60)
        parked = p.TaskView(**base, hold="parked", hold_until=until, hold_reason="usage limit")
        retrying = p.TaskView(**base, hold="retry", hold_until=until + 7, hold_reason="attempt 2 of 5: overloaded")
        held = p.TaskView(**base, hold="account", hold_until=until, hold_reason="usage limit")
        assert render.doing(parked) == "fix it · parked until 12:56 (usage limit)"
        assert render.doing(retrying) == "fix it · retrying at 12:56:07 (attempt 2 of 5: overloaded)"
        assert render.doing(held) == "fix it · held by its account's usage limit until 12:56"
        setbacks = [p.Setback(attempt=1, kind="retry", error="overloaded", detail=OVERLOADED_TEXT, at=until - 10, until=until - 8),
                    p.Setback(attempt=2, kind="parked", error="usage limit", at=until - 5, until=until)]
        shown = render.details(p.TaskView(**{**base, "attempts": 2}, setbacks=setbacks, hold="parked", hold_until=until, hold_reason="usage limit"))
        assert "  attempts   2\n             attempt 1: overloaded, retried at 12:55:52 (API Error: 529 Overloaded." in shown
        assert "             attempt 2: usage limit, parked until 12:56\n" in shown
        assert "  held       parked until 12:56 (usage limit)" in shown
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize(("key", "good", "bad"), [
    ("resume_after_limit", False, 1),
    ("retries", 0, -1),
    ("retry_base", 0.1, 0),
    ("retry_cap", 60, True),
])
def test_the_settings_say_what_they_take(key, good, bad):
    assert config_mod.check(key, good) is None
    assert config_mod.check(key, bad) is not None
