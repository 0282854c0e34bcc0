"""Workflows, worktrees and live configuration with a real daemon and real processes."""

from __future__ import annotations

import asyncio

import json
import sys
from pathlib import Path

from orchestra.shared import protocol as p
from orchestra.main import Exit
from orchestra.shared.protocol import Status
from tests.daemon import wait_for
from tests.gitrepo import git, make_repo

PY = sys.executable

PIPELINE = f"""
description = "a pipeline of scripts"

[[steps]]
name = "plan"
argv = ["{PY}", "-c", "import time; time.sleep(0.3); print('PLAN-42')"]

[[steps]]
name = "left"
after = ["plan"]
argv = ["{PY}", "-c", "import time; time.sleep(0.5); print('left saw', '{{steps.plan.result}}')"]

[[steps]]
name = "right"
after = ["plan"]
argv = ["{PY}", "-c", "import time; time.sleep(0.5); print('right saw', '{{steps.plan.result}}')"]

[[steps]]
name = "join"
after = ["left", "right"]
argv = ["sh", "-c", "echo joined: '{{steps.left.result}}' + '{{steps.right.result}}' for '{{goal}}'"]
"""

FAILING = """
[[steps]]
name = "build"
argv = ["sh", "-c", "echo broken >&2; exit 3"]

[[steps]]
name = "deploy"
after = ["build"]
argv = ["echo", "deployed"]

[[steps]]
name = "report"
if_failed = "build"
argv = ["echo", "build failed: {steps.build.status}"]
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def wait_template(daemon, name: str) -> None:
    wait_for(lambda: name in [t.name for t in daemon.call(p.Templates(), p.TemplatesResult).templates], what=f"template {name} to load")


def tasks_of(daemon, workflow: int) -> dict[str, p.TaskView]:
    view = daemon.call(p.ShowWorkflow(workflow=workflow), p.WorkflowView)
    return {t.step: t for t in view.tasks}


def test_a_workflow_runs_in_order_with_parallel_steps_and_results_flowing(daemon):
    write(daemon.paths.config / "workflows" / "pipeline.toml", PIPELINE)
    wait_template(daemon, "pipeline")
    daemon.cli("config", "set", "max_concurrent", "4")
    result = daemon.cli("workflow", "run", "pipeline", "ship", "it", "--json")
    assert result.exit_code == 0, result.output
    workflow = json.loads(result.output)["id"]
    final = daemon.wait_status(tasks_of(daemon, workflow)["join"].id, Status.SUCCEEDED, Status.CANCELLED, Status.FAILED)
    steps = tasks_of(daemon, workflow)
    assert all(t.status is Status.SUCCEEDED for t in steps.values())
    assert steps["plan"].finished_at <= min(steps["left"].started_at, steps["right"].started_at)
    assert steps["left"].started_at < steps["right"].finished_at and steps["right"].started_at < steps["left"].finished_at  # in parallel
    assert max(steps["left"].finished_at, steps["right"].finished_at) <= steps["join"].started_at
    assert daemon.output_of(steps["left"].id) == b"left saw PLAN-42\n"
    assert daemon.output_of(final.id) == b"joined: left saw PLAN-42 + right saw PLAN-42 for ship it\n"
    status = daemon.cli("workflow", "status", str(workflow))
    assert "pipeline · succeeded" in status.output
    ps = daemon.cli("ps").output
    assert f"workflow {workflow} · pipeline · succeeded" in ps


def test_a_failed_step_stops_what_depends_on_it_and_conditions_pick_the_path(daemon):
    write(daemon.paths.config / "workflows" / "failing.toml", FAILING)
    wait_template(daemon, "failing")
    workflow = daemon.call(p.RunWorkflow(template="failing", goal="release", cwd=str(daemon.home)), p.WorkflowView).id
    report = daemon.wait_status(tasks_of(daemon, workflow)["report"].id, Status.SUCCEEDED)
    steps = tasks_of(daemon, workflow)
    assert steps["build"].status is Status.FAILED
    assert steps["deploy"].status is Status.CANCELLED
    assert steps["deploy"].reason == f"not run: dependency {steps['build'].id} ended failed"
    assert daemon.output_of(report.id) == b"build failed: failed\n"
    view = daemon.call(p.ShowWorkflow(workflow=workflow), p.WorkflowView)
    assert view.status == "failed"




def test_a_worktree_records_the_commit_and_the_branch_it_started_from(tmp_path):
    from orchestrad import worktrees

    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")
    made = asyncio.run(worktrees.create(str(repo), tmp_path / "wt", "1-first"))
    assert (made.base, made.target, made.branch) == (head, "main", "orchestra/1-first")
    git(repo, "checkout", "-q", "--detach")
    detached = asyncio.run(worktrees.create(str(repo), tmp_path / "wt", "2-second"))
    assert (detached.base, detached.target) == (head, "")


def test_worktrees_made_at_the_same_moment_in_one_repository_all_succeed(tmp_path):
    """git reads the other worktrees' files as it adds one; adding many at once failed one
    now and then ("failed to read .git/worktrees/X/commondir")."""
    from orchestrad import worktrees

    repo = make_repo(tmp_path / "repo")

    async def make_all():
        return await asyncio.gather(*(worktrees.create(str(repo), tmp_path / "wt", f"{i}-t") for i in range(40)),
                                    return_exceptions=True)

    made = asyncio.run(make_all())
    assert [m for m in made if isinstance(m, BaseException)] == []
    assert len({m.path for m in made}) == 40


def test_parallel_implementers_in_worktrees_do_not_see_each_other(daemon):
    repo = make_repo(daemon.home / "repo")
    daemon.cli("config", "set", "max_concurrent", "2")
    script = "import os, sys, time; open(sys.argv[1], 'w').write('x'); time.sleep(0.5); print(sorted(os.listdir('.')))"
    one = daemon.submit(PY, "-c", script, "one.txt", cwd=str(repo), worktree=True, title="first change")
    two = daemon.submit(PY, "-c", script, "two.txt", cwd=str(repo), worktree=True, title="second change")
    first, second = daemon.wait_status(one, Status.SUCCEEDED), daemon.wait_status(two, Status.SUCCEEDED)
    assert daemon.output_of(one) == b"['.git', 'README', 'one.txt']\n"
    assert daemon.output_of(two) == b"['.git', 'README', 'two.txt']\n"
    assert first.worktree != second.worktree and Path(first.worktree).is_dir()
    branches = git(repo, "branch", "--list", "orchestra/*")
    assert f"orchestra/{one}-first-change" in branches and f"orchestra/{two}-second-change" in branches
    assert not (repo / "one.txt").exists()  # the main checkout is untouched


def test_shared_workspace_steps_see_each_others_changes(daemon):
    repo = make_repo(daemon.home / "repo")
    write(daemon.paths.config / "workflows" / "shared.toml", """
worktree = true
[[steps]]
name = "implement"
argv = ["sh", "-c", "echo change > feature.txt"]
[[steps]]
name = "test"
after = ["implement"]
argv = ["cat", "feature.txt"]
[[steps]]
name = "elsewhere"
after = ["implement"]
workspace = "own"
argv = ["ls"]
""")
    wait_template(daemon, "shared")
    view = daemon.call(p.RunWorkflow(template="shared", goal="feature", cwd=str(repo)), p.WorkflowView)
    steps = tasks_of(daemon, view.id)
    daemon.wait_status(steps["test"].id, Status.SUCCEEDED)
    daemon.wait_status(steps["elsewhere"].id, Status.SUCCEEDED)
    assert daemon.output_of(steps["test"].id) == b"change\n"
    assert b"feature.txt" not in daemon.output_of(steps["elsewhere"].id)
    shared = daemon.call(p.ShowWorkflow(workflow=view.id), p.WorkflowView).worktree
    assert shared and (Path(shared) / "feature.txt").exists() and not (repo / "feature.txt").exists()


def test_worktree_outside_a_repository_is_refused_at_submit(daemon):
    plain = daemon.home / "plain"
    plain.mkdir()
    result = daemon.cli("submit", "--worktree", "--cwd", str(plain), "--", "true")
    assert result.exit_code == Exit.BAD_INPUT
    assert "not in a git repository" in result.output


def test_a_role_that_works_in_a_worktree_is_refused_outside_a_repository_before_anything_is_recorded(daemon):
    roles = daemon.paths.config / "roles"
    roles.mkdir(parents=True, exist_ok=True)
    (roles / "isolated.toml").write_text('description = "d"\nprompt = "p"\nworktree = true\n')
    wait_for(lambda: "isolated" in daemon.call(p.Roles(), p.RolesResult).custom, 10, "the role to load")
    plain = daemon.home / "plain"
    plain.mkdir()
    result = daemon.cli("submit", "--role", "isolated", "--cwd", str(plain), "--", "true")
    assert result.exit_code == Exit.BAD_INPUT, result.output
    assert "its role isolated works in one" in result.output and "--no-worktree" in result.output, result.output
    assert "drop --worktree" not in result.output  # a flag the user never gave
    assert daemon.call(p.Info(), p.DaemonStatus).counts == {}, "the task was recorded anyway"
    ok = daemon.cli("submit", "--role", "isolated", "--no-worktree", "--cwd", str(plain), "--", "true")
    assert ok.exit_code == 0, ok.output
    write(daemon.paths.config / "workflows" / "isolated-flow.toml",
          'description = "d"\nworktree = true\n[[steps]]\nname = "only"\nargv = ["true"]\n')
    wait_template(daemon, "isolated-flow")
    workflow = daemon.cli("workflow", "run", "isolated-flow", "a goal", "--cwd", str(plain))
    assert workflow.exit_code == Exit.BAD_INPUT, workflow.output
    assert "its template isolated-flow works in one" in workflow.output and "--no-worktree" in workflow.output, workflow.output
    assert daemon.call(p.ListWorkflows(), list[p.WorkflowView]) == [], "the workflow was recorded anyway"


def test_old_worktrees_are_removed_and_their_branches_kept(daemon):
    repo = make_repo(daemon.home / "repo")
    task = daemon.submit("sh", "-c", "echo work > done.txt", cwd=str(repo), worktree=True, title="tidy")
    tree = daemon.wait_status(task, Status.SUCCEEDED).worktree
    daemon.call(p.ConfigSet(key="retention_days", value=0))
    daemon.call(p.Cleanup())
    assert not Path(tree).exists()
    branches = git(repo, "branch", "--list", "orchestra/*")
    assert f"orchestra/{task}-tidy" in branches


def test_roles_workflows_and_config_are_picked_up_live_and_bad_edits_ignored(daemon):
    role_file = daemon.paths.config / "roles" / "dba.toml"
    write(role_file, 'description = "Reviews migrations"\nprompt = "You review SQL migrations."\n')
    wait_for(lambda: "dba" in daemon.call(p.Roles(), p.RolesResult).custom, what="the role to load")
    assert "You review SQL migrations." in daemon.cli("roles", "dba").output
    task = daemon.cli("submit", "--role", "dba", "--", "true").output.strip()
    assert daemon.task(int(task)).role == "dba"

    write(role_file, 'description = "Reviews migrations"\nprompt = \n')  # a broken edit
    wait_for(lambda: "problem:" in daemon.cli("roles").output, what="the problem to be reported")
    listing = daemon.cli("roles")
    assert "dba.toml" in listing.output and "line 2" in listing.output and "last good version" in listing.output
    assert "You review SQL migrations." in daemon.cli("roles", "dba").output  # still in force

    write(daemon.paths.config_file, "max_concurrent = 7\n")
    wait_for(lambda: daemon.call(p.ConfigGet(key="max_concurrent"))["max_concurrent"] == 7, what="config.toml to apply")
    write(daemon.paths.config_file, "max_concurrent = 0\n")
    wait_for(lambda: any("config.toml" in x for x in daemon.call(p.Templates(), p.TemplatesResult).problems), what="the bad config to be reported")
    assert daemon.call(p.ConfigGet(key="max_concurrent"))["max_concurrent"] == 7

    write(daemon.paths.config / "workflows" / "loop.toml", '[[steps]]\nname = "a"\nprompt = "x"\nafter = ["a"]\n')
    wait_for(lambda: "loop.toml" in daemon.cli("workflow", "list").output, what="the bad template to be reported")
    assert "refers to itself" in daemon.cli("workflow", "list").output
    assert daemon.cli("workflow", "run", "loop", "g").exit_code == Exit.NOT_FOUND
