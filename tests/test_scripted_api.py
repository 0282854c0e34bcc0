"""The real Claude Code CLI against ScriptedAPI (tests/scripted_api.py).

These tests pin down the CLI behaviour the daemon relies on (stream-json in/out, permission
prompts over stdio, resume, errors); tests/claude_notes.md documents the findings.
The CLI must be installed: `npm install --prefix .local/npm @anthropic-ai/claude-code`
(or $ORCHESTRA_CLAUDE must point at a `claude` binary). Missing, these tests fail.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import threading
import uuid
from typing import Any

import pytest

from tests.scripted_api import (INITIALIZE, INSTALL_HINT, Reply, ScriptedAPI, allow, deny, find_claude, reply,
                                run_claude, side_kind, user_message)

TIMEOUT = 60.0  # per CLI process; a normal run takes 1-2 s


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="session")
def claude() -> str:
    path = find_claude()
    if not path:
        where = os.environ.get("ORCHESTRA_CLAUDE")
        extra = f"$ORCHESTRA_CLAUDE={where!r} is not an executable file.\n" if where else ""
        pytest.fail(extra + INSTALL_HINT, pytrace=False)
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0 or "Claude Code" not in out.stdout:
        pytest.fail(f"{path} --version failed: rc={out.returncode} {out.stdout!r} {out.stderr!r}\n{INSTALL_HINT}",
                    pytrace=False)
    return path


def test_claude_cli_is_installed() -> None:
    """Fails (never skips) when the CLI is missing, so a machine without it cannot pass."""
    path = find_claude()
    assert path, INSTALL_HINT
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "(Claude Code)" in out.stdout, (out.stdout, out.stderr)


@pytest.fixture
def workdir(tmp_path: Any) -> str:
    d = tmp_path / "work"
    d.mkdir()
    return str(d)


# ---------------------------------------------------------------------------------------------
# ScriptedAPI on its own (plain HTTP, no CLI)


def _post(api: ScriptedAPI, body: dict[str, Any], path: str = "/v1/messages") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in data.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


MAIN = {"model": "m", "max_tokens": 100, "system": "You are an interactive agent that helps users with software "
        "engineering tasks.", "tools": [{"name": "Bash"}], "messages": [{"role": "user", "content": "hi"}]}


def test_server_streams_messages_api_events() -> None:
    with ScriptedAPI([reply.tool_use("Bash", {"command": "echo hi"}, id="toolu_1", text="Running.")]) as api:
        status, headers, data = _post(api, {**MAIN, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = _sse(data)
    assert [e for e, _ in events] == ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_stop", "content_block_start", "content_block_delta",
                                      "content_block_stop", "message_delta", "message_stop"]
    assert all(d["type"] == e for e, d in events)
    assert events[0][1]["message"]["content"] == [] and events[0][1]["message"]["model"] == "m"
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Running."}
    assert events[4][1]["content_block"] == {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}
    assert json.loads(events[5][1]["delta"]["partial_json"]) == {"command": "echo hi"}
    assert events[7][1]["delta"]["stop_reason"] == "tool_use"
    assert api.turn_requests[0].tool_names == ["Bash"]


def test_server_non_streaming_errors_side_calls_and_exhaustion() -> None:
    title = {"model": "m", "max_tokens": 100, "system": "Generate a concise title", "messages": [
        {"role": "user", "content": "x"}], "output_config": {"format": {"type": "json_schema", "schema": {
            "type": "object", "properties": {"title": {"type": "string"}}}}}}
    with ScriptedAPI([reply.text("plain"), reply.error(529)]) as api:
        status, _, data = _post(api, title)  # side call: answered, no turn used
        assert status == 200 and json.loads(json.loads(data)["content"][0]["text"]) == {"title": "Scripted"}
        status, _, data = _post(api, MAIN)
        msg = json.loads(data)
        assert status == 200 and msg["type"] == "message" and msg["content"] == [{"type": "text", "text": "plain"}]
        assert msg["stop_reason"] == "end_turn" and msg["usage"]["input_tokens"] == 100
        status, _, data = _post(api, MAIN)
        assert status == 529 and json.loads(data)["error"]["type"] == "overloaded_error"
        status, _, data = _post(api, MAIN)
        assert status == 400 and "script exhausted" in json.loads(data)["error"]["message"]
        status, _, data = _post(api, {"messages": []}, "/v1/messages/count_tokens")
        assert status == 200 and json.loads(data)["input_tokens"] > 0
        assert [r.kind for r in api.requests] == ["side", "turn", "turn", "unscripted", "count_tokens"]
        assert api.requests[0].side_kind == "title"
        with pytest.raises(AssertionError, match="beyond the script"):
            api.assert_script_done()


def test_side_kind_classifier() -> None:
    assert side_kind(MAIN) is None
    assert side_kind({**MAIN, "tools": []}) is None  # --tools "" still sends the agent prompt
    assert side_kind({"max_tokens": 1, "messages": []}) == "quota"
    assert side_kind({"stop_sequences": ["</block>"], "system": "security monitor"}) == "classifier"
    assert side_kind({"system": "Summarise this", "messages": []}) == "side"
    compact = {**MAIN, "messages": [{"role": "user", "content": "CRITICAL: Respond with TEXT ONLY. ... create a "
                                     "detailed summary of the conversation so far"}]}
    assert side_kind(compact) == "compact"


def test_env_is_isolated() -> None:
    base = {"PATH": "/usr/bin", "ANTHROPIC_AUTH_TOKEN": "real", "CLAUDECODE": "1", "CLAUDE_CODE_ENTRYPOINT": "cli",
            "HTTPS_PROXY": "http://proxy"}
    with ScriptedAPI() as api:
        env = api.env(base)
        assert env["ANTHROPIC_BASE_URL"] == api.base_url and env["ANTHROPIC_API_KEY"] == "test-key"
        assert env["HOME"] == api.home and os.path.isdir(api.home)
        assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1" and env["CLAUDE_CODE_MAX_RETRIES"] == "0"
        assert env["PATH"] == "/usr/bin"
        assert not {"ANTHROPIC_AUTH_TOKEN", "CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT", "HTTPS_PROXY"} & set(env)
        home = api.home
    assert not os.path.exists(home)


# ---------------------------------------------------------------------------------------------
# The real CLI


def test_plain_text_answer(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.text("Hello from the script.")]) as api:
        run = run_claude(api, "say hello", cwd=workdir, claude=claude, timeout=TIMEOUT)
        api.assert_script_done()
        req = api.turn_requests[0]
    assert run.returncode == 0, run.stderr
    kinds = [(m["type"], m.get("subtype")) for m in run.messages]
    assert kinds == [("control_response", None), ("system", "init"), ("assistant", None), ("result", "success")]
    ctl = run.messages[0]["response"]
    assert ctl["subtype"] == "success" and ctl["request_id"] == "init1"
    assert {"commands", "models", "account", "pid"} <= set(ctl["response"])
    init = run.init
    assert init["cwd"] == workdir and init["permissionMode"] == "default" and init["apiKeySource"] == "ANTHROPIC_API_KEY"
    assert {"Bash", "Write", "Edit", "Read", "AskUserQuestion"} <= set(init["tools"])
    assistant = run.of_type("assistant")[0]
    assert assistant["message"]["content"] == [{"type": "text", "text": "Hello from the script."}]
    assert assistant["session_id"] == init["session_id"] and assistant["parent_tool_use_id"] is None
    result = run.result
    assert result["is_error"] is False and result["result"] == "Hello from the script."
    assert result["session_id"] == init["session_id"] and result["num_turns"] == 1
    assert result["stop_reason"] == "end_turn" and result["total_cost_usd"] > 0
    assert result["usage"]["input_tokens"] == 100 and result["usage"]["output_tokens"] == 20
    # What the CLI sent: maybe a HEAD probe (2.1.197: `HEAD /`), then the one turn.
    assert [r.kind for r in api.requests if r.kind != "probe"] == ["turn"]
    assert req.method == "POST" and req.route == "/v1/messages" and req.body["stream"] is True
    assert req.headers["x-api-key"] == "test-key" and req.headers["anthropic-version"] == "2023-06-01"
    assert req.headers["x-claude-code-session-id"] == init["session_id"]
    assert req.last_user_text.endswith("say hello")
    assert "Bash" in req.tool_names


def test_write_with_accept_edits(claude: str, workdir: str) -> None:
    target = os.path.join(workdir, "hello.txt")
    with ScriptedAPI([reply.tool_use("Write", {"file_path": target, "content": "written\n"}, text="Writing."),
                      reply.text("Wrote it.")]) as api:
        run = run_claude(api, "write a file", cwd=workdir, claude=claude, timeout=TIMEOUT,
                         args=["--permission-mode", "acceptEdits"])
        api.assert_script_done()
    assert run.returncode == 0, run.stderr
    assert _read(target) == "written\n"
    assert run.permission_requests() == []  # acceptEdits: no prompt for Write
    assert run.init["permissionMode"] == "acceptEdits"
    # One `assistant` stdout message per content block (same message id).
    blocks = [m["message"]["content"][0]["type"] for m in run.of_type("assistant")]
    assert blocks == ["text", "tool_use", "text"]
    tool_use = run.of_type("assistant")[1]["message"]["content"][0]
    (tr,) = run.tool_results()
    assert tr["tool_use_id"] == tool_use["id"] and "File created successfully" in tr["content"]
    sent = api.turn_requests[1].tool_result_for(tool_use["id"])
    assert sent is not None and "File created successfully" in sent["content"]
    assert run.result["num_turns"] == 2 and run.result["result"] == "Wrote it."


def test_write_allowed_by_allowed_tools(claude: str, workdir: str) -> None:
    target = os.path.join(workdir, "a.txt")
    with ScriptedAPI([reply.tool_use("Write", {"file_path": target, "content": "a"}), reply.text("ok")]) as api:
        run = run_claude(api, "w", cwd=workdir, claude=claude, timeout=TIMEOUT, args=["--allowed-tools", "Write"])
    assert run.returncode == 0 and run.permission_requests() == []
    assert _read(target) == "a"


def test_bash_permission_allow_runs_updated_input(claude: str, workdir: str) -> None:
    seen: list[dict[str, Any]] = []

    def on_permission(request: dict[str, Any]) -> dict[str, Any]:
        seen.append(request)
        # The allow answer's updatedInput is what runs: change the command.
        return {"behavior": "allow", "updatedInput": {**request["input"], "command": "echo ran > out.txt; echo ok"}}

    with ScriptedAPI([reply.tool_use("Bash", {"command": "echo hi > out.txt", "description": "Write out.txt"}),
                      reply.text("done")]) as api:
        run = run_claude(api, "run it", cwd=workdir, claude=claude, timeout=TIMEOUT, on_permission=on_permission)
        api.assert_script_done()
        second = api.turn_requests[1]
    assert run.returncode == 0, run.stderr
    (ctl,) = run.permission_requests()
    tool_use = run.of_type("assistant")[0]["message"]["content"][0]
    req = ctl["request"]
    assert req["tool_name"] == "Bash" and req["tool_use_id"] == tool_use["id"]
    assert req["input"] == {"command": "echo hi > out.txt", "description": "Write out.txt"}
    assert req["description"] == "Write out.txt" and "permission_suggestions" in req
    assert ctl["request_id"] and seen == [req]
    assert _read(os.path.join(workdir, "out.txt")) == "ran\n"
    (tr,) = run.tool_results()
    assert tr["content"] == "ok" and tr["is_error"] is False
    assert second.tool_result_for(tool_use["id"])["content"] == "ok"  # type: ignore[index]
    assert run.result["permission_denials"] == []


def test_bash_permission_deny(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.tool_use("Bash", {"command": "echo hi > out.txt"}), reply.text("Not run.")]) as api:
        run = run_claude(api, "run it", cwd=workdir, claude=claude, timeout=TIMEOUT, on_permission=deny("no"))
        api.assert_script_done()
        second = api.turn_requests[1]
    assert run.returncode == 0, run.stderr
    assert len(run.permission_requests()) == 1
    assert not os.path.exists(os.path.join(workdir, "out.txt"))
    (tr,) = run.tool_results()
    assert tr["content"] == "no" and tr["is_error"] is True
    assert second.tool_results()[-1]["content"] == "no" and second.tool_results()[-1]["is_error"] is True
    result = run.result  # a denial does not end the turn: the model sees the error and goes on
    assert result["is_error"] is False and result["result"] == "Not run."
    assert [d["tool_name"] for d in result["permission_denials"]] == ["Bash"]


def test_deny_with_interrupt_ends_the_turn(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.tool_use("Bash", {"command": "echo hi > out.txt"})]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT,
                         on_permission=lambda r: {"behavior": "deny", "message": "stop", "interrupt": True})
        api.assert_script_done()  # no further request: the model is not asked again
    assert run.returncode == 1 and not os.path.exists(os.path.join(workdir, "out.txt"))
    assert run.result["subtype"] == "error_during_execution" and run.result["is_error"] is True
    texts = [json.dumps(m["message"]["content"]) for m in run.of_type("user")]
    assert "[Request interrupted by user for tool use]" in texts[-1]


def test_read_only_bash_needs_no_permission(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.tool_use("Bash", {"command": "echo hello"}), reply.text("ok")]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT, on_permission=deny("no"))
    assert run.permission_requests() == []
    assert run.tool_results()[0]["content"] == "hello"


def test_ask_user_question_answers(claude: str, workdir: str) -> None:
    question = "Which color should the button be?"
    ask = {"questions": [{"question": question, "header": "Color", "multiSelect": False,
                          "options": [{"label": "Red", "description": "warm"},
                                      {"label": "Blue", "description": "cool"}]}]}

    def on_permission(request: dict[str, Any]) -> dict[str, Any]:
        assert request["tool_name"] == "AskUserQuestion"
        return {"behavior": "allow", "updatedInput": {**request["input"], "answers": {question: "Blue"}}}

    with ScriptedAPI([reply.tool_use("AskUserQuestion", ask), reply.text("Blue it is.")]) as api:
        run = run_claude(api, "ask me", cwd=workdir, claude=claude, timeout=TIMEOUT, on_permission=on_permission,
                         args=["--permission-mode", "acceptEdits"])  # asked even in acceptEdits
        api.assert_script_done()
        second = api.turn_requests[1]
    assert run.returncode == 0, run.stderr
    (ctl,) = run.permission_requests()
    assert ctl["request"]["input"]["questions"][0]["question"] == question
    expected = (f'Your questions have been answered: "{question}"="Blue". '
                "You can now continue with these answers in mind.")
    (tr,) = second.tool_results()
    assert tr["content"] == expected and not tr.get("is_error")
    (printed,) = run.of_type("user")
    assert printed["tool_use_result"]["answers"] == {question: "Blue"}


def test_resume_sends_earlier_conversation(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.text("First answer."), reply.text("Second answer.")]) as api:
        first = run_claude(api, "first question", cwd=workdir, claude=claude, timeout=TIMEOUT)
        sid = first.session_id
        second = run_claude(api, "second question", cwd=workdir, claude=claude, timeout=TIMEOUT,
                            args=["--resume", sid])
        api.assert_script_done()
        req = api.turn_requests[1]
        transcript = os.path.join(api.home, ".claude", "projects")
        assert any(f"{sid}.jsonl" in files for _, _, files in os.walk(transcript))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert second.session_id == sid and second.init["session_id"] == sid  # same id, not a new one
    roles = [m["role"] for m in req.messages]
    assert roles.count("assistant") == 1 and roles[-1] == "user"
    text = req.conversation_text()
    assert text.index("first question") < text.index("First answer.") < text.index("second question")


def test_resume_unknown_session_fails(claude: str, workdir: str) -> None:
    with ScriptedAPI([]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT, args=["--resume", str(uuid.uuid4())])
        assert api.messages_requests() == []
    assert run.returncode == 1
    assert "No conversation found with session ID" in run.stderr
    assert run.result["subtype"] == "error_during_execution" and run.result["is_error"] is True


def test_session_id_flag(claude: str, workdir: str) -> None:
    sid = str(uuid.uuid4())
    with ScriptedAPI([reply.text("ok")]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT, args=["--session-id", sid])
    assert run.session_id == sid


@pytest.mark.parametrize(("rep", "status", "text"), [
    (reply.error(500), 500, "API Error: 500 scripted api_error"),
    (reply.error(401, message="invalid x-api-key"), 401, "Invalid API key"),
    (reply.overloaded(), 529, "API Error: 529 Overloaded"),
    # 2.1.332 answers a 400 by retrying up to 5 times with fewer betas: repeat the error.
    (reply.error(400, message="bad request body", repeat=None), 400, "API Error: 400 bad request body"),
], ids=["500", "401", "529", "400"])
def test_api_error(claude: str, workdir: str, rep: Reply, status: int, text: str) -> None:
    with ScriptedAPI([rep]) as api:  # CLAUDE_CODE_MAX_RETRIES=0 (api.env()): no retries
        run = run_claude(api, "hi", cwd=workdir, claude=claude, timeout=TIMEOUT)
        api.assert_script_done()
    assert run.returncode == 1
    result = run.result
    assert result["subtype"] == "success" and result["is_error"] is True  # sic: subtype stays "success"
    assert result["api_error_status"] == status and result["result"].startswith(text)
    assert result["total_cost_usd"] == 0
    (assistant,) = run.of_type("assistant")
    assert assistant["message"]["model"] == "<synthetic>" and "error" in assistant
    assert assistant["message"]["content"][0]["text"] == result["result"]


def test_api_error_retries(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.error(500), reply.text("recovered")]) as api:
        run = run_claude(api, "hi", cwd=workdir, claude=claude, timeout=TIMEOUT,
                         env=api.env(CLAUDE_CODE_MAX_RETRIES="1"))
        api.assert_script_done()
    assert run.returncode == 0 and run.result["result"] == "recovered"
    (retry,) = run.of_type("system", "api_retry")
    assert retry["attempt"] == 1 and retry["max_retries"] == 1 and retry["error_status"] == 500
    assert 0 < retry["retry_delay_ms"] < 2000


def test_x_should_retry_false_stops_retries(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.error(500, headers={"x-should-retry": "false"})]) as api:
        env = api.env()
        del env["CLAUDE_CODE_MAX_RETRIES"]  # default: 10 retries with exponential backoff
        run = run_claude(api, "hi", cwd=workdir, claude=claude, timeout=TIMEOUT, env=env)
        api.assert_script_done()
    assert run.returncode == 1 and run.result["api_error_status"] == 500
    assert run.of_type("system", "api_retry") == []



def test_mid_stream_error_falls_back_to_non_streaming(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.mid_stream_error("partial"), reply.text("recovered")]) as api:
        run = run_claude(api, "hi", cwd=workdir, claude=claude, timeout=TIMEOUT)
        api.assert_script_done()
        first, second = api.turn_requests
    assert first.body["stream"] is True and not second.body.get("stream")  # non-streaming retry
    assert run.returncode == 0 and run.result["result"] == "recovered"


def test_append_system_prompt_and_model(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.text("ok")]) as api:
        run = run_claude(api, "hi", cwd=workdir, claude=claude, timeout=TIMEOUT,
                         args=["--append-system-prompt", "ORCHESTRA: you are agent 7.", "--model", "claude-sonnet-4-5"])
        req = api.turn_requests[0]
    assert run.returncode == 0
    assert req.model == "claude-sonnet-4-5" and run.init["model"] == "claude-sonnet-4-5"
    assert req.system_text.rstrip().endswith("ORCHESTRA: you are agent 7.")
    assert req.system_text.count("ORCHESTRA") == 1 and len(req.system_text) > 5000  # appended, not replaced
    assert list(run.result["modelUsage"]) == ["claude-sonnet-4-5"]


def test_max_budget_usd(claude: str, workdir: str) -> None:
    big = {"input_tokens": 100_000, "output_tokens": 1_000}
    with ScriptedAPI([reply.tool_use("Bash", {"command": "echo 1 > one.txt"}, usage=big), reply.text("unused")]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT, on_permission=allow(),
                         args=["--max-budget-usd", "0.01", "--model", "claude-sonnet-4-5"])
        assert len(api.turn_requests) == 1
    assert run.returncode == 1
    result = run.result
    assert result["subtype"] == "error_max_budget_usd" and result["is_error"] is True
    assert result["errors"] == ["Reached maximum budget ($0.01)"] and result["total_cost_usd"] > 0.01
    # The over-budget reply's tool is still put to can_use_tool. If allowed, 2.1.197 never ran it,
    # 2.1.332 sometimes does (a race; one.txt appears), but no tool_result is printed either way.
    assert run.tool_results() == []


def test_stdin_closed_while_permission_pending(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.tool_use("Bash", {"command": "echo hi > out.txt"}), reply.text("done")]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT, on_permission=allow(),
                         close_stdin="after_send")
    assert run.returncode == 0 and run.permission_requests() == []
    (tr,) = run.tool_results()
    # 2.1.197: "...failed: Error: Stream closed"; 2.1.332: "...failed: AbortError: Stream closed"
    assert tr["is_error"] is True and tr["content"].startswith("Tool permission request failed: ")
    assert tr["content"].endswith("Error: Stream closed")
    assert not os.path.exists(os.path.join(workdir, "out.txt"))


def test_without_initialize(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.tool_use("Bash", {"command": "echo hi > out.txt"}), reply.text("done")]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT, on_permission=allow(),
                         initialize=False)
    assert run.returncode == 0
    assert run.messages[0]["type"] == "system" and run.of_type("control_response") == []
    assert len(run.permission_requests()) == 1  # permission prompts work without it
    assert os.path.exists(os.path.join(workdir, "out.txt"))


def test_interrupt_then_next_prompt(claude: str, workdir: str) -> None:
    gate = threading.Event()
    run_init: list[dict[str, Any]] = []
    with ScriptedAPI([reply.text("never seen", gate=gate), reply.text("after interrupt")]) as api:
        def on_message(msg: dict[str, Any], send: Any) -> None:
            if msg.get("subtype") == "init" and not run_init:  # system/init comes once per prompt
                run_init.append(msg)
                def interrupt() -> None:
                    api.wait_for_turns(1, timeout=TIMEOUT)
                    send({"type": "control_request", "request_id": "int1", "request": {"subtype": "interrupt"}})
                threading.Thread(target=interrupt, daemon=True).start()

        run = run_claude(api, ["first", "second"], cwd=workdir, claude=claude, timeout=TIMEOUT, on_message=on_message)
        gate.set()
        second = api.turn_requests[1]
    assert run.returncode == 0
    (ack,) = [m for m in run.of_type("control_response") if m["response"]["request_id"] == "int1"]
    assert ack["response"]["subtype"] == "success"  # 2.1.332 adds "response": {"still_queued": []}
    first_result, second_result = run.of_type("result")
    assert first_result["subtype"] == "error_during_execution" and first_result["is_error"] is True
    assert second_result["result"] == "after interrupt"
    assert "[Request interrupted by user]" in second.conversation_text()


def test_process_waits_for_stdin_to_close(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.text("ok")]) as api:
        proc = subprocess.Popen([claude, "-p", "--input-format", "stream-json", "--output-format", "stream-json",
                                 "--verbose", "--permission-prompt-tool", "stdio"], cwd=workdir, env=api.env(),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdin and proc.stdout
        try:
            proc.stdin.write((json.dumps(INITIALIZE) + "\n" + json.dumps(user_message("hi")) + "\n").encode())
            proc.stdin.flush()
            for line in proc.stdout:
                if json.loads(line)["type"] == "result":
                    break
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1.5)  # idle, stdin open: waits for the next prompt
            proc.stdin.close()
            assert proc.wait(timeout=TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def test_side_requests_do_not_consume_turns(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.text("a"), reply.text("b")]) as api:
        env = api.env()
        # Either of these stops the CLI from asking for a session title.
        del env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"], env["CLAUDE_CODE_DISABLE_TERMINAL_TITLE"]
        run = run_claude(api, ["please fix the login bug", "and add tests", "/compact"], cwd=workdir, claude=claude,
                         timeout=TIMEOUT, env=env)
        api.assert_script_done()
        sides = api.side_requests
    assert run.returncode == 0
    assert [r["result"] for r in run.of_type("result")][:2] == ["a", "b"]
    kinds = sorted(str(r.side_kind) for r in sides)
    # 2.1.197 asks for a session title (with the first prompt of two or more words); 2.1.332 doesn't.
    assert kinds in (["compact", "title"], ["compact"])
    for title in (r for r in sides if r.side_kind == "title"):
        assert "<session>\nplease fix the login bug\n</session>" in title.last_user_text and title.tools == []
    assert run.of_type("system", "compact_boundary")


def test_no_tools_turns_still_count_as_turns(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.text("a"), reply.text("b")]) as api:
        run = run_claude(api, ["one", "two"], cwd=workdir, claude=claude, timeout=TIMEOUT, args=["--tools", ""])
        api.assert_script_done()
        assert all(r.tools == [] for r in api.turn_requests)
    assert [r["result"] for r in run.of_type("result")] == ["a", "b"]


def test_auto_mode_classifier_is_a_side_call(claude: str, workdir: str) -> None:
    cmd = "curl -s http://127.0.0.1:9/ ; echo checked > out.txt"
    with ScriptedAPI([reply.tool_use("Bash", {"command": cmd}), reply.text("done")]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT, on_permission=deny("no"),
                         args=["--permission-mode", "auto"])
        api.assert_script_done()
        kinds = {r.side_kind for r in api.side_requests}
    assert run.returncode == 0 and run.result["result"] == "done"
    assert run.permission_requests() == []  # auto mode never asks over stdio
    out = os.path.join(workdir, "out.txt")
    if kinds:  # 2.1.197: a side call to the classifier; ScriptedAPI's default verdict is "allow"
        assert kinds == {"classifier"} and _read(out) == "checked\n"
    else:  # 2.1.332: no classifier behind a custom ANTHROPIC_BASE_URL, so the action is refused
        (denied,) = run.of_type("system", "permission_denied")
        assert denied["decision_reason_code"] == "auto_mode_no_check_in_session" and not os.path.exists(out)


def test_include_partial_messages(claude: str, workdir: str) -> None:
    with ScriptedAPI([reply.text("streamed text")]) as api:
        run = run_claude(api, "x", cwd=workdir, claude=claude, timeout=TIMEOUT, args=["--include-partial-messages"])
    events = [m["event"]["type"] for m in run.of_type("stream_event")]
    assert events == ["message_start", "content_block_start", "content_block_delta", "content_block_stop",
                      "message_delta", "message_stop"]
    delta = run.of_type("stream_event")[2]["event"]["delta"]
    assert delta == {"type": "text_delta", "text": "streamed text"}
