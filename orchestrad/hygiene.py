"""Worktree hygiene: what each worktree holds, the disk they use, and room under the quota.

Each worktree orchestra keeps is in one of these states, told by git:

* `dirty` — it has uncommitted changes (tracked edits or new files, not ignored ones);
* `unchanged` — no commit beyond the one it started from, and nothing uncommitted;
* `merged` — its branch's head is on the branch it started from (`git merge-base
  --is-ancestor`): its work is there;
* `unmerged` — its branch has commits that branch does not (or it started from a detached
  HEAD, so there is no branch to compare with);
* `missing` — its directory is gone.

A worktree may be removed to make room when every task it is for has ended and nothing
would be lost: it is merged or unchanged (a task that was cancelled or failed before it
changed anything is one way to be unchanged), and not dirty. Its branch stays. Never one
with unmerged commits or uncommitted work.

`worktree_quota` bounds the disk all worktrees together use. The disk use is measured here
(`du`), in the shell, when a worktree is made, when an attempt in it ends, when the quota is
set and when `orchestra worktrees` asks; the scheduler is given the total (`plan(...,
worktree_use=)`) and keeps new worktree tasks queued while it is past the quota, and then
the engine asks this module to make room: removable worktrees go, oldest first, until the
use is under the quota again (each removal is a `WorktreeRemoved`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from typing import TYPE_CHECKING, Iterable

from orchestra.shared import protocol as p
from orchestrad import containment, worktrees
from orchestrad import events as ev
from orchestrad.changes import git
from orchestrad.state import State, Worktree
from orchestrad.worktrees import WorktreeError

if TYPE_CHECKING:
    from orchestrad.engine import Engine

log = logging.getLogger(__name__)


def finished(state: State, tree: Worktree) -> bool:
    """Every task the worktree is for has ended (or is gone)."""
    if tree.task is not None:
        owners = [tree.task]
    else:
        workflow = state.workflows.get(tree.workflow) if tree.workflow is not None else None
        owners = list(workflow.steps.values()) if workflow is not None else []
    return all(state.tasks[t].status.finished for t in owners if t in state.tasks)


async def inspect(tree: Worktree) -> tuple[str, str]:
    """The worktree's state (see above) and the same in words."""
    if not os.path.isdir(tree.path):
        return "missing", "its directory is gone"
    try:
        dirty = [line for line in (await git(tree.path, "status", "--porcelain", "--untracked-files=all")).splitlines() if line]
        if dirty:
            return "dirty", f"{len(dirty)} file{'' if len(dirty) == 1 else 's'} with uncommitted changes"
        head = (await git(tree.path, "rev-parse", "--verify", "HEAD^{commit}")).strip()
        if tree.base and head == tree.base:
            return "unchanged", "no commits since it started"
        if not tree.target:
            return "unmerged", "it started from a detached HEAD, so there is no branch to compare it with"
        try:
            await git(tree.path, "merge-base", "--is-ancestor", head, f"refs/heads/{tree.target}")
            return "merged", f"its commits are on {tree.target}"
        except WorktreeError:
            pass
        count = (await git(tree.path, "rev-list", "--count", head, "--not", f"refs/heads/{tree.target}")).strip()
        return "unmerged", f"{count} commit{'' if count == '1' else 's'} not on {tree.target}"
    except WorktreeError as exc:
        return "unknown", str(exc)


async def disk_use(path: str) -> int | None:
    """The disk `path` uses, in bytes (`du -sk`); None if it cannot be told."""
    if not os.path.isdir(path):
        return None
    proc = await asyncio.create_subprocess_exec(
        "du", "-sk", path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    containment.OWN.add(proc.pid)
    try:
        out, _ = await proc.communicate()
    finally:
        containment.OWN.discard(proc.pid)
    try:
        return int(out.split()[0]) * 1024
    except (IndexError, ValueError):
        return None


class Hygiene:
    """The engine's measures of the worktrees' disk use, and its making of room."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}  # worktree path -> bytes, as last measured
        self._room: asyncio.Task | None = None
        self._room_seq = -1  # the state's last_seq when room was last made (or found not to be)
        self._measuring: set[asyncio.Task] = set()
        self.removing: set[str] = set()  # worktrees being removed to make room

    def used(self, state: State) -> int:
        return sum(self.sizes.get(path, 0) for path in state.worktrees)

    def forget(self, path: str) -> None:
        self.sizes.pop(path, None)

    async def measure(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        for path, size in zip(paths, await asyncio.gather(*(disk_use(x) for x in paths))):
            if size is None:
                self.sizes.pop(path, None)
            else:
                self.sizes[path] = size

    def remeasure(self, engine: "Engine", paths: Iterable[str]) -> None:
        """Measure `paths` in the background, then plan again."""

        async def run() -> None:
            try:
                await self.measure(paths)
            except Exception:
                log.exception("could not measure the disk use of worktrees")
            engine.schedule()

        job = asyncio.get_running_loop().create_task(run())
        self._measuring.add(job)
        job.add_done_callback(self._measuring.discard)

    def make_room(self, engine: "Engine") -> None:
        """Remove removable worktrees, oldest first, until the use is under the quota; then
        plan again. Tried once per change of the state: a worktree that was not removable
        becomes so by a fact (its task ended) or by git (its branch was merged, which is
        seen when `orchestra worktrees` looks again: `look_again`)."""
        if self._room is not None and not self._room.done():
            return
        if self._room_seq == engine.state.last_seq:
            return
        self._room_seq = engine.state.last_seq
        self._room = asyncio.get_running_loop().create_task(self._make_room(engine))

    def look_again(self) -> None:
        self._room_seq = -1

    async def _make_room(self, engine: "Engine") -> None:
        try:
            state = engine.state
            quota = state.config.worktree_quota
            for tree in sorted(state.worktrees.values(), key=lambda t: t.created_at):
                if quota is None or self.used(engine.state) <= quota:
                    break
                if tree.path not in engine.state.worktrees or not finished(engine.state, tree):
                    continue
                kind, detail = await inspect(tree)
                if kind not in ("merged", "unchanged"):
                    continue
                self.removing.add(tree.path)
                try:
                    try:
                        await worktrees.remove(tree.repo, tree.path)
                    except WorktreeError as exc:
                        log.warning("could not remove worktree %s to make room: %s", tree.path, exc)
                        continue
                    log.info("removed worktree %s (%s) to make room under worktree_quota", tree.path, detail)
                    await engine.record([ev.WorktreeRemoved(path=tree.path)])
                finally:
                    self.removing.discard(tree.path)
                self._room_seq = engine.state.last_seq
        except Exception:
            log.exception("could not make room for worktrees")
        finally:
            engine.schedule()

    async def listing(self, state: State) -> p.WorktreeList:
        """Every worktree, its state and disk use (measured now)."""
        trees = sorted(state.worktrees.values(), key=lambda t: t.created_at)
        await self.measure(t.path for t in trees)
        found = await asyncio.gather(*(inspect(t) for t in trees))
        views = []
        for tree, (kind, detail) in zip(trees, found):
            if tree.path in self.removing or tree.path not in state.worktrees:  # what git said of it was half-way
                kind, detail = "removing", "being removed to make room under worktree_quota"
            done = finished(state, tree)
            views.append(p.WorktreeView(
                path=tree.path, branch=tree.branch, repo=tree.repo, task=tree.task, workflow=tree.workflow,
                state=kind, detail=detail, disk_bytes=self.sizes.get(tree.path), base=tree.base, target=tree.target,
                finished=done, removable=done and kind in ("merged", "unchanged"),
            ))
        return p.WorktreeList(worktrees=views, disk_bytes=self.used(state), quota=state.config.worktree_quota)

    async def settle(self) -> None:
        jobs = [*self._measuring, *([self._room] if self._room is not None else [])]
        if jobs:
            await asyncio.gather(*jobs, return_exceptions=True)
