"""Helper processes (orchestrad.procs) cancelled as the daemon stops: a git command is let
finish, so it leaves no lock file in the user's repository; a check is killed at once."""

from __future__ import annotations

import asyncio
import time

from orchestrad import procs, worktrees
from tests.gitrepo import git, make_repo


async def cancelled_after(coro, seconds: float) -> None:
    job = asyncio.ensure_future(coro)
    await asyncio.sleep(seconds)
    job.cancel()
    try:
        await job
    except asyncio.CancelledError:
        pass


def test_a_command_let_finish_runs_to_its_end_and_one_not_is_killed(tmp_path):
    finished, killed = tmp_path / "finished", tmp_path / "killed"
    asyncio.run(cancelled_after(procs.run(["sh", "-c", f"sleep 0.5; touch {finished}"], finish=True), 0.1))
    assert finished.exists()
    asyncio.run(cancelled_after(procs.run(["sh", "-c", f"sleep 0.5; touch {killed}"]), 0.1))
    time.sleep(0.7)
    assert not killed.exists()


def test_a_git_cancelled_mid_write_leaves_no_lock_and_the_repository_usable(tmp_path):
    repo = make_repo(tmp_path / "repo")
    # A hook makes the commit slow: git holds index.lock while it runs.
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nsleep 0.5\n")
    hook.chmod(0o755)
    (repo / "README").write_text("changed\n")
    asyncio.run(cancelled_after(worktrees.git("-C", str(repo), "commit", "-qam", "slow"), 0.2))
    assert not (repo / ".git" / "index.lock").exists()
    assert git(repo, "log", "-1", "--format=%s") == "slow"
    git(repo, "commit", "--allow-empty", "-qm", "and the next one")
