"""The changes a task made in its git worktree: a diff against the commit it started from.

What a worktree holds is compared with its base commit as it is now: the commits on its
branch, and what is not committed yet, tracked edits and new files alike (not ignored
ones). The worktree's own index and files are never touched: its index is copied into a
temporary directory, `git add -A` runs against that copy (`GIT_INDEX_FILE`), and the diff is
of that index against the base (`git diff --cached BASE`). New files become objects in the
repository's store, as `git stash` would make them; nothing else changes.

Every git runs as an asyncio subprocess, so the event loop never waits on one. The diff's
text is read up to a limit and the process stopped there: a huge diff costs the daemon no
more than the limit.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from typing import NamedTuple

from orchestra.shared import protocol as p
from orchestra.shared.vocab import size
from orchestrad import containment
from orchestrad.state import State, Task, Worktree
from orchestrad.worktrees import WorktreeError

DIFF_LIMIT = 4 << 20  # bytes of a diff's text in a reply; past it the text is cut, and says so
STAT_LIMIT = 4000  # characters of a --stat text kept in the log (ChangesRecorded)
STAT_WIDTH = 100  # columns of the --stat graph
TIMEOUT = 60.0  # seconds any one git may take

_QUIET = ("-c", "color.ui=never", "-c", "core.quotepath=off", "-c", "diff.external=")


class Changes(NamedTuple):
    base: str
    head: str  # the commit its branch is at (the committed part of the changes)
    files: int
    insertions: int
    deletions: int
    stat: str  # `git diff --stat` as a person reads it
    diff: str = ""  # the patch, when asked for; at most DIFF_LIMIT bytes
    cut: bool = False  # the patch was longer than that


def worktree_of(state: State, task: Task) -> Worktree | None:
    """The worktree `task` works in: its own, or its workflow's shared one; None if it works
    in no worktree orchestra made (or the worktree has been removed)."""
    if not task.workdir:
        return None
    for tree in state.worktrees.values():
        if tree.task == task.id:
            return tree
    if task.spec.workflow is not None and task.spec.workspace == "shared":
        for tree in state.worktrees.values():
            if tree.task is None and tree.workflow == task.spec.workflow:
                return tree
    return None


def workflow_worktree(state: State, workflow: int) -> Worktree | None:
    for tree in state.worktrees.values():
        if tree.task is None and tree.workflow == workflow:
            return tree
    return None


async def measure(path: str, base: str, *, patch: bool = False, limit: int = DIFF_LIMIT) -> Changes:
    """The changes in the worktree at `path` since `base`, committed or not; with `patch`,
    the diff's text too (cut at `limit` bytes). WorktreeError if git cannot tell."""
    if not os.path.isdir(path):
        raise WorktreeError(f"{path} is gone; its branch may still hold the work")
    head = (await git(path, "rev-parse", "--verify", "HEAD^{commit}")).strip()
    base = base or head
    with tempfile.TemporaryDirectory(prefix="orchestra-diff-") as scratch:
        index = os.path.join(scratch, "index")
        own = (await git(path, "rev-parse", "--path-format=absolute", "--git-path", "index")).strip()
        if os.path.exists(own):
            # copy2: the copy keeps the index's mtime, which tells git which entries it must
            # read again (a same-size change in the second the index was written)
            await asyncio.to_thread(shutil.copy2, own, index)
        env = {**os.environ, "GIT_INDEX_FILE": index}
        await git(path, "add", "-A", "--", ".", env=env)
        numstat = await git(path, "diff", "--cached", "--numstat", "-z", "--no-renames", base, env=env)
        stat = await git(path, "diff", "--cached", f"--stat={STAT_WIDTH}", base, env=env)
        text, cut = ("", False)
        if patch:
            text, cut = await _read_capped(path, ("diff", "--cached", "--no-ext-diff", base), env, limit)
    files, insertions, deletions = _count(numstat)
    return Changes(base, head, files, insertions, deletions, stat.rstrip("\n"), text, cut)


def _count(numstat: str) -> tuple[int, int, int]:
    """Files, insertions, deletions from `git diff --numstat -z` (binary files: "-")."""
    files = insertions = deletions = 0
    for record in numstat.split("\0"):
        parts = record.split("\t")
        if len(parts) < 3:
            continue
        files += 1
        insertions += int(parts[0]) if parts[0].isdigit() else 0
        deletions += int(parts[1]) if parts[1].isdigit() else 0
    return files, insertions, deletions


def summary(files: int, insertions: int, deletions: int) -> str:
    """"3 files, +40 -2"; "no changes"."""
    if not files:
        return "no changes"
    return f"{files} file{'' if files == 1 else 's'}, +{insertions} -{deletions}"


def shorten_stat(stat: str, limit: int = STAT_LIMIT) -> str:
    """A long --stat keeps its first lines and its summary line."""
    if len(stat) <= limit:
        return stat
    lines = stat.splitlines()
    last = lines[-1] if lines else ""
    kept: list[str] = []
    size = len(last) + 40
    for line in lines[:-1]:
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    return "\n".join([*kept, f" … {len(lines) - 1 - len(kept)} more files …", last])


async def git(path: str, *args: str, env: dict[str, str] | None = None) -> str:
    """`git -C path ARGS` as a subprocess; its stdout, or WorktreeError with its stderr."""
    out, err, code = await _run(["git", *_QUIET, "-C", path, *args], env)
    if code != 0:
        words = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise WorktreeError(f"git {' '.join(args[:2])} in {path} failed: {words}")
    return out.decode(errors="replace")


async def _run(argv: list[str], env: dict[str, str] | None) -> tuple[bytes, bytes, int]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )
    containment.OWN.add(proc.pid)  # the loop reaps it, not the sweep for adopted processes
    try:
        out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except asyncio.TimeoutError:
        _kill(proc)
        await proc.wait()
        raise WorktreeError(f"{' '.join(argv[:6])} took longer than {TIMEOUT:g} s; stopped it") from None
    finally:
        containment.OWN.discard(proc.pid)
    return out, err, proc.returncode or 0


async def _read_capped(path: str, args: tuple[str, ...], env: dict[str, str], limit: int) -> tuple[str, bool]:
    """The first `limit` bytes of `git -C path ARGS`'s output, and whether there was more
    (then the process is stopped: the rest is never read)."""
    proc = await asyncio.create_subprocess_exec(
        "git", *_QUIET, "-C", path, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )
    containment.OWN.add(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        async def read() -> tuple[bytes, bool]:
            data = bytearray()
            while len(data) <= limit:
                chunk = await proc.stdout.read(1 << 16)  # type: ignore[union-attr]
                if not chunk:
                    return bytes(data), False
                data += chunk
            return bytes(data[:limit]), True

        try:
            data, cut = await asyncio.wait_for(read(), TIMEOUT)
        except asyncio.TimeoutError:
            _kill(proc)
            await proc.wait()
            raise WorktreeError(f"git diff in {path} took longer than {TIMEOUT:g} s; stopped it") from None
        if cut:
            _kill(proc)
        err = await proc.stderr.read()
        code = await proc.wait()
    finally:
        containment.OWN.discard(proc.pid)
    if not cut and code != 0:
        raise WorktreeError(f"git diff in {path} failed: {err.decode(errors='replace').strip()}")
    text = data.decode(errors="replace")
    if cut:
        text = text[: text.rfind("\n") + 1] if "\n" in text else text  # whole lines only
    return text, cut


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        proc.kill()
    except ProcessLookupError:  # it has ended already
        pass


async def diff(state: State, request: p.Diff) -> p.DiffResult:
    """The answer to `orchestra diff`: the worktree of the task (or workflow) asked for,
    against its base, as it is now."""
    if (request.task is None) == (request.workflow is None):
        raise p.bad_request("name a task, or a workflow (--workflow W), whose changes to show")
    if request.workflow is not None:
        workflow = state.workflows.get(request.workflow)
        if workflow is None:
            raise p.not_found(f"no workflow {request.workflow}; `orchestra workflow status` lists them")
        tree = workflow_worktree(state, workflow.id)
        if tree is None:
            where = "its steps worked in their own worktrees; diff each step's task" if any(
                worktree_of(state, state.tasks[t]) for t in workflow.steps.values() if t in state.tasks
            ) else f"it did not work in a shared git worktree; its changes are in {workflow.cwd}"
            raise p.bad_request(f"workflow {workflow.id} has no shared worktree to diff: {where}")
    else:
        task = state.tasks.get(request.task)  # type: ignore[arg-type]
        if task is None:
            raise p.not_found(f"no task {request.task}; `orchestra ps` lists them")
        tree = worktree_of(state, task)
        if tree is None:
            if task.spec.worktree and not task.workdir:
                raise p.conflict(f"task {task.id} has no worktree yet (it makes one when it starts); ask again once it has started")
            if task.workdir:
                raise p.conflict(f"task {task.id}'s worktree {task.workdir} has been removed; its branch still holds its commits")
            raise p.bad_request(
                f"task {task.id} did not work in a git worktree; its changes are in {task.cwd} (see `git -C {task.cwd} status`)"
            )
    if not tree.base:
        raise p.conflict(f"{tree.path} was made before orchestra recorded where worktrees start from; use `git -C {tree.path} diff <commit>`")
    limit = DIFF_LIMIT if request.limit is None else max(1, min(request.limit, DIFF_LIMIT))
    try:
        found = await measure(tree.path, tree.base, patch=not request.stat, limit=limit)
    except WorktreeError as exc:
        raise p.conflict(f"could not tell the changes in {tree.path}: {exc}") from None
    note = ""
    if found.cut:
        note = (f"the diff is longer than {size(limit)} and was cut here; see all of it with "
                f"`git -C {tree.path} diff {tree.base}` (uncommitted new files: `git -C {tree.path} status`)")
    return p.DiffResult(
        path=tree.path, branch=tree.branch, base=found.base, head=found.head, files=found.files,
        insertions=found.insertions, deletions=found.deletions, stat=found.stat, diff=found.diff, cut=found.cut,
        note=note, task=request.task, workflow=request.workflow if request.workflow is not None else tree.workflow,
    )
