"""`diff`: what a worktree task changed; `worktrees`: every worktree, merged or not, and its disk."""

from __future__ import annotations

import sys

import click

from orchestra.shared import protocol as p
from orchestra.shared.vocab import size
from orchestra.commands.base import App, Exit, emit, fail, json_option, task_id


@click.command()
@click.argument("task", required=False, type=task_id)
@click.option("--stat", is_flag=True, help="Only the files changed and their counts, not the patch.")
@click.option("--workflow", "-w", "workflow", type=task_id, help="A workflow's shared worktree instead of one task's.")
@json_option
@click.pass_obj
def diff(app: App, task, stat, workflow, as_json):
    """What TASK changed in its git worktree since the commit it started from: its commits
    and what it left uncommitted, new files included (ignored ones are not). A step of a
    workflow that shares one worktree shows the workflow's changes so far."""
    if (task is None) == (workflow is None):
        fail("name a task (orchestra diff ID) or a workflow (orchestra diff --workflow W)", Exit.BAD_INPUT)
    result = app.call(p.Diff(task=task, stat=stat, workflow=workflow), p.DiffResult, timeout=120.0)
    if as_json:
        emit(result, True, str)
        return
    out = sys.stdout
    head = f"# {result.path} ({result.branch}) against {result.base[:12]}: {_summary(result)}"
    try:
        out.write(head + "\n")
        if stat or not result.diff:
            out.write((result.stat or "no changes") + "\n")
        else:
            out.write(result.diff)
        out.flush()
    except BrokenPipeError:  # `orchestra diff 3 | head`
        sys.stderr.close()
        return
    if result.note:
        click.echo(f"note: {result.note}", err=True)


def _summary(result) -> str:
    if not result.files:
        return "no changes"
    return f"{result.files} file{'' if result.files == 1 else 's'}, +{result.insertions} -{result.deletions}"


@click.command()
@json_option
@click.pass_obj
def worktrees(app: App, as_json):
    """Every git worktree orchestra keeps: whose it is, its branch, whether its work is
    merged into the branch it started from, unmerged, dirty (uncommitted changes) or
    unchanged, and the disk it uses. Past worktree_quota, merged and unchanged worktrees of
    finished tasks are removed to make room (their branches stay)."""
    emit(app.call(p.ListWorktrees(), p.WorktreeList, timeout=120.0), as_json, _table)


def _table(result: p.WorktreeList) -> str:
    if not result.worktrees:
        return "no worktrees" + (f" (quota {size(result.quota)})" if result.quota is not None else "")
    headers = ("FOR", "STATE", "DISK", "BRANCH", "PATH")
    rows = []
    for w in result.worktrees:
        whose = f"task {w.task}" if w.task is not None else f"workflow {w.workflow}"
        state = w.state + ("" if w.finished else ", in use")
        rows.append((whose, state, size(w.disk_bytes), w.branch, w.path))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in [headers, *rows]]
    lines += [f"  {w.branch}: {w.detail}" for w in result.worktrees if w.detail]
    quota = f" of a {size(result.quota)} quota" if result.quota is not None else ""
    lines.append(f"{len(result.worktrees)} worktree{'' if len(result.worktrees) == 1 else 's'}, {size(result.disk_bytes)}{quota}")
    return "\n".join(lines)
