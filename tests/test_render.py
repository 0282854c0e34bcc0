"""What people read: costs, workflow steps, long prompts and transcripts, as the CLI, the
dashboard and `logs` draw them (pure functions, no daemon)."""

from __future__ import annotations

import json
import time

import pytest

from orchestra import render
from orchestra.dashboard import render as dashboard
from orchestra.shared.protocol import Status, TaskView, WorkflowStep, WorkflowTemplate, WorkflowView
from orchestrad.agents.claude import ClaudeAgent


def view(task_id: int, status: Status = Status.SUCCEEDED, **kw) -> TaskView:
    fields = dict(id=task_id, status=status, role="tester", agent="claude", priority=0, after=[], title=f"task {task_id}",
                  prompt="", argv=[], cwd="/work", submitted_at=float(task_id), runtime=12.5)
    return TaskView(**{**fields, **kw})


@pytest.mark.parametrize(("usd", "shown"), [(0.003, "$0.0030"), (0.0004, "$0.0004"), (0.42, "$0.42"), (12.3, "$12.30"), (0.0099, "$0.0099"), (0.01, "$0.01")])
def test_one_cost_formatter_keeps_small_costs_visible(usd, shown):
    assert render.cost(usd) == shown
    assert render.cost(0.0) == "-"


def test_a_cost_under_a_cent_shows_everywhere_a_cost_does():
    task = view(1, cost_usd=0.003, input_tokens=10, output_tokens=5)
    workflow = WorkflowView(id=1, template="t", goal="g", status="succeeded", cost_usd=0.003, created_at=0.0, cwd="/w",
                            worktree="", steps={"one": 1}, tasks=[task])
    assert "$0.0030" in render.table([task])  # ps, queue
    assert "cost       $0.0030 (10 tokens in, 5 out)" in render.details(task)  # show
    assert "· $0.0030 ·" in render.workflow_block(workflow)  # workflow status
    picture = dashboard([task], [], [workflow], width=120)
    assert picture.splitlines()[0].endswith("cost $0.0030") and "$0.0030  task 1" in picture


def test_the_transcript_counts_turns_in_words_and_costs_like_the_rest():
    def result_line(turns: int, cost: float) -> str:
        message = {"type": "result", "subtype": "success", "result": "ok", "total_cost_usd": cost, "num_turns": turns, "duration_ms": 900}
        return ClaudeAgent.render("stdout", json.dumps(message).encode()).decode().splitlines()[1]

    assert result_line(1, 0.003) == "  $0.0030 · 1 turn · 0.9s"
    assert result_line(3, 0.42) == "  $0.42 · 3 turns · 0.9s"


# ---------------------------------------------------------------------------------------
# parallel steps

CODE_REVIEW = WorkflowTemplate(name="code-review", description="review", steps=[
    WorkflowStep(name="review", role="reviewer", prompt="r"),
    WorkflowStep(name="tests", role="tester", prompt="t"),
    WorkflowStep(name="report", role="reviewer", after=["review", "tests"], prompt="p"),
])


def test_steps_that_run_in_parallel_are_drawn_side_by_side():
    assert render.step_levels([("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])]) == [["a"], ["b", "c"], ["d"]]
    assert render.step_levels([("x", []), ("y", [])]) == [["x", "y"]]
    assert render.steps_line(CODE_REVIEW) == "review + tests → report"
    assert "steps: review + tests → report" in render.template_details(CODE_REVIEW)


def test_a_workflow_run_draws_its_parallel_steps_side_by_side():
    tasks = [view(1, Status.RUNNING), view(2, Status.SUCCEEDED), view(3, Status.QUEUED, after=[1, 2])]
    workflow = WorkflowView(id=4, template="code-review", goal="look", status="running", cost_usd=0.0, created_at=0.0, cwd="/w",
                            worktree="", steps={"review": 1, "tests": 2, "report": 3}, tasks=tasks)
    assert "    ● review #1 + ✓ tests #2 → ○ report #3" in dashboard(tasks, [tasks[2]], [workflow], width=120).splitlines()
    assert "  steps: ● review #1 + ✓ tests #2 → ○ report #3" in render.workflow_block(workflow, steps=True).splitlines()


# ---------------------------------------------------------------------------------------
# long prompts


def test_show_shortens_a_long_prompt_and_says_how_to_see_it_all():
    prompt = "\n".join(f"line {i}" for i in range(100))
    short = render.details(view(7, prompt=prompt))
    assert "line 0" in short and "line 99" not in short
    assert "(90 more lines: orchestra show --full 7)" in short
    assert "line 99" in render.details(view(7, prompt=prompt), full=True)
    one_long_line = render.details(view(7, prompt="x" * 5000))
    assert "x" * 5000 not in one_long_line and "orchestra show --full 7" in one_long_line
    assert "more lines" not in render.details(view(8, prompt="fix the parser"))


def live(status=Status.RUNNING, **kw) -> TaskView:
    fields = dict(id=7, status=status, role="tester", agent="command", priority=0, after=[], title="run the suite", prompt="",
                  argv=["pytest"], cwd="/w", submitted_at=0.0, started_at=1000.0, runtime=10.0, silent_after=60.0)
    return TaskView(**{**fields, **kw})


@pytest.mark.parametrize("task, words", [
    (live(last_activity=1990.0), "working"),  # output 10 s ago
    (live(last_activity=1000.0, cpu_at=1995.0), "working"),  # no output since it started, but it uses CPU
    (live(last_activity=1000.0, cpu_at=1500.0), "silent 8 min"),  # neither, for 500 s
    (live(last_activity=1955.0), "working"),  # quiet 45 s: within silent_after
    (live(last_activity=1955.0, silent_after=30.0), "silent 45s"),
    (live(last_activity=1955.0, silent_after=50.0), "working"),  # the daemon's setting decides
    (live(last_activity=2000.0 - 7500), "silent 2h05m"),
    (live(), ""),  # an older daemon: it does not say when it was last active
    (live(Status.WAITING, last_activity=1000.0), "waiting for you"),
    (live(Status.QUEUED), ""),
    (live(Status.SUCCEEDED, last_activity=1000.0), ""),
])
def test_liveness_tells_working_silent_waiting_and_held_apart(task, words):
    assert render.liveness(task, 2000.0) == words


def test_a_held_task_says_until_when():
    until = time.mktime((2030, 1, 1, 14, 5, 7, 0, 0, -1))
    assert render.liveness(live(Status.QUEUED, hold="parked", hold_until=until), 0) == "parked until 14:05"
    assert render.liveness(live(Status.QUEUED, hold="retry", hold_until=until), 0) == "retrying at 14:05:07"
    assert render.liveness(live(Status.QUEUED, hold="account", hold_until=until), 0) == "held until 14:05"


def test_ps_says_working_or_silent_in_place_of_running_and_show_says_how_much_cpu():
    busy = live(last_activity=1000.0, cpu_at=1995.0, cpu_seconds=812.25)
    quiet = live(id=8, last_activity=1000.0, cpu_at=None, cpu_seconds=0.0)
    table = render.table([busy, quiet, live(id=9, status=Status.SUCCEEDED)], now=2000.0)
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert rows["7"].split()[1] == "working" and " silent 16 min " in rows["8"] and rows["9"].split()[1] == "succeeded"
    shown = render.details(busy, now=2000.0)
    assert "  now        working\n" in shown and "  cpu        812.2 s, last used 5s ago\n" in shown
    assert "  cpu        0.0 s, none seen in use yet\n" in render.details(quiet, now=2000.0)
    assert "  now  " not in render.details(live(Status.SUCCEEDED, last_activity=1.0), now=2000.0)
