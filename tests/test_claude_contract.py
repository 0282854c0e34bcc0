"""Contract tests: stream-json transcripts recorded from the real Claude Code CLIs (2.1.197, the
oldest supported, and 2.1.332, the current release; tests/claude_transcripts.py records them)
replayed through the adapter, no process: what it makes of every message, and that it writes
back exactly what it wrote when they were recorded. Then the lines the current protocol can
send that the scripted API does not provoke, crafted after its schema (tests/claude_notes.md)."""

from __future__ import annotations

import json

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import decide, events as ev
from orchestra.shared.vocab import usd
from orchestrad.agents import Ask, agent_for
from orchestrad.agents.claude import ClaudeAgent
from tests.claude_transcripts import SCENARIOS, VERSIONS, Rule, Task, load, replay
from tests.core import Core

PER_TURN = {"old": 0.001, "current": 0.0008}  # 100 tokens in, 20 out, at each version's default model's prices


def kinds(entries: list[dict]) -> set[tuple[str, str]]:
    found = set()
    for entry in entries:
        m = entry.get("out")
        if m is not None:
            sub = m.get("subtype") or (m.get("request") or m.get("response") or {}).get("subtype") or ""
            found.add((m["type"], sub))
    return found


def of(task: Task, kind: type) -> list:
    return [e for e in task.events if isinstance(e, kind)]


@pytest.fixture(params=VERSIONS)
def version(request) -> str:
    return request.param


@pytest.mark.parametrize("name", SCENARIOS)
def test_the_adapter_writes_what_it_wrote_when_the_transcript_was_recorded(version, name):
    entries = load(version, name)
    replayed = replay(entries, name)
    assert replayed.written == [e["in"] for e in entries if "in" in e]


def test_the_transcripts_hold_every_kind_of_message_the_adapter_is_sent(version):
    seen = set().union(*(kinds(load(version, name)) for name in SCENARIOS))
    assert seen >= {
        ("system", "init"), ("assistant", ""), ("user", ""), ("result", "success"), ("result", "error_max_budget_usd"),
        ("control_request", "can_use_tool"), ("control_request", "hook_callback"), ("control_response", "success"),
        ("rate_limit_event", ""), ("system", "api_retry"),
    }


def test_a_permission_is_asked_of_a_person_and_allowed(version):
    task = replay(load(version, "permission"), "permission").task
    [asked] = of(task, ev.InputRequested)
    assert (asked.kind, asked.tool) == ("permission", "Bash") and asked.prompt.startswith("Bash: echo ran > out.txt")
    [result] = of(task, ev.AgentResult)
    assert (result.text, result.is_error) == ("done", False)
    assert task.core.state.tasks[task.id].status is Status.SUCCEEDED


def test_a_rule_denies_a_call_before_the_cli_s_own_rules(version):
    task = replay(load(version, "denied"), "denied").task
    [decided] = of(task, ev.PermissionDecided)
    assert (decided.tool, decided.effect) == ("Bash", "deny")
    assert not of(task, ev.InputRequested)
    assert of(task, ev.AgentResult)[-1].text == "I did not delete it."


def test_two_questions_one_multi_select_are_asked_in_turn_and_answered_together(version):
    entries = load(version, "questions")
    task = replay(entries, "questions").task
    first, second = of(task, ev.InputRequested)
    assert first.prompt == "(1/2) Which database should I use?" and first.options == ["SQLite", "PostgreSQL"]
    assert first.request_id.endswith("#0") and second.request_id.endswith("#1")
    assert second.prompt == "(2/2) Which colors should the buttons have? (one or more: their numbers, e.g. 1,3)"
    [answer] = [e["in"]["response"]["response"] for e in entries if "in" in e and "updatedInput" in e["in"].get("response", {}).get("response", {})]
    assert answer["updatedInput"]["answers"] == {
        "Which database should I use?": "PostgreSQL", "Which colors should the buttons have?": "Red, Blue",
    }
    # the CLI passed both answers to the model
    [tool_result] = [e["out"] for e in entries if "out" in e and e["out"]["type"] == "user"]
    text = json.dumps(tool_result["message"]["content"])
    assert "PostgreSQL" in text and "Red, Blue" in text


def test_cost_per_run_across_follow_ups_that_resume_the_session(version):
    entries = load(version, "follow_ups")
    replayed = replay(entries, "follow_ups")
    totals = [e["out"]["total_cost_usd"] for e in entries if "out" in e and e["out"]["type"] == "result"]
    per_turn = PER_TURN[version]
    if version == "current":  # its totals cover the session, a resumed process going on from it
        assert totals == pytest.approx([per_turn, 2 * per_turn, 3 * per_turn])
    else:
        assert totals == pytest.approx([per_turn] * 3)
    assert [u.cost_usd for u in of(replayed.task, ev.UsageRecorded)] == pytest.approx([per_turn] * 3)
    assert [u.input_tokens for u in of(replayed.task, ev.UsageRecorded)] == [100, 100, 100]
    task = replayed.task.core.state.tasks[replayed.task.id]
    assert task.cost_usd == pytest.approx(3 * per_turn) and task.session_cost_usd == pytest.approx(3 * per_turn)
    assert replayed.argv[0].count("--resume") == 0 and all(task.session_id in argv for argv in replayed.argv[1:])


def test_an_attempt_that_reaches_its_budget_pauses_the_task(version):
    task = replay(load(version, "budget"), "budget").task
    [result] = of(task, ev.AgentResult)
    assert result.subtype == "error_max_budget_usd" and result.is_error and "budget" in result.text
    assert task.core.state.tasks[task.id].status is Status.WAITING
    assert task.core.state.tasks[task.id].waiting.kind == "budget"


def test_an_api_error_under_subtype_success_fails_with_its_reason(version):
    task = replay(load(version, "api_error"), "api_error").task
    [result] = of(task, ev.AgentResult)
    assert (result.subtype, result.is_error, result.api_error) == ("success", True, "server error")
    assert result.text.startswith("API Error: 500 scripted failure.")
    [usage] = of(task, ev.UsageRecorded)
    assert usage.cost_usd == 0


def test_a_retry_of_the_cli_s_own_then_success(version):
    entries = load(version, "retried")
    assert ("system", "api_retry") in kinds(entries)
    assert of(replay(entries, "retried").task, ev.AgentResult)[-1].text == "made it"


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_transcript_renders_for_logs(version, name):
    shown = "".join(
        ClaudeAgent.render("stdout" if "out" in e else "stdin", json.dumps(e.get("out") or e.get("in")).encode()).decode()
        for e in load(version, name)
    )
    assert f"» {SCENARIOS[name].prompt}" in shown and ("✓ " in shown or "✗ " in shown)
    if name == "questions":
        assert "  answered: PostgreSQL" in shown and "  answered: Red, Blue" in shown
    if name == "follow_ups":  # each run's own cost, not the session's running total
        assert shown.count(f"  {usd(PER_TURN[version])} · 1 turn") == 3


# ---------------------------------------------------------------------------------------
# What the current protocol can send that the scripted API does not provoke (crafted lines)

SESSION = "00000000-0000-4000-8000-000000000001"
INIT = {"type": "system", "subtype": "init", "session_id": SESSION, "model": "claude-opus-5-5", "claude_code_version": "2.1.332"}


def adapter(*lines: dict, **submit):
    """A running task and its adapter, fed `lines`; gives (core, task id, adapter, events)."""
    core = Core()
    task_id = core.submit(prompt="x", agent="claude", **submit)
    core.tick()
    agent = agent_for("claude")
    agent.command(core.state.tasks[task_id], core.state.config, {})
    events = feed(core, task_id, agent, *lines)
    return core, task_id, agent, events


def feed(core: Core, task_id: int, agent, *lines: dict) -> list[ev.Event]:
    events: list[ev.Event] = []
    for line in lines:
        reaction = agent.output(core.state.tasks[task_id], "stdout", json.dumps(line).encode() + b"\n")
        batch = [i[0] if isinstance(i, tuple) else i for i in reaction.items]
        for ask in reaction.asks:
            more = agent.ruled(core.state.tasks[task_id], ask, None)
            batch += [i[0] if isinstance(i, tuple) else i for i in more.items]
        core.apply(batch)
        events += [e for e in batch if not isinstance(e, ev.OutputAppended)]
    return events


def can_use_tool(request_id: str, tool: str, tool_input: dict, **more) -> dict:
    return {"type": "control_request", "request_id": request_id,
            "request": {"subtype": "can_use_tool", "tool_name": tool, "input": tool_input, "tool_use_id": "toolu_1", **more}}


def result(**fields) -> dict:
    return {"type": "result", "subtype": "success", "is_error": False, "num_turns": 1, "result": "fine", "session_id": SESSION,
            "total_cost_usd": 0.001, "usage": {"input_tokens": 100, "output_tokens": 20}, **fields}


def test_a_withdrawn_permission_request_stops_the_task_waiting():
    core, task_id, agent, _ = adapter(INIT, can_use_tool("r1", "Bash", {"command": "make deploy"}))
    assert core.state.tasks[task_id].status is Status.WAITING
    [given] = feed(core, task_id, agent, {"type": "control_cancel_request", "request_id": "r1"})
    assert isinstance(given, ev.InputGiven) and given.request_id == "r1"
    assert core.state.tasks[task_id].status is Status.RUNNING and core.state.tasks[task_id].waiting is None
    with pytest.raises(p.OrchestraError):  # nothing left to answer
        core.do(p.Respond(task=task_id, allow=True))


def test_a_withdrawn_question_of_several_stops_the_task_waiting_whichever_it_asks():
    questions = {"questions": [{"question": "A?", "options": []}, {"question": "B?", "options": []}]}
    core, task_id, agent, _ = adapter(INIT, can_use_tool("q1", "AskUserQuestion", questions))
    [given] = core.do(p.Respond(task=task_id, text="yes"))
    core.apply([i[0] if isinstance(i, tuple) else i for i in agent.answer(core.state.tasks[task_id], given).items])  # the second question
    assert core.state.tasks[task_id].waiting.request_id == "q1#1"
    [withdrawn] = feed(core, task_id, agent, {"type": "control_cancel_request", "request_id": "q1"})
    assert withdrawn.request_id == "q1#1" and core.state.tasks[task_id].waiting is None


def test_a_request_withdrawn_while_the_policy_rules_gets_no_answer():
    core, task_id, agent, _ = adapter(INIT)
    reaction = agent.output(core.state.tasks[task_id], "stdout", json.dumps(can_use_tool("r2", "Bash", {"command": "ls"})).encode() + b"\n")
    [ask] = reaction.asks
    feed(core, task_id, agent, {"type": "control_cancel_request", "request_id": "r2"})
    assert agent.ruled(core.state.tasks[task_id], ask, Rule("allow")).write == b""


def test_a_call_only_a_person_may_allow_is_asked_of_a_person_even_when_a_rule_allows_it():
    core, task_id, agent, _ = adapter(INIT)
    line = can_use_tool("r3", "mcp__connector__send", {"to": "x"}, requires_user_interaction=True)
    reaction = agent.output(core.state.tasks[task_id], "stdout", json.dumps(line).encode() + b"\n")
    [ask] = reaction.asks
    ruled = agent.ruled(core.state.tasks[task_id], ask, Rule("allow"))
    assert ruled.write == b""
    [asked] = ruled.items
    assert isinstance(asked, ev.InputRequested) and asked.prompt.endswith("[Claude Code asks a person, not a rule]")
    denied = agent.ruled(core.state.tasks[task_id], Ask("r3", ask.tool, ask.input, "permission"), Rule("deny"))
    assert b'"behavior":"deny"' in denied.write  # a rule may still deny it


def test_an_error_under_subtype_success_without_words_fails_with_its_terminal_reason():
    *_, events = adapter(INIT, result(is_error=True, result="", terminal_reason="prompt_too_long"))
    [agent_result] = [e for e in events if isinstance(e, ev.AgentResult)]
    assert agent_result.is_error and agent_result.text == "the prompt is too long for the model's context"


def test_a_failing_terminal_reason_is_a_failure_even_without_is_error():
    core, task_id, _, events = adapter(INIT, result(result="", terminal_reason="model_error"))
    [agent_result] = [e for e in events if isinstance(e, ev.AgentResult)]
    assert agent_result.is_error and agent_result.text == "the model failed to answer"
    core.apply(decide.process_exited(core.state, task_id, 1, 1, None))
    assert core.state.tasks[task_id].reason == "the agent reported an error: the model failed to answer"


def test_an_empty_result_falls_back_to_the_last_assistant_text():
    said = {"type": "assistant", "parent_tool_use_id": None, "message": {"role": "assistant", "content": [{"type": "text", "text": "All three files are fixed."}]}}
    *_, events = adapter(INIT, said, result(result=""))
    [agent_result] = [e for e in events if isinstance(e, ev.AgentResult)]
    assert (agent_result.text, agent_result.is_error) == ("All three files are fixed.", False)


def test_an_error_s_own_diagnostics_are_not_its_reason():
    line = result(subtype="error_during_execution", is_error=True, result=None, terminal_reason="aborted_streaming",
                  errors=["[ede_diagnostic] result_type=user last_content_type=n/a stop_reason=null"])
    *_, events = adapter(INIT, line)
    assert [e.text for e in events if isinstance(e, ev.AgentResult)] == ["the turn was interrupted while the model answered"]


def test_without_model_usage_since_last_result_a_resumed_session_s_total_counts_what_it_had_not():
    """2.1.277 to the first version with `model_usage_since_last_result`: the total goes on
    from the session's; 2.1.276 and older: from 0 (both measured, tests/claude_notes.md)."""
    for version, totals, expected in (("2.1.277", (0.003, 0.004), [0.001, 0.001]), ("2.1.276", (0.001, 0.002), [0.001, 0.001])):
        core = Core()
        task_id = core.submit(prompt="x", agent="claude")
        core.tick()
        core.apply([ev.SessionStarted(task=task_id, session_id=SESSION), ev.UsageRecorded(task=task_id, cost_usd=0.002, input_tokens=1, output_tokens=1, session=SESSION),
                    ev.AgentResult(task=task_id, text="a", is_error=False)])
        core.exit(task_id, result=None)
        core.do(p.Respond(task=task_id, text="more"))
        core.tick()
        agent = agent_for("claude")
        assert "--resume" in agent.command(core.state.tasks[task_id], core.state.config, {})
        init = {**INIT, "claude_code_version": version}
        events = feed(core, task_id, agent, init, result(total_cost_usd=totals[0]), result(total_cost_usd=totals[1]))
        assert [e.cost_usd for e in events if isinstance(e, ev.UsageRecorded)] == pytest.approx(expected), version
