"""The Agent Client Protocol client (orchestrad.agents.acp, through the gemini kind) on
crafted JSON-RPC lines: what it writes back, and the facts it records."""

from __future__ import annotations

import json
from types import SimpleNamespace

import msgspec

from orchestrad import events as ev
from orchestrad.agents import acp
from orchestrad.agents.gemini import GeminiAgent
from orchestrad.state import Task
from orchestrad.events import TaskSpec


def task(**kw) -> Task:
    spec = TaskSpec(prompt="do it", argv=[], role="", agent="gemini", priority=0, after=[], cwd="/w", env={}, secret_env=[],
                    timeout=None, idle_timeout=None, budget_usd=None, model=None, title="")
    return msgspec.structs.replace(Task(id=7, spec=spec), **kw)


def lines(data: bytes) -> list[dict]:
    return [json.loads(x) for x in data.splitlines()]


def feed(agent, t, *messages) -> acp.Reaction:
    return agent.output(t, "stdout", b"".join(json.dumps(m).encode() + b"\n" for m in messages))


def events(reaction, kind):
    return [i for i in reaction.items if isinstance(i, kind)]


def started(t: Task, session: dict | None = None) -> GeminiAgent:
    """An adapter that has said hello and been given a session."""
    agent = GeminiAgent()
    agent.prepare(t, "/w", {})
    agent.greeting(t)
    feed(agent, t, {"jsonrpc": "2.0", "id": 1, "result": {"agentCapabilities": {"loadSession": True}}})
    feed(agent, t, {"jsonrpc": "2.0", "id": 2, "result": session or {"sessionId": "s1", "models": {"currentModelId": "gemini-2.5-pro"}}})
    return agent


def test_the_handshake_opens_a_session_then_prompts():
    t = task()
    agent = GeminiAgent()
    agent.prepare(t, "/w", {})
    hello = agent.greeting(t)
    assert lines(hello.write) == [{"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                   "params": {"protocolVersion": 1, "clientCapabilities": acp.AcpAgent.client_capabilities}}]
    opened = feed(agent, t, {"jsonrpc": "2.0", "id": 1, "result": {"agentCapabilities": {"loadSession": True}}})
    assert lines(opened.write)[0]["method"] == "session/new" and lines(opened.write)[0]["params"] == {"cwd": "/w", "mcpServers": []}
    prompted = feed(agent, t, {"jsonrpc": "2.0", "id": 2, "result": {"sessionId": "s1", "models": {"currentModelId": "gemini-2.5-pro"}}})
    assert events(prompted, ev.SessionStarted) == [ev.SessionStarted(task=7, session_id="s1", model="gemini-2.5-pro")]
    [prompt] = lines(prompted.write)
    assert prompt["method"] == "session/prompt" and prompt["params"] == {"sessionId": "s1", "prompt": [{"type": "text", "text": "do it"}]}


def test_a_follow_up_loads_the_session_and_falls_back_to_a_new_one():
    t = task(session_id="s1", continued="follow-up", pending_message="and then?", result="first answer")
    agent = GeminiAgent()
    agent.greeting(t)
    loaded = feed(agent, t, {"jsonrpc": "2.0", "id": 1, "result": {"agentCapabilities": {"loadSession": True}}})
    assert lines(loaded.write)[0]["method"] == "session/load" and lines(loaded.write)[0]["params"]["sessionId"] == "s1"
    failed = feed(agent, t, {"jsonrpc": "2.0", "id": 2, "error": {"code": -32603, "message": "Internal error"}})
    assert lines(failed.write)[0]["method"] == "session/new"
    prompted = feed(agent, t, {"jsonrpc": "2.0", "id": 3, "result": {"sessionId": "s2"}})
    assert lines(prompted.write)[0]["params"]["prompt"][0]["text"] == "do it\n\nand then?"


def test_a_loaded_sessions_replayed_history_is_not_the_answer():
    t = task(session_id="s1", continued="follow-up", pending_message="and then?", result="first answer")
    agent = GeminiAgent()
    agent.greeting(t)
    feed(agent, t, {"jsonrpc": "2.0", "id": 1, "result": {"agentCapabilities": {"loadSession": True}}})
    prompted = feed(agent, t, {"jsonrpc": "2.0", "id": 2, "result": {}})
    assert lines(prompted.write)[0]["params"]["prompt"][0]["text"] == "and then?"
    update = lambda kind, text: {"jsonrpc": "2.0", "method": "session/update", "params": {"sessionId": "s1", "update": {"sessionUpdate": kind, "content": {"type": "text", "text": text}}}}
    done = feed(agent, t, update("user_message_chunk", "do it"), update("agent_message_chunk", "first answer"),
                update("agent_message_chunk", "second "), update("agent_message_chunk", "answer"),
                {"jsonrpc": "2.0", "id": 3, "result": {"stopReason": "end_turn"}})
    [result] = events(done, ev.AgentResult)
    assert result.text == "second answer" and not result.is_error and done.close_stdin


def test_a_permission_request_is_put_to_the_policy_and_a_ruling_answers_it():
    t = task()
    agent = started(t)
    asked = feed(agent, t, {"jsonrpc": "2.0", "id": 0, "method": "session/request_permission", "params": {
        "sessionId": "s1",
        "options": [{"optionId": "proceed_once", "kind": "allow_once"}, {"optionId": "cancel", "kind": "reject_once"}],
        "toolCall": {"toolCallId": "run_shell_command__x_1", "title": "rm -rf build", "kind": "execute"}}})
    [ask] = asked.asks
    assert (ask.request_id, ask.tool, ask.input, ask.stage) == ("0", "Bash", {"command": "rm -rf build"}, "permission")
    ruled = agent.ruled(t, ask, SimpleNamespace(effect="deny", by="config: deny Bash(rm *)", reason=""))
    assert lines(ruled.write) == [{"jsonrpc": "2.0", "id": 0, "result": {"outcome": {"outcome": "selected", "optionId": "cancel"}}}]
    assert events(ruled, ev.PermissionDecided)[0].effect == "deny"


def test_no_rule_a_read_runs_and_a_write_waits_for_a_person_who_answers():
    t = task()
    agent = started(t)
    options = [{"optionId": "proceed_once", "kind": "allow_once"}, {"optionId": "cancel", "kind": "reject_once"}]
    read = feed(agent, t, {"jsonrpc": "2.0", "id": 0, "method": "session/request_permission", "params": {
        "options": options, "toolCall": {"toolCallId": "read_file__1", "title": "x.txt", "kind": "read", "locations": [{"path": "/w/x.txt"}]}}})
    assert read.asks[0].input == {"file_path": "/w/x.txt"} and read.asks[0].stage == "before"
    assert lines(agent.ruled(t, read.asks[0], None).write)[0]["result"]["outcome"]["optionId"] == "proceed_once"
    write = feed(agent, t, {"jsonrpc": "2.0", "id": 1, "method": "session/request_permission", "params": {
        "options": options, "toolCall": {"toolCallId": "write_file__2", "title": "Writing to a.txt", "kind": "edit",
                                         "content": [{"type": "diff", "path": "/w/a.txt", "oldText": "", "newText": "a"}]}}})
    assert write.asks[0].input == {"file_path": "/w/a.txt", "content": "a"}
    waiting = agent.ruled(t, write.asks[0], None)
    [question] = events(waiting, ev.InputRequested)
    assert question.kind == "permission" and question.prompt == "Write: /w/a.txt" and not waiting.write
    answered = agent.answer(t, ev.InputGiven(task=7, request_id="1", answer="deny: no"))
    assert lines(answered.write)[0] == {"jsonrpc": "2.0", "id": 1, "result": {"outcome": {"outcome": "selected", "optionId": "cancel"}}}


def test_a_result_records_tokens_and_cost_per_model():
    t = task()
    agent = started(t)
    done = feed(agent, t, {"jsonrpc": "2.0", "id": 3, "result": {"stopReason": "end_turn", "_meta": {"quota": {
        "token_count": {"input_tokens": 3000, "output_tokens": 300},
        "model_usage": [{"model": "gemini-2.5-pro", "token_count": {"input_tokens": 2000, "output_tokens": 200}},
                        {"model": "gemini-2.5-flash-lite", "token_count": {"input_tokens": 1000, "output_tokens": 100}}]}}}})
    [usage] = events(done, ev.UsageRecorded)
    assert (usage.input_tokens, usage.output_tokens) == (3000, 300)
    assert abs(usage.cost_usd - ((2000 * 1.25 + 200 * 10) + (1000 * 0.10 + 100 * 0.40)) / 1e6) < 1e-12


def test_an_api_error_fails_the_prompt_with_its_words_and_kind():
    t = task()
    agent = started(t)
    body = json.dumps({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})
    done = feed(agent, t, {"jsonrpc": "2.0", "id": 3, "error": {"code": 503, "message": body}})
    [result] = events(done, ev.AgentResult)
    assert result.is_error and result.text == "503 UNAVAILABLE The model is overloaded." and result.api_error == "overloaded"
    agent = started(t)
    limited = feed(agent, t, {"jsonrpc": "2.0", "id": 3, "error": {"code": 429, "message": "Rate limit exceeded. Try again later."}})
    assert events(limited, ev.AgentResult)[0].api_error == "rate limited"
    agent = started(t)
    bad = feed(agent, t, {"jsonrpc": "2.0", "id": 3, "error": {"code": 400, "message": "API key not valid"}})
    assert events(bad, ev.AgentResult)[0].api_error == ""


def test_requests_it_does_not_offer_are_refused_and_partial_lines_wait():
    t = task()
    agent = started(t)
    refused = feed(agent, t, {"jsonrpc": "2.0", "id": 5, "method": "fs/read_text_file", "params": {"path": "/etc/passwd"}})
    assert lines(refused.write) == [{"jsonrpc": "2.0", "id": 5, "error": {"code": -32601, "message": "orchestra does not offer fs/read_text_file"}}]
    half = agent.output(t, "stdout", b'{"jsonrpc":"2.0","id":3,"result":{"stopRea')
    assert half.items == [] and half.write == b""
    rest = agent.output(t, "stdout", b'son":"refusal"}}\n')
    assert events(rest, ev.AgentResult)[0].is_error and events(rest, ev.AgentResult)[0].subtype == "refusal"


def test_the_transcript_reads_as_a_conversation():
    out = [
        {"jsonrpc": "2.0", "id": 2, "result": {"sessionId": "s1", "models": {"currentModelId": "gemini-2.5-pro"}}},
        {"jsonrpc": "2.0", "id": 0, "method": "session/request_permission", "params": {"toolCall": {"title": "make test", "kind": "execute"}}},
        {"jsonrpc": "2.0", "method": "session/update", "params": {"update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "All "}}}},
        {"jsonrpc": "2.0", "method": "session/update", "params": {"update": {"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "green."}}}},
        {"jsonrpc": "2.0", "id": 3, "result": {"stopReason": "end_turn", "_meta": {"quota": {"token_count": {"input_tokens": 5, "output_tokens": 2}}}}},
    ]
    shown = GeminiAgent.render("stdout", b"".join(json.dumps(m).encode() + b"\n" for m in out)).decode()
    assert shown == ("── session s1 · gemini-2.5-pro\n? permission for execute: make test\nAll green.\n"
                     "✓ end_turn · 5 tokens in, 2 out\n")
    sent = [{"jsonrpc": "2.0", "id": 3, "method": "session/prompt", "params": {"prompt": [{"type": "text", "text": "run the tests"}]}},
            {"jsonrpc": "2.0", "id": 0, "result": {"outcome": {"outcome": "selected", "optionId": "cancel"}}}]
    assert GeminiAgent.render("stdin", b"".join(json.dumps(m).encode() + b"\n" for m in sent)).decode() == "» run the tests\n  denied\n"
