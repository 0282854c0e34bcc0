"""Real git repositories for tests: `git` runs it, `make_repo` makes one with a commit."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git(cwd: Path | str, *args: str) -> str:
    """git `args` in `cwd`; its stdout, stripped (CalledProcessError if it fails)."""
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path) -> Path:
    """A repository at `path` on branch main, with one commit holding README ("start")."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "t@example.com")
    git(path, "config", "user.name", "t")
    (path / "README").write_text("start\n")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "start")
    return path


def racily_change(repo: Path, name: str, text: str) -> None:
    """Write `text` (the same size as what is committed) to `name` in `repo` so that only
    its content tells it changed: stat checks narrowed to mtime and size, and the file, its
    index entry and the index file all stamped with one old mtime. git reads such a
    "racily clean" entry again only because it is as new as the index file."""
    git(repo, "config", "core.checkStat", "minimal")
    git(repo, "config", "core.trustctime", "false")
    path = repo / name
    old = path.stat().st_mtime_ns - 100 * 10**9
    os.utime(path, ns=(old, old))
    git(repo, "update-index", "-q", "--refresh")  # the entry caches the old mtime
    path.write_text(text)
    os.utime(path, ns=(old, old))
    os.utime(repo / ".git" / "index", ns=(old, old))
    assert name in git(repo, "diff", "--name-only")
