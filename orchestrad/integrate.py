"""Integrating a branch onto its target branch: the git side of the merge queue. Shell: it
runs git (and the checks) as subprocesses; what a merge means is in `orchestrad.merges`.

Nothing here changes the user's own checkout or the target branch until the very end:

* a repository's merges happen in an integration worktree of its own
  (`<state>/integration/<name>`, detached, reused from merge to merge): reset to the target's
  head, the branch merged into it (or rebased onto it), the checks run in it;
* only then is the target moved, and only from the head it had when the merge began (a
  compare-and-swap on the ref: `git update-ref NEW OLD`); where the target is checked out
  (the user's checkout, or another worktree), it is moved by `git merge --ff-only` in that
  checkout, and only when that checkout is clean, so its files follow and nothing of the
  user's is touched; a dirty one is left alone, and the merge stops saying so.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path
from typing import NamedTuple

from orchestra.shared.paths import make_private_dir
from orchestrad import containment
from orchestrad.worktrees import WorktreeError, git as _git

IDENTITY = ("-c", "user.name=orchestra", "-c", "user.email=orchestra@localhost")
TAIL = 4000  # characters of a failed check's output kept in the merge's reason


class Combined(NamedTuple):
    head: str  # the commit that would become the target's head ("" on a conflict)
    conflicts: list[str]  # files in conflict


async def head(repo: str, ref: str) -> str:
    return (await _git("-C", repo, "rev-parse", "--verify", f"{ref}^{{commit}}")).strip()


async def prepare(repo: str, root: Path, name: str) -> str:
    """The repository's integration worktree `root/name`, made if missing (detached)."""
    make_private_dir(root)
    path = root / name
    if not (path / ".git").exists():
        await _git("-C", repo, "worktree", "prune")
        await _git("-C", repo, "worktree", "add", "--detach", "-f", str(path), "HEAD")
    return str(path)


async def _reset(path: str, commit: str) -> None:
    """The integration worktree at `commit`, with no merge or rebase in progress and
    nothing left over."""
    for abort in (("merge", "--abort"), ("rebase", "--abort"), ("cherry-pick", "--abort")):
        try:
            await _git("-C", path, *abort)
        except WorktreeError:
            pass  # none was in progress
    await _git("-C", path, "checkout", "-q", "--detach", "-f", commit)
    await _git("-C", path, "reset", "-q", "--hard", commit)
    await _git("-C", path, "clean", "-q", "-fdx")


async def combine(path: str, branch: str, onto: str, mode: str, message: str) -> Combined:
    """Merge `branch` into `onto` (mode "merge": always a merge commit) or rebase it onto
    `onto` (mode "rebase"), in the integration worktree at `path`. A conflict leaves the
    worktree mid-merge (for a resolver) and names the files."""
    await _reset(path, onto)
    tip = await head(path, f"refs/heads/{branch}")
    if mode == "rebase":
        await _git("-C", path, "checkout", "-q", "--detach", "-f", tip)
        ok = await _try("-C", path, *IDENTITY, "rebase", "-q", onto)
    else:
        ok = await _try("-C", path, *IDENTITY, "merge", "-q", "--no-ff", "--no-edit", "-m", message, tip)
    if not ok:
        return Combined("", await conflicts(path))
    return Combined(await head(path, "HEAD"), [])


async def combine_abort(path: str, onto: str) -> None:
    """Undo a merge that will not go on: the integration worktree back at `onto`."""
    await _reset(path, onto)


async def conflicts(path: str) -> list[str]:
    out = await _git("-C", path, "diff", "--name-only", "--diff-filter=U")
    return sorted({line for line in out.splitlines() if line})


async def resolved(path: str, onto: str, files: list[str]) -> str | None:
    """None when the integration worktree holds a finished merge (or rebase) on `onto`:
    nothing in conflict, no conflict markers left in `files`, none in progress, nothing
    uncommitted; else what is left to do."""
    left = await conflicts(path)
    if left:
        return f"still in conflict: {', '.join(left)}"
    marked = [f for f in files if _has_markers(Path(path) / f)]
    if marked:
        return f"conflict markers are left in {', '.join(marked)}"
    git_dir = Path((await _git("-C", path, "rev-parse", "--absolute-git-dir")).strip())
    if (git_dir / "MERGE_HEAD").exists() or (git_dir / "rebase-merge").exists() or (git_dir / "rebase-apply").exists():
        return "the merge was not committed (`git commit --no-edit` finishes it)"
    if (await _git("-C", path, "status", "--porcelain", "--untracked-files=no")).strip():
        return "there are uncommitted changes"
    now = await head(path, "HEAD")
    if now == onto or not await _ancestor(path, onto, now):
        return "the result is not a commit on top of the target"
    return None


def _has_markers(file: Path) -> bool:
    try:
        lines = file.read_bytes().splitlines()
    except OSError:
        return False  # deleted: a resolution too
    return any(line.startswith((b"<<<<<<< ", b">>>>>>> ")) for line in lines) and b"=======" in lines


async def _ancestor(path: str, older: str, newer: str) -> bool:
    return await _try("-C", path, "merge-base", "--is-ancestor", older, newer)


async def _try(*args: str) -> bool:
    try:
        await _git(*args)
    except WorktreeError:
        return False
    return True


async def check(path: str, command: str, timeout: float, env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """Run the shell line `command` in `path`: (its exit code, None if it timed out; the
    tail of its output)."""
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", command, cwd=path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, env=env,
    )
    containment.OWN.add(proc.pid)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        code: int | None = proc.returncode
    except asyncio.TimeoutError:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = await proc.communicate()
        code = None
    finally:
        containment.OWN.discard(proc.pid)
    return code, out.decode(errors="replace")[-TAIL:]


async def checked_out(repo: str, branch: str) -> str | None:
    """The worktree (the user's checkout, or another) where `branch` is checked out, if any."""
    out = await _git("-C", repo, "worktree", "list", "--porcelain")
    path = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            path = line.removeprefix("worktree ")
        elif line == f"branch refs/heads/{branch}" and path is not None:
            return path
    return None


async def advance(repo: str, target: str, old: str, new: str) -> str | None:
    """Move branch `target` from `old` to `new`; None when done, else why it was not (the
    target moved meanwhile, or its checkout has work of the user's in it)."""
    checkout = await checked_out(repo, target)
    if checkout is None:
        if not await _try("-C", repo, "update-ref", "-m", "orchestra merge", f"refs/heads/{target}", new, old):
            return f"{target} moved while the merge ran"
        return None
    if (await _git("-C", checkout, "status", "--porcelain", "--untracked-files=no")).strip():
        return (
            f"{target} is checked out in {checkout} with uncommitted changes, so it was left as it is; "
            f"commit or stash them there, then merge again"
        )
    if await head(checkout, "HEAD") != old:
        return f"{target} moved while the merge ran"
    if not await _try("-C", checkout, "merge", "-q", "--ff-only", new):
        return f"{target} could not be moved forward in {checkout} (an untracked file there would be overwritten?)"
    return None


async def delete_branch(repo: str, branch: str) -> None:
    await _git("-C", repo, "branch", "-q", "-D", branch)
