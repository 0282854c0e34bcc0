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

import os
from pathlib import Path
from typing import NamedTuple

from orchestra.shared.paths import make_private_dir
from orchestrad import procs, worktrees
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
        async with worktrees.repo_lock(repo):
            await _git("-C", repo, "worktree", "prune")
            await _git("-C", repo, "worktree", "add", "--detach", "-f", str(path), "HEAD")
    return str(path)


_GIT_DIRS: dict[str, Path] = {}  # an integration worktree -> its git directory


async def _git_dir(path: str) -> Path:
    found = _GIT_DIRS.get(path)
    if found is None or not found.is_dir():
        found = _GIT_DIRS[path] = Path((await _git("-C", path, "rev-parse", "--absolute-git-dir")).strip())
    return found


async def _head(path: str) -> str:
    """The commit of the integration worktree's (detached) HEAD, read from its git
    directory when it is a plain commit id, else from git."""
    try:
        text = (await _git_dir(path) / "HEAD").read_text().strip()
    except OSError:
        text = ""
    if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text):
        return text
    return await head(path, "HEAD")


_IN_PROGRESS = {"MERGE_HEAD": ("merge", "--abort"), "rebase-merge": ("rebase", "--abort"),
                "rebase-apply": ("rebase", "--abort"), "CHERRY_PICK_HEAD": ("cherry-pick", "--abort")}


async def _reset(path: str, commit: str) -> None:
    """The integration worktree at `commit`, detached, with no merge or rebase in
    progress and nothing left over."""
    git_dir = await _git_dir(path)
    # Only the merge queue works here, one merge at a time: a lock file left is from a git
    # that died mid-merge (the daemon killed with it).
    for lock in git_dir.glob("*.lock"):
        lock.unlink(missing_ok=True)
    for name, abort in _IN_PROGRESS.items():
        if (git_dir / name).exists():
            await _try("-C", path, *abort)
    try:
        detached = not (git_dir / "HEAD").read_text().startswith("ref:")
    except OSError:
        detached = False
    if not detached:
        await _git("-C", path, "checkout", "-q", "--detach", "-f", commit)
    await _git("-C", path, "reset", "-q", "--hard", commit)
    await _git("-C", path, "clean", "-q", "-fdx")


async def combine(path: str, branch: str, onto: str, mode: str, message: str) -> Combined:
    """Merge `branch` into `onto` (mode "merge": always a merge commit) or rebase it onto
    `onto` (mode "rebase"), in the integration worktree at `path`. A conflict leaves the
    worktree mid-merge (for a resolver) and names the files."""
    await _reset(path, onto)
    if mode == "rebase":
        await _git("-C", path, "checkout", "-q", "--detach", "-f", f"refs/heads/{branch}")
        ok = await _try("-C", path, *IDENTITY, "rebase", "-q", onto)
    else:
        ok = await _try("-C", path, *IDENTITY, "merge", "-q", "--no-ff", "--no-edit", "-m", message, f"refs/heads/{branch}")
    if not ok:
        return Combined("", await conflicts(path))
    return Combined(await _head(path), [])


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
    git_dir = await _git_dir(path)
    if (git_dir / "MERGE_HEAD").exists() or (git_dir / "rebase-merge").exists() or (git_dir / "rebase-apply").exists():
        return "the merge was not committed (`git commit --no-edit` finishes it)"
    if (await _git("-C", path, "status", "--porcelain", "--untracked-files=no")).strip():
        return "there are uncommitted changes"
    now = await _head(path)
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
    code, out, _ = await procs.run(["sh", "-c", command], cwd=path, env=env, timeout=timeout, merge_stderr=True, new_session=True)
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


class Target(NamedTuple):
    head: str  # the commit the branch is at
    checkout: str | None  # the worktree where it is checked out, if any


async def target(repo: str, branch: str, checkout: str | None = None) -> Target:
    """Where `branch` is now, and where it is checked out; `checkout` is where it was last
    time (checked with one `git status`, so that a queue of merges onto one branch does
    not list the worktrees each time)."""
    if checkout is not None and os.path.isdir(checkout):
        oid = _read_ref(repo, branch)  # `advance` checks it is still checked out there, at that commit
        if oid:
            return Target(oid, checkout)
    checkout = await checked_out(repo, branch)
    return Target(await head(repo, f"refs/heads/{branch}"), checkout)


def _read_ref(repo: str, branch: str) -> str | None:
    """The commit branch `branch` of the repository at `repo` points to, read from its
    files (a loose ref, else packed-refs) without starting git; None when it cannot be
    read that way (another ref storage, a repository that is itself a worktree)."""
    git_dir = Path(repo) / ".git"
    try:
        text = (git_dir / "refs" / "heads" / branch).read_text().strip()
    except OSError:
        text = ""
        try:
            for line in (git_dir / "packed-refs").read_text().splitlines():
                if line.endswith(f" refs/heads/{branch}"):
                    text = line.split(" ", 1)[0]
        except OSError:
            return None
    return text if len(text) in (40, 64) and all(c in "0123456789abcdef" for c in text) else None


async def advance(repo: str, target: str, old: str, new: str, checkout: str | None) -> str | None:
    """Move branch `target` from `old` to `new`, through `checkout` when it is checked out
    there; None when done, else why it was not (the target moved meanwhile, or its
    checkout has work of the user's in it)."""
    if checkout is None:
        if await checked_out(repo, target) is not None:
            return f"{target} moved while the merge ran"  # checked out meanwhile: look again
        if not await _try("-C", repo, "update-ref", "-m", "orchestra merge", f"refs/heads/{target}", new, old):
            return f"{target} moved while the merge ran"
        return None
    on, oid, dirty = await worktrees.status(checkout)
    if dirty:
        return (
            f"{target} is checked out in {checkout} with uncommitted changes, so it was left as it is; "
            f"commit or stash them there, then merge again"
        )
    if on != target or oid != old:
        return f"{target} moved while the merge ran"
    if not await _try("-C", checkout, "merge", "-q", "--ff-only", new):
        return f"{target} could not be moved forward in {checkout} (an untracked file there would be overwritten?)"
    return None


async def delete_branch(repo: str, branch: str) -> None:
    await _git("-C", repo, "branch", "-q", "-D", branch)
