"""Verify: what follows an agent's attempt that ended well. Pure: the shell runs the checks
and looks at git, and asks here what it means.

A task may carry acceptance checks (`submit --check CMD`, a step's or a role's `check`),
shell lines run in order as `sh -c CMD` in its directory once its agent ends well; it
may expect a change (`expects_change`: the built-in implementer does); and it may need a
person's review (`--review`). Any of these, and the end of an attempt is not yet success:

* the task is `checking` (`ChecksStarted`, round 1, 2, ...): it keeps its slot;
* if it expects a change and its git directory is as it was when it first started, it
  fails: its agent said it was done but changed nothing;
* each check runs (`CheckStarted`, `CheckFinished`); all pass: it succeeds, or waits in
  `review` for a person (`ReviewRequested`: no process, no slot);
* one fails: an agent that converses is told, in the same session, which check failed and
  how its output ends (`TaskContinued` "follow-up", with the round), and its next attempt
  ends in the next round of checks; after the last round (`check_rounds`), or at once for
  a command agent (it cannot be told anything), the task fails with the check's words
  and the end of its output.

In review, a person approves (it succeeds) or rejects with a message, which its agent is
told as it works on: its next attempt runs its checks from round 1 and comes back to review.
"""

from __future__ import annotations

import signal as signal_mod
from typing import NamedTuple

from orchestra.shared.protocol import CheckResult, Status
from orchestrad import events as ev
from orchestrad.agents import traits
from orchestrad.state import State, Task

TAIL_CHARS = 2000  # how much of a failing check's output is quoted, to the agent and in the reason

FEEDBACK = (
    "The check `{command}` failed ({how}); its output ends with:\n\n{tail}\n\n"
    "Fix it, then finish. (Round {round} of {rounds} of the checks: {left}.)"
)
REJECTED = "A person reviewed your work and rejected it:\n\n{message}\n\nAddress this, then finish."


class Run(NamedTuple):
    """The shell is to run check `index` of the task's round: `sh -c command`."""

    index: int
    command: str


def needed(task: Task) -> bool:
    """Whether an attempt of `task` that ended well must be verified before it succeeds."""
    spec = task.spec
    return bool(spec.checks) or spec.expects_change or spec.review


def after_agent(state: State, task: Task) -> list[ev.Event]:
    """The agent of `task` ended its attempt well: it succeeds, or its verification begins."""
    if not needed(task):
        return [ev.TaskFinished(task=task.id, outcome=Status.SUCCEEDED, reason="")]
    return [ev.ChecksStarted(task=task.id, round=task.check_round + 1)]


def unchanged(task: Task, changed: bool | None) -> list[ev.Event]:
    """What it means that `task`'s directory did (`changed`) or did not change since it
    started; None: it is no git directory, so nothing is known."""
    if not task.spec.expects_change or changed is None or changed:
        return []
    reason = (
        f"the agent said it was done but changed nothing in {task.cwd}: no commit and no uncommitted change "
        f"since it started; `orchestra respond {task.id} \"...\"` tells it what is missing"
    )
    return [ev.TaskFinished(task=task.id, outcome=Status.FAILED, reason=reason)]


def next_step(state: State, task: Task) -> Run | list[ev.Event]:
    """The next check to run in `task`'s round, or what the round's results mean."""
    if task.stopping is not None:
        return [ev.TaskFinished(task=task.id, outcome=task.stopping.outcome, reason=task.stopping.reason)]
    results = task.checks
    if results and not results[-1].passed:
        return _failed(task, results[-1])
    if len(results) < len(task.spec.checks):
        return Run(len(results), task.spec.checks[len(results)])
    if task.spec.review:
        return [ev.ReviewRequested(task=task.id)]
    return [ev.TaskFinished(task=task.id, outcome=Status.SUCCEEDED, reason="")]


def how(check: CheckResult) -> str:
    """How a check ended, in a few words: "exit 1", "killed by SIGKILL", "timed out"."""
    if check.timed_out:
        return "timed out"
    if check.signal is not None:
        try:
            return f"killed by {signal_mod.Signals(check.signal).name}"
        except ValueError:
            return f"killed by signal {check.signal}"
    if check.exit_code is None:
        return "could not run"
    return f"exit {check.exit_code}"


def _ended(check: CheckResult) -> str:
    """"pytest -q exited 1", "make test timed out"."""
    words = how(check)
    if words.startswith("exit "):
        return f"{check.command} exited {check.exit_code}"
    return f"{check.command} {words}"


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    """The end of a check's output: its last `limit` characters, from a line's start."""
    text = text.rstrip()
    if len(text) <= limit:
        return text
    cut = text[-limit:]
    newline = cut.find("\n")
    return "…" + (cut[newline:] if 0 <= newline < limit // 2 else cut)


def _failed(task: Task, check: CheckResult) -> list[ev.Event]:
    rounds = task.spec.check_rounds
    if traits(task.spec.agent).converses and task.session_id and task.check_round < rounds:
        left = rounds - task.check_round
        message = FEEDBACK.format(
            command=check.command, how=how(check), tail=check.tail or "(no output)", round=task.check_round, rounds=rounds,
            left=f"{left} more round{'s' if left != 1 else ''} left" if left else "this was the last",
        )
        return [ev.TaskContinued(task=task.id, message=message, reason="follow-up", check_round=task.check_round)]
    reason = f"check failed: {_ended(check)}"
    if check.tail:
        reason += f"; its output ends with:\n{check.tail}"
    return [ev.TaskFinished(task=task.id, outcome=Status.FAILED, reason=reason)]


def review(task: Task, approve: bool, message: str, by: str) -> list[ev.Event]:
    """A person's decision on `task` in review: approved, it succeeds; rejected, its agent
    is told why and works on (a command agent, which cannot be told, fails)."""
    decided = ev.ReviewDecided(task=task.id, approved=approve, message=message, by=by)
    if approve:
        return [decided, ev.TaskFinished(task=task.id, outcome=Status.SUCCEEDED, reason=f"approved in review by {by}")]
    if traits(task.spec.agent).converses and task.session_id:
        return [decided, ev.TaskContinued(task=task.id, message=REJECTED.format(message=message), reason="follow-up")]
    return [decided, ev.TaskFinished(task=task.id, outcome=Status.FAILED, reason=f"rejected in review by {by}: {message}")]
