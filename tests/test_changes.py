"""Diffs of worktree tasks, the changes recorded when an attempt ends, and worktree hygiene:
a real daemon, real git repositories and command agents."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from orchestra.main import Exit
from orchestrad import changes
from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import wait_for
from tests.gitrepo import git, make_repo, racily_change
from tests.test_teams import tasks_of, wait_template, write

PY = sys.executable




# A command agent that commits one change, then leaves an edit and a new file uncommitted
# (and an ignored file, which is no change), and waits until told to end.
WORK = (
    "set -e; echo committed >> README; git commit -qam 'a commit'; "
    "echo edited >> README; echo fresh > new.txt; echo junk > build.log; read line"
)


def test_a_change_git_sees_only_by_content_is_in_the_diff(tmp_path):
    """The diff's copy of the index keeps its mtime, or a same-size change within the
    second the index was written is missed."""
    repo = make_repo(tmp_path / "repo")
    racily_change(repo, "README", "other\n")
    found = asyncio.run(changes.measure(str(repo), "", patch=True))
    assert found.files == 1 and "+other" in found.diff


def test_the_diff_of_a_worktree_task_has_its_commits_its_edits_and_its_new_files_and_touches_nothing(daemon):
    repo = make_repo(daemon.home / "repo")
    (repo / ".gitignore").write_text("*.log\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-qm", "ignore logs")
    base = git(repo, "rev-parse", "HEAD").strip()
    task = daemon.submit("sh", "-c", WORK, cwd=str(repo), worktree=True, title="change things")
    tree = wait_for(lambda: (t := daemon.task(task)).worktree and (Path(t.worktree) / "new.txt").exists() and t.worktree,
                    what="the agent to leave its work")
    status_before = git(tree, "status", "--porcelain", "--untracked-files=all")
    index = Path(git(tree, "rev-parse", "--path-format=absolute", "--git-path", "index").strip())
    index_before = index.read_bytes()

    result = daemon.cli("diff", str(task))
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"against {base[:12]}: 2 files, +3 -0" in out.splitlines()[0]
    assert "+committed" in out and "+edited" in out and "+fresh" in out and "new file mode" in out
    assert "build.log" not in out and "junk" not in out  # ignored
    assert git(tree, "status", "--porcelain", "--untracked-files=all") == status_before
    assert index.read_bytes() == index_before  # its own index is untouched

    stat = daemon.cli("diff", str(task), "--stat")
    assert "README  | 2 ++" in stat.output and "new.txt | 1 +" in stat.output and "+committed" not in stat.output
    as_json = json.loads(daemon.cli("diff", str(task), "--json").output)
    assert (as_json["files"], as_json["insertions"], as_json["deletions"], as_json["base"]) == (2, 3, 0, base)
    assert as_json["head"] == git(tree, "rev-parse", "HEAD").strip() != base
    daemon.call(p.Respond(task=task, text="done"))
    daemon.wait_status(task, Status.SUCCEEDED)


def test_a_huge_diff_is_cut_with_a_note_saying_how_to_see_all_of_it(daemon):
    repo = make_repo(daemon.home / "repo")
    big = f"{PY} -c \"open('big.txt','w').write(''.join(f'line {{i}} of a long file\\n' for i in range(300000)))\""
    task = daemon.submit("sh", "-c", big, cwd=str(repo), worktree=True, title="huge")
    tree = daemon.wait_status(task, Status.SUCCEEDED).worktree
    result = daemon.call(p.Diff(task=task), p.DiffResult)
    assert result.cut and result.files == 1 and result.insertions == 300000
    assert len(result.diff.encode()) <= 4 << 20 and result.diff.endswith("\n")
    assert f"git -C {tree} diff {result.base}" in result.note
    shown = daemon.cli("diff", str(task))
    assert "was cut here" in shown.output


def test_a_task_that_did_not_work_in_a_worktree_says_where_its_changes_are(daemon):
    task = daemon.submit("true")
    daemon.wait_status(task, Status.SUCCEEDED)
    result = daemon.cli("diff", str(task))
    assert result.exit_code == Exit.BAD_INPUT
    assert f"task {task} did not work in a git worktree; its changes are in {daemon.home}" in result.output
    assert daemon.cli("diff", "999").exit_code == Exit.NOT_FOUND


def test_the_changes_are_recorded_when_an_attempt_ends_and_show_prints_them(daemon):
    repo = make_repo(daemon.home / "repo")
    task = daemon.submit("sh", "-c", "printf 'a\\nb\\n' > two.txt; echo more >> README; git add two.txt; git commit -qm two",
                         cwd=str(repo), worktree=True, title="two files")
    view = daemon.wait_status(task, Status.SUCCEEDED)
    assert view.changes is not None
    assert (view.changes.files, view.changes.insertions, view.changes.deletions) == (2, 3, 0)
    assert view.changes.base == git(repo, "rev-parse", "HEAD").strip()
    assert "two.txt | 2 ++" in view.changes.stat
    shown = daemon.cli("show", str(task)).output
    assert f"changes    2 files, +3 -0 (orchestra diff {task})" in shown and "two.txt | 2 ++" in shown
    plain = daemon.submit("true")
    assert daemon.wait_status(plain, Status.SUCCEEDED).changes is None  # no worktree: nothing recorded


SHARED = f"""
worktree = true
[[steps]]
name = "implement"
argv = ["sh", "-c", "printf 'one\\\\ntwo\\\\n' > feature.txt; git add feature.txt; git commit -qm feature"]
[[steps]]
name = "test"
after = ["implement"]
argv = ["sh", "-c", "echo tested >> feature.txt"]
[[steps]]
name = "report"
after = ["test"]
argv = ["{PY}", "-c", "import sys; print('QUOTED:', sys.argv[1])", "{{steps.implement.changes}}"]
"""


def test_a_workflow_s_shared_worktree_has_a_diff_and_later_steps_quote_the_changes(daemon):
    repo = make_repo(daemon.home / "repo")
    write(daemon.paths.config / "workflows" / "shared.toml", SHARED)
    wait_template(daemon, "shared")
    workflow = daemon.call(p.RunWorkflow(template="shared", goal="a feature", cwd=str(repo)), p.WorkflowView).id
    steps = tasks_of(daemon, workflow)
    daemon.wait_status(steps["report"].id, Status.SUCCEEDED)
    steps = tasks_of(daemon, workflow)
    implement, test = daemon.task(steps["implement"].id), daemon.task(steps["test"].id)
    assert (implement.changes.files, implement.changes.insertions) == (1, 2)
    assert (test.changes.files, test.changes.insertions) == (1, 3)  # the workflow's changes so far
    quoted = daemon.output_of(steps["report"].id).decode()
    assert quoted.startswith("QUOTED:") and "feature.txt | 2 ++" in quoted and "1 file changed, 2 insertions(+)" in quoted
    status = daemon.cli("workflow", "status", str(workflow)).output
    assert f"changes of implement (task {implement.id}): 1 file, +2 -0" in status
    assert f"changes of test (task {test.id}): 1 file, +3 -0" in status
    whole = daemon.cli("diff", "--workflow", str(workflow))
    assert whole.exit_code == 0, whole.output
    assert "+one" in whole.output and "+tested" in whole.output
    step = daemon.cli("diff", str(test.id), "--stat")
    assert "feature.txt | 3 +++" in step.output


def test_worktrees_lists_each_one_merged_unmerged_dirty_or_unchanged_with_its_disk_use(daemon):
    repo = make_repo(daemon.home / "repo")
    daemon.cli("config", "set", "max_concurrent", "4")
    commit = "echo {0} > {0}.txt; git add {0}.txt; git commit -qm {0}"
    unmerged = daemon.submit("sh", "-c", commit.format("kept"), cwd=str(repo), worktree=True, title="unmerged")
    merged = daemon.submit("sh", "-c", commit.format("landed"), cwd=str(repo), worktree=True, title="merged")
    dirty = daemon.submit("sh", "-c", "echo draft > draft.txt", cwd=str(repo), worktree=True, title="dirty")
    idle = daemon.submit("true", cwd=str(repo), worktree=True, title="idle")
    for task in (unmerged, merged, dirty, idle):
        daemon.wait_status(task, Status.SUCCEEDED)
    git(repo, "merge", "-q", "--ff-only", f"orchestra/{merged}-merged")

    listing = daemon.call(p.ListWorktrees(), p.WorktreeList)
    by_task = {w.task: w for w in listing.worktrees}
    assert {t: (w.state, w.removable) for t, w in by_task.items()} == {
        unmerged: ("unmerged", False), merged: ("merged", True), dirty: ("dirty", False), idle: ("unchanged", True),
    }
    assert by_task[unmerged].detail == "1 commit not on main" and by_task[dirty].detail == "1 file with uncommitted changes"
    assert all(w.disk_bytes and w.disk_bytes > 0 for w in listing.worktrees)
    assert listing.disk_bytes == sum(w.disk_bytes for w in listing.worktrees) and listing.quota is None

    table = daemon.cli("worktrees").output
    rows = {line.split()[1]: line.split()[2] for line in table.splitlines() if line.startswith("task ")}
    assert rows == {str(unmerged): "unmerged", str(merged): "merged", str(dirty): "dirty", str(idle): "unchanged"}
    assert f"orchestra/{merged}-merged: its commits are on main" in table and "4 worktrees, " in table
    as_json = json.loads(daemon.cli("worktrees", "--json").output)
    assert sorted(w["state"] for w in as_json["worktrees"]) == ["dirty", "merged", "unchanged", "unmerged"]


def test_past_the_quota_a_new_worktree_task_waits_until_an_old_merged_one_is_removed(daemon):
    repo = make_repo(daemon.home / "repo")
    big = f"{PY} -c \"open('big.bin','wb').write(bytes(1 << 20))\"; git add big.bin; git commit -qm big"
    old = daemon.submit("sh", "-c", big, cwd=str(repo), worktree=True, title="old")
    tree = daemon.wait_status(old, Status.SUCCEEDED).worktree
    daemon.call(p.ConfigSet(key="worktree_quota", value=512 * 1024))
    assert daemon.call(p.ListWorktrees(), p.WorktreeList).disk_bytes > 512 * 1024

    new = daemon.submit("true", cwd=str(repo), worktree=True, title="new")
    waiting = wait_for(lambda: "worktree space" in (t := daemon.task(new)).waits_for and t, what="the new task to wait for room")
    assert waiting.status is Status.QUEUED and "of 512.0 KiB used" in waiting.waits_for
    assert "waits for  worktree space (" in daemon.cli("show", str(new)).output
    assert Path(tree).is_dir()  # unmerged: never removed to make room

    git(repo, "merge", "-q", "--ff-only", f"orchestra/{old}-old")
    listing = daemon.call(p.ListWorktrees(), p.WorktreeList)  # looking again sees it merged, and makes room
    # A pass of making room that began before the merge may see it merged first and be removing it.
    assert all(w.state in ("merged", "removing", "missing") for w in listing.worktrees), listing
    daemon.wait_status(new, Status.SUCCEEDED)
    assert not Path(tree).exists()
    assert f"orchestra/{old}-old" in git(repo, "branch", "--list", "orchestra/*")  # its branch stays
    remaining = daemon.call(p.ListWorktrees(), p.WorktreeList).worktrees
    assert [w.task for w in remaining] == [new]


def test_changes_that_cannot_be_measured_are_logged_and_the_task_ends_as_it_would_have(daemon):
    repo = make_repo(daemon.home / "repo")
    task = daemon.submit("sh", "-c", "echo work > out.txt; rm .git", cwd=str(repo), worktree=True, title="breaks git")
    view = daemon.wait_status(task, Status.SUCCEEDED, Status.FAILED)
    assert view.status is Status.SUCCEEDED and view.changes is None
    assert f"task {task}: could not record the changes in" in daemon.output()
