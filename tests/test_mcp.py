"""`orchestra mcp` as MCP clients see it: the SDK's own client, the MCP Inspector's CLI and
the real Claude Code CLI, each starting the server as a subprocess over stdio against a
real daemon.

The SDK client speaks both protocol eras: `mode="legacy"` is the initialize handshake
(2025-11-25, what Claude Code, Claude Desktop and the Inspector speak) and `mode="auto"`
negotiates 2026-07-28 with this SDK. Tasks that wait for a person need the claude agent:
the real Claude Code CLI against tests/scripted_api.py, which asks for a permission (a
writing Bash command) or asks a question (AskUserQuestion) when scripted to.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import MCPError

from orchestra.shared import protocol as p
from orchestrad import agents
from orchestrad.roles import BUILTIN

BUILTIN_ROLES = tuple(BUILTIN)
from orchestra.shared.protocol import Status
from tests.daemon import Daemon, wait_for
from tests.scripted_api import INSTALL_HINT, ScriptedAPI, find_claude, reply, run_claude

REPO = Path(__file__).resolve().parent.parent
INSPECTOR = REPO / ".local" / "npm-inspector" / "node_modules" / ".bin" / "mcp-inspector"
INSPECTOR_INSTALL = "npm install --prefix .local/npm-inspector @modelcontextprotocol/inspector@0.15.0"
TOOLS = {
    "submit-task", "list-processes", "process-details", "respond-to-process", "manage-queue",
    "stop-process", "configure-orchestrator", "assign-role", "create-workflow", "status-dashboard", "task-diff",
    "review-task",
}
ASK_COLOR = {"questions": [{"question": "Which color should the button be?", "header": "Color", "multiSelect": False,
                            "options": [{"label": "Red", "description": "warm"}, {"label": "Blue", "description": "cool"}]}]}
WRITE_FILE = {"command": "/bin/echo hi > out.txt", "description": "Write out.txt"}


def server_argv(home: Path) -> list[str]:
    return [sys.executable, "-m", "orchestra", "--home", str(home), "mcp"]


@asynccontextmanager
async def connected(home: Path, *, mode: str = "legacy", autostart: bool = False, **kw: Any):
    """The SDK's Client running `orchestra mcp` as its subprocess; the server's stderr goes to
    home/mcp.err."""
    env = {"ORCHESTRA_HOME": str(home)}
    if "PYTHONPATH" in os.environ:  # a checkout's code, not the installed one, serves too
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if not autostart:
        env["ORCHESTRA_NO_AUTOSTART"] = "1"
    params = StdioServerParameters(command=sys.executable, args=server_argv(home)[1:], env=env, cwd=str(home))
    with open(home / "mcp.err", "a") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode, **kw) as client:
            yield client


def run(fn, *args) -> Any:
    return anyio.run(fn, *args)


def text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def call(client: Client, tool: str, **arguments: Any) -> types.CallToolResult:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool} failed: {text(result)}"
    return result


async def subscribe(client: Client, uri: str) -> None:
    """resources/subscribe as handshake-era clients send it (the SDK deprecates its helper
    because 2026-07-28 replaced it with subscriptions/listen)."""
    await client.session.send_request(types.SubscribeRequest(params=types.SubscribeRequestParams(uri=uri)), types.EmptyResult)


@contextmanager
def claude_team(*turns):
    """A daemon whose claude agent is the real Claude Code CLI talking to a ScriptedAPI."""
    claude = find_claude()
    if not claude:
        pytest.fail(INSTALL_HINT, pytrace=False)
    api = ScriptedAPI(turns).start()
    daemon = Daemon()
    daemon.env.update(api.env())
    try:
        daemon.start()
        daemon.call(p.ConfigSet(key="claude_path", value=claude))
        yield daemon, api
    finally:
        daemon.cleanup()
        api.close()


def write_template(daemon: Daemon) -> None:
    path = daemon.paths.config / "workflows" / "pair.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('description = "two scripts"\n\n[[steps]]\nname = "first"\nargv = ["echo", "one"]\n\n'
                    '[[steps]]\nname = "second"\nafter = ["first"]\nargv = ["echo", "two: {steps.first.result}"]\n')
    wait_for(lambda: "pair" in [t.name for t in daemon.call(p.Templates(), p.TemplatesResult).templates], what="the template")


# ---------------------------------------------------------------------------------------
# tools


def test_the_ten_tools_have_precise_schemas(daemon):
    async def main():
        async with connected(daemon.home) as client:
            assert client.protocol_version == "2025-11-25"
            tools = {t.name: t for t in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        submit = tools["submit-task"].input_schema
        props = submit["properties"]
        assert props["agent"]["anyOf"][0] == {"enum": agents.kinds(), "type": "string"}  # the daemon's kinds
        assert {"enum": ["high", "low", "normal", "urgent"], "type": "string"} in props["priority"]["anyOf"]
        assert {"type": "integer", "minimum": -100, "maximum": 100} in props["priority"]["anyOf"]
        for role in BUILTIN_ROLES:
            assert role in props["role"]["description"] and role in props["role"]["examples"]
        assert str(daemon.home) in props["cwd"]["description"]  # the default cwd is said
        assert submit["additionalProperties"] is False and "$defs" not in json.dumps(submit)
        queue = tools["manage-queue"].input_schema["properties"]
        assert queue["action"]["enum"] == ["list", "prioritize", "remove"]
        statuses = tools["list-processes"].input_schema["properties"]["status"]["items"]["enum"]
        assert set(statuses) == {s.value for s in Status}
        assert tools["process-details"].input_schema["required"] == ["task_id"]
        assert tools["respond-to-process"].input_schema["properties"]["decision"]["anyOf"][0]["enum"] == ["allow", "deny"]
        assert "code-review" in tools["create-workflow"].input_schema["properties"]["template"]["description"]
        assert "max_concurrent" in tools["configure-orchestrator"].input_schema["properties"]["key"]["description"]
        assert "claude" in props["agent"]["description"]
        for tool in tools.values():
            assert tool.output_schema["type"] == "object" and tool.description and tool.title
        assert tools["list-processes"].annotations.read_only_hint is True
        assert tools["stop-process"].annotations.destructive_hint is True

    run(main)


def test_every_tool_against_a_real_daemon(daemon):
    write_template(daemon)
    daemon.call(p.ConfigSet(key="max_concurrent", value=1))
    gate = [sys.executable, "-c", "print('got', input())"]

    async def main():
        async with connected(daemon.home) as client:
            first = (await call(client, "submit-task", command=gate, title="gate")).structured_content["task"]
            assert first["status"] in ("queued", "running") and first["cwd"] == str(daemon.home)
            second = await call(client, "submit-task", command=["echo", "two"], priority="high", after=[first["id"]], role="tester")
            assert second.structured_content["task"]["priority"] == 10 and "queued task 2" in text(second)
            third = await call(client, "submit-task", command=["echo", "three"], priority=-5)
            await anyio.to_thread.run_sync(lambda: daemon.wait_status(1, Status.RUNNING))

            listed = await call(client, "list-processes", active_only=True)
            assert [t["id"] for t in listed.structured_content["tasks"]] == [3, 2, 1]  # newest first
            assert "gate" in text(listed) and "STATUS" in text(listed)
            only = await call(client, "list-processes", status=["queued"], role="tester")
            assert [t["id"] for t in only.structured_content["tasks"]] == [2]

            queue = await call(client, "manage-queue")
            assert [t["id"] for t in queue.structured_content["queue"]] == [2, 3]
            raised = await call(client, "manage-queue", action="prioritize", task_id=3, priority="urgent")
            assert raised.structured_content["task"]["priority"] == 20
            assert [t["id"] for t in raised.structured_content["queue"]] == [3, 2]

            moved = await call(client, "assign-role", task_id=3, role="reviewer")
            assert moved.structured_content["task"]["role"] == "reviewer" and "will run as reviewer" in text(moved)

            stopped = await call(client, "stop-process", task_id=3)
            assert stopped.structured_content["task"]["status"] == "cancelled"

            answered = await call(client, "respond-to-process", task_id=1, answer="hello")
            assert answered.structured_content["answer"] == "hello"
            await anyio.to_thread.run_sync(lambda: daemon.wait_status(2, Status.SUCCEEDED))
            details = await call(client, "process-details", task_id=1)
            assert details.structured_content["task"]["status"] == "succeeded"
            assert details.structured_content["log_tail"] == "got hello\n" and "got hello" in text(details)

            settings = await call(client, "configure-orchestrator")
            assert settings.structured_content["settings"]["max_concurrent"] == 1
            kinds = {a["name"]: a for a in settings.structured_content["agents"]}  # the agent kinds, as `orchestra agents` lists them
            assert kinds["command"]["usable"] is True and "claude" in kinds
            assert "USABLE" in text(settings) and "command" in text(settings)
            changed = await call(client, "configure-orchestrator", key="max_concurrent", value=3)
            assert changed.structured_content == {"settings": {"max_concurrent": 3}} and text(changed) == "max_concurrent = 3"
            one = await call(client, "configure-orchestrator", key="default_role")
            assert one.structured_content["settings"] == {"default_role": "generalist"}

            workflow = (await call(client, "create-workflow", template="pair", goal="count")).structured_content["workflow"]
            assert list(workflow["steps"]) == ["first", "second"] and len(workflow["tasks"]) == 2
            await anyio.to_thread.run_sync(lambda: daemon.wait_status(workflow["steps"]["second"], Status.SUCCEEDED))
            assert daemon.output_of(workflow["steps"]["second"]) == b"two: one\n"

            dashboard = await call(client, "status-dashboard")
            picture = dashboard.structured_content["dashboard"]
            assert picture == text(dashboard)
            assert "FINISHED" in picture and "WORKFLOWS (1)" in picture and "pair" in picture
            assert dashboard.structured_content["counts"] == {"succeeded": 4, "cancelled": 1}
            assert third.structured_content["task"]["id"] == 3

    run(main)


def test_task_diff_shows_a_worktree_task_s_changes_and_a_plain_task_s_error(daemon):
    from tests.gitrepo import make_repo

    repo = make_repo(daemon.home / "repo")
    changed = daemon.submit("sh", "-c", "echo more >> README; echo new > added.txt", cwd=str(repo), worktree=True, title="edit")
    plain = daemon.submit("true")
    daemon.wait_status(changed, Status.SUCCEEDED)
    daemon.wait_status(plain, Status.SUCCEEDED)

    async def main():
        async with connected(daemon.home) as client:
            full = await call(client, "task-diff", task_id=changed)
            diff = full.structured_content["diff"]
            assert (diff["files"], diff["insertions"], diff["deletions"]) == (2, 2, 0)
            assert "+more" in diff["diff"] and "+new" in text(full) and "2 files, +2 -0" in text(full)
            stat = await call(client, "task-diff", task_id=changed, stat=True)
            assert stat.structured_content["diff"]["diff"] == "" and "added.txt | 1 +" in text(stat)
            refused = await client.call_tool("task-diff", {"task_id": plain})
            assert refused.is_error and "did not work in a git worktree" in text(refused)

    run(main)


def test_daemon_errors_and_bad_arguments_are_tool_errors_and_the_server_carries_on(daemon):
    async def main():
        async with connected(daemon.home) as client:
            missing = await client.call_tool("process-details", {"task_id": 99})
            assert missing.is_error and text(missing) == "no task 99; `orchestra ps` lists tasks"
            for tool, arguments, words in [
                ("process-details", {"task_id": "x"}, "Expected `int`, got `str` - at `$.task_id`"),
                ("stop-process", {}, "missing required field `task_id`"),
                ("submit-task", {"command": ["true"], "colour": "red"}, "unknown field `colour`"),
                ("submit-task", {"command": ["true"], "priority": "soonish"}, "$.priority"),
                ("submit-task", {"command": ["true"], "priority": 500}, "$.priority"),
                ("manage-queue", {"action": "shuffle"}, "$.action"),
            ]:
                result = await client.call_tool(tool, arguments)
                assert result.is_error and f"invalid arguments for {tool}" in text(result) and words in text(result), text(result)
            bad_role = await client.call_tool("submit-task", {"command": ["true"], "role": "chef"})
            assert bad_role.is_error and "chef" in text(bad_role)
            bad_setting = await client.call_tool("configure-orchestrator", {"key": "max_concurrent", "value": 0})
            assert bad_setting.is_error and "at least 1" in text(bad_setting)
            no_key = await client.call_tool("manage-queue", {"action": "remove"})
            assert no_key.is_error and "needs task_id" in text(no_key)
            relative = await client.call_tool("submit-task", {"command": ["true"], "cwd": "src"})
            assert relative.is_error and "absolute path" in text(relative)
            with pytest.raises(MCPError, match="unknown tool 'launch-rocket'"):
                await client.call_tool("launch-rocket", {})
            with pytest.raises(MCPError, match="no task 42"):
                await client.read_resource("orchestra://tasks/42/logs")
            with pytest.raises(MCPError, match="no resource orchestra://nowhere"):
                await client.read_resource("orchestra://nowhere")
            assert (await call(client, "list-processes")).structured_content == {"tasks": [], "total": 0, "next_cursor": None}

    run(main)


def test_respond_with_only_a_task_id_to_a_running_command_says_to_give_a_line(daemon):
    async def main():
        async with connected(daemon.home) as client:
            await call(client, "submit-task", command=["sleep", "30"])
            await anyio.to_thread.run_sync(lambda: daemon.wait_status(1, Status.RUNNING))
            running = await client.call_tool("respond-to-process", {"task_id": 1})
            assert running.is_error and "running command; give answer" in text(running)
            await call(client, "stop-process", task_id=1)

    run(main)


def test_review_task_shows_a_task_in_review_then_approves_it(daemon):
    other = daemon.submit("true", review=True)
    daemon.wait_status(other, Status.REVIEW)

    async def main():
        async with connected(daemon.home) as client:
            submitted = await call(client, "submit-task", command=["echo", "my summary"], checks=["echo checked"], review=True)
            task = submitted.structured_content["task"]["id"]
            await anyio.to_thread.run_sync(lambda: daemon.wait_status(task, Status.REVIEW))
            shown = await call(client, "review-task", task_id=task)
            assert shown.structured_content["decision"] == "" and shown.structured_content["task"]["status"] == "review"
            assert "summary    my summary" in text(shown) and "1. echo checked: passed" in text(shown)
            no_message = await client.call_tool("review-task", {"task_id": other, "decision": "reject"})
            assert no_message.is_error and "reject needs a message" in text(no_message)
            approved = await call(client, "review-task", task_id=task, decision="approve")
            assert text(approved) == f"approved task {task}; it is succeeded"
            rejected = await call(client, "review-task", task_id=other, decision="reject", message="not this way")
            assert rejected.structured_content["task"]["status"] == "failed"  # a command cannot be told: it fails

        return task

    task = run(main)
    assert daemon.task(task).reviews[0].by == "a person (mcp)"
    assert daemon.task(other).reason == "rejected in review by a person (mcp): not this way"


# ---------------------------------------------------------------------------------------
# resources


def test_resources_are_listed_and_read(daemon):
    task = daemon.submit("echo", "hi", title="greet")
    daemon.wait_status(task, Status.SUCCEEDED)

    async def main():
        async with connected(daemon.home) as client:
            resources = {r.name: r for r in (await client.list_resources()).resources}
            assert {n: r.uri for n, r in resources.items()} == {
                "orchestration-status": "orchestra://status",
                "role-definitions": "orchestra://roles",
                "workflow-templates": "orchestra://workflows",
            }
            [template] = (await client.list_resource_templates()).resource_templates
            assert (template.name, template.uri_template) == ("process-logs", "orchestra://tasks/{task_id}/logs")

            status = json.loads((await client.read_resource("orchestra://status")).contents[0].text)
            assert status["daemon"]["pid"] == daemon.proc.pid and status["counts"] == {"succeeded": 1}
            assert status["waiting"] == [] and status["queue"] == []
            roles = json.loads((await client.read_resource("orchestra://roles")).contents[0].text)
            assert set(BUILTIN_ROLES) <= {r["name"] for r in roles["roles"]}
            templates = json.loads((await client.read_resource("orchestra://workflows")).contents[0].text)
            assert {"code-review", "feature-development", "bug-fix", "refactoring"} <= {t["name"] for t in templates["templates"]}
            logs = (await client.read_resource(f"orchestra://tasks/{task}/logs")).contents[0]
            assert (logs.text, logs.mime_type) == ("hi\n", "text/plain")

    run(main)


# ---------------------------------------------------------------------------------------
# the 2026-07-28 era


def test_a_2026_client_gets_the_same_tools_and_resources(daemon):
    async def main():
        async with connected(daemon.home, mode="auto") as client:
            assert client.protocol_version == "2026-07-28"
            assert {t.name for t in (await client.list_tools()).tools} == TOOLS
            submitted = await call(client, "submit-task", command=["echo", "modern"])
            task = submitted.structured_content["task"]["id"]
            await anyio.to_thread.run_sync(lambda: daemon.wait_status(task, Status.SUCCEEDED))
            logs = await client.read_resource(f"orchestra://tasks/{task}/logs")
            assert logs.contents[0].text == "modern\n"
            missing = await client.call_tool("stop-process", {"task_id": 7})
            assert missing.is_error and "no task 7" in text(missing)

    run(main)


# ---------------------------------------------------------------------------------------
# starting the daemon


def test_the_server_starts_a_daemon_when_none_answers():
    d = Daemon()
    try:
        async def main():
            async with connected(d.home, autostart=True) as client:
                result = await call(client, "list-processes")
                assert result.structured_content == {"tasks": [], "total": 0, "next_cursor": None}

        run(main)
        assert "no daemon was running; starting one" in (d.home / "mcp.err").read_text()
        with d.connect() as conn:  # the daemon outlives the server, as with any client
            info = conn.call(p.Info(), p.DaemonStatus)
            conn.call(p.Shutdown())
        wait_for(lambda: not _alive(info.pid), what="the daemon to stop")
    finally:
        d.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours (never, here: the daemon is not our child) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def test_without_a_daemon_and_without_autostart_tools_say_how_to_start_one():
    home = Path(tempfile.mkdtemp(prefix="orc-"))

    async def main():
        async with connected(home) as client:
            result = await client.call_tool("list-processes", {})
            assert result.is_error and "no daemon is listening" in text(result) and "orchestra daemon start" in text(result)

    try:
        run(main)
    finally:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# notifications: a task starts waiting


def test_a_waiting_task_is_announced_to_subscribers_and_in_the_log():
    with claude_team(reply.tool_use("Bash", WRITE_FILE), reply.text("done")) as (daemon, api):
        async def main():
            updated: dict[str, anyio.Event] = {"orchestra://status": anyio.Event(), "orchestra://tasks/1/logs": anyio.Event()}
            logged: list[types.LoggingMessageNotificationParams] = []
            got_log = anyio.Event()

            async def on_message(message):
                if isinstance(message, types.ResourceUpdatedNotification) and message.params.uri in updated:
                    updated[message.params.uri].set()

            async def on_log(params):
                logged.append(params)
                got_log.set()

            async with connected(daemon.home, message_handler=on_message, logging_callback=on_log) as client:
                await subscribe(client, "orchestra://status")
                await subscribe(client, "orchestra://tasks/1/logs")
                await call(client, "submit-task", prompt="write out.txt", agent="claude")
                with anyio.fail_after(30):
                    await got_log.wait()
                    for event in updated.values():
                        await event.wait()
                [notice] = logged
                assert notice.level == "warning" and notice.logger == "orchestra"
                assert "Task 1 (generalist: write out.txt) is waiting for permission: Bash: /bin/echo hi > out.txt" in notice.data
                assert "respond-to-process" in notice.data and "orchestra respond 1 --allow" in notice.data
                waiting = (await call(client, "list-processes", status=["waiting"])).structured_content["tasks"]
                assert waiting[0]["waiting"]["kind"] == "permission"
                await call(client, "respond-to-process", task_id=1, decision="allow")
            assert daemon.wait_status(1, *p.FINISHED, timeout=30).status is Status.SUCCEEDED
            assert (daemon.home / "out.txt").read_text() == "hi\n"

        run(main)


def test_a_2026_client_hears_of_a_waiting_task_on_its_listen_stream():
    with claude_team(reply.tool_use("Bash", WRITE_FILE), reply.text("done")) as (daemon, api):
        async def main():
            async with connected(daemon.home, mode="auto") as client:
                wanted = {"orchestra://status", "orchestra://tasks/1/logs"}
                async with client.listen(resource_subscriptions=sorted(wanted)) as subscription:
                    await call(client, "submit-task", prompt="write out.txt", agent="claude")
                    seen: set[str] = set()
                    with anyio.fail_after(30):
                        async for event in subscription:
                            seen.add(event.uri)
                            if seen == wanted:
                                break
                status = json.loads((await client.read_resource("orchestra://status")).contents[0].text)
                assert [t["id"] for t in status["waiting"]] == [1]
                await call(client, "respond-to-process", task_id=1, decision="deny", message="not now")
            assert daemon.wait_status(1, *p.FINISHED, timeout=30).status is Status.SUCCEEDED
            assert not (daemon.home / "out.txt").exists()

        run(main)


# ---------------------------------------------------------------------------------------
# elicitation: respond-to-process with only a task id asks the person


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_elicitation_puts_the_question_to_the_person_and_passes_the_answer_on(mode):
    with claude_team(reply.tool_use("AskUserQuestion", ASK_COLOR), reply.text("done")) as (daemon, api):
        async def main():
            asked: list[types.ElicitRequestFormParams] = []

            async def elicit(context, params):
                asked.append(params)
                return types.ElicitResult(action="accept", content={"choice": "Blue"})

            async with connected(daemon.home, mode=mode, elicitation_callback=elicit) as client:
                await call(client, "submit-task", prompt="pick a color", agent="claude")
                await anyio.to_thread.run_sync(lambda: daemon.wait_status(1, Status.WAITING, timeout=30))
                result = await call(client, "respond-to-process", task_id=1)
                assert result.structured_content["answered"] is True and result.structured_content["answer"] == "Blue"
            [form] = asked
            assert "Which color should the button be?" in form.message
            assert form.requested_schema["properties"]["choice"]["enum"] == ["Red", "Blue"]
            assert "answer" in form.requested_schema["properties"]  # free text beside the options
            assert daemon.wait_status(1, *p.FINISHED, timeout=30).status is Status.SUCCEEDED
            answers = [b["content"] for r in api.turn_requests[1:] for b in r.tool_results()]
            assert answers == ['Your questions have been answered: "Which color should the button be?"="Blue". You can now continue with these answers in mind.']

        run(main)


def test_elicitation_of_a_permission_can_deny_with_a_message_or_be_declined():
    with claude_team(reply.tool_use("Bash", WRITE_FILE), reply.text("done")) as (daemon, api):
        async def main():
            replies = [types.ElicitResult(action="decline"), types.ElicitResult(action="accept", content={"decision": "deny", "message": "use a temp dir"})]
            forms: list[types.ElicitRequestFormParams] = []

            async def elicit(context, params):
                forms.append(params)
                return replies.pop(0)

            async with connected(daemon.home, elicitation_callback=elicit) as client:
                await call(client, "submit-task", prompt="write out.txt", agent="claude")
                await anyio.to_thread.run_sync(lambda: daemon.wait_status(1, Status.WAITING, timeout=30))
                declined = await call(client, "respond-to-process", task_id=1)
                assert declined.structured_content["answered"] is False and "still waiting" in text(declined)
                denied = await call(client, "respond-to-process", task_id=1)
                assert denied.structured_content["answer"] == "deny: use a temp dir"
            assert forms[0].requested_schema["properties"]["decision"]["enum"] == ["allow", "deny"]
            assert "asks permission to use Bash" in forms[0].message and "/bin/echo hi > out.txt" in forms[0].message
            assert daemon.wait_status(1, *p.FINISHED, timeout=30).status is Status.SUCCEEDED
            results = [b for r in api.turn_requests[1:] for b in r.tool_results()]
            assert results[0]["is_error"] is True and "use a temp dir" in json.dumps(results[0]["content"])
            assert not (daemon.home / "out.txt").exists()

        run(main)


def test_a_task_paused_on_its_budget_is_raised_through_a_form_or_with_budget_usd():
    with claude_team(reply.text("one"), reply.text("two"), reply.text("three"), reply.text("four")) as (daemon, api):
        async def main():
            forms: list[types.ElicitRequestFormParams] = []

            async def elicit(context, params):
                forms.append(params)
                return types.ElicitResult(action="accept", content={"budget": 0.5})

            async with connected(daemon.home, elicitation_callback=elicit) as client:
                for task in (1, 2):  # each spends its scripted turn's $0.001, past its budget
                    await call(client, "submit-task", prompt=f"task {task}", agent="claude", budget_usd=0.0005)
                    await anyio.to_thread.run_sync(lambda: daemon.wait_status(task, Status.WAITING, timeout=30))
                no_words = await client.call_tool("respond-to-process", {"task_id": 1, "answer": "go on"})
                assert no_words.is_error and "--budget N" in text(no_words)
                asked = await call(client, "respond-to-process", task_id=1)
                assert asked.structured_content["answer"] == "budget raised to $0.50"
                direct = await call(client, "respond-to-process", task_id=2, budget_usd=0.25)
                assert "budget raised to $0.25" in text(direct)
            [form] = forms
            assert "is paused:\ntask 1 spent $0.0010 of its $0.0005 budget" in form.message
            assert form.requested_schema["properties"]["budget"]["type"] == "number"
            for task, budget in ((1, 0.5), (2, 0.25)):
                done = daemon.wait_status(task, *p.FINISHED, timeout=30)
                assert done.status is Status.SUCCEEDED and done.budget_usd == budget and done.attempts == 2

        run(main)


def test_a_question_pending_before_the_client_came_is_announced_and_without_elicitation_quoted():
    with claude_team(reply.tool_use("AskUserQuestion", ASK_COLOR), reply.text("done")) as (daemon, api):
        daemon.call(p.Submit(cwd=str(daemon.home), prompt="pick a color", agent="claude"))
        daemon.wait_status(1, Status.WAITING, timeout=30)

        async def main():
            notices: list[str] = []
            noticed = anyio.Event()

            async def on_log(params):
                notices.append(params.data)
                noticed.set()

            async with connected(daemon.home, logging_callback=on_log) as client:
                with anyio.fail_after(15):
                    await noticed.wait()
                assert notices == ["Task 1 (generalist: pick a color) is waiting for an answer: Which color should the button be? "
                                   "[1. Red / 2. Blue]. Answer with respond-to-process (task_id 1, answer: an option number, the "
                                   "option or your own words; with only task_id the user is asked), or in a terminal: "
                                   "orchestra respond 1 ANSWER."]
                result = await client.call_tool("respond-to-process", {"task_id": 1})
                assert result.is_error
                assert "Which color should the button be? [1. Red / 2. Blue]" in text(result) and "cannot show the user a form" in text(result)
                await call(client, "respond-to-process", task_id=1, answer="2")
            assert daemon.wait_status(1, *p.FINISHED, timeout=30).status is Status.SUCCEEDED
            assert '="Blue"' in "".join(b["content"] for r in api.turn_requests[1:] for b in r.tool_results())

        run(main)


# ---------------------------------------------------------------------------------------
# the MCP Inspector's CLI


def inspector(daemon: Daemon, *method: str) -> dict:
    assert INSPECTOR.exists(), f"the MCP Inspector is not installed; from the repository root run:\n    {INSPECTOR_INSTALL}"
    result = subprocess.run([str(INSPECTOR), "--cli", *server_argv(daemon.home), *method],
                            capture_output=True, text=True, timeout=60, env=daemon.env)
    assert result.returncode == 0, f"inspector failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_the_mcp_inspector_lists_and_calls_the_tools(daemon):
    daemon.submit("echo", "hi", title="greet")
    listed = inspector(daemon, "--method", "tools/list")
    assert {t["name"] for t in listed["tools"]} == TOOLS
    called = inspector(daemon, "--method", "tools/call", "--tool-name", "list-processes")
    assert called["isError"] is False
    assert [t["title"] for t in called["structuredContent"]["tasks"]] == ["greet"] and "greet" in called["content"][0]["text"]


# ---------------------------------------------------------------------------------------
# the real Claude Code CLI as the MCP client


def claude_code_env(api: ScriptedAPI) -> dict[str, str]:
    """In print mode with stream-json input Claude Code does not wait for MCP servers unless
    told to: without this its first request may go out before orchestra's tools are listed."""
    return api.env(MCP_CONNECTION_NONBLOCKING="0", MCP_TIMEOUT="30000", MCP_CONNECT_TIMEOUT_MS="30000")


def claude_code_config(daemon: Daemon) -> Path:
    config = daemon.home / "mcp.json"
    server = {"command": sys.executable, "args": server_argv(daemon.home)[1:], "env": {"ORCHESTRA_NO_AUTOSTART": "1"}}
    config.write_text(json.dumps({"mcpServers": {"orchestra": server}}))
    return config


def test_claude_code_submits_a_task_through_the_server(daemon):
    if not find_claude():
        pytest.fail(INSTALL_HINT, pytrace=False)
    arguments = {"command": ["echo", "from claude code"], "title": "via claude code"}
    with ScriptedAPI([reply.tool_use("mcp__orchestra__submit-task", arguments), reply.text("Submitted.")]) as api:
        work = daemon.home / "work"
        work.mkdir()
        result = run_claude(api, "queue an echo", cwd=work, timeout=60, env=claude_code_env(api), args=[
            "--mcp-config", str(claude_code_config(daemon)), "--strict-mcp-config",
            "--allowed-tools", "mcp__orchestra__submit-task",
        ])
        assert result.returncode == 0, result.stderr
        assert {"name": "orchestra", "status": "connected"} in result.init["mcp_servers"]
        names = api.turn_requests[0].tool_names
        assert sorted(n for n in names if n.startswith("mcp__orchestra__")) == sorted(f"mcp__orchestra__{t}" for t in TOOLS)
        [tool_result] = api.turn_requests[1].tool_results()
        assert not tool_result.get("is_error")
        content = tool_result["content"]  # Claude Code gives the model the structured content, as JSON
        content = content if isinstance(content, str) else "".join(block.get("text", "") for block in content)
        assert json.loads(content)["task"]["title"] == "via claude code"
        assert result.result["result"] == "Submitted."
    [task] = daemon.tasks()
    assert (task.title, task.argv, task.cwd) == ("via claude code", ["echo", "from claude code"], str(work))
    assert daemon.wait_status(task.id, Status.SUCCEEDED).result == "from claude code"


def test_claude_code_passes_the_elicitation_to_its_host():
    """In print mode Claude Code hands an MCP elicitation to its SDK host as a control request
    (subtype "elicitation"); the host's answer reaches the waiting task."""
    with claude_team(reply.tool_use("AskUserQuestion", ASK_COLOR), reply.text("done")) as (daemon, inner):
        daemon.call(p.Submit(cwd=str(daemon.home), prompt="pick a color", agent="claude"))
        daemon.wait_status(1, Status.WAITING, timeout=30)
        asked: list[dict] = []

        def on_message(message: dict, send) -> None:
            request = message.get("request") or {}
            if message.get("type") == "control_request" and request.get("subtype") == "elicitation":
                asked.append(request)
                send({"type": "control_response", "response": {"subtype": "success", "request_id": message["request_id"],
                                                                "response": {"action": "accept", "content": {"choice": "Red"}}}})

        with ScriptedAPI([reply.tool_use("mcp__orchestra__respond-to-process", {"task_id": 1}), reply.text("Asked.")]) as outer:
            work = daemon.home / "work"
            work.mkdir()
            result = run_claude(outer, "ask the user", cwd=work, timeout=60, on_message=on_message, env=claude_code_env(outer), args=[
                "--mcp-config", str(claude_code_config(daemon)), "--strict-mcp-config",
                "--allowed-tools", "mcp__orchestra__respond-to-process",
            ])
            assert result.returncode == 0, result.stderr
        [request] = asked
        assert request["mcp_server_name"] == "orchestra" and "Which color should the button be?" in request["message"]
        assert daemon.wait_status(1, *p.FINISHED, timeout=30).status is Status.SUCCEEDED
        assert '=\\"Red\\"' in json.dumps([b["content"] for r in inner.turn_requests[1:] for b in r.tool_results()])


def test_submit_task_and_create_workflow_choose_where_tasks_run(daemon):
    async def main():
        async with connected(daemon.home) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            for name in ("submit-task", "create-workflow"):
                assert tools[name].input_schema["properties"]["executor"]["anyOf"][0]["enum"] == ["local", "ray"], tools[name].input_schema["properties"]["executor"]
            refused = await client.call_tool("submit-task", {"command": ["true"], "executor": "ray", "node_labels": ["gpu"]})
            assert refused.is_error and "no Ray cluster is set" in text(refused) and "ray_address" in text(refused)
            local = await call(client, "submit-task", command=["true"], executor="local")
            assert local.structured_content["task"]["executor"] == "local"

    run(main)


def test_one_client_is_one_client_however_many_requests_it_sends():
    """The SDK gives each request a session object of its own: a client that initialized,
    subscribed twice and set its log level is still told of a question once."""
    from orchestra.mcp.notify import Notifier

    class Connection:
        pass

    class Session:
        def __init__(self, connection):
            self._connection = connection
            self.sent = []

        async def send_notification(self, notification):
            self.sent.append(notification)

    async def main():
        notifier = Notifier(daemon=None)
        one, two = Connection(), Connection()
        sessions = [Session(one) for _ in range(4)] + [Session(two)]
        for s in sessions:
            notifier.client(s)
        assert len(notifier.clients) == 2
        view = p.TaskView(id=1, status=Status.WAITING, role="r", agent="claude", priority=0, after=[], title="t", prompt="",
                          argv=[], cwd="/", submitted_at=0.0,
                          waiting=p.Question(request_id="q1", kind="permission", prompt="Bash: ls"))
        await notifier.on_view(view)
        await notifier.on_view(view)
        assert sum(len(s.sent) for s in sessions[:4]) == 1 and len(sessions[4].sent) == 1

    run(main)
