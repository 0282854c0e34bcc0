"""`merge`: put tasks' branches on their target branch through the merge queue."""

from __future__ import annotations

import time

import click

from orchestra.shared import protocol as p
from orchestra.shared.vocab import shorten
from orchestra.commands.base import App, Exit, emit, fail, json_option, task_id

DONE = ("merged", "conflicted", "failed", "cancelled")


@click.command()
@click.argument("tasks", nargs=-1, type=task_id)
@click.option("--workflow", "-w", type=task_id, help="Merge the branches of workflow W (its shared one, then its steps' own).")
@click.option("--into", help="The branch to merge onto [default: the branch each started from].")
@click.option("--rebase", "mode", flag_value="rebase", default=None, help="Rebase onto the target instead of a merge commit.")
@click.option("--merge-commit", "mode", flag_value="merge", help="A merge commit (the default, unless merge_mode says otherwise).")
@click.option("--check", "checks", multiple=True, help="A shell line that must pass in the merged tree before the target moves (repeatable).")
@click.option("--resolve", is_flag=True, help="On a conflict, a resolver task resolves it instead of stopping.")
@click.option("--status", "show_status", is_flag=True, help="Show the merge queue instead.")
@click.option("--wait", is_flag=True, help="Wait until the merges queued have ended; exit 1 unless all merged.")
@json_option
@click.pass_obj
def merge(app: App, tasks, workflow, into, mode, checks, resolve, show_status, wait, as_json):
    """Merge the branches of TASKS (or of --workflow W) onto their target, one at a time:
    each is merged in an integration worktree, the checks run there, and only then does the
    target branch move. Your checkout is never left changed or broken."""
    if show_status:
        if tasks or workflow is not None:
            fail("--status shows the whole queue; give it no task or workflow", Exit.BAD_INPUT)
        emit(app.call(p.MergeStatus(), p.MergeQueue), as_json, lambda q: table(q.merges))
        return
    queued = app.call(p.Merge(tasks=list(tasks), workflow=workflow, into=into, mode=mode, checks=list(checks), resolve=resolve), p.MergeQueue)
    if not wait:
        emit(queued, as_json, lambda q: "\n".join(f"merge {m.id} queued: {m.branch} onto {m.target}" for m in q.merges if m.id in q.queued))
        return
    ids = set(queued.queued)
    while True:
        now = app.call(p.MergeStatus(limit=p.PAGE_MAX), p.MergeQueue)
        mine = [m for m in now.merges if m.id in ids]
        if all(m.status in DONE for m in mine):
            break
        time.sleep(0.2)
    emit(p.MergeQueue(merges=mine, queued=sorted(ids)), as_json, lambda q: table(q.merges))
    if any(m.status != "merged" for m in mine):
        raise SystemExit(Exit.TASK_FAILED)


def table(merges: list[p.MergeView]) -> str:
    """The merge queue, a line each, with why a merge stopped under it."""
    if not merges:
        return "the merge queue is empty"
    lines = [f"{'ID':<4}{'STATUS':<12}{'BRANCH':<36}{'TARGET':<16}FROM"]
    for m in merges:
        origin = f"task {m.task}" if m.task is not None else f"workflow {m.workflow}" if m.workflow is not None else ""
        status = m.status + (f" ({m.resolver})" if m.status == "resolving" and m.resolver else "")
        lines.append(f"{m.id:<4}{status:<12}{shorten(m.branch, 34):<36}{shorten(m.target, 14):<16}{origin}")
        if m.status == "merged" and m.head:
            lines.append(f"      {m.target} is now at {m.head[:12]}")
        elif m.reason:
            lines += [f"      {line}" for line in m.reason.splitlines()[:12]]
    return "\n".join(lines)
