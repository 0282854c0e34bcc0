"""Retention: forgetting finished work past `retention_days`, and the disk it used.

`cleanup` removes the worktrees of finished work past the retention, each only once its
work is safe on its branch (`worktrees.save`: what was left uncommitted is committed
first; a worktree whose commits are on no branch is kept, with the reason, unless forced),
purges those tasks (`decide.purge`), writes a snapshot, and drops the log segments nothing
needs any more. The daemon runs it every few hours; `orchestra cleanup` runs it now.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from orchestra.shared import protocol as p
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad import worktrees
from orchestrad.worktrees import WorktreeError

if TYPE_CHECKING:
    from orchestrad.engine import Engine

log = logging.getLogger(__name__)


async def cleanup(engine: "Engine", force: bool = False) -> p.CleanupResult:
    saved, kept = await _remove_old_worktrees(engine, force)
    now = engine.clock()
    old = engine.store.history.finished_before(now - engine.state.config.retention_days * 86400)
    events = d.purge(engine.state, now, old)
    if events:
        await engine.record(events)
    store = engine.store
    await store.snapshot_settled()
    store.snapshot_now()
    segments, freed = store.compact()
    return p.CleanupResult(
        purged=events[0].tasks if events else [],  # type: ignore[attr-defined]
        segments_removed=segments,
        bytes_freed=freed,
        saved=saved,
        kept=kept,
    )


async def _remove_old_worktrees(engine: "Engine", force: bool) -> tuple[list[str], list[str]]:
    """Remove the worktrees of finished work past the retention, each once its work is
    safe on its branch. Returns what was saved and what was kept (and why)."""
    state = engine.state
    horizon = engine.clock() - state.config.retention_days * 86400
    saved: list[str] = []
    kept: list[str] = []
    for tree in list(state.worktrees.values()):
        if tree.task is not None:
            owners = [tree.task]
        else:
            workflow = state.workflows.get(tree.workflow) if tree.workflow is not None else None
            owners = list(workflow.steps.values()) if workflow is not None else []
        tasks = [engine.store.task(t) for t in owners]
        if not all(t is None or (t.status.finished and (t.finished_at or 0) < horizon) for t in tasks):
            continue
        whose = f"task {tree.task}" if tree.task is not None else f"workflow {tree.workflow}"
        try:
            committed, keep = await worktrees.save(tree.path, f"orchestra: uncommitted work of {whose}, saved before its worktree was removed")
        except WorktreeError as exc:
            committed, keep = False, f"{tree.path}: could not save its uncommitted work ({exc}); use --force to remove it anyway"
        if committed:
            saved.append(f"{tree.path}: uncommitted work committed to {tree.branch}")
        if keep is not None and not force:
            log.warning("keeping worktree %s", keep)
            kept.append(keep)
            continue
        try:
            await worktrees.remove(tree.repo, tree.path)
        except WorktreeError as exc:
            log.warning("could not remove worktree %s: %s", tree.path, exc)
            kept.append(f"{tree.path}: could not be removed: {exc}")
            continue
        await engine.record([ev.WorktreeRemoved(path=tree.path)])
    return saved, kept
