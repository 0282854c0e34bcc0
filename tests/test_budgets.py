"""Budgets that pause and ask (orchestrad.budgets): a task's own, its workflow's, and its
role's for the day. A budget reached pauses the task as waiting for a person, never fails it;
`respond --budget` raises it and the tasks it paused go on."""

from __future__ import annotations

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import OrchestraError, Status
from orchestrad import budgets, launch
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad.agents.claude import ClaudeAgent
from orchestrad.budgets import Day
from orchestrad.state import view
from tests.core import Core

DAY = 86400.0


def spend(core: Core, task: int, dollars: float, role: str | None = None) -> None:
    core.apply([ev.UsageRecorded(task=task, cost_usd=dollars, input_tokens=10, output_tokens=5, role=role or core.state.tasks[task].role)])


def result(core: Core, task: int, *, error: bool = False, subtype: str = "success") -> None:
    core.apply([ev.AgentResult(task=task, text="stopped" if error else "done", is_error=error, subtype=subtype)])


def exit_(core: Core, task: int, code: int | None = 0, signal: int | None = None) -> list[ev.Event]:
    t = core.state.tasks[task]
    return core.apply(d.process_exited(core.state, task, t.pid or 0, code, signal, now=core.now))


def raise_to(core: Core, task: int, dollars: float) -> list[ev.Event]:
    return core.do(p.Respond(task=task, budget_usd=dollars, via="cli"))


def session(core: Core, task: int) -> None:
    core.apply([ev.SessionStarted(task=task, session_id=f"s-{task}")])


def running(**kw) -> tuple[Core, int]:
    """A core with one claude task running, submitted with `kw`."""
    core = Core()
    task = core.submit(prompt="x", **kw)
    core.tick()
    return core, task


def test_a_task_that_spends_its_budget_is_paused_as_waiting_for_a_person_and_frees_its_slot():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=1))
    task = core.submit(prompt="x", budget_usd=1.0)
    other = core.submit(prompt="y")
    assert core.tick() == [task]
    session(core, task)
    spend(core, task, 0.6)
    assert core.plan().events == []  # under its budget: it works on
    spend(core, task, 0.6)
    [stop] = core.plan().events
    assert stop.outcome is Status.WAITING and stop.reason == "task 1 spent $1.20 of its $1.00 budget: paused, to wait for a person"
    core.apply([stop])
    [_, paused] = exit_(core, task, None, 15)
    assert isinstance(paused, ev.BudgetReached) and (paused.scope, paused.spent, paused.budget) == ("task", 1.2, 1.0)
    t = core.state.tasks[task]
    assert t.status is Status.WAITING and t.pid is None and task not in core.state.active and task not in core.state.queued
    assert t.waiting.kind == "budget"
    assert t.waiting.prompt == (
        "task 1 spent $1.20 of its $1.00 budget; raise the budget (orchestra respond 1 --budget 2.2) or stop it (orchestra stop 1)"
    )
    assert core.tick() == [other]  # the paused task holds no slot
    assert core.replayed() == core.state


def test_raising_the_budget_continues_the_session_with_a_message():
    core, task = running(budget_usd=1.0)
    session(core, task)
    result(core, task, error=True, subtype=ev.BUDGET_SUBTYPE)  # the agent stopped itself at its budget
    spend(core, task, 1.01)
    assert core.plan().events == []  # it gave its result: no stop, it is exiting by itself
    exit_(core, task, 1)
    assert core.status(task) is Status.WAITING and core.state.tasks[task].paused.ran
    raised, continued = raise_to(core, task, 3)
    assert isinstance(raised, ev.BudgetRaised) and (raised.scope, raised.budget, raised.by) == ("task", 3.0, "a person (cli)")
    assert continued == ev.TaskContinued(
        task=task, message="Your budget was raised to $3.00. Continue the task from where you stopped.", reason="resume"
    )
    t = core.state.tasks[task]
    assert t.status is Status.QUEUED and t.waiting is None and t.paused is None and task not in core.state.paused
    assert view(t, core.now).budget_usd == 3.0
    assert core.tick() == [task]
    assert core.replayed() == core.state


def test_an_agent_given_what_is_left_of_its_tightest_budget():
    core = Core()
    task = core.submit(prompt="x", budget_usd=1.0)
    spend(core, task, 0.25)
    day = budgets.utc_day(core.now)
    assert budgets.left(core.state, core.state.tasks[task], day) == 0.75
    prepared = launch.prepared(core.state, core.state.tasks[task], day)
    argv = ClaudeAgent().command(prepared, core.state.config, {})
    assert argv[argv.index("--max-budget-usd") + 1] == "0.75"
    free = core.submit(prompt="y")
    assert budgets.left(core.state, core.state.tasks[free], day) is None
    assert "--max-budget-usd" not in ClaudeAgent().command(launch.prepared(core.state, core.state.tasks[free], day), core.state.config, {})


def test_work_done_as_the_budget_is_reached_succeeds():
    core, task = running(budget_usd=1.0)
    result(core, task)
    spend(core, task, 1.5)
    assert core.plan().events == []
    exit_(core, task, 0)
    assert core.status(task) is Status.SUCCEEDED


def test_a_workflow_budget_pauses_the_next_step_and_a_raise_lets_it_start():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=4))
    created, *steps = core.do(p.RunWorkflow(template="bug-fix", goal="g", cwd="/tmp", budget_usd=1.0, agent="claude"))
    order = [t.task for t in steps]
    assert core.tick() == [order[0]]
    result(core, order[0])
    spend(core, order[0], 1.0)
    exit_(core, order[0], 0)
    assert core.status(order[0]) is Status.SUCCEEDED
    [paused] = core.plan().events
    assert isinstance(paused, ev.BudgetReached) and (paused.scope, paused.name) == ("workflow", str(created.workflow))
    core.apply([paused])
    t = core.state.tasks[order[1]]
    assert t.status is Status.WAITING and not t.paused.ran
    assert t.waiting.prompt.startswith(f"workflow {created.workflow} spent $1.00 of its $1.00 budget; raise the budget")
    with pytest.raises(OrchestraError, match=r"would be reached already; give more than \$1.00"):
        raise_to(core, order[1], 1.0)
    raised, continued = raise_to(core, order[1], 5)
    assert (raised.scope, raised.name, raised.budget) == ("workflow", str(created.workflow), 5.0)
    assert continued == ev.TaskContinued(task=order[1], message="", reason="retry")  # it never started: it starts as it would have
    assert core.state.workflows[created.workflow].budget_usd == 5.0
    assert core.tick() == [order[1]]
    assert core.replayed() == core.state


def with_testers(budget: float) -> tuple[Core, int]:
    """A core at 01:00 on day 10 whose tester role may spend `budget` a day, and a running tester task."""
    core = Core(now=10 * DAY + 3600)
    core.do(p.ConfigSet(key="max_concurrent", value=4))
    core.do(p.ConfigSet(key="role_budgets", value={"tester": budget}))
    task = core.submit(prompt="x", role="tester")
    core.tick()
    return core, task


def test_a_role_budget_for_the_day_pauses_that_role_only_and_renews_at_midnight():
    core, one = with_testers(0.5)
    result(core, one)
    spend(core, one, 0.5)
    exit_(core, one, 0)
    spend_yesterday = core.state.role_spend["tester"]
    assert sum(spend_yesterday.values()) == 0.5
    two = core.submit(prompt="y", role="tester")
    other = core.submit(prompt="z", role="implementer")
    command = core.submit(argv=["true"], role="tester")  # a command spends nothing: no budget bounds it
    plan = core.plan()
    assert plan.start == [other, command]
    [paused] = plan.events
    assert (paused.task, paused.scope, paused.name, paused.day) == (two, "role", "tester", 10 * DAY)
    core.apply([paused])
    assert core.state.tasks[two].waiting.prompt.startswith("role tester spent $0.50 of its $0.50 budget for today; raise")
    assert core.plan().wake_at == 11 * DAY  # a new day's budget
    core.now = 11 * DAY + 1
    [renewed] = core.plan().events
    assert renewed == ev.TaskContinued(task=two, message="", reason="retry")
    core.apply([renewed])
    assert two in core.plan().start
    assert core.replayed() == core.state


def test_a_raised_role_budget_holds_for_its_day_and_lets_every_task_it_paused_go_on():
    core, first = with_testers(0.5)
    spend(core, first, 0.6)
    a, b = core.submit(prompt="a", role="tester"), core.submit(prompt="b", role="tester")
    core.apply(core.plan().events)
    assert core.status(a) is core.status(b) is Status.WAITING
    raised, *went_on = raise_to(core, b, 2)
    assert (raised.scope, raised.name, raised.day) == ("role", "tester", 10 * DAY)
    assert sorted(e.task for e in went_on) == [a, b]
    day = budgets.utc_day(core.now)
    assert budgets.role_budget(core.state, "tester", day) == 2.0
    assert budgets.role_budget(core.state, "tester", Day(day.end, day.end + DAY)) == 0.5  # the next day: as configured
    assert core.replayed() == core.state


def test_the_day_is_the_one_the_shell_gives():
    core = Core(now=10 * DAY + 23 * 3600)  # 23:00 UTC; a zone two hours ahead is on day 11 already
    core.do(p.ConfigSet(key="role_budgets", value={"tester": 1.0}))
    t = core.submit(prompt="x", role="tester")
    core.tick()
    spend(core, t, 1.0)
    utc, ahead = Day(10 * DAY, 11 * DAY), Day(11 * DAY - 7200, 12 * DAY - 7200)
    assert budgets.role_spent(core.state, "tester", utc) == 1.0
    assert budgets.role_spent(core.state, "tester", ahead) == 1.0
    assert budgets.role_spent(core.state, "tester", Day(ahead.end, ahead.end + DAY)) == 0.0


def test_spending_before_roles_were_recorded_does_not_count_for_a_role():
    core = Core()
    core.do(p.ConfigSet(key="role_budgets", value={"generalist": 1.0}))
    t = core.submit(prompt="x")
    core.tick()
    core.apply([ev.UsageRecorded(task=t, cost_usd=5.0, input_tokens=1, output_tokens=1)])  # an older log's record
    assert core.state.role_spend == {} and core.state.tasks[t].cost_usd == 5.0


def test_a_role_s_spending_is_kept_for_two_days_only():
    core = Core(now=10 * DAY)
    t = core.submit(prompt="x")
    core.tick()
    spend(core, t, 1.0)
    core.now = 13 * DAY
    spend(core, t, 2.0)
    assert list(core.state.role_spend["generalist"].values()) == [2.0]


def test_a_paused_task_is_stopped_or_raised_but_not_answered():
    core, task = running(budget_usd=1.0)
    spend(core, task, 1.0)
    core.apply(core.plan().events)
    exit_(core, task, None, 15)
    assert core.status(task) is Status.WAITING
    with pytest.raises(OrchestraError, match=r"task 1 is paused: task 1 spent \$1.00 of its \$1.00 budget. Raise the budget with `orchestra respond 1 --budget N`"):
        core.do(p.Respond(task=task, text="yes"))
    with pytest.raises(OrchestraError, match="raise a budget on its own"):
        core.do(p.Respond(task=task, text="yes", budget_usd=2))
    with pytest.raises(OrchestraError, match="a budget must be above 0"):
        raise_to(core, task, float("nan"))
    [cancelled] = core.do(p.Stop(task=task))
    assert cancelled == ev.TaskCancelled(task=task, reason="stopped while paused on a budget")
    assert core.status(task) is Status.CANCELLED and task not in core.state.paused
    with pytest.raises(OrchestraError, match="has ended; its budget no longer matters"):
        raise_to(core, task, 5)


def test_a_running_task_s_own_budget_may_be_raised_before_it_is_reached():
    core, task = running(budget_usd=1.0)
    [raised] = raise_to(core, task, 4)
    assert (raised.scope, raised.budget) == ("task", 4.0)
    assert budgets.left(core.state, core.state.tasks[task], budgets.utc_day(core.now)) == 4.0
    command = core.submit(argv=["sleep", "1"])
    with pytest.raises(OrchestraError, match="runs a command, which reports no cost"):
        raise_to(core, command, 4)


def test_an_agent_may_not_raise_a_budget():
    core, task = running(budget_usd=1.0)
    with pytest.raises(OrchestraError, match="only a person answers"):
        d.decide(core.state, p.Respond(task=task, budget_usd=100), core.now, d.Actor(task=task))


@pytest.mark.parametrize(
    "value, error",
    [({"nobody": 1}, "role_budgets names no known role: nobody"), ({"tester": 0}, "role_budgets must be a table"),
     ({"tester": float("inf")}, "role_budgets must be a table")],
)
def test_role_budgets_are_checked(value, error):
    with pytest.raises(OrchestraError, match=error):
        Core().do(p.ConfigSet(key="role_budgets", value=value))


def test_a_workflow_budget_is_checked():
    with pytest.raises(OrchestraError, match="budget must be above 0"):
        Core().do(p.RunWorkflow(template="bug-fix", goal="g", cwd="/tmp", budget_usd=-1))


def test_a_pause_notifies_as_waiting_with_how_to_raise_the_budget():
    from orchestrad import notify

    core = Core()
    task = core.submit(prompt="x", budget_usd=1.0, title="fix it")
    core.tick()
    spend(core, task, 1.0)
    core.apply(core.plan().events)
    [notice] = notify.notices(core.state, exit_(core, task, None, 15), core.now)
    assert notice.kind == "waiting" and notice.task == task
    assert notice.message.startswith("Task 1 (generalist: fix it) is paused: task 1 spent $1.00 of its $1.00 budget; raise")
    assert "orchestra respond 1 --budget 2" in notice.message and notice.question.kind == "budget"
