"""Acceptance checks and review gates in the pure core (orchestrad.verify, the fold, decide):
what follows an attempt that ended well. The shell's part (running checks, asking git)
is tested with a real daemon in tests/test_verify_daemon.py."""

from __future__ import annotations

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import ErrorCode, OrchestraError, Status
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad import notify, verify
from orchestrad.state import to_snapshot
from tests.core import Core


def agent_task(core: Core, **kw) -> int:
    task = core.submit(prompt="make it so", agent="claude", **kw)
    core.spawn(task)
    core.apply([ev.SessionStarted(task=task, session_id="s-1")])
    return task


def run_check(core: Core, task: int, exit_code: int | None, tail: str = "", *, signal: int | None = None, timed_out=False):
    """The shell's part of one check: the next step must be a Run; it ends with `exit_code`."""
    step = verify.next_step(core.state, core.state.tasks[task])
    assert isinstance(step, verify.Run), step
    core.apply([ev.CheckStarted(task=task, index=step.index, command=step.command, pid=900 + step.index)])
    assert core.status(task) is Status.CHECKING
    core.apply([ev.CheckFinished(task=task, index=step.index, exit_code=exit_code, signal=signal, tail=tail, timed_out=timed_out)])
    return step


def verdict(core: Core, task: int) -> list[ev.Event]:
    step = verify.next_step(core.state, core.state.tasks[task])
    assert not isinstance(step, verify.Run), step
    return core.apply(step)


def again(core: Core, task: int) -> None:
    """The follow-up attempt starts and ends well."""
    assert task in core.tick()
    core.exit(task, 0)


def test_a_task_without_checks_succeeds_when_its_agent_ends_well():
    core = Core()
    task = agent_task(core)
    core.exit(task, 0)
    assert core.status(task) is Status.SUCCEEDED


def test_all_checks_pass_in_order_and_the_task_succeeds():
    core = Core()
    task = agent_task(core, checks=["test -f a", "pytest -q"])
    core.exit(task, 0)
    t = core.state.tasks[task]
    assert t.status is Status.CHECKING and t.check_round == 1 and task in core.state.active
    first = run_check(core, task, 0)
    assert first == verify.Run(0, "test -f a")
    assert run_check(core, task, 0) == verify.Run(1, "pytest -q")
    verdict(core, task)
    assert core.status(task) is Status.SUCCEEDED
    assert [(c.command, c.exit_code) for c in core.state.tasks[task].checks] == [("test -f a", 0), ("pytest -q", 0)]
    assert core.replayed() == core.state


def test_a_running_check_is_what_ps_says_the_task_does():
    core = Core()
    task = agent_task(core, checks=["true", "pytest -q"], check_rounds=3)
    core.exit(task, 0)
    run_check(core, task, 0)
    core.apply([ev.CheckStarted(task=task, index=1, command="pytest -q", pid=901)])
    t = core.state.tasks[task]
    assert t.activity == "check 2 of 2, round 1 of 3: pytest -q"
    assert t.pid == 901 and t.checks[-1].running
    assert core.plan().start == []  # it still holds its slot: nothing else may start in it when max_concurrent is 1
    view = d.get_task(core.state, task)
    assert view.status.active


def test_a_check_that_fails_once_goes_back_to_the_agent_and_passes_the_next_round():
    core = Core()
    task = agent_task(core, checks=["pytest -q"])
    core.exit(task, 0)
    run_check(core, task, 1, "FAILED test_x.py::test_one - assert 1 == 2")
    [continued] = verdict(core, task)
    assert isinstance(continued, ev.TaskContinued) and continued.reason == "follow-up" and continued.check_round == 1
    assert "The check `pytest -q` failed (exit 1)" in continued.message
    assert "FAILED test_x.py::test_one - assert 1 == 2" in continued.message
    t = core.state.tasks[task]
    assert t.status is Status.QUEUED and task not in core.state.active and t.pending_message == continued.message
    again(core, task)
    assert core.state.tasks[task].check_round == 2
    run_check(core, task, 0)
    verdict(core, task)
    assert core.status(task) is Status.SUCCEEDED
    assert core.replayed() == core.state


def test_a_check_that_never_passes_fails_the_task_after_the_last_round_with_its_output():
    core = Core()
    task = agent_task(core, checks=["pytest -q"], check_rounds=3)
    core.exit(task, 0)
    for round in (1, 2, 3):
        assert core.state.tasks[task].check_round == round
        run_check(core, task, 1, f"still broken {round}")
        [event] = verdict(core, task)
        if round < 3:
            assert isinstance(event, ev.TaskContinued)
            again(core, task)
    assert isinstance(event, ev.TaskFinished) and core.status(task) is Status.FAILED
    assert core.state.tasks[task].reason == "check failed: pytest -q exited 1; its output ends with:\nstill broken 3"
    assert core.replayed() == core.state


def test_a_command_agent_fails_at_once_on_a_failing_check():
    core = Core()
    task = core.submit(argv=["make"], checks=["test -f done.txt", "true"])
    core.spawn(task)
    core.exit(task, 0)
    assert core.status(task) is Status.CHECKING
    run_check(core, task, 1)
    verdict(core, task)
    assert core.status(task) is Status.FAILED
    assert core.state.tasks[task].reason == "check failed: test -f done.txt exited 1"


def test_a_timed_out_or_killed_check_says_so():
    core = Core()
    task = core.submit(argv=["make"], checks=["sleep 99"])
    core.spawn(task)
    core.exit(task, 0)
    run_check(core, task, None, "(stopped after the check timeout of 1 s)", signal=15, timed_out=True)
    verdict(core, task)
    assert core.state.tasks[task].reason.startswith("check failed: sleep 99 timed out")


def test_an_agent_that_fails_runs_no_checks():
    core = Core()
    task = agent_task(core, checks=["true"])
    core.exit(task, 1)
    assert core.status(task) is Status.FAILED and core.state.tasks[task].check_round == 0


def test_a_stop_while_checking_ends_the_task_as_asked():
    core = Core()
    task = agent_task(core, checks=["sleep 99"])
    core.exit(task, 0)
    core.apply([ev.CheckStarted(task=task, index=0, command="sleep 99", pid=900)])
    [stop] = core.do(p.Stop(task=task))
    assert isinstance(stop, ev.StopRequested)
    core.apply([ev.CheckFinished(task=task, index=0, exit_code=None, signal=15, tail="")])
    verdict(core, task)
    assert core.status(task) is Status.CANCELLED and core.state.tasks[task].reason == "stopped on request"


def test_a_task_that_expects_a_change_fails_when_nothing_changed():
    core = Core()
    task = agent_task(core, role="implementer")
    assert core.state.tasks[task].spec.expects_change  # the built-in implementer expects one
    core.exit(task, 0)
    assert core.status(task) is Status.CHECKING
    core.apply(verify.unchanged(core.state.tasks[task], changed=False))
    assert core.status(task) is Status.FAILED
    assert "the agent said it was done but changed nothing" in core.state.tasks[task].reason


@pytest.mark.parametrize("changed", [True, None])
def test_a_change_or_no_git_directory_lets_it_go_on(changed):
    core = Core()
    task = agent_task(core, expects_change=True)
    core.exit(task, 0)
    assert verify.unchanged(core.state.tasks[task], changed) == []
    verdict(core, task)
    assert core.status(task) is Status.SUCCEEDED


def test_review_then_approve():
    core = Core()
    task = agent_task(core, checks=["true"], review=True)
    core.exit(task, 0)
    run_check(core, task, 0)
    [requested] = verdict(core, task)
    assert isinstance(requested, ev.ReviewRequested)
    t = core.state.tasks[task]
    assert t.status is Status.REVIEW and task not in core.state.active and t.pid is None
    assert t.waiting is not None and t.waiting.kind == "review" and f"orchestra respond {task} --approve" in t.waiting.prompt
    [n] = notify.notices(core.state, [requested], core.now)
    assert n.kind == "review" and f"orchestra review {task}" in n.message
    core.do(p.Respond(task=task, approve=True, via="cli"))
    t = core.state.tasks[task]
    assert t.status is Status.SUCCEEDED and t.reason == "approved in review by a person (cli)"
    assert [(r.approved, r.by) for r in t.reviews] == [(True, "a person (cli)")]
    assert core.replayed() == core.state


def test_review_reject_continues_the_session_with_the_message_then_checks_again():
    core = Core()
    task = agent_task(core, checks=["true"], review=True)
    core.exit(task, 0)
    run_check(core, task, 0)
    verdict(core, task)
    with pytest.raises(OrchestraError) as no_message:
        core.do(p.Respond(task=task, reject=True))
    assert no_message.value.code is ErrorCode.BAD_REQUEST and "--reject -m" in no_message.value.message
    decided, continued = core.do(p.Respond(task=task, reject=True, message="rename foo to bar", via="cli"))
    assert isinstance(continued, ev.TaskContinued) and "rename foo to bar" in continued.message
    t = core.state.tasks[task]
    assert t.status is Status.QUEUED and t.waiting is None and t.check_round == 0
    again(core, task)
    assert core.state.tasks[task].check_round == 1  # the checks start over
    run_check(core, task, 0)
    verdict(core, task)
    assert core.status(task) is Status.REVIEW
    core.do(p.Respond(task=task, approve=True, via="cli"))
    assert core.status(task) is Status.SUCCEEDED
    assert [r.approved for r in core.state.tasks[task].reviews] == [False, True]
    assert core.replayed() == core.state
    assert to_snapshot(core.replayed()) == to_snapshot(core.state)


def test_only_a_person_approves_and_only_a_task_in_review():
    core = Core()
    task = agent_task(core, review=True)
    with pytest.raises(OrchestraError) as early:
        core.do(p.Respond(task=task, approve=True))
    assert early.value.code is ErrorCode.CONFLICT and "not waiting for review" in early.value.message
    core.exit(task, 0)
    verdict(core, task)
    assert core.status(task) is Status.REVIEW
    with pytest.raises(OrchestraError) as agent:
        d.decide(core.state, p.Respond(task=task, approve=True), core.now, d.Actor(task=task))
    assert agent.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(OrchestraError) as plain:
        core.do(p.Respond(task=task, text="yes"))
    assert plain.value.code is ErrorCode.BAD_REQUEST and "--approve" in plain.value.message
    core.do(p.Stop(task=task))
    assert core.status(task) is Status.CANCELLED


def test_a_task_after_one_in_review_waits_until_it_is_approved():
    core = Core()
    first = agent_task(core, review=True)
    second = core.submit(argv=["true"], after=[first])
    core.exit(first, 0)
    verdict(core, first)
    assert second not in core.tick()
    core.do(p.Respond(task=first, approve=True))
    assert second in core.tick()


def test_submit_checks_come_after_the_roles_and_are_bounded():
    core = Core()
    with pytest.raises(OrchestraError) as empty:
        core.submit(argv=["true"], checks=[" "])
    assert "shell line" in empty.value.message
    with pytest.raises(OrchestraError) as rounds:
        core.submit(argv=["true"], checks=["true"], check_rounds=0)
    assert "1 to 20" in rounds.value.message
    task = core.submit(argv=["true"], checks=["true"])
    assert core.state.tasks[task].spec.check_rounds == core.state.config.check_rounds == 2


def test_a_workflow_step_carries_its_checks_and_review():
    core = Core()
    template = p.WorkflowTemplate(
        name="checked", steps=[p.WorkflowStep(name="build", role="generalist", prompt="build it", check=["make test"], review=True, check_rounds=4)]
    )
    core.state.templates = {"checked": template}
    events = core.do(p.RunWorkflow(template="checked", goal="a thing", cwd="/tmp"))
    [spec] = [e.spec for e in events if isinstance(e, ev.TaskSubmitted)]
    assert (spec.checks, spec.review, spec.check_rounds) == (["make test"], True, 4)


def test_verify_is_pure():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(verify))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"asyncio", "os", "subprocess", "time", "socket"}, imported


def test_a_role_file_carries_checks_and_refuses_bad_ones():
    from orchestrad import roles

    role = roles.parse("strict", 'prompt = "be strict"\ncheck = ["pytest -q"]\ncheck_rounds = 3\nreview = true\nexpects_change = true\n')
    assert (role.check, role.check_rounds, role.review, role.expects_change) == (["pytest -q"], 3, True, True)
    with pytest.raises(ValueError, match="check_rounds must be"):
        roles.parse("bad", 'prompt = "x"\ncheck_rounds = 0\n')
    with pytest.raises(ValueError, match="empty one checks nothing"):
        roles.parse("bad", 'prompt = "x"\ncheck = [" "]\n')
    core = Core()
    core.state.roles = {"strict": role}
    task = core.submit(argv=["true"], role="strict", checks=["make lint"])
    spec = core.state.tasks[task].spec
    assert (spec.checks, spec.check_rounds, spec.review, spec.expects_change) == (["pytest -q", "make lint"], 3, True, True)
    overridden = core.submit(argv=["true"], role="strict", review=False, check_rounds=1)
    assert (core.state.tasks[overridden].spec.review, core.state.tasks[overridden].spec.check_rounds) == (False, 1)


def test_a_check_that_could_not_start_fails_with_why():
    core = Core()
    task = core.submit(argv=["true"], checks=["pytest -q"])
    core.spawn(task)
    core.exit(task, 0)
    core.apply([ev.CheckFinished(task=task, index=0, exit_code=None, signal=None, tail="it could not start: no sh")])
    verdict(core, task)
    t = core.state.tasks[task]
    assert t.status is Status.FAILED and t.checks[0].command == "pytest -q"
    assert t.reason == "check failed: pytest -q could not run; its output ends with:\nit could not start: no sh"
