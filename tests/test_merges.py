"""The merge queue's pure part (orchestrad.merges): what a request or a workflow that ends
queues, in what order, and what it refuses. The git side runs in test_merge.py."""

from __future__ import annotations

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import OrchestraError, Status
from orchestrad import events as ev
from orchestrad import merges
from tests.core import Core


def worktree_for(core: Core, task: int | None, workflow: int | None = None, *, target: str = "main") -> None:
    name = f"{task or 'w' + str(workflow)}"
    core.apply([ev.WorktreeCreated(path=f"/wt/{name}", branch=f"orchestra/{name}", repo="/repo", task=task, workflow=workflow,
                                   base="a" * 40, target=target)])


def finished(core: Core, task: int, code: int = 0) -> None:
    core.spawn(task)
    core.exit(task, code)


def test_a_request_queues_each_task_s_branch_onto_the_branch_it_started_from():
    core = Core()
    one, two = core.submit(), core.submit()
    for t in (one, two):
        worktree_for(core, t)
        finished(core, t)
    queued = core.do(p.Merge(tasks=[two, one, two], checks=["pytest -q"]))
    assert [(e.merge, e.task, e.branch, e.target, e.checks) for e in queued] == [
        (1, two, f"orchestra/{two}", "main", ["pytest -q"]), (2, one, f"orchestra/{one}", "main", ["pytest -q"])]
    assert merges.next_to_start(core.state) == 1
    with pytest.raises(OrchestraError, match="is in the merge queue already"):
        core.do(p.Merge(tasks=[one]))
    core.apply([ev.MergeStarted(merge=1, onto="b" * 40, path="/int"), ev.MergeFinished(merge=1, outcome="merged", head="c" * 40)])
    assert merges.next_to_start(core.state) == 2 and core.state.merge_queue == [2]
    assert [m.status for m in merges.listing(core.state, 10).merges] == ["merged", "queued"]
    assert core.replayed() == core.state


def test_a_merge_runs_the_acceptance_checks_of_the_tasks_on_the_branch_too():
    from orchestrad import verify

    core = Core()
    task = core.submit(checks=["pytest -q", "ruff check"])
    worktree_for(core, task)
    finished(core, task)
    while isinstance(step := verify.next_step(core.state, core.state.tasks[task]), verify.Run):  # its checks pass
        core.apply([ev.CheckStarted(task=task, index=step.index, command=step.command, pid=1),
                    ev.CheckFinished(task=task, index=step.index, exit_code=0, signal=None, tail="")])
    core.apply(step)
    assert core.status(task) is Status.SUCCEEDED
    [queued] = core.do(p.Merge(tasks=[task], checks=["make", "pytest -q"]))
    assert queued.checks == ["make", "pytest -q", "ruff check"]


def test_a_detached_start_needs_a_target_and_an_agent_may_not_merge():
    from orchestrad import decide as d

    core = Core()
    task = core.submit()
    worktree_for(core, task, target="")
    finished(core, task)
    with pytest.raises(OrchestraError, match="started from a detached HEAD: say which branch to merge it onto with --into BRANCH"):
        core.do(p.Merge(tasks=[task]))
    [queued] = core.do(p.Merge(tasks=[task], into="release"))
    assert queued.target == "release"
    with pytest.raises(OrchestraError, match="may not merge branches"):
        d.decide(core.state, p.Merge(tasks=[task], into="x"), core.now, d.Actor(task=task))


PARALLEL = p.WorkflowTemplate(name="parallel", worktree=True, merge=True, steps=[
    p.WorkflowStep(name="implement", argv=["true"]),
    p.WorkflowStep(name="test", argv=["true"], after=["implement"], workspace="own"),
    p.WorkflowStep(name="fallback", argv=["true"], if_failed="implement"),
])


def test_a_merging_workflow_queues_its_branches_once_every_step_succeeded_or_was_skipped():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=4))
    core.state.templates = {"parallel": PARALLEL}
    created, *_ = core.do(p.RunWorkflow(template="parallel", goal="g", cwd="/repo"))
    steps = core.state.workflows[created.workflow].steps
    worktree_for(core, None, created.workflow)
    worktree_for(core, steps["test"])
    finished(core, steps["implement"])
    assert merges.due(core.state) == []  # test has not run yet
    core.apply(core.plan().events)  # fallback is skipped: implement succeeded
    finished(core, steps["test"])
    queued = merges.due(core.state)
    assert [(e.task, e.workflow, e.branch) for e in queued] == [
        (None, created.workflow, f"orchestra/w{created.workflow}"), (steps["test"], created.workflow, f"orchestra/{steps['test']}")]
    core.apply(queued)
    assert core.state.merge_pending == set() and merges.due(core.state) == []


def test_a_merging_workflow_that_failed_merges_nothing_and_one_interrupted_waits():
    core = Core()
    core.state.templates = {"parallel": PARALLEL}
    created, *_ = core.do(p.RunWorkflow(template="parallel", goal="g", cwd="/repo"))
    steps = core.state.workflows[created.workflow].steps
    core.spawn(steps["implement"])
    core.apply([ev.TaskFinished(task=steps["implement"], outcome=Status.INTERRUPTED, reason="the daemon stopped")])
    core.apply(core.plan().events)
    assert merges.due(core.state) == []  # it may be resumed
    core.do(p.Resume(task=steps["implement"]))
    finished(core, steps["implement"], code=1)
    planned = core.plan().events  # the scheduler asks merges.due each time
    assert ev.MergesSkipped(workflow=created.workflow, reason="not merged: step implement failed") in planned
    core.apply(planned)
    assert core.state.merge_pending == set() and core.state.merge_queue == []
    assert core.state.workflows[created.workflow].merge_note == "not merged: step implement failed"


def test_merging_a_workflow_needs_a_worktree():
    core = Core()
    with pytest.raises(OrchestraError, match="run it with --worktree too"):
        core.do(p.RunWorkflow(template="bug-fix", goal="g", cwd="/repo", merge=True, worktree=False))
