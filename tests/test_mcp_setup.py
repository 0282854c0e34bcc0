"""The MCP set-up the README gives, run as far as it can be here: the Claude Desktop entry
(its command and args, started by an MCP client exactly as Desktop would), and the
`claude mcp add` command (run with the real Claude Code CLI, then `claude mcp list`, which
starts the server and checks that it answers)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.scripted_api import INSTALL_HINT, ScriptedAPI, find_claude

README = Path(__file__).resolve().parent.parent / "README.md"
ORCHESTRA = str(Path(sys.executable).parent / "orchestra")
EXAMPLE = "/home/me/orchestra/.venv/bin/orchestra"


def readme_block(after: str, lang: str) -> str:
    section = README.read_text().split(after, 1)[1]
    return re.search(rf"```{lang}\n(.*?)\n```", section, re.S).group(1)


def test_the_claude_desktop_entry_starts_a_working_server(daemon):
    config = json.loads(readme_block("Claude Desktop (", "json").replace(EXAMPLE, ORCHESTRA))
    entry = config["mcpServers"]["orchestra"]
    assert Path(entry["command"]).name == "orchestra" and entry["args"] == ["mcp"]

    async def tools() -> list[str]:
        params = StdioServerParameters(command=entry["command"], args=entry["args"], env={"ORCHESTRA_HOME": str(daemon.home)})
        with open(daemon.home / "desktop.err", "a") as err:
            async with Client(stdio_client(params, errlog=err), mode="legacy") as client:
                return [t.name for t in (await client.list_tools()).tools]

    assert "submit-task" in anyio.run(tools)


def test_claude_mcp_add_registers_a_server_that_connects(daemon):
    claude = find_claude()
    if claude is None:
        pytest.fail(INSTALL_HINT)
    command = readme_block("Claude Code, from the project", "").replace(EXAMPLE, ORCHESTRA)
    assert command.startswith("claude mcp add orchestra -- ")
    with ScriptedAPI() as api:
        env = api.env()
        env["ORCHESTRA_HOME"] = str(daemon.home)
        argv = [claude, *command.split()[1:]]
        added = subprocess.run(argv, env=env, cwd=daemon.home, capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stdout + added.stderr
        listed = subprocess.run([claude, "mcp", "list"], env=env, cwd=daemon.home, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        line = next(x for x in listed.stdout.splitlines() if x.startswith("orchestra"))
        assert ORCHESTRA in line and "Connected" in line, listed.stdout
