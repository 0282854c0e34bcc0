"""Acceptance checks, expects_change and review with a real daemon and command agents: the
checks are real `sh -c` processes in the task's directory, their output is in `logs`, and
git is asked whether anything changed. (Claude agents: tests/test_verify_claude.py.)"""

from __future__ import annotations


import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import Daemon, wait_for
from tests.gitrepo import make_repo

FINISHED = tuple(p.FINISHED)


@pytest.fixture(scope="module")
def d():
    daemon = Daemon().start()
    daemon.call(p.ConfigSet(key="max_concurrent", value=4))
    yield daemon
    daemon.cleanup()




def test_a_check_that_passes_makes_the_task_succeed_and_its_output_is_in_logs(d, work):
    task = d.submit("sh", "-c", "echo making; touch done.txt", cwd=str(work), checks=["test -f done.txt && echo found-it"])
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.SUCCEEDED, view.reason
    [check] = view.check_results
    assert (check.command, check.exit_code, check.passed) == ("test -f done.txt && echo found-it", 0, True)
    assert view.check_round == 1 and check.tail == "found-it"
    logs = d.cli("logs", str(task)).output
    assert "making" in logs and "found-it" in logs
    shown = d.cli("show", str(task)).output
    assert "checks     round 1 of 2" in shown and "1. test -f done.txt && echo found-it: passed" in shown


def test_a_failing_check_fails_a_command_task_at_once_with_the_reason_and_the_output(d, work):
    task = d.submit(
        "sh", "-c", "echo not making it", cwd=str(work),
        checks=["echo first-ok", "ls done.txt; echo the file is missing; exit 3", "echo never-run"],
    )
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.FAILED
    assert view.reason.startswith("check failed: ls done.txt; echo the file is missing; exit 3 exited 3; its output ends with:\n")
    assert "the file is missing" in view.reason and "No such file" in view.reason
    assert [c.exit_code for c in view.check_results] == [0, 3]  # the third never ran
    assert view.attempts == 1  # a command is not told anything: no second round
    assert "the file is missing" in d.output_of(task).decode()


def test_the_check_runs_in_the_tasks_directory_with_its_environment(d, work):
    task = d.submit("true", cwd=str(work), env={"WANTED": "yes"}, checks=['test "$WANTED" = yes && pwd'])
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.SUCCEEDED, view.reason
    assert view.check_results[0].tail == str(work.resolve()), (view, d.output_of(task))


def test_a_check_past_the_check_timeout_fails_as_timed_out(d, work):
    d.call(p.ConfigSet(key="check_timeout", value=0.5))
    try:
        task = d.submit("true", cwd=str(work), checks=["echo waiting; sleep 60"])
        view = d.wait_status(task, *FINISHED, timeout=30)
    finally:
        d.call(p.ConfigSet(key="check_timeout", value=600.0))
    assert view.status is Status.FAILED
    assert view.reason.startswith("check failed: echo waiting; sleep 60 timed out")
    assert "stopped after the check timeout of 0.5 s" in view.reason and view.check_results[0].timed_out


def test_ps_shows_a_task_checking_and_stop_ends_it(d, work):
    task = d.submit("true", cwd=str(work), checks=["true", f"touch {work}/started; sleep 60"], check_rounds=3)
    wait_for(lambda: (work / "started").exists(), 15, "the second check to start")
    view = d.task(task)
    assert view.status is Status.CHECKING and view.pid is not None
    assert view.activity == f"check 2 of 2, round 1 of 3: touch {work}/started; sleep 60"
    listed = d.cli("ps").output
    assert "checking" in listed and "check 2 of 2, round 1 of 3" in listed
    d.call(p.Stop(task=task))
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.CANCELLED and view.reason == "stopped on request"


def test_a_task_that_expects_a_change_and_changed_nothing_fails_saying_so(d, tmp_path):
    repo = make_repo(tmp_path / "repo")
    task = d.submit("sh", "-c", "echo all done", cwd=str(repo), expects_change=True)
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.FAILED
    assert view.reason.startswith(f"the agent said it was done but changed nothing in {repo}")


@pytest.mark.parametrize("change", ["echo more >> README", "touch new.txt", "echo x > f && git add f && git commit -qm f"])
def test_a_task_that_expects_a_change_and_made_one_succeeds(d, tmp_path, change):
    repo = make_repo(tmp_path / "repo")
    (repo / "dirty").write_text("uncommitted before it started\n")  # what was there already does not count
    task = d.submit("sh", "-c", change, cwd=str(repo), expects_change=True)
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.SUCCEEDED, view.reason


def test_a_dirty_checkout_left_as_it_was_is_no_change(d, tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "README").write_text("edited by the person before\n")
    task = d.submit("true", cwd=str(repo), expects_change=True)
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.FAILED and "changed nothing" in view.reason


def test_a_worktree_task_that_changed_nothing_fails(d, tmp_path):
    repo = make_repo(tmp_path / "repo")
    task = d.submit("true", cwd=str(repo), worktree=True, expects_change=True)
    view = d.wait_status(task, *FINISHED, timeout=30)
    assert view.status is Status.FAILED and "changed nothing" in view.reason and view.worktree


def test_review_waits_for_a_person_and_approve_succeeds_it(d, work):
    task = d.submit("sh", "-c", "echo the summary of my work", cwd=str(work), checks=["true"], review=True)
    view = d.wait_status(task, Status.REVIEW, *FINISHED, timeout=30)
    assert view.status is Status.REVIEW and view.pid is None
    assert view.waiting.kind == "review" and f"orchestra respond {task} --approve" in view.waiting.prompt
    shown = d.cli("review", str(task)).output
    assert "summary    the summary of my work" in shown
    assert "1. true: passed" in shown and f"orchestra respond {task} --approve" in shown
    [row] = [line for line in d.cli("ps").output.splitlines() if line.split()[:1] == [str(task)]]
    assert " review " in row
    refused = d.run_cli("respond", str(task), "yes")
    assert refused.returncode != 0 and "--approve" in refused.stderr
    said = d.cli("respond", str(task), "--approve").output
    assert said.strip() == f"approved task {task}; it is succeeded"
    view = d.task(task)
    assert view.status is Status.SUCCEEDED and view.reason == "approved in review by a person (cli)"
    assert [(r.approved, r.by) for r in view.reviews] == [(True, "a person (cli)")]


def test_review_of_a_worktree_task_shows_its_diff(d, tmp_path):
    repo = make_repo(tmp_path / "repo")
    task = d.submit("sh", "-c", "echo new line >> README", cwd=str(repo), worktree=True, review=True)
    d.wait_status(task, Status.REVIEW, timeout=30)
    shown = d.cli("review", str(task)).output
    assert "  changes\n     README | 1 +" in shown and "+new line" in shown
    d.cli("respond", str(task), "--approve")


def test_rejecting_a_command_task_fails_it_with_the_message(d, work):
    task = d.submit("true", cwd=str(work), review=True)
    d.wait_status(task, Status.REVIEW, timeout=30)
    d.cli("respond", str(task), "--reject", "-m", "not like this")
    view = d.task(task)
    assert view.status is Status.FAILED and view.reason == "rejected in review by a person (cli): not like this"


def test_review_and_checks_survive_a_restart(tmp_path, work):
    d = Daemon().start()
    try:
        task = d.submit("true", cwd=str(work), checks=["echo checked"], review=True)
        d.wait_status(task, Status.REVIEW, timeout=30)
        d.stop()
        d.start()
        view = d.task(task)
        assert view.status is Status.REVIEW and view.check_results[0].tail == "checked"
        d.call(p.Respond(task=task, approve=True, via="cli"))
        assert d.task(task).status is Status.SUCCEEDED
    finally:
        d.cleanup()


def test_a_daemon_stopped_while_a_check_runs_leaves_the_task_interrupted(work):
    d = Daemon().start()
    try:
        task = d.submit("true", cwd=str(work), checks=[f"touch {work}/checking; sleep 60"])
        wait_for(lambda: (work / "checking").exists(), 15, "the check to start")
        assert d.stop() == 0  # a clean shutdown, though a check ran
        d.start()
        view = d.task(task)
        assert view.status is Status.INTERRUPTED and view.pid is None
        assert view.check_results[0].signal is not None or view.check_results[0].running
        assert "Traceback" not in d.output() and "could not run" not in d.output()
    finally:
        d.cleanup()
