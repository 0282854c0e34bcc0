"""Git worktrees for tasks that must not collide: each on a new branch from the current HEAD.

A task with `--worktree` (or whose role or workflow step asks for one) works in
`<state dir>/worktrees/<id>-<slug>` on branch `orchestra/<id>-<slug>`; a workflow's shared
steps work in one worktree of the workflow's, `orchestra/w<id>-<slug>`. Cleanup removes the
worktree directories of finished work past retention and keeps the branches, which hold
the work: what was left uncommitted is first committed to the branch (`save`), and a
worktree whose work cannot be put on a branch is kept.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path
from typing import NamedTuple

from orchestra.shared.paths import make_private_dir
from orchestrad import procs


class WorktreeError(Exception):
    pass


def slug(text: str, limit: int = 32) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:limit].rstrip("-") or "task"


async def repo_root(cwd: str) -> str | None:
    """The top of the git repository holding `cwd`, or None if it is not in one."""
    try:
        return (await git("-C", cwd, "rev-parse", "--show-toplevel")).strip() or None
    except (WorktreeError, OSError):
        return None


async def git(*args: str) -> str:
    """Run git with `args`; its stdout, or a WorktreeError with what it said."""
    code, out, err = await procs.run(["git", *args], finish=True)
    if code != 0:
        raise WorktreeError(f"git {' '.join(args[:3])} failed: {err.decode(errors='replace').strip() or out.decode(errors='replace').strip()}")
    return out.decode(errors="replace")


class Made(NamedTuple):
    """A worktree just made: where, on which branch, of which repository, where the task
    works inside it, and what it started from (the commit, and the branch HEAD was on: ""
    for a detached HEAD)."""

    path: str
    branch: str
    repo: str
    workdir: str
    base: str
    target: str


_LOCKS: dict[str, asyncio.Lock] = {}


def repo_lock(repo: str) -> asyncio.Lock:
    """Held while a repository's worktrees are added or removed: git reads the other
    worktrees' files as it adds one, and one half made fails it ("failed to read
    .git/worktrees/X/commondir"), so two tasks starting at once in one repository must not
    both add theirs at the same moment."""
    return _LOCKS.setdefault(os.path.realpath(repo), asyncio.Lock())


async def create(cwd: str, root: Path, name: str, start: str | None = None) -> Made:
    """Make a worktree `root/name` on branch `orchestra/name` from HEAD of the repository at
    `cwd` (or from the commit `start`); its target is the branch HEAD is on either way."""
    repo = (await git("-C", cwd, "rev-parse", "--show-toplevel")).strip()
    async with repo_lock(repo):
        return await _create(cwd, repo, root, name, start)


async def _create(cwd: str, repo: str, root: Path, name: str, start: str | None) -> Made:
    base = (await git("-C", repo, "rev-parse", "--verify", f"{start or 'HEAD'}^{{commit}}")).strip()
    try:
        target = (await git("-C", repo, "symbolic-ref", "-q", "--short", "HEAD")).strip()
    except WorktreeError:
        target = ""
    make_private_dir(root)
    path = root / name
    branch = f"orchestra/{name}"
    await git("-C", repo, "worktree", "add", "-b", branch, str(path), base)
    # Keep the task in the same subdirectory of the repository it was submitted from.
    inside = Path(cwd).resolve().relative_to(Path(repo).resolve())
    return Made(str(path), branch, repo, str(path / inside), base, target)


async def remove(repo: str, path: str) -> None:
    """Remove the worktree directory; its branch stays. Call `save` first."""
    async with repo_lock(repo):
        await git("-C", repo, "worktree", "remove", "--force", path)


SAVED_BY = "Saved-by: orchestra cleanup"


async def status(path: str, *, untracked: bool = False) -> tuple[str, str, bool]:
    """A checkout's branch ("" for a detached HEAD), the commit HEAD is at ("" before the
    first), and whether it has uncommitted changes (untracked files counted when asked):
    all from one `git status`."""
    out = await git("-C", path, "status", "--porcelain=v2", "--branch", f"--untracked-files={'all' if untracked else 'no'}")
    branch = oid = ""
    dirty = False
    for line in out.splitlines():
        if line.startswith("# branch.head "):
            branch = line.removeprefix("# branch.head ")
            branch = "" if branch == "(detached)" else branch
        elif line.startswith("# branch.oid "):
            oid = line.removeprefix("# branch.oid ")
            oid = "" if oid == "(initial)" else oid
        elif line and not line.startswith("#"):
            dirty = True
    return branch, oid, dirty


async def save(path: str, message: str) -> tuple[bool, str | None]:
    """Make sure removing the worktree at `path` loses nothing: commit what is uncommitted
    (tracked changes and untracked files, not ignored ones) to the branch it is on, as a
    commit marked as orchestra's. Returns (whether a commit was made, None) when the work
    is safe on a branch, or (False, why it must be kept)."""
    if not os.path.isdir(path):
        return False, None
    branch, _, dirty = await status(path, untracked=True)
    if not branch:
        if dirty:
            return False, f"{path} has uncommitted changes on a detached HEAD; commit them to a branch, or use --force"
        if not (await git("-C", path, "for-each-ref", "--contains", "HEAD", "refs/heads")).strip():
            return False, f"{path} is at a detached HEAD whose commits are on no branch; put them on one, or use --force"
        return False, None
    if not dirty:
        return False, None
    await git("-C", path, "add", "-A")
    await git(
        "-C", path, "-c", "user.name=orchestra", "-c", "user.email=orchestra@localhost",
        "commit", "--no-verify", "--no-gpg-sign", "-q", "-m", f"{message}\n\n{SAVED_BY}",
    )
    return True, None
