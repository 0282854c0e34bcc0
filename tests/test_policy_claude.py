"""The permission policy with the real Claude Code CLI: the daemon answers tool calls a rule
decides, asks a person about the rest, and records who decided each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import Daemon, claude_daemon, wait_for
from tests.scripted_api import ScriptedAPI, reply

FINISHED = tuple(p.FINISHED)


@pytest.fixture(scope="module")
def team():
    """One daemon for the module (each test has its own tasks and directory)."""
    api = ScriptedAPI().start()
    d = claude_daemon(api)
    yield d, api
    d.cleanup()
    api.close()


def submit(d: Daemon, prompt: str, cwd: Path, **kw) -> int:
    return d.call(p.Submit(prompt=prompt, cwd=str(cwd), **kw), p.TaskView).id


def tool_results(api: ScriptedAPI) -> list[str]:
    """What the CLI told the model of its tool calls, in the last turn (which carries the
    whole conversation)."""
    out = []
    for request in api.turn_requests[-1:]:
        for block in request.tool_results():
            content = block.get("content")
            if isinstance(content, list):
                content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            out.append(str(content))
    return out


def test_writes_inside_the_directory_are_allowed_by_rule_and_recorded(team, work):
    d, api = team
    api.add(reply.tool_use("Write", {"file_path": str(work / "app.py"), "content": "x = 1\n"}),
            reply.tool_use("Bash", {"command": "python3 -m pytest -q --co 2>&1 | tail -3", "description": "collect"}),
            reply.text("done"))
    task = submit(d, "write app.py", work, role="implementer")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert (work / "app.py").read_text() == "x = 1\n"
    assert view.decisions_total == 2 and [x.effect for x in view.decisions] == ["allow", "allow"]
    assert view.decisions[0].by == "rule 1 of the built-in implementer role (allow Edit(./**))"
    assert "allow Bash(python3 -m pytest *)" in view.decisions[1].by
    shown = d.cli("show", str(task)).output
    assert "decisions  2 permission decisions" in shown and "by rule 1 of the built-in implementer role" in shown


def test_a_write_outside_the_directory_waits_for_a_person(team, work, tmp_path):
    d, api = team
    outside = tmp_path / "elsewhere.txt"
    api.add(reply.tool_use("Write", {"file_path": str(outside), "content": "no\n"}), reply.text("could not"))
    task = submit(d, "write outside", work, role="implementer")
    view = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert view.status is Status.WAITING and view.waiting.kind == "permission"
    assert view.waiting.prompt.startswith(f"Write: {outside}")
    assert d.cli("respond", str(task), "--deny", "-m", "stay in your directory").exit_code == 0
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED and not outside.exists()
    [decision] = view.decisions
    assert (decision.effect, decision.by, decision.tool) == ("deny", "a person (cli)", "Write")


def test_a_push_asks_naming_the_rule(team, work):
    d, api = team
    api.add(reply.tool_use("Bash", {"command": "git push origin main", "description": "push"}), reply.text("not pushed"))
    task = submit(d, "push it", work, role="implementer")
    view = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert view.status is Status.WAITING
    assert "git push origin main" in view.waiting.prompt and "(ask Bash(git push *)) asks]" in view.waiting.prompt
    d.cli("respond", str(task), "--deny")
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED


def test_secrets_are_denied_even_where_the_cli_would_not_ask(team, work):
    """Reading ~/.ssh: with the Read tool, and with `cat`, a read-only command Claude Code
    runs without asking; the policy's hook sees it first."""
    d, api = team
    ssh = Path(d.env["HOME"]) / ".ssh"
    ssh.mkdir(exist_ok=True)
    (ssh / "id_rsa").write_text("SECRET KEY\n")
    api.add(reply.tool_use("Read", {"file_path": str(ssh / "id_rsa")}),
            reply.tool_use("Bash", {"command": "cat ~/.ssh/id_rsa", "description": "read the key"}),
            reply.text("no luck"))
    task = submit(d, "read the key", work, role="implementer")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED and view.waiting is None
    assert [(x.tool, x.effect) for x in view.decisions] == [("Read", "deny"), ("Bash", "deny")]
    assert all("deny Read(~/.ssh/**)" in x.by for x in view.decisions)
    results = tool_results(api)
    assert not any("SECRET KEY" in r for r in results)
    assert sum("orchestra's policy" in r for r in results) == 2


def test_config_and_role_rules_come_first(team, work):
    d, api = team
    d.call(p.ConfigSet(key="policy", value=["allow Bash(touch *)"]))
    try:
        api.add(reply.tool_use("Bash", {"command": "touch made.txt", "description": "make it"}), reply.text("made"))
        task = submit(d, "touch", work, role="generalist")
        view = d.wait_status(task, *FINISHED, timeout=60)
        assert view.status is Status.SUCCEEDED and (work / "made.txt").exists()
        assert view.decisions[0].by == "rule 1 of config (allow Bash(touch *))"
    finally:
        d.call(p.ConfigSet(key="policy", value=[]))


def test_a_bad_rule_is_refused_with_how_to_write_one(team):
    d, _ = team
    result = d.cli("config", "set", "policy", '["permit everything"]')
    assert result.exit_code == 2
    assert "is not a rule: write EFFECT TOOL" in result.output


def test_policy_check_names_the_rule_and_why(team, work):
    d, _ = team
    out = d.cli("policy", "check", "--role", "tester", "--cwd", str(work), "Bash(git push origin main)").output
    assert out.splitlines()[:2] == ["Bash(git push origin main): asks a person", "  by rule 21 of defaults (ask Bash(git push *))"]
    out = d.cli("policy", "check", "--role", "tester", "--cwd", str(work), "Bash(pytest -q; rm -rf /)").output
    assert "no rule decides" in out and "Claude Code asks a person" in out
    out = d.cli("policy", "check", "--role", "tester", "--cwd", str(work), "Read(~/.ssh/id_rsa)").output
    assert "denied" in out and "deny Read(~/.ssh/**)" in out
    data = json.loads(d.cli("policy", "check", "--cwd", str(work), "--json", "Write(src/app.py)").output)
    assert data["effect"] == "allow" and "allow Edit(./**)" in data["by"]
    bad = d.cli("policy", "check", "--role", "nobody", "--cwd", str(work), "Bash(ls)")
    assert bad.exit_code == 2 and "no role named 'nobody'" in bad.output


def test_the_auto_deny_timeout_is_named(team, work, tmp_path):
    d, api = team
    d.call(p.ConfigSet(key="auto_deny_after", value=0.5))
    try:
        api.add(reply.tool_use("Write", {"file_path": str(tmp_path / "x"), "content": "x"}), reply.text("ok"))
        task = submit(d, "write outside", work, role="implementer")
        view = d.wait_status(task, *FINISHED, timeout=60)
        assert [(x.effect, x.by) for x in view.decisions] == [("deny", "the auto-deny timeout")]
    finally:
        d.call(p.ConfigSet(key="auto_deny_after", value=None))


def test_a_role_files_rules_come_first_and_roles_shows_them(team, work):
    d, _ = team
    roles_dir = d.paths.config / "roles"
    roles_dir.mkdir(parents=True, exist_ok=True)
    (roles_dir / "dba.toml").write_text('prompt = "You migrate databases."\npolicy = ["allow Bash(alembic upgrade *)", "deny Bash(psql *)"]\n')
    wait_for(lambda: "dba" in d.call(p.Roles(), p.RolesResult).custom, 15, "the role file to load")
    out = d.cli("policy", "check", "--role", "dba", "--cwd", str(work), "Bash(alembic upgrade head)").output
    assert "allowed" in out and "by rule 1 of role dba (allow Bash(alembic upgrade *))" in out
    assert "by rule 2 of role dba" in d.cli("policy", "check", "--role", "dba", "--cwd", str(work), "Bash(psql -c 'drop table x')").output
    shown = d.cli("roles", "dba").output
    assert "  policy            allow Bash(alembic upgrade *)\n                    deny Bash(psql *)\n" in shown
    assert "this built-in role's own rules" in d.cli("roles", "implementer").output
    (roles_dir / "bad.toml").write_text('prompt = "x"\npolicy = ["allow Bash(a; b)"]\n')
    wait_for(lambda: any("bad.toml" in x for x in d.call(p.Roles(), p.RolesResult).problems), 15, "the bad role to be reported")
    [problem] = [x for x in d.call(p.Roles(), p.RolesResult).problems if "bad.toml" in x]
    assert "is not one command" in problem
