"""The merge queue against a plain git script doing the same merges.

    .venv/bin/python bench/bench_merge.py [--branches 50] [--runs 3]

Setup (not timed): a repository whose `main` is checked out (the user's checkout), and
`--branches` worktree tasks (command agents), each committing one small file of its own on
its branch. Then, in each run, side by side on the same machine:

* orchestra: one `Merge` request for every task's branch with a trivial check (`true`),
  timed until the last merge has ended (`orchestra merge --wait` does the same);
* the anchor: a bash script doing the same merges with the same guarantees by hand: in an
  integration worktree, for each branch: reset it to main and clean it, `git merge
  --no-ff`, run the check, make sure the user's checkout has no uncommitted changes, then
  move main forward there (`git merge --ff-only`). Orchestra does as much, and also looks
  for work the branch's task left uncommitted, and records each merge in its log.

Before each side, main (and the checkout) is put back where it started; after it, both
sides must have produced the same tree. Target (issue 17): orchestra ≤ 1.3× the script.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestra.shared import protocol as p  # noqa: E402
from tests.daemon import Daemon  # noqa: E402

SCRIPT = r"""
set -e
repo=$1; int=$2; shift 2
[ -e "$int/.git" ] || git -C "$repo" worktree add -q --detach "$int" main
for branch in "$@"; do
  git -C "$int" reset -q --hard main
  git -C "$int" clean -q -fdx
  git -C "$int" -c user.name=script -c user.email=s@localhost merge -q --no-ff --no-edit "$branch"
  (cd "$int" && sh -c true)
  [ -z "$(git -C "$repo" status --porcelain --untracked-files=no)" ] || { echo "main's checkout is dirty" >&2; exit 1; }
  git -C "$repo" merge -q --ff-only "$(git -C "$int" rev-parse HEAD)"
done
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--branches", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    d = Daemon()
    d.start()
    try:
        repo = d.home / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        (repo / "README").write_text("start\n")
        git(repo, "add", ".")
        git(repo, "-c", "user.name=b", "-c", "user.email=b@localhost", "commit", "-q", "-m", "start")
        start = git(repo, "rev-parse", "main")
        d.call(p.ConfigSet(key="max_concurrent", value=4))
        tasks = []
        for i in range(args.branches):
            line = f"echo {i} > f{i}.txt && git add f{i}.txt && git -c user.name=b -c user.email=b@localhost commit -qm 'change {i}'"
            tasks.append(d.call(p.Submit(argv=["sh", "-c", line], cwd=str(repo), worktree=True, title=f"change {i}"), p.TaskView).id)
        for t in tasks:
            done = d.wait_status(t, *p.FINISHED, timeout=120)
            assert done.status is p.Status.SUCCEEDED, f"task {t} {done.status.value}: {done.reason}"
        branches = [git(repo, "for-each-ref", "--format=%(refname:short)", f"refs/heads/orchestra/{t}-*") for t in tasks]
        ours: list[float] = []
        theirs: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.runs):
                git(repo, "reset", "-q", "--hard", start)
                began = time.perf_counter()
                queued = d.call(p.Merge(tasks=tasks, checks=["true"]), p.MergeQueue).queued

                with d.connect() as conn:  # one connection, asking only for the merges not finished
                    while conn.call(p.MergeStatus(limit=0), p.MergeQueue).merges:
                        time.sleep(0.02)
                ours.append(time.perf_counter() - began)
                shown = {m.id: m for m in d.call(p.MergeStatus(limit=p.PAGE_MAX), p.MergeQueue).merges}
                assert all(shown[i].status == "merged" for i in queued), [shown[i].reason for i in queued if shown[i].status != "merged"]
                tree = git(repo, "rev-parse", "main^{tree}")

                git(repo, "reset", "-q", "--hard", start)
                began = time.perf_counter()
                subprocess.run(["bash", "-c", SCRIPT, "merge", str(repo), f"{tmp}/int", *branches], check=True)
                theirs.append(time.perf_counter() - began)
                assert git(repo, "rev-parse", "main^{tree}") == tree, "the two sides made different trees"
        o, t = statistics.median(ours), statistics.median(theirs)
        print(f"{args.branches} branches, {args.runs} runs (median): orchestra {o:.2f} s ({o / args.branches * 1000:.0f} ms a merge), "
              f"plain git script {t:.2f} s ({t / args.branches * 1000:.0f} ms a merge): {o / t:.2f}x")
        print("orchestra runs:", ", ".join(f"{x:.2f}" for x in ours), "· script runs:", ", ".join(f"{x:.2f}" for x in theirs))
        pairs = [a / b for a, b in zip(ours, theirs)]
        print(f"each run's ratio: {', '.join(f'{x:.2f}' for x in pairs)} (median {statistics.median(pairs):.2f})")
    finally:
        d.cleanup()


if __name__ == "__main__":
    main()
