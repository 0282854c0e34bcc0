"""The agent kinds: `orchestra agents` (each kind's CLI, its version, whether it can run),
and roles that name the agent their tasks run on. Real daemon, real CLI; the agent CLIs
here are small scripts that say a version, so that found, missing and signed-out are all
seen."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from orchestra.main import Exit
from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import agents
from tests.daemon import Daemon, claude_daemon, wait_for
from tests.scripted_api import ScriptedAPI, reply

KINDS = ", ".join(agents.kinds())


def fake_cli(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && echo '{version}' && exit 0\nexit 3\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def d(tmp_path):
    daemon = Daemon()
    home = tmp_path / "user"
    home.mkdir()
    # No credential of the machine's reaches this daemon: it sees only what the test gives.
    daemon.env = {k: v for k, v in daemon.env.items() if not k.startswith(("ANTHROPIC_", "CLAUDE_", "OPENAI_", "CODEX_", "GEMINI_", "GOOGLE_"))}
    daemon.env["HOME"] = str(home)
    yield daemon
    daemon.cleanup()


def listed(daemon) -> dict[str, p.AgentView]:
    return {a.name: a for a in daemon.call(p.Agents(), p.AgentList).agents}


def test_every_agent_module_is_a_kind_and_each_says_what_it_runs():
    names = agents.kinds()
    assert {"claude", "command"} <= set(names)
    for name in names:
        kind = agents.kind(name)
        assert kind.name == name and isinstance(kind.program, str)
    with pytest.raises(LookupError):
        agents.kind("nosuch")


def test_agents_lists_each_kind_found_signed_in_or_not_with_what_to_do(d, tmp_path):
    claude = fake_cli(tmp_path / "bin" / "claude", "9.9.9 (Claude Code)")
    d.env["PATH"] = f"{claude.parent}:{os.environ['PATH']}"
    d.start()

    shown = listed(d)
    assert shown["claude"].path == str(claude) and shown["claude"].version == "9.9.9 (Claude Code)"
    assert not shown["claude"].usable and "ANTHROPIC_API_KEY" in shown["claude"].problem  # signed out
    assert shown["claude"].default and "keeps a conversation" in shown["claude"].traits
    assert shown["command"].usable and shown["command"].program == "" and "runs a program" in shown["command"].traits

    # A login's credentials file is being signed in, as is a key in the environment.
    creds = Path(d.env["HOME"]) / ".claude" / ".credentials.json"
    creds.parent.mkdir()
    creds.write_text("{}")
    assert listed(d)["claude"].usable

    # A CLI named where it is not: not found, and the sentence says how to name it.
    d.call(p.ConfigSet(key="agent_paths", value={"claude": str(tmp_path / "nowhere" / "claude")}))
    gone = listed(d)["claude"]
    assert not gone.usable and gone.path == "" and "not found" in gone.problem and "agent_paths" in gone.problem

    out = d.cli("agents")
    assert out.exit_code == 0
    lines = out.output.splitlines()
    assert lines[0].split() == ["AGENT", "USABLE", "VERSION", "CLI"]
    assert any(line.split()[:3] == ["command", "yes", "-"] for line in lines)
    assert any(line.startswith("claude: ") and "not found" in line for line in lines)
    as_json = json.loads(d.cli("agents", "--json").output)
    assert {a["name"] for a in as_json["agents"]} >= {"claude", "command"}


def test_a_version_is_asked_again_only_when_the_cli_changes(d, tmp_path):
    claude = fake_cli(tmp_path / "bin" / "claude", "1.0.0")
    d.start()
    d.call(p.ConfigSet(key="agent_paths", value={"claude": str(claude)}))
    assert listed(d)["claude"].version == "1.0.0"
    fake_cli(claude, "1.0.1 (a newer build)")
    assert listed(d)["claude"].version == "1.0.1 (a newer build)"


def test_agent_paths_names_only_agent_kinds_and_default_agent_must_be_one(d):
    d.start()
    for key, value, says in [
        ("agent_paths", {"nosuch": "/bin/true"}, f"a table of agent kind ({KINDS})"),
        ("default_agent", "gpt", f"one of {KINDS}"),
    ]:
        with pytest.raises(p.OrchestraError) as err:
            d.call(p.ConfigSet(key=key, value=value))
        assert says in err.value.message
    out = d.cli("submit", "--agent", "gpt", "hello")
    assert out.exit_code == Exit.BAD_INPUT and f"unknown agent 'gpt'; choose one of: {KINDS}" in out.output


def test_a_role_names_the_agent_its_tasks_run_on_and_submit_or_a_step_may_name_another(tmp_path):
    with ScriptedAPI() as api:
        api.add(reply.text("Reviewed."))
        d = claude_daemon(api, default_agent="command")
        try:
            roles = d.paths.config / "roles"
            roles.mkdir(parents=True, exist_ok=True)
            (roles / "second-opinion.toml").write_text('description = "reviews"\nprompt = "Review."\nagent = "claude"\n')
            (roles / "broken.toml").write_text('description = "x"\nprompt = "x"\nagent = "nosuch"\n')
            wait_for(lambda: {"second-opinion", "broken"} <= {r.name for r in d.call(p.Roles(), p.RolesResult).roles}, what="the roles to load")

            task = d.call(p.Submit(prompt="review it", role="second-opinion", cwd=str(tmp_path)))
            assert task.agent == "claude"  # the role's, though the default agent is command
            assert d.wait_status(task.id, *p.FINISHED, timeout=60).status is Status.SUCCEEDED
            assert d.task(task.id).result == "Reviewed."

            own = d.call(p.Submit(argv=["true"], role="second-opinion", cwd=str(tmp_path)))
            assert own.agent == "command"  # a program to run is the command agent's, whatever the role says
            with pytest.raises(p.OrchestraError) as err:
                d.call(p.Submit(prompt="x", role="broken", cwd=str(tmp_path)))
            assert f"role 'broken' names agent 'nosuch', which is not an agent kind; choose one of: {KINDS}" in err.value.message
            shown = d.cli("roles", "second-opinion").output
            assert "agent             claude" in shown
        finally:
            d.cleanup()
