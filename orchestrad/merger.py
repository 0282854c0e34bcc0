"""Carrying out the merge queue: one merge at a time, in the order `orchestrad.merges` says.
Shell: it runs git through `orchestrad.integrate` and records what happens through the
engine (MergeStarted, MergeConflicted with a resolver task, MergeFinished).

A merge: the branch's worktree has what its task left uncommitted committed to the branch
first (as cleanup does); the branch is merged (or rebased) onto the target's head in the
repository's integration worktree; on a conflict the merge stops with the files, target
untouched, or (`--resolve`) a resolver task is submitted to work in the integration
worktree and the merge goes on once it succeeded and left a finished merge; the checks
run; only then does the target move (`integrate.advance`). A target that moved meanwhile
is merged onto again, from its new head. A daemon that stopped mid-merge starts that merge
again when it comes back (a resolver it was waiting for is waited for again).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from orchestra.shared.protocol import Status
from orchestrad import events as ev
from orchestrad import integrate, merges, worktrees
from orchestrad.worktrees import WorktreeError

if TYPE_CHECKING:
    from orchestrad.engine import Engine

log = logging.getLogger(__name__)

ATTEMPTS = 3  # merges onto a target that keeps moving meanwhile, before giving up


class Merger:
    def __init__(self, engine: "Engine", root: Path | None) -> None:
        self.engine = engine
        self.root = root
        self._job: asyncio.Task | None = None
        self._ended: dict[int, asyncio.Future] = {}  # resolver task -> set when it ends
        self._closed = False
        self._checkouts: dict[tuple[str, str], str | None] = {}  # (repo, target) -> where it was checked out

    def saw(self, events: list[ev.Event]) -> None:
        """Told of every batch recorded: a resolver that ended, a merge newly queued."""
        for event in events:
            if isinstance(event, ev.TaskFinished | ev.TaskCancelled):
                future = self._ended.pop(event.task, None)
                if future is not None and not future.done():
                    future.set_result(None)
        if self.engine.state.merge_queue and self._job is None:
            asyncio.get_running_loop().call_soon(self.poke)

    def poke(self) -> None:
        """Start the next merge if none runs."""
        if self._job is not None or self._closed or not self.engine.accepting:
            return
        merge = merges.next_to_start(self.engine.state)
        if merge is None:
            return
        self._job = asyncio.get_running_loop().create_task(self._run(merge))

    async def close(self) -> None:
        """At shutdown, first: the merge running stops, unrecorded, and runs again next time."""
        self._closed = True
        if self._job is not None:
            self._job.cancel()
            try:
                await self._job
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self, merge_id: int) -> None:
        try:
            await self._merge(merge_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or git gone wrong: say so on the merge, go on with the next
            log.exception("merge %s failed", merge_id)
            await self._finish(merge_id, "failed", f"the merge could not be carried out: {exc}")
        finally:
            self._job = None
            if not self._closed:
                asyncio.get_running_loop().call_soon(self.poke)

    async def _merge(self, merge_id: int) -> None:
        if self.root is None:
            await self._finish(merge_id, "failed", "this daemon has no state directory for an integration worktree")
            return
        m = self.engine.state.merges[merge_id]
        if m.status in ("resolving", "merging") and m.resolver is not None:  # the daemon came back while it was resolved
            await self._resolved(m.id, m.path, m.onto)
            return
        await self._save_branch(m)
        path = await integrate.prepare(m.repo, self.root, _name(m.repo))
        for _ in range(ATTEMPTS):
            try:
                where = await integrate.target(m.repo, m.target, self._checkouts.get((m.repo, m.target)))
            except WorktreeError:
                await self._finish(m.id, "failed", f"there is no branch {m.target} in {m.repo} to merge onto")
                return
            self._checkouts[(m.repo, m.target)] = where.checkout
            onto = where.head
            self.engine.record_nowait([ev.MergeStarted(merge=m.id, onto=onto, path=path)])  # made durable with what follows
            message = f"Merge branch '{m.branch}' into {m.target}\n\nMerged by orchestra (merge {m.id})"
            combined = await integrate.combine(path, m.branch, onto, m.mode, message)
            if combined.conflicts:
                await self._conflicted(m.id, path, onto, combined.conflicts)
                return
            if not await self._checked(m.id, path, onto):
                return
            why = await integrate.advance(m.repo, m.target, onto, combined.head, where.checkout)
            if why is not None and why.endswith("moved while the merge ran"):
                self._checkouts.pop((m.repo, m.target), None)
                continue
            if why is not None:
                await self._finish(m.id, "failed", why)
                return
            await self._done(m.id, combined.head)
            return
        await self._finish(m.id, "failed", f"{m.target} kept moving while it was merged onto ({ATTEMPTS} times); merge again")

    async def _save_branch(self, m) -> None:
        """What the branch's finished task left uncommitted goes on the branch first."""
        state = self.engine.state
        for wt in state.worktrees.values():
            if wt.branch != m.branch or wt.repo != m.repo or not os.path.isdir(wt.path):
                continue
            if wt.task is not None:
                owners = [wt.task]
            else:
                owners = list(state.workflows[wt.workflow].steps.values()) if wt.workflow in state.workflows else []
            if all(state.tasks[t].status.finished for t in owners if t in state.tasks):  # nobody works there now
                await worktrees.save(wt.path, f"orchestra: what was left uncommitted before merge {m.id}")

    async def _conflicted(self, merge_id: int, path: str, onto: str, files: list[str]) -> None:
        m = self.engine.state.merges[merge_id]
        if not m.resolve:
            await integrate.combine_abort(path, onto)
            reason = (
                f"{m.branch} conflicts with {m.target} in {', '.join(files)}; {m.target} was not touched. "
                f"Merge it by hand, or again with --resolve to have a resolver task do it"
            )
            await self._finish(merge_id, "conflicted", reason, files=files)
            return
        state = self.engine.state
        task_id = state.next_task
        await self.engine.record([merges.resolver(state, m, files, task_id), ev.MergeConflicted(merge=merge_id, files=files, resolver=task_id)])
        await self._resolved(merge_id, path, onto)

    async def _resolved(self, merge_id: int, path: str, onto: str) -> None:
        m = self.engine.state.merges[merge_id]
        task_id = m.resolver
        assert task_id is not None
        task = self.engine.state.tasks.get(task_id)
        if task is not None and not task.status.finished:
            future = self._ended.setdefault(task_id, asyncio.get_running_loop().create_future())
            await future
            task = self.engine.state.tasks.get(task_id)
        if task is None or task.status is not Status.SUCCEEDED:
            ended = f"ended {task.status.value}" + (f" ({task.reason})" if task.reason else "") if task else "is gone"
            await integrate.combine_abort(path, onto)
            await self._finish(merge_id, "failed", f"the resolver task {task_id} {ended}; {m.target} was not touched", files=m.conflicts)
            return
        why = await integrate.resolved(path, onto, m.conflicts)
        if why is not None:
            await integrate.combine_abort(path, onto)
            await self._finish(merge_id, "failed", f"the resolver task {task_id} finished, but {why}; {m.target} was not touched", files=m.conflicts)
            return
        new = await integrate.head(path, "HEAD")
        await self.engine.record([ev.MergeResolved(merge=merge_id, head=new)])
        if not await self._checked(merge_id, path, onto):
            return
        where = await integrate.target(m.repo, m.target, self._checkouts.get((m.repo, m.target)))
        why = await integrate.advance(m.repo, m.target, onto, new, where.checkout) if where.head == onto else (
            f"{m.target} moved while the conflict was resolved; merge again"
        )
        if why is not None:
            await self._finish(merge_id, "failed", why)
            return
        await self._done(merge_id, new)

    async def _checked(self, merge_id: int, path: str, onto: str) -> bool:
        m = self.engine.state.merges[merge_id]
        timeout = self.engine.state.config.merge_check_timeout
        for command in m.checks:
            code, tail = await integrate.check(path, command, timeout, self.engine.base_env)
            if code != 0:
                how = f"timed out after {timeout:g} s" if code is None else f"exited {code}"
                await integrate.combine_abort(path, onto)
                reason = f"check failed: {command} {how}; {m.target} was not touched" + (f"\n{tail.rstrip()}" if tail.strip() else "")
                await self._finish(merge_id, "failed", reason)
                return False
        return True

    async def _done(self, merge_id: int, head: str) -> None:
        m = self.engine.state.merges[merge_id]
        if m.delete_branch:
            await self._delete_branch(m)
        await self._finish(merge_id, "merged", "", head=head)

    async def _delete_branch(self, m) -> None:
        try:
            for wt in list(self.engine.state.worktrees.values()):
                if wt.branch == m.branch and wt.repo == m.repo:
                    await worktrees.remove(wt.repo, wt.path)
                    await self.engine.record([ev.WorktreeRemoved(path=wt.path)])
            await integrate.delete_branch(m.repo, m.branch)
        except WorktreeError as exc:
            log.warning("merge %s: merged, but its branch was not deleted: %s", m.id, exc)

    async def _finish(self, merge_id: int, outcome: str, reason: str, *, head: str = "", files: list[str] | None = None) -> None:
        if self._closed:  # the daemon is stopping: a check it killed says nothing; the merge runs again
            return
        # Not waited for: the next merge may start while this is made durable (in the same
        # group commit as its own start). Lost in a crash, the merge runs again, and a branch
        # already on the target merges as nothing to do.
        self.engine.record_nowait([ev.MergeFinished(merge=merge_id, outcome=outcome, reason=reason, head=head, files=files or [])])


def _name(repo: str) -> str:
    """The integration worktree's name for `repo`: its name and a hash of its path."""
    return f"{worktrees.slug(Path(repo).name, 24)}-{hashlib.sha1(repo.encode()).hexdigest()[:8]}"
