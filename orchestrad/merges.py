"""The merge queue, the pure part: which branches a `Merge` request queues, what a workflow
that merges at its end queues, what a resolver task is told, and which merge runs next.

A task that worked in a git worktree leaves its work on a branch; `orchestra merge ID`
queues that branch to be put on its target (the branch its worktree started from, or
`--into`). A workflow run with `--merge` (or a template with `merge = true`) queues its
branches once every step has succeeded: its shared worktree's first, then its steps' own,
in step order. Merges run one at a time, in the order they were queued, so each starts from
the target as the one before left it. What a merge does (an integration worktree, the
checks, moving the target only when they pass, the user's checkout) is the shell's:
`orchestrad.merger`, with git in `orchestrad.integrate`.
"""

from __future__ import annotations

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status, bad_request, conflict, not_found
from orchestrad import config as config_mod
from orchestrad import events as ev
from orchestrad import limits
from orchestrad.state import Merge, State, Worktree, Workflow

RUNNING = ("merging", "resolving")
MAX_CHECKS = 64


def queue(state: State, cmd: p.Merge) -> list[ev.Event]:
    """The `MergeQueued` events of a `Merge` request, or an error that says what to do."""
    mode = cmd.mode or state.config.merge_mode
    if mode not in config_mod.MERGE_MODES:
        raise bad_request(f"mode must be one of {', '.join(config_mod.MERGE_MODES)}, not {mode!r}")
    if len(cmd.checks) > MAX_CHECKS:
        raise bad_request(f"at most {MAX_CHECKS} checks, not {len(cmd.checks)}")
    for check in cmd.checks:
        if not check.strip():
            raise bad_request("a check is a shell line, and this one is empty")
        limits.length("check", check, p.MAX_PROMPT)
    if cmd.into is not None:
        limits.text("target branch", cmd.into, p.MAX_NAME)
    if not cmd.tasks and cmd.workflow is None:
        raise bad_request("say what to merge: task ids, or --workflow W")
    found: list[tuple[Worktree, int | None, int | None]] = []
    for task_id in dict.fromkeys(cmd.tasks):
        found.append((_of_task(state, task_id), task_id, None))
    if cmd.workflow is not None:
        workflow = state.workflows.get(cmd.workflow)
        if workflow is None:
            raise not_found(f"no workflow {cmd.workflow}; `orchestra workflow status` lists them")
        unfinished = [t for t in workflow.steps.values() if t in state.tasks and not state.tasks[t].status.finished]
        if unfinished:
            raise conflict(f"workflow {workflow.id} is still running (task {unfinished[0]}); merge it once it has ended")
        branches = branches_of(state, workflow)
        if not branches:
            raise conflict(f"workflow {workflow.id} ran without a git worktree, so it has no branch to merge")
        found += [(wt, wt.task, workflow.id) for wt in branches]
    return _queued(state, found, cmd.into, mode, [*cmd.checks, *state.config.merge_checks], cmd.resolve)


def _queued(
    state: State, found: list[tuple[Worktree, int | None, int | None]], into: str | None, mode: str, checks: list[str],
    resolve: bool, first: int | None = None,
) -> list[ev.Event]:
    waiting = {(state.merges[m].repo, state.merges[m].branch) for m in state.merge_queue}
    events: list[ev.Event] = []
    seen: set[str] = set()
    for wt, task, workflow in found:
        if wt.branch in seen:
            continue
        seen.add(wt.branch)
        if (wt.repo, wt.branch) in waiting:
            raise conflict(f"{wt.branch} is in the merge queue already; `orchestra merge --status` shows it")
        target = into or wt.target
        if not target:
            who = f"task {task}" if task is not None else f"workflow {workflow}"
            raise bad_request(f"{who}'s worktree started from a detached HEAD: say which branch to merge it onto with --into BRANCH")
        events.append(ev.MergeQueued(
            merge=(state.next_merge if first is None else first) + len(events), repo=wt.repo, branch=wt.branch, target=target, mode=mode,
            checks=list(dict.fromkeys([*checks, *own_checks(state, wt)])), resolve=resolve, task=task, workflow=workflow if workflow is not None else wt.workflow,
            delete_branch=state.config.delete_merged_branches,
        ))
    return events


def own_checks(state: State, wt: Worktree) -> list[str]:
    """The acceptance checks of the tasks that worked in `wt`: they run on the merged tree too."""
    if wt.task is not None:
        tasks = [wt.task]
    else:
        workflow = state.workflows.get(wt.workflow) if wt.workflow is not None else None
        tasks = [t for t in workflow.steps.values() if t in state.tasks and state.tasks[t].spec.workspace == "shared"] if workflow else []
    return [c for t in tasks if t in state.tasks for c in state.tasks[t].spec.checks]


def _of_task(state: State, task_id: int) -> Worktree:
    task = state.tasks.get(task_id)
    if task is None:
        raise not_found(f"no task {task_id}; `orchestra ps` lists tasks")
    if not task.status.finished:
        raise conflict(f"task {task_id} is {task.status.value}; merge it once it has finished")
    for wt in state.worktrees.values():
        if wt.task == task_id:
            return wt
    workflow = state.workflows.get(task.spec.workflow) if task.spec.workflow is not None else None
    if workflow is not None and task.spec.worktree and task.spec.workspace == "shared":
        for wt in state.worktrees.values():
            if wt.workflow == workflow.id and wt.task is None:
                return wt
    raise conflict(f"task {task_id} did not work in a git worktree, so it has no branch to merge; its changes are in {task.cwd}")


def branches_of(state: State, workflow: Workflow) -> list[Worktree]:
    """A workflow's worktrees, in the order they merge: the shared one, then each step's own."""
    shared = [wt for wt in state.worktrees.values() if wt.workflow == workflow.id and wt.task is None]
    by_task = {wt.task: wt for wt in state.worktrees.values() if wt.task is not None}
    return shared + [by_task[t] for t in workflow.steps.values() if t in by_task]


def due(state: State) -> list[ev.Event]:
    """What workflows that merge at their end call for now: their branches queued once every
    step succeeded (or was skipped by its condition), or a note that nothing is merged."""
    events: list[ev.Event] = []
    for workflow_id in sorted(state.merge_pending):
        workflow = state.workflows[workflow_id]
        tasks = [state.tasks[t] for t in workflow.steps.values() if t in state.tasks]
        if any(not t.status.finished or t.status is Status.INTERRUPTED for t in tasks):
            continue  # not over (an interrupted step may be resumed)
        bad = next((t for t in tasks if t.status is not Status.SUCCEEDED and not t.reason.startswith("skipped:")), None)
        if bad is not None:
            events.append(ev.MergesSkipped(workflow=workflow_id, reason=f"not merged: step {bad.spec.step} {bad.status.value}"))
            continue
        branches = branches_of(state, workflow)
        if not branches or any(not wt.target for wt in branches):
            why = "it ran without a git worktree" if not branches else "its worktree started from a detached HEAD"
            events.append(ev.MergesSkipped(workflow=workflow_id, reason=f"not merged: {why}"))
            continue
        checks = list(state.config.merge_checks)
        found = [(wt, wt.task, workflow_id) for wt in branches]
        first = state.next_merge + sum(isinstance(e, ev.MergeQueued) for e in events)
        events += _queued(state, found, None, state.config.merge_mode, checks, False, first)
    return events


def next_to_start(state: State) -> int | None:
    """The merge to carry out when the shell runs none: the first in the queue (one that
    says it is merging or resolving was cut off by a stop of the daemon, and goes on)."""
    return state.merge_queue[0] if state.merge_queue else None


RESOLVE_PROMPT = (
    "Resolve the merge conflicts in this git worktree. Branch {branch} is being merged onto {target}, "
    "and these files conflict: {files}.\n\n"
    "Edit each file so that it keeps what both sides meant, with no conflict markers left; then "
    "`git add` the files and finish the merge with `git commit --no-edit`. Change nothing else."
)


def resolver(state: State, m: Merge, files: list[str], task_id: int) -> ev.TaskSubmitted:
    """The task that resolves merge `m`'s conflicts in its integration worktree."""
    config = state.config
    prompt = RESOLVE_PROMPT.format(branch=m.branch, target=m.target, files=", ".join(files))
    spec = ev.TaskSpec(
        prompt=prompt, argv=[], role="implementer", agent=config.default_agent if config.default_agent != "command" else "claude",
        priority=10, after=[], cwd=m.path, env={}, secret_env=[], timeout=config.default_timeout,
        idle_timeout=config.default_idle_timeout, budget_usd=None, model=None,
        title=f"resolve merge {m.id}: {m.branch} onto {m.target}",
    )
    return ev.TaskSubmitted(task=task_id, spec=spec)


def view(m: Merge) -> p.MergeView:
    return p.MergeView(
        id=m.id, status=m.status, branch=m.branch, target=m.target, repo=m.repo, mode=m.mode, task=m.task,
        workflow=m.workflow, checks=m.checks, reason=m.reason, conflicts=m.conflicts, resolver=m.resolver, head=m.head,
        queued_at=m.queued_at, finished_at=m.finished_at, path=m.path,
    )


def listing(state: State, limit: int, queued: list[int] | None = None) -> p.MergeQueue:
    """The queue's merges and the latest `limit` finished ones, oldest first."""
    finished = [m for m in state.merges.values() if m.status not in ("queued", *RUNNING)]
    shown = sorted(finished, key=lambda m: m.id)[-max(0, limit):] if limit else []
    shown += [state.merges[m] for m in state.merge_queue]
    return p.MergeQueue(merges=[view(m) for m in sorted(shown, key=lambda m: m.id)], queued=queued or [])
