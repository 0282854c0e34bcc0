"""Budgets: what a task, a workflow and a role in a day may spend, and what follows when
one is reached. Pure: the time and the day are passed in.

Three budgets bound what a task spends, in dollars as its agent reports them:

* its own (`submit --budget`, else its role's `budget_usd`), over all its attempts;
* its workflow's (`orchestra run ... --budget`), over all the workflow's tasks;
* its role's for the day (`role_budgets = { tester = 20 }`), over every task of that role,
  from the daemon's local midnight to the next (the shell says when the day starts: `Day`).

A budget is reached when what was spent under it is at least the budget. A task that
reaches one is paused, never failed: when its attempt ends on it, or when it would start
under a budget already spent, it waits for a person (`BudgetReached`), holding no slot and
no process, and its question says what was spent of what and what to do. An agent is told
to stop at the tightest budget's remainder (Claude Code's `--max-budget-usd`), so it ends
its attempt there by itself; a task still running when another task spends its workflow's
or role's budget is stopped, to be paused as well.

`orchestra respond ID --budget N` raises the budget that paused the task (`BudgetRaised`),
and every task that budget paused goes on (`TaskContinued`), a task that had started
continuing its session. A role's budget is fresh each day: tasks it paused on an earlier
day go on by themselves at midnight, and a raise holds for the day it was made.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from orchestra.shared.protocol import MAX_BUDGET_USD, Status
from orchestra.shared.vocab import usd
from orchestrad import events as ev
from orchestrad.agents import traits
from orchestrad.state import BUCKET_SECONDS, State, Task, budget_words

RAISED_MESSAGE = "Your budget was raised to {budget}. Continue the task from where you stopped."


class Day(NamedTuple):
    """The local day a role's budget counts: its start and its end (epoch seconds)."""

    start: float
    end: float


def utc_day(now: float) -> Day:
    """The UTC day holding `now`, for callers that do not say which day it is."""
    start = now - now % 86400
    return Day(start, start + 86400)


class Budget(NamedTuple):
    scope: str  # "task" | "workflow" | "role"
    name: str  # the workflow's id, the role's name; "" for the task's own
    spent: float
    budget: float

    @property
    def reached(self) -> bool:
        return self.spent >= self.budget

    def words(self, task_id: int) -> str:
        return budget_words(self.scope, self.name, self.spent, self.budget, task_id)


def counts(task: Task) -> bool:
    """Whether budgets bound `task`: its agent reports what it spends (a command does not)."""
    return traits(task.spec.agent).reports_cost


def budgets(state: State, task: Task, day: Day) -> list[Budget]:
    """Every budget that bounds `task`, with what was spent under it: its own, its
    workflow's, its role's today; in that order."""
    found: list[Budget] = []
    own = task.budget_usd if task.budget_usd is not None else task.spec.budget_usd
    if own is not None:
        found.append(Budget("task", "", task.cost_usd, own))
    workflow = state.workflows.get(task.spec.workflow) if task.spec.workflow is not None else None
    if workflow is not None and workflow.budget_usd is not None:
        spent = sum(state.tasks[t].cost_usd for t in workflow.steps.values() if t in state.tasks)
        found.append(Budget("workflow", str(workflow.id), spent, workflow.budget_usd))
    daily = role_budget(state, task.role, day)
    if daily is not None:
        found.append(Budget("role", task.role, role_spent(state, task.role, day), daily))
    return found


def role_budget(state: State, role: str, day: Day) -> float | None:
    """What `role`'s tasks may spend on `day`: a raise made that day, else the config's."""
    raised = state.role_raises.get(role)
    if raised is not None and raised[0] == day.start:
        return raised[1]
    return state.config.role_budgets.get(role)


def role_spent(state: State, role: str, day: Day) -> float:
    """What `role`'s tasks spent on `day` (as recorded by this version: see `UsageRecorded.role`)."""
    first = math.floor(day.start / BUCKET_SECONDS)
    last = math.ceil(day.end / BUCKET_SECONDS)
    spent = state.role_spend.get(role, {})
    return sum(amount for bucket, amount in spent.items() if first <= bucket < last)


def reached(state: State, task: Task, day: Day) -> Budget | None:
    """The first budget `task` has reached, if any (none for a task whose agent reports no cost)."""
    if not counts(task):
        return None
    return next((b for b in budgets(state, task, day) if b.reached), None)


def left(state: State, task: Task, day: Day) -> float | None:
    """Dollars `task` may still spend under its tightest budget; None if none bounds it."""
    remaining = [b.budget - b.spent for b in budgets(state, task, day)]
    return max(0.0, min(remaining)) if remaining else None


def pause(state: State, task: Task, day: Day) -> ev.BudgetReached:
    """The pause of `task` on the budget it reached; on its tightest one when its agent
    stopped on a budget our own sums do not show reached (the agent counts a little
    differently)."""
    hit = reached(state, task, day)
    if hit is None:
        found = budgets(state, task, day)
        hit = min(found, key=lambda b: b.budget - b.spent) if found else Budget("task", "", task.cost_usd, task.cost_usd)
    return ev.BudgetReached(
        task=task.id, scope=hit.scope, name=hit.name, spent=hit.spent, budget=hit.budget,
        day=day.start if hit.scope == "role" else 0.0,
    )


def check_raise(state: State, task: Task, amount: float, day: Day) -> Budget:
    """The budget a raise to `amount` on `task` changes (the one that paused it, else the
    task's own), or a ValueError that says what to give instead."""
    if not (math.isfinite(amount) and 0 < amount <= MAX_BUDGET_USD):
        raise ValueError(f"a budget must be above 0 and at most {MAX_BUDGET_USD:,.0f} dollars, not {amount:g}")
    paused = task.paused
    if paused is not None:
        current = next((b for b in budgets(state, task, day) if (b.scope, b.name) == (paused.scope, paused.name)), None)
        target = current or Budget(paused.scope, paused.name, paused.spent, paused.budget)
    else:
        if task.status.finished:
            raise ValueError(f"task {task.id} has ended; its budget no longer matters (`orchestra resume {task.id}` runs it again)")
        if not counts(task):
            raise ValueError(f"task {task.id} runs a command, which reports no cost: a budget would never bound it")
        own = task.budget_usd if task.budget_usd is not None else task.spec.budget_usd
        target = Budget("task", "", task.cost_usd, own if own is not None else 0.0)
    if amount <= target.spent:
        raise ValueError(
            f"{target.words(task.id)}: a budget of {usd(amount)} would be reached already; give more than {usd(target.spent)}"
        )
    return target


def raised(state: State, task: Task, target: Budget, amount: float, by: str, day: Day) -> list[ev.Event]:
    """A raise of `target` to `amount` through `task`, and every task it paused going on."""
    raise_day = day.start if target.scope == "role" else 0.0
    events: list[ev.Event] = [
        ev.BudgetRaised(scope=target.scope, name=target.name, budget=amount, by=by, task=task.id, day=raise_day)
    ]
    for other_id in sorted(state.paused):
        other = state.tasks[other_id]
        hold = other.paused
        if hold is None or (hold.scope, hold.name) != (target.scope, target.name):
            continue
        if target.scope == "task" and other_id != task.id:
            continue
        events.append(go_on(other, RAISED_MESSAGE.format(budget=usd(amount))))
    return events


def go_on(task: Task, message: str) -> ev.TaskContinued:
    """A paused task back in the queue: one that had started continues its session with
    `message`; one paused before it started starts as it would have."""
    if task.paused is not None and task.paused.ran and task.session_id and traits(task.spec.agent).converses:
        return ev.TaskContinued(task=task.id, message=message, reason="resume")
    return ev.TaskContinued(task=task.id, message=task.pending_message, reason=task.continued or "retry")


def renewed(state: State, day: Day) -> list[ev.Event]:
    """Tasks paused on a role's budget of an earlier day: a new day's budget is fresh."""
    return [
        go_on(state.tasks[t], "A new day's budget has begun. Continue the task from where you stopped.")
        for t in sorted(state.paused)
        if (hold := state.tasks[t].paused) is not None and hold.scope == "role" and hold.day < day.start
    ]


def stops_for(task: Task) -> bool:
    """Whether a running `task` that reached a budget is to be stopped now: its attempt is
    still working (one that gave its result is on its way out and is paused as it exits)."""
    return task.status is Status.RUNNING and not task.answered
