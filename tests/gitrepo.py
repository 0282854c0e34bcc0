"""Real git repositories for tests: `git` runs it, `make_repo` makes one with a commit."""

from __future__ import annotations

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
