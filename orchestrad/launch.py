"""Starting a task's process: where it works, what it is told, what it finds in its
environment. The engine's `_start` strings these together once the start is durable.

* `prepared` — a task as its agent sees it: a workflow step's goal and earlier steps'
  results filled into its prompt (or argv), its budget what it may still spend. Pure.
* `task_env` — the task's own environment values, from the env store.
* `environment` — the whole environment of the process: what it inherits from the daemon
  (`agentenv`), its own values, and its mark.
* `Workdirs` — its working directory: its own git worktree, its workflow's shared one
  (made once, on first need), or the directory it was submitted from.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Callable

import msgspec

from orchestra.shared.vocab import shorten
from orchestrad import agentenv, budgets, orphans, worktrees
from orchestrad import events as ev
from orchestrad import workflows as workflows_mod
from orchestrad.agents import Agent
from orchestrad.budgets import Day
from orchestrad.config import Config
from orchestrad.envstore import EnvStore
from orchestrad.executor import SpawnError
from orchestrad.state import State, Task
from orchestrad.worktrees import WorktreeError


def prepared(state: State, task: Task, day: Day | None = None) -> Task:
    """The task as its agent should see it: a workflow step's prompt (or argv) with the
    goal and the earlier steps' results filled in, and as its budget what it may still
    spend under the tightest of its budgets (`orchestrad.budgets`) on `day`."""
    left = budgets.left(state, task, day) if day is not None else None
    if left is not None:
        task = msgspec.structs.replace(task, spec=msgspec.structs.replace(task.spec, budget_usd=left))
    workflow = state.workflows.get(task.spec.workflow) if task.spec.workflow else None
    if workflow is None:
        return task
    results = {}
    changed = {}
    for step, step_task in workflow.steps.items():
        t = state.tasks.get(step_task)
        if t is not None:
            results[step] = (t.status.value, t.result)
            if t.changes is not None:
                changed[step] = t.changes.stat or "no changes"
    spec = msgspec.structs.replace(
        task.spec,
        prompt=workflows_mod.render(task.spec.prompt, workflow.goal, results, changed),
        argv=[workflows_mod.render(a, workflow.goal, results, changed) for a in task.spec.argv],
    )
    return msgspec.structs.replace(task, spec=spec)


def task_env(store: EnvStore, task: Task) -> dict[str, str]:
    """The task's own environment: its values from the env store (and, for tasks of logs
    older than the store, the values the log kept). SpawnError if any is missing."""
    if not task.spec.secret_env:
        return dict(task.spec.env)
    try:
        stored = store.get(task.id) or {}
    except (OSError, ValueError) as exc:  # msgspec's DecodeError is a ValueError
        raise SpawnError(f"could not read its stored environment: {exc}") from None
    missing = [name for name in task.spec.secret_env if name not in stored]
    if missing:
        raise SpawnError(
            f"its environment values ({', '.join(missing)}) are missing from the daemon's env store "
            f"({store.directory}); submit the task again"
        )
    return {**task.spec.env, **stored}


def environment(base: dict[str, str], agent: Agent, config: Config, own: dict[str, str], mark: str) -> dict[str, str]:
    """Everything the process finds in its environment: its kind's defaults, unless the
    daemon's environment or the task's own set them otherwise."""
    return {
        **agent.default_env,
        **agentenv.inherited(base, (*agent.inherit_env, *config.pass_env)),
        **own,
        orphans.VARIABLE: mark,
    }


def shown(argv: list[str], limit: int = 200) -> list[str]:
    """The argv as recorded: long arguments (a role's whole prompt) are shortened."""
    return [shorten(a, limit) for a in argv]


async def _shared_head(state: State, workflow, task: Task) -> str | None:
    """Where a workflow step of its own starts: its workflow's shared worktree as the steps
    before it left it (what they left uncommitted committed to that branch first, when no
    step works there now), so that a tester sees the implementer's change; None if the
    workflow has no shared worktree yet."""
    if not workflow.workdir:
        return None
    shared = [
        t for t in workflow.steps.values()
        if t in state.tasks and t != task.id and state.tasks[t].spec.workspace == "shared" and state.tasks[t].status.active
    ]
    path = next((wt.path for wt in state.worktrees.values() if wt.workflow == workflow.id and wt.task is None), None)
    if path is None:
        return None
    if not shared:
        await worktrees.save(path, f"orchestra: the work of workflow {workflow.id}'s steps so far, for step {task.spec.step}")
    return (await worktrees.git("-C", path, "rev-parse", "HEAD")).strip()


class Workdirs:
    """Where tasks work, making their git worktrees under `root` as they start."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._shared: dict[int, asyncio.Future] = {}  # workflow -> its shared worktree being made
        self._locks: dict[int, asyncio.Lock] = {}  # workflow -> held while its own steps branch from the shared one

    async def workdir(self, state: State, task: Task, record: Callable[[list[ev.Event]], object]) -> str:
        """The task's working directory; a worktree made for it is recorded with `record`."""
        if not task.spec.worktree or task.workdir:
            return task.cwd
        if self.root is None:
            raise WorktreeError("this daemon has no state directory for worktrees")
        workflow = state.workflows.get(task.spec.workflow) if task.spec.workflow else None
        if workflow is not None and task.spec.workspace == "shared":
            job = self._shared.get(workflow.id)
            if job is None:
                name = f"w{workflow.id}-{worktrees.slug(workflow.goal)}"
                job = asyncio.ensure_future(worktrees.create(workflow.cwd or task.spec.cwd, self.root, name))
                self._shared[workflow.id] = job
                made = await job
                record([ev.WorktreeCreated(
                    path=made.path, branch=made.branch, repo=made.repo, workflow=workflow.id, workdir=made.workdir,
                    base=made.base, target=made.target,
                )])
            else:
                await job
            return state.tasks[task.id].cwd
        start = None
        if workflow is not None:
            async with self._locks.setdefault(workflow.id, asyncio.Lock()):  # one save at a time in its tree
                start = await _shared_head(state, workflow, task)
        made = await worktrees.create(task.spec.cwd, self.root, f"{task.id}-{worktrees.slug(task.spec.title)}", start)
        record([ev.WorktreeCreated(
            path=made.path, branch=made.branch, repo=made.repo, task=task.id, workdir=made.workdir, base=made.base, target=made.target,
        )])
        return made.workdir
