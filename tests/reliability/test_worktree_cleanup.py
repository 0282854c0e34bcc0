"""Cleanup never loses work left in a worktree (#14 item 11).

The attack suite left an edit uncommitted in a `--worktree` task's worktree; `orchestra
cleanup` (retention 0) removed the worktree, and the branch held only the initial commit.
Now what is uncommitted is committed to the branch first, as orchestra's, and a worktree
whose work cannot be put on a branch is kept, with the reason, unless --force.
"""

from __future__ import annotations

import subprocess

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.reliability.harness import RDaemon
from tests.gitrepo import make_repo


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def daemon():
    d = RDaemon()
    yield d
    d.cleanup()


def test_uncommitted_work_is_committed_to_the_branch_before_its_worktree_goes(daemon):
    d = daemon.start()
    repo = make_repo(d.home / "repo")
    edit = "echo changed >> README; echo new > notes.txt; mkdir -p deep/er; echo x > deep/er/file"
    task = d.call(p.Submit(argv=["sh", "-c", edit], cwd=str(repo), worktree=True), p.TaskView).id
    view = d.wait_status(task, Status.SUCCEEDED)
    tree = view.worktree
    branch = git(tree, "rev-parse", "--abbrev-ref", "HEAD").strip()
    assert git(tree, "status", "--porcelain"), "the task left its edit uncommitted"

    d.call(p.ConfigSet(key="retention_days", value=0))
    result = d.run_cli("cleanup")
    assert result.returncode == 0, result.stderr
    assert f"committed to {branch}" in result.stdout, result.stdout

    assert not (d.paths.state / "worktrees").exists() or not any((d.paths.state / "worktrees").iterdir())
    assert git(repo, "show", f"{branch}:README") == "start\nchanged\n"
    assert git(repo, "show", f"{branch}:notes.txt") == "new\n"
    assert git(repo, "show", f"{branch}:deep/er/file") == "x\n"
    message = git(repo, "log", "-1", "--format=%an <%ae>%n%B", branch)
    assert message.startswith("orchestra <orchestra@localhost>") and "Saved-by: orchestra cleanup" in message, message
    assert git(repo, "status", "--porcelain") == "" and git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"


def test_a_worktree_whose_work_is_on_no_branch_is_kept_unless_forced(daemon):
    d = daemon.start()
    repo = make_repo(d.home / "repo")
    detach = "git checkout -q --detach && echo lost >> README && git commit -qam 'on no branch'"
    task = d.call(p.Submit(argv=["sh", "-c", detach], cwd=str(repo), worktree=True), p.TaskView).id
    tree = d.wait_status(task, Status.SUCCEEDED).worktree
    orphan = git(tree, "rev-parse", "HEAD").strip()

    d.call(p.ConfigSet(key="retention_days", value=0))
    result = d.call(p.Cleanup(), p.CleanupResult)
    assert task in result.purged
    [why] = result.kept
    assert tree in why and "on no branch" in why and "--force" in why, why
    assert git(tree, "rev-parse", "HEAD").strip() == orphan, "the worktree is still there, with its commit"

    forced = d.call(p.Cleanup(force=True), p.CleanupResult)
    assert not forced.kept, forced.kept
    assert subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout.count("\n") == 1
