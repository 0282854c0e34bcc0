"""The merge queue (orchestrad.merges, merger, integrate) with real git repositories, a real
daemon and command agents (and the real Claude Code CLI as a resolver): branches merged in
order, the target moved only after the checks pass, conflicts reported without touching the
target or resolved by a resolver task, and the user's checkout never left changed or broken."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad.merger import _name as integration_name
from tests.daemon import claude_daemon, wait_for
from tests.gitrepo import git, make_repo
from tests.scripted_api import ScriptedAPI, reply

PY = sys.executable
DONE = ("merged", "conflicted", "failed", "cancelled")






def writes(daemon, repo: Path, name: str, text: str, **kw) -> int:
    """A worktree task (a command) that writes `text` to `name` and leaves it uncommitted."""
    script = f"open({name!r}, 'w').write({text!r})"
    task = daemon.submit(PY, "-c", script, cwd=str(repo), worktree=True, title=f"write {name}", **kw)
    assert daemon.wait_status(task, *p.FINISHED).status is Status.SUCCEEDED
    return task


def merged(daemon, *tasks: int, **kw) -> list[p.MergeView]:
    queued = daemon.call(p.Merge(tasks=list(tasks), **kw), p.MergeQueue).queued
    return wait_merges(daemon, queued)


def wait_merges(daemon, ids: list[int]) -> list[p.MergeView]:
    def ended():
        shown = {m.id: m for m in daemon.call(p.MergeStatus(limit=100), p.MergeQueue).merges}
        return [shown[i] for i in ids] if all(i in shown and shown[i].status in DONE for i in ids) else None

    return wait_for(ended, timeout=60, what=f"merges {ids} to end")


@pytest.fixture
def repo(daemon) -> Path:
    return make_repo(daemon.home / "repo")


def test_branches_are_merged_in_order_onto_the_branch_they_started_from_and_a_clean_checkout_follows(daemon, repo):
    one = writes(daemon, repo, "one.txt", "one\n")
    two = writes(daemon, repo, "two.txt", "two\n")
    first, second = merged(daemon, one, two, checks=["test -f one.txt"])
    assert (first.status, second.status) == ("merged", "merged"), (first.reason, second.reason)
    assert (first.target, first.task, second.task) == ("main", one, two)
    assert git(repo, "rev-parse", "main") == second.head
    assert (repo / "one.txt").read_text() == "one\n" and (repo / "two.txt").read_text() == "two\n"  # the checkout followed
    assert git(repo, "status", "--porcelain") == ""
    log = git(repo, "log", "--first-parent", "--format=%s", "main")
    assert log.splitlines()[:2] == [f"Merge branch '{second.branch}' into main", f"Merge branch '{first.branch}' into main"]
    assert git(repo, "rev-list", "--count", "main") == "5"  # the start, what each task left (saved), two merges
    shown = daemon.cli("merge", "--status").output
    assert f"{first.id:<4}merged" in shown and "main is now at" in shown


def test_a_conflict_stops_the_merge_and_leaves_the_target_as_it_was(daemon, repo):
    one = writes(daemon, repo, "README", "one\n")
    two = writes(daemon, repo, "README", "two\n")
    [first] = merged(daemon, one)
    before = git(repo, "rev-parse", "main")
    [second] = merged(daemon, two)
    assert first.status == "merged" and second.status == "conflicted"
    assert second.conflicts == ["README"]
    assert second.reason.startswith(f"{second.branch} conflicts with main in README; main was not touched")
    assert git(repo, "rev-parse", "main") == before and (repo / "README").read_text() == "one\n"
    assert git(repo, "status", "--porcelain") == ""
    assert git(Path(second.path), "status", "--porcelain") == ""  # the integration worktree is clean again
    failed = daemon.run_cli("merge", str(two), "--wait")
    assert failed.returncode == 1 and "conflicted" in failed.stdout


def test_a_dirty_checkout_of_the_target_is_left_untouched(daemon, repo):
    task = writes(daemon, repo, "one.txt", "one\n")
    (repo / "README").write_text("my own edit\n")
    before = git(repo, "rev-parse", "main")
    [m] = merged(daemon, task)
    assert m.status == "failed"
    assert m.reason == f"main is checked out in {repo} with uncommitted changes, so it was left as it is; commit or stash them there, then merge again"
    assert git(repo, "rev-parse", "main") == before
    assert (repo / "README").read_text() == "my own edit\n" and not (repo / "one.txt").exists()


def test_a_target_checked_out_nowhere_is_moved_and_a_failing_check_moves_nothing(daemon, repo):
    git(repo, "checkout", "-q", "-b", "side")  # main is now checked out nowhere
    one = writes(daemon, repo, "one.txt", "one\n")
    [bad] = merged(daemon, one, into="main", checks=["echo nope; exit 3"])
    assert bad.status == "failed" and bad.reason.startswith("check failed: echo nope; exit 3 exited 3; main was not touched\nnope")
    before = git(repo, "rev-parse", "main")
    assert before == git(repo, "rev-parse", "side")
    [good] = merged(daemon, one, into="main", mode="rebase")
    assert good.status == "merged" and git(repo, "rev-parse", "main") == good.head != before
    assert git(repo, "show", "main:one.txt") == "one"
    assert git(repo, "rev-list", "--merges", "--count", "main") == "0"  # rebased: no merge commit


def test_what_cannot_be_merged_is_refused_with_what_to_do(daemon, repo):
    plain = daemon.submit("true", cwd=str(repo))
    daemon.wait_status(plain, Status.SUCCEEDED)
    with pytest.raises(p.OrchestraError, match="did not work in a git worktree, so it has no branch to merge"):
        daemon.call(p.Merge(tasks=[plain]))
    running = daemon.submit("sleep", "30", cwd=str(repo), worktree=True)
    daemon.wait_status(running, Status.RUNNING)
    with pytest.raises(p.OrchestraError, match=f"task {running} is running; merge it once it has finished"):
        daemon.call(p.Merge(tasks=[running]))
    daemon.call(p.Stop(task=running))
    with pytest.raises(p.OrchestraError, match="say what to merge"):
        daemon.call(p.Merge())
    with pytest.raises(p.OrchestraError, match="mode must be one of merge, rebase"):
        daemon.call(p.Merge(tasks=[plain], mode="squash"))


PARALLEL = """
description = "a shared step, then two steps side by side on branches of their own"
worktree = true
merge = true
[[steps]]
name = "implement"
argv = ["sh", "-c", "echo feature > feature.txt"]
[[steps]]
name = "test"
after = ["implement"]
workspace = "own"
argv = ["sh", "-c", "cat feature.txt && echo test > test.txt"]
[[steps]]
name = "document"
after = ["implement"]
workspace = "own"
argv = ["sh", "-c", "cat feature.txt && echo doc > doc.txt"]
"""


def test_a_workflow_that_merges_puts_its_branches_on_the_target_in_step_order(daemon, repo):
    (daemon.paths.config / "workflows").mkdir(parents=True, exist_ok=True)
    (daemon.paths.config / "workflows" / "parallel.toml").write_text(PARALLEL)
    wait_for(lambda: "parallel" in [t.name for t in daemon.call(p.Templates(), p.TemplatesResult).templates], what="the template")
    wf = daemon.call(p.RunWorkflow(template="parallel", goal="add the feature", cwd=str(repo)), p.WorkflowView)
    steps = wf.steps
    for step in ("test", "document"):  # each saw the shared step's work
        assert daemon.wait_status(steps[step], *p.FINISHED).status is Status.SUCCEEDED
        assert daemon.output_of(steps[step]).startswith(b"feature\n")
    def queued():
        mine = [m for m in daemon.call(p.MergeStatus(), p.MergeQueue).merges if m.workflow == wf.id]
        return mine if len(mine) == 3 else None

    views = wait_for(queued, what="its three branches queued")
    done = wait_merges(daemon, [m.id for m in views])
    assert [m.status for m in done] == ["merged"] * 3, [m.reason for m in done]
    assert [m.task for m in done] == [None, steps["test"], steps["document"]]
    for name, text in (("feature.txt", "feature\n"), ("test.txt", "test\n"), ("doc.txt", "doc\n")):
        assert (repo / name).read_text() == text


def test_a_workflow_that_failed_merges_nothing(daemon, repo):
    (daemon.paths.config / "workflows").mkdir(parents=True, exist_ok=True)
    (daemon.paths.config / "workflows" / "broken.toml").write_text(
        'worktree = true\nmerge = true\n[[steps]]\nname = "implement"\nargv = ["sh", "-c", "echo x > x.txt; exit 1"]\n')
    wait_for(lambda: "broken" in [t.name for t in daemon.call(p.Templates(), p.TemplatesResult).templates], what="the template")
    wf = daemon.call(p.RunWorkflow(template="broken", goal="g", cwd=str(repo)), p.WorkflowView)
    daemon.wait_status(wf.steps["implement"], Status.FAILED)
    wait_for(lambda: "not merged" in daemon.cli("workflow", "status", str(wf.id)).output, what="the note")
    assert daemon.call(p.MergeStatus(), p.MergeQueue).merges == [] and not (repo / "x.txt").exists()


def test_a_conflict_is_resolved_by_a_resolver_task_and_then_merged(claude, tmp_path):
    with ScriptedAPI() as api:
        d = claude_daemon(api)
        try:
            repo = make_repo(d.home / "repo")
            one = writes(d, repo, "README", "one\n")
            two = writes(d, repo, "README", "two\n")
            [first] = merged(d, one)
            assert first.status == "merged"
            place = d.paths.state / "integration" / integration_name(str(repo))
            api.add(
                reply.tool_use("Read", {"file_path": str(place / "README")}),  # the CLI writes only what it has read
                reply.tool_use("Write", {"file_path": str(place / "README"), "content": "one and two\n"}),
                reply.tool_use("Bash", {"command": "git add README && git commit --no-edit -q", "description": "finish the merge"}),
                reply.text("Resolved README."),
            )
            [second] = merged(d, two, resolve=True, checks=["grep -q 'one and two' README"])
            assert second.status == "merged", second.reason
            resolver = d.task(second.resolver)
            assert resolver.status is Status.SUCCEEDED and resolver.role == "implementer" and resolver.cwd == str(place)
            assert "these files conflict: README" in resolver.prompt
            assert (repo / "README").read_text() == "one and two\n" and git(repo, "rev-parse", "main") == second.head
        finally:
            d.cleanup()


def test_a_daemon_stopped_mid_merge_starts_that_merge_again_when_it_comes_back(daemon, repo, tmp_path):
    task = writes(daemon, repo, "one.txt", "one\n")
    go = tmp_path / "go"
    [queued] = daemon.call(p.Merge(tasks=[task], checks=[f"while [ ! -e {go} ]; do sleep 0.05; done"]), p.MergeQueue).queued
    wait_for(lambda: daemon.call(p.MergeStatus(), p.MergeQueue).merges[-1].status == "merging", what="the merge to start")
    daemon.stop()
    assert not (repo / "one.txt").exists()
    go.touch()
    daemon.start()
    [m] = wait_merges(daemon, [queued])
    assert m.status == "merged", m.reason
    assert (repo / "one.txt").read_text() == "one\n"


def test_lock_files_a_dead_git_left_in_the_integration_worktree_do_not_stop_the_next_merge(daemon, repo):
    [first] = merged(daemon, writes(daemon, repo, "one.txt", "one\n"))
    assert first.status == "merged", first.reason
    git_dir = repo / ".git" / "worktrees" / integration_name(str(repo))
    for lock in ("HEAD.lock", "index.lock", "ORIG_HEAD.lock"):
        (git_dir / lock).write_text("")  # as git killed with the daemon (kill -9) leaves them
    [second] = merged(daemon, writes(daemon, repo, "two.txt", "two\n"))
    assert second.status == "merged", second.reason
    assert (repo / "two.txt").read_text() == "two\n"


def test_a_branch_already_on_its_target_merges_as_nothing_to_do(daemon, repo):
    task = writes(daemon, repo, "one.txt", "one\n")
    [first] = merged(daemon, task)
    [again] = merged(daemon, task)
    assert (first.status, again.status) == ("merged", "merged")
    assert again.head == first.head == git(repo, "rev-parse", "main")  # no new commit


def test_the_settings_rebase_and_delete_the_branches_merged(daemon, repo):
    daemon.call(p.ConfigSet(key="merge_mode", value="rebase"))
    daemon.call(p.ConfigSet(key="delete_merged_branches", value=True))
    task = writes(daemon, repo, "one.txt", "one\n")
    tree = daemon.task(task).worktree
    [m] = merged(daemon, task)
    assert m.status == "merged" and m.mode == "rebase", m.reason
    assert git(repo, "rev-list", "--merges", "--count", "main") == "0"  # rebased: no merge commit
    assert git(repo, "branch", "--list", m.branch) == ""  # the branch is gone, and its worktree
    assert not Path(tree).exists() and (repo / "one.txt").read_text() == "one\n"
    assert all(w.task != task for w in daemon.call(p.ListWorktrees(), p.WorktreeList).worktrees)
