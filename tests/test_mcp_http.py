"""`orchestra mcp --http`: the MCP server over streamable HTTP, as a subprocess on a real
loopback port against a real daemon, driven by the MCP SDK's own HTTP client in both
protocol eras; requests without the bearer token, with a foreign Host header or from a
foreign origin are refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import asynccontextmanager, contextmanager

import anyio
import mcp_types as types
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import wait_for
from tests.test_mcp import TOOLS, call, subscribe, text

TOKEN = "test-token-" + "x" * 24


@contextmanager
def http_server(daemon, *args: str, token: str | None = TOKEN):
    """`orchestra mcp --http 127.0.0.1:0` for `daemon`; yields its URL once it listens."""
    env = {**daemon.env}
    env.pop("ORCHESTRA_MCP_TOKEN", None)
    if token is not None:
        env["ORCHESTRA_MCP_TOKEN"] = token
    # The child writes to a file of its own opening, appending: one the test also read and
    # seeked would share its offset, and a seek back to 0 made the child's next line
    # overwrite the address line, which then never showed (seen as a server "too slow").
    errors = daemon.home / "mcp-http.err"
    with open(errors, "ab") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "orchestra", "mcp", "--http", "127.0.0.1:0", *args],
                                env=env, stderr=sink, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        def url():
            found = re.search(r"at (http://\S+/mcp)", errors.read_text())
            assert proc.poll() is None, errors.read_text()
            return found and found.group(1)

        yield wait_for(url, 60, "the server listening")  # a loaded CI machine imports slowly
    finally:
        proc.terminate()
        proc.wait(10)


@asynccontextmanager
async def http_client(url: str, *, mode: str = "legacy", token: str = TOKEN):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


def post(url: str, body: bytes = b"{}", **headers: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


INIT = (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}')


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_the_same_tools_and_resources_over_http_in_both_eras(daemon, mode):
    with http_server(daemon) as url:
        async def main():
            async with http_client(url, mode=mode) as client:
                assert {t.name for t in (await client.list_tools()).tools} == TOOLS
                task = (await call(client, "submit-task", command=["echo", "over http"])).structured_content["task"]["id"]
                await anyio.to_thread.run_sync(lambda: daemon.wait_status(task, Status.SUCCEEDED))
                details = await call(client, "process-details", task_id=task)
                assert "over http" in text(details)
                found = (await call(client, "list-processes", grep="OVER HTTP", since_seconds=600)).structured_content["tasks"]
                assert [t["id"] for t in found] == [task]
                assert (await call(client, "list-processes", grep="elsewhere")).structured_content["tasks"] == []
                status = json.loads((await client.read_resource("orchestra://status")).contents[0].text)
                assert status["counts"].get("succeeded") == 1
                logs = types.ResourceTemplateReference(uri="orchestra://tasks/{task_id}/logs")
                offered = (await client.complete(logs, {"name": "task_id", "value": str(task)})).completion
                assert offered.values == [str(task)]
                assert (await client.complete(logs, {"name": "task_id", "value": "9"})).completion.values == []

        anyio.run(main)


def test_two_clients_at_once_each_hear_of_a_task_that_waits(daemon):
    with http_server(daemon) as url:
        async def main():
            heard: dict[str, anyio.Event] = {"one": anyio.Event(), "two": anyio.Event()}

            def handler(name):
                async def on_message(message):
                    if "resources/updated" in repr(message) or "ResourceUpdated" in type(message).__name__:
                        heard[name].set()
                return on_message

            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as http:
                async with Client(streamable_http_client(url, http_client=http), mode="legacy",
                                  message_handler=handler("one")) as one, \
                        Client(streamable_http_client(url, http_client=http), mode="legacy",
                               message_handler=handler("two")) as two:
                    await subscribe(one, "orchestra://status")
                    await subscribe(two, "orchestra://status")
                    task = await anyio.to_thread.run_sync(lambda: daemon.submit("sh", "-c", "read x"))
                    with anyio.fail_after(20):
                        await heard["one"].wait()
                        await heard["two"].wait()
                    await anyio.to_thread.run_sync(lambda: daemon.cli("stop", str(task)))

        anyio.run(main)


def test_without_the_token_a_foreign_host_or_a_foreign_origin_it_is_refused(daemon):
    with http_server(daemon) as url:
        status, body = post(url, INIT)
        assert status == 401 and "bearer token is required" in body
        status, _ = post(url, INIT, Authorization="Bearer wrong-" + "y" * 24)
        assert status == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert post(url, INIT, **auth)[0] == 200
        port = url.split(":")[2].split("/")[0]
        status, _ = post(url, INIT, Host=f"attacker.example:{port}", **auth)  # DNS rebinding
        assert status in (403, 421)
        status, _ = post(url, INIT, Origin="http://attacker.example", **auth)
        assert status == 403


def test_a_random_token_is_printed_when_none_is_given_and_other_addresses_are_refused(daemon):
    with http_server(daemon, token=None) as url:
        printed = re.search(r"Authorization: Bearer (\S+)", (daemon.home / "mcp-http.err").read_text()).group(1)
        assert len(printed) >= 32 and post(url, INIT)[0] == 401
        assert post(url, INIT, Authorization=f"Bearer {printed}")[0] == 200
    refused = subprocess.run([sys.executable, "-m", "orchestra", "mcp", "--http", "0.0.0.0:0"],
                             env=daemon.env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr
    short = subprocess.run([sys.executable, "-m", "orchestra", "mcp", "--http", "127.0.0.1:0"],
                           env={**daemon.env, "ORCHESTRA_MCP_TOKEN": "short"}, capture_output=True, text=True, timeout=30)
    assert short.returncode == 2 and "shorter than 16" in short.stderr
    assert os.environ.get("ORCHESTRA_MCP_TOKEN") is None


AGENT_CALL = """
import json, sys, urllib.request
url, token, task = sys.argv[1], sys.argv[2], int(sys.argv[3])
session = None

def post(message):
    global session
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    if session:
        headers["Mcp-Session-Id"] = session
    with urllib.request.urlopen(urllib.request.Request(url, data=json.dumps(message).encode(), headers=headers), timeout=20) as got:
        session = got.headers.get("mcp-session-id") or session
        body = got.read().decode()
    datas = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    return json.loads(datas[-1]) if datas else (json.loads(body) if body.strip() else None)

post({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {},
      "clientInfo": {"name": "agent", "version": "1"}}})
post({"jsonrpc": "2.0", "method": "notifications/initialized"})
print(json.dumps(post({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "stop-process", "arguments": {"task_id": task}}})))
"""


def test_an_agent_that_holds_the_token_still_cannot_act_for_the_person(daemon):
    """The server finds the process behind each tool call (Linux /proc) and the daemon gives
    the call that process's rights: an agent's are its own, not the person's."""
    with http_server(daemon) as url:
        other = daemon.submit("sleep", "60", title="someone else's task")
        daemon.wait_status(other, Status.RUNNING)
        agent = daemon.submit(sys.executable, "-c", AGENT_CALL, url, TOKEN, str(other), title="an agent with the token")
        assert daemon.wait_status(agent, *p.FINISHED).status is Status.SUCCEEDED, daemon.output_of(agent)
        reply = json.loads(daemon.output_of(agent).decode().strip().splitlines()[-1])
        assert reply["result"]["isError"] and "agent" in reply["result"]["content"][0]["text"], reply
        assert daemon.task(other).status is Status.RUNNING  # untouched

        async def main():
            async with http_client(url) as client:  # the same call from the person's own process
                await call(client, "stop-process", task_id=other)

        anyio.run(main)
        assert daemon.wait_status(other, *p.FINISHED).status is Status.CANCELLED


def test_a_session_is_kept_to_the_process_that_opened_it(daemon):
    with http_server(daemon) as url:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        request = urllib.request.Request(url, data=INIT, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **auth})
        with urllib.request.urlopen(request, timeout=10) as got:
            session = got.headers["mcp-session-id"]
        assert session
        ping = b'{"jsonrpc":"2.0","id":2,"method":"ping"}'
        assert post(url, ping, **auth, **{"Mcp-Session-Id": session, "MCP-Protocol-Version": "2025-06-18"})[0] == 200
        other = subprocess.run([sys.executable, "-c", (
            "import sys, urllib.request, urllib.error\n"
            "r = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), method='POST', headers={'Content-Type': "
            "'application/json', 'Accept': 'application/json, text/event-stream', 'Authorization': 'Bearer ' + sys.argv[3], "
            "'Mcp-Session-Id': sys.argv[4], 'MCP-Protocol-Version': '2025-06-18'})\n"
            "try:\n    print(urllib.request.urlopen(r, timeout=10).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n"
        ), url, ping.decode(), TOKEN, session], capture_output=True, text=True, timeout=30)
        assert other.stdout.startswith("403") and "belongs to another process" in other.stdout, other.stdout + other.stderr
