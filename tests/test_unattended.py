"""Unattended workflows (issue 16): with the default policy, a built-in workflow runs end to
end with the real Claude Code CLI and asks a person nothing, while a write outside its
worktree and a push still ask, and a read of ~/.ssh is denied. The steps' scripted turns
are bench/bench_unattended.py's (a tiny project in git: edits, pytest, git commit)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.daemon import wait_for
from tests.unattended import SECRET, Steps, make_repo, pytest_lines, run_workflows, start_team, tool_errors
from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.scripted_api import INSTALL_HINT, ScriptedAPI, find_claude


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """One daemon for the module, its agents working in worktrees of one repository."""
    claude = find_claude()
    if claude is None:
        pytest.fail(INSTALL_HINT)
    api = ScriptedAPI(classify=lambda body: True).start()
    repo = make_repo(tmp_path_factory.mktemp("unattended") / "calc")
    ssh = Path(api.home) / ".ssh"
    ssh.mkdir()
    (ssh / "id_rsa").write_text(SECRET + "\n")
    steps = Steps(repo=repo, home=api.home)
    api.side_reply = steps
    d = start_team(claude, api)
    yield d, api, steps
    d.cleanup()
    api.close()


def test_bug_fix_runs_end_to_end_asking_no_one(team):
    d, _, steps = team
    [run] = run_workflows(d, steps, ["bug-fix"], timeout=180)
    assert steps.unknown == []
    assert {s: t.status for s, t in run.steps.items()} == dict.fromkeys(["reproduce", "fix", "verify", "review"], Status.SUCCEEDED)
    assert run.asked == []  # no task of it ever waited on a person
    decisions = [x for t in run.steps.values() for x in t.decisions]
    assert len(decisions) == 10 and all(x.effect == "allow" and x.by.startswith("rule ") for x in decisions)
    assert sum(t.decisions_total for t in run.steps.values()) == 10
    assert {x.tool for x in decisions} == {"Bash", "Edit", "Write"}
    assert [e for s in run.steps for e in tool_errors(steps, run.goal, s)] == []
    runs = pytest_lines(steps, run.goal)
    assert len(runs) == 3 and all("passed" in line and "failed" not in line for line in runs)
    shown = d.cli("show", str(run.steps["fix"].id), "--json")
    assert shown.exit_code == 0 and "allow Bash(git add *)" in shown.output  # the commit was allowed by rule


def test_bad_calls_are_still_asked_or_denied(team):
    d, api, steps = team
    [run] = run_workflows(d, steps, ["bug-fix"], bad=True, timeout=180)
    assert all(t.status is Status.SUCCEEDED for t in run.steps.values())
    fix = run.steps["fix"]
    outside = steps.repo / "outside.txt"
    assert [q.prompt.split(" [")[0] for q in run.asked] == [f"Write: {outside}", "Bash: git push origin main"]
    assert all(q.kind == "permission" for q in run.asked)
    bad = [(x.tool, x.effect, x.by) for x in fix.decisions if x.by == "a person (cli)" or ".ssh" in x.summary]
    assert bad == [("Write", "deny", "a person (cli)"), ("Bash", "deny", "a person (cli)"),
                   ("Read", "deny", "rule 1 of defaults (deny Read(~/.ssh/**))")]
    assert not outside.exists()
    assert not any(SECRET in r.conversation_text() for r in api.requests if r.body)
    by_rule = [x for t in run.steps.values() for x in t.decisions if x.by.startswith("rule ")]
    assert [x.summary for x in by_rule if x.effect != "allow"] == [str(Path(steps.home) / ".ssh" / "id_rsa")]


def test_feature_development_s_parallel_branches_are_merged_in_order(team):
    """Last in the module: it changes the repository's main."""
    d, _, steps = team
    [run] = run_workflows(d, steps, ["feature-development"], timeout=240, merge=True)
    assert all(t.status is Status.SUCCEEDED for t in run.steps.values()), {s: t.reason for s, t in run.steps.items()}
    own = {s: t.worktree for s, t in run.steps.items() if s in ("test", "document")}
    assert len(set(own.values())) == 2 and run.steps["implement"].worktree not in own.values()  # side by side, apart

    def merged():
        mine = [m for m in d.call(p.MergeStatus(), p.MergeQueue).merges if m.workflow == run.workflow]
        return mine if len(mine) == 3 and all(m.status in ("merged", "conflicted", "failed") for m in mine) else None

    merges = wait_for(merged, timeout=60, what="its three branches merged")
    assert [m.status for m in merges] == ["merged"] * 3, [m.reason for m in merges]
    assert [m.task for m in merges] == [None, run.steps["test"].id, run.steps["document"].id]  # shared first, then step order
    repo = steps.repo
    assert "casefold" in (repo / "calc.py").read_text()  # the implementer's, through the shared branch
    assert (repo / "tests" / "test_test.py").exists()  # the tester's own branch
    assert "casefolds its input" in (repo / "README.md").read_text()  # the documenter's own branch
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout == ""
