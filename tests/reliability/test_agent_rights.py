"""An agent is not the user (#14 item 3): what a task's process, or anything it starts,
may ask of the daemon.

The attack suite had a task's process approve its own permission request with
`orchestra respond <its id> --allow`, switch agents to bypassPermissions with `orchestra
config set`, and submit work, all accepted because the only check was the peer's uid. The
daemon now tells agents from people by the peer's pid (SO_PEERCRED): its cgroup, its
ancestry, its mark. These tests run the real CLI from inside agents, with their
environment intact and scrubbed (`setsid env -i`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import wait_for
from tests.reliability.harness import PY, RDaemon, tasks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A stand-in for Claude Code that asks permission for a tool, then, while it waits for
# the answer, tries to give that answer itself (and more) through the real CLI.
SELF_APPROVING_CLAUDE = """#!{py}
import json, os, subprocess, sys
home, task = os.environ["ORCHESTRA_HOME"], os.environ["ORCHESTRA_AGENT"].split(":")[1]
print(json.dumps({{"type": "system", "subtype": "init", "session_id": "s-" + task, "model": "fake"}}), flush=True)
for line in sys.stdin:
    if '"type":"user"' in line.replace(" ", ""):
        break
print(json.dumps({{"type": "control_request", "request_id": "r1",
                   "request": {{"subtype": "can_use_tool", "tool_name": "Bash", "input": {{"command": "rm -rf /"}}}}}}), flush=True)
cli = [sys.executable, "-m", "orchestra"]
scrubbed = ["setsid", "env", "-i", "PATH=" + os.environ["PATH"], "PYTHONPATH=" + os.environ.get("PYTHONPATH", ""),
            "ORCHESTRA_HOME=" + home, "ORCHESTRA_NO_AUTOSTART=1"]
attempts = {{
    "respond own": cli + ["respond", task, "--allow"],
    "respond own, scrubbed": scrubbed + cli + ["respond", task, "--allow"],
    "respond other": cli + ["respond", {other!r}, "yes"],
    "config set": cli + ["config", "set", "permission_mode", "bypassPermissions"],
    "config set, scrubbed": scrubbed + cli + ["config", "set", "permission_mode", "bypassPermissions"],
    "submit": cli + ["submit", "--", "true"],
    "stop other": cli + ["stop", {other!r}],
    "priority other": cli + ["queue", "priority", {queued!r}, "urgent"],
    "cleanup": cli + ["cleanup"],
    "daemon stop": cli + ["daemon", "stop"],
    "ps": cli + ["ps"],
    "show own": cli + ["show", task],
    "roles": cli + ["roles"],
}}
results = {{}}
for name, argv in attempts.items():
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    results[name] = [done.returncode, done.stderr.strip()]
with open({out!r} + ".part", "w") as f:  # then renamed: the test reads it once it exists, whole
    json.dump(results, f)
os.replace({out!r} + ".part", {out!r})
for line in sys.stdin:
    if "control_response" in line:
        break
print(json.dumps({{"type": "result", "subtype": "success", "result": line.strip(), "is_error": False,
                   "num_turns": 1, "total_cost_usd": 0.0, "usage": {{}}}}), flush=True)
"""

READS = ("ps", "show own", "roles")


@pytest.fixture
def daemon():
    d = RDaemon()
    d.env["PYTHONPATH"] = os.pathsep.join([ROOT, os.path.join(ROOT, "cli"), os.environ.get("PYTHONPATH", "")])
    yield d
    d.cleanup()


def test_an_agent_cannot_answer_its_own_question_nor_change_settings_nor_touch_other_tasks(daemon, tmp_path):
    d = daemon.start()
    d.call(p.ConfigSet(key="max_concurrent", value=2))
    other = d.submit("sleep", "60")
    d.wait_status(other, Status.RUNNING)
    queued = d.submit("true")  # waits for a slot: the agent below takes the last one
    out = tmp_path / "attempts.json"
    fake = tmp_path / "claude"
    fake.write_text(SELF_APPROVING_CLAUDE.format(py=PY, other=str(other), queued=str(queued), out=str(out)))
    fake.chmod(0o755)
    d.call(p.ConfigSet(key="claude_path", value=str(fake)))
    agent = d.submit_prompt("delete everything", agent="claude")
    wait_for(out.exists, 120, "the agent's attempts")
    results = json.loads(out.read_text())

    for name, (code, stderr) in results.items():
        if name in READS:
            assert code == 0, f"{name}: reads stay allowed to agents, got {code}: {stderr}"
        else:
            assert code == 7, f"{name}: an agent was allowed (exit {code}): {stderr}"
            assert "agent" in stderr and "may not" in stderr, f"{name}: {stderr}"
    assert "only a person answers" in results["respond own"][1]

    view = d.task(agent)
    assert view.status is Status.WAITING and view.waiting is not None, "the agent answered its own request"
    assert d.call(p.ConfigGet(key="permission_mode")) == {"permission_mode": "default"}
    assert d.task(other).status is Status.RUNNING
    assert d.task(queued).priority == 0
    assert max(t.id for t in tasks(d)) == agent, "the agent submitted a task"

    d.call(p.Respond(task=agent, deny=True, message="no"))  # the person answers: that is allowed
    assert d.wait_status(agent, *p.FINISHED, timeout=30).status is Status.SUCCEEDED
    assert '"behavior": "deny"' in d.task(agent).result or '"behavior":"deny"' in d.task(agent).result
    d.call(p.Stop(task=other))


def test_a_role_that_delegates_lets_its_agent_submit_within_its_limits(daemon, tmp_path):
    d = daemon
    roles = d.paths.config / "roles"
    roles.mkdir(parents=True)
    (roles / "lead.toml").write_text(
        'description = "leads"\nprompt = "lead"\ndelegate = ["tester"]\ntimeout = 100\n'
    )
    d.start()
    wait_for(lambda: "lead" in d.call(p.Roles(), p.RolesResult).custom, 10, "the role file to load")
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    script = (
        f"{sys.executable} -m orchestra submit --role tester --timeout 5000 --cwd {work / 'sub'} -- true; echo rc=$?;"
        f"{sys.executable} -m orchestra submit --role devops -- true; echo rc=$?;"
        f"{sys.executable} -m orchestra submit --role tester --cwd / -- true; echo rc=$?"
    )
    lead = d.call(p.Submit(argv=["sh", "-c", script], cwd=str(work), role="lead"), p.TaskView).id
    d.wait_status(lead, Status.SUCCEEDED, timeout=60)
    said = d.output_of(lead).decode()
    codes = [line for line in said.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=0", "rc=7", "rc=7"], said
    assert "as tester only, not as devops" in said and "only in its own directory" in said, said
    [child] = [t for t in tasks(d) if t.id != lead]
    assert child.parent == lead and child.role == "tester"
    assert child.timeout == 100, "a delegated task inherits its parent's limit"
    assert f"by task {lead}'s agent" in d.run_cli("show", str(child.id)).stdout
