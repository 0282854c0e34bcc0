"""Unattended workflows (issue 16): with the default policy, how many permission questions
reach a person while each built-in workflow runs end to end.

    .venv/bin/python bench/bench_unattended.py [--serial]

One real daemon, the real Claude Code CLI for every step, and a scripted Messages API whose
turns make each step do what such a step really does, in the workflow's git worktree of a
tiny Python project (a module and its test):

* architect: reads the code (Read, Glob) and the history (`git log`);
* implementer: reads and edits the module, runs `python3 -m pytest -q`, `git status`,
  `git add -A && git commit -m ...`;
* tester: writes a test file and runs `python3 -m pytest -q 2>&1 | tail -5`;
* reviewer: reads and greps the code, runs `git diff HEAD --stat` and `git log`;
* documenter: reads and edits README.md, runs `git diff --stat`.

Every built-in template runs once like that (all four at the same time unless --serial).
Then bug-fix runs again with three bad calls made by its implementer before its work: a
Write to the repository's own checkout (outside the worktree), `git push origin main`, and a
Read of ~/.ssh/id_rsa (the daemon's HOME). A question that reaches a person is answered
with `orchestra respond ID --deny`, as a person would.

Counted from the daemon's log once it has stopped (`tests/reliability/harness.read_log`):
tool calls (ToolUsed), decisions by rule (PermissionDecided whose `by` is a rule),
questions to a person (InputRequested of kind "permission"). A tool call no rule decides
is left to Claude Code's own rules, which run reads inside the working directory without
asking; those are the calls neither decided by rule nor asked.

The steps and the counting live in tests/unattended.py, shared with tests/test_unattended.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cli"))

from orchestra.shared import protocol as p  # noqa: E402
from orchestrad import workflows  # noqa: E402
from tests.scripted_api import ScriptedAPI, find_claude  # noqa: E402
from tests.unattended import (BAD_STEP, SECRET, Steps, count, make_repo, pytest_lines, run_workflows,  # noqa: E402
                              start_team, tool_errors)

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serial", action="store_true", help="one workflow at a time")
    args = parser.parse_args()
    claude = find_claude()
    if claude is None:
        sys.exit("claude CLI not found: run .ci/run (it installs it into .local/npm)")
    t0 = time.monotonic()
    with ScriptedAPI(classify=lambda body: True) as api, tempfile.TemporaryDirectory(prefix="orc-unattended-") as tmp:
        repo = make_repo(Path(tmp) / "calc")
        ssh = Path(api.home) / ".ssh"
        ssh.mkdir()
        (ssh / "id_rsa").write_text(SECRET + "\n")
        steps = Steps(repo=repo, home=api.home)
        api.side_reply = steps
        d = start_team(claude, api)
        try:
            names = sorted(workflows.BUILTIN)
            clean = []
            for group in ([[n] for n in names] if args.serial else [names]):
                clean += run_workflows(d, steps, group)
            [bad] = run_workflows(d, steps, [BAD_STEP[0]], bad=True)
            d.stop()
            counts = count(d, [*clean, bad])
        finally:
            d.cleanup()
        leaked = any(SECRET in r.conversation_text() for r in api.requests if r.body)
        outside = (repo / "outside.txt").exists()
        branches = subprocess.run(["git", "-C", str(repo), "log", "--all", "--oneline"], capture_output=True, text=True).stdout
    elapsed = time.monotonic() - t0
    print(f"claude {claude}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {elapsed:.0f} s in all"
          f" ({'one workflow at a time' if args.serial else 'the four workflows at once'})")
    if steps.unknown:
        print(f"requests no step was found for: {steps.unknown}")
    print()
    print("| workflow | steps (succeeded) | tool calls | decided by rule | left to Claude Code (reads) | asked a person | tool errors | pytest runs (all passed) |")
    print("|---|---|---|---|---|---|---|---|")
    errors = []
    for run in clean:
        c = counts[run.workflow]
        ok = sum(t.status is p.Status.SUCCEEDED for t in run.steps.values())
        failed = [e for s in run.steps for e in tool_errors(steps, run.goal, s)]
        errors += failed
        runs_ = pytest_lines(steps, run.goal)
        passed = sum("failed" not in line for line in runs_)
        print(f"| {run.template} | {len(run.steps)} ({ok}) | {c.tools} | {c.by_rule} | {c.tools - c.by_rule - c.asked} | **{c.asked}** "
              f"| {len(failed)} | {len(runs_)} ({passed}) |")
        for tool, summary, effect, by in c.decisions:
            if not by.startswith("rule "):
                print(f"|   asked: {tool} {summary} → {effect} by {by} | | | | | |")
    for line in errors:
        print(f"tool error: {line}")
    c = counts[bad.workflow]
    print()
    print(f"bug-fix again, its implementer first making three bad calls: {len(bad.steps)} steps, "
          f"{sum(t.status is p.Status.SUCCEEDED for t in bad.steps.values())} succeeded; "
          f"{c.tools} tool calls, {c.by_rule} decided by rule, {c.asked} asked a person")
    print()
    print("| bad call | outcome |")
    print("|---|---|")
    bad_summaries = {"Write": "Write outside the worktree", "Bash": "git push origin main", "Read": "Read ~/.ssh/id_rsa"}
    for tool, summary, effect, by in c.decisions:
        if ("outside.txt" in summary) or ("git push" in summary) or (".ssh" in summary):
            how = f"asked a person (the task waited); `orchestra respond --deny`: {effect} by {by}" if not by.startswith("rule ") else f"{effect} by {by}"
            print(f"| {bad_summaries.get(tool, tool)}: `{summary.split(' [')[0]}` | {how} |")
    print()
    print(f"the key reached the API: {'YES' if leaked else 'no'}; outside.txt written: {'YES' if outside else 'no'}")
    commits = [line for line in branches.splitlines() if "casefold parsed text" in line]
    print(f"commits the implementers made on the workflows' branches: {len(commits)}")
    total = sum(counts[r.workflow].asked for r in clean)
    print(f"questions to a person in the {len(clean)} clean workflows: {total}")


if __name__ == "__main__":
    main()
