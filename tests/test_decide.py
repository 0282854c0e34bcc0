"""decide(state, command, now): the events each command causes, or an error a person can act on."""

from __future__ import annotations

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import ErrorCode, OrchestraError, Status
from orchestrad.agents import kinds
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad import verify
from tests.core import Core

STATUSES = list(Status)


def task_in(core: Core, status: Status, *, agent: str = "claude") -> int:
    """A task brought into `status` through the same events the daemon would record."""
    kw = {"prompt": "do it"} if agent == "claude" else {"argv": ["cat"]}
    if status in (Status.CHECKING, Status.REVIEW):
        kw.update(checks=["true"], review=True)
    task = core.submit(**kw)
    if status is Status.QUEUED:
        return task
    if status is Status.CANCELLED:
        core.do(p.Stop(task=task))
        return task
    core.spawn(task)
    if status is Status.WAITING:
        core.apply([ev.InputRequested(task=task, request_id="r1", kind="permission", prompt="Bash: ls", tool="Bash")])
    elif status is Status.SUCCEEDED:
        core.exit(task, 0)
    elif status is Status.FAILED:
        core.exit(task, 1)
    elif status is Status.TIMED_OUT:
        core.apply([ev.StopRequested(task=task, outcome=Status.TIMED_OUT, reason="timed out after 1 s")])
        core.exit(task, None, 15)
    elif status is Status.INTERRUPTED:
        core.apply(d.reconcile(core.state))
    elif status in (Status.CHECKING, Status.REVIEW):
        core.apply([ev.SessionStarted(task=task, session_id="s1")])
        core.exit(task, 0)
        if status is Status.REVIEW:
            core.apply([ev.CheckStarted(task=task, index=0, command="true", pid=77)])
            core.apply([ev.CheckFinished(task=task, index=0, exit_code=0, signal=None, tail="")])
            core.apply(verify.next_step(core.state, core.state.tasks[task]))
    assert core.status(task) is status
    return task


def outcome(core: Core, command: p.Request) -> str:
    """The kinds of events a command causes, or the code of the error it gets."""
    try:
        return ",".join(type(e).__name__ for e in core.do(command)) or "nothing"
    except OrchestraError as exc:
        assert exc.message
        return exc.code.value


# status -> expected result of (stop, remove, set priority, respond allow, assign role, resume)
EXPECTED = {
    Status.QUEUED: ("TaskCancelled", "TaskRemoved", "TaskReprioritized", "conflict", "TaskRoleChanged", "conflict"),
    Status.RUNNING: ("StopRequested", "conflict", "conflict", "conflict", "TaskRoleChanged", "conflict"),
    Status.WAITING: ("StopRequested", "conflict", "conflict", "InputGiven", "TaskRoleChanged", "conflict"),
    Status.SUCCEEDED: ("conflict", "conflict", "conflict", "bad_request", "TaskRoleChanged", "conflict"),
    Status.FAILED: ("conflict", "conflict", "conflict", "bad_request", "TaskRoleChanged", "TaskContinued"),
    Status.TIMED_OUT: ("conflict", "conflict", "conflict", "bad_request", "TaskRoleChanged", "TaskContinued"),
    Status.CANCELLED: ("conflict", "conflict", "conflict", "bad_request", "TaskRoleChanged", "TaskContinued"),
    Status.INTERRUPTED: ("conflict", "conflict", "conflict", "bad_request", "TaskRoleChanged", "TaskContinued"),
    Status.CHECKING: ("StopRequested", "conflict", "conflict", "conflict", "TaskRoleChanged", "conflict"),
    Status.REVIEW: ("TaskCancelled", "conflict", "conflict", "bad_request", "TaskRoleChanged", "conflict"),
}


@pytest.mark.parametrize("status", STATUSES, ids=[s.value for s in STATUSES])
@pytest.mark.parametrize(
    "index,make",
    [
        (0, lambda t: p.Stop(task=t)),
        (1, lambda t: p.Remove(task=t)),
        (2, lambda t: p.SetPriority(task=t, priority=5)),
        (3, lambda t: p.Respond(task=t, allow=True)),
        (4, lambda t: p.AssignRole(task=t, role="tester")),
        (5, lambda t: p.Resume(task=t)),
    ],
    ids=["stop", "remove", "priority", "respond", "assign-role", "resume"],
)
def test_every_command_in_every_status(status, index, make):
    core = Core()
    task = task_in(core, status)
    assert outcome(core, make(task)) == EXPECTED[status][index]


@pytest.mark.parametrize(
    "command",
    [p.Stop(task=9), p.Remove(task=9), p.SetPriority(task=9, priority=1), p.Respond(task=9, text="x"), p.AssignRole(task=9, role="tester")],
    ids=lambda c: type(c).__name__,
)
def test_unknown_task_is_not_found(command):
    core = Core()
    core.submit()
    with pytest.raises(OrchestraError) as err:
        core.do(command)
    assert err.value.code is ErrorCode.NOT_FOUND
    assert "no task 9" in err.value.message and "orchestra ps" in err.value.message


def test_removed_task_is_named_as_removed():
    core = Core()
    task = core.submit()
    core.do(p.Remove(task=task))
    with pytest.raises(OrchestraError, match=f"task {task} was removed"):
        core.do(p.Stop(task=task))


def test_submit_fills_defaults_from_config():
    core = Core()
    core.do(p.ConfigSet(key="default_role", value="tester"))
    core.do(p.ConfigSet(key="default_timeout", value=30))
    [event] = core.do(p.Submit(cwd="/w", prompt="write tests"))
    assert event.task == 1
    assert event.spec.role == "tester"
    assert event.spec.agent == "claude"
    assert event.spec.timeout == 30
    assert event.spec.title == "write tests"
    [event] = core.do(p.Submit(cwd="/w", argv=["pytest", "-q"]))
    assert event.task == 2 and event.spec.agent == "command"


def test_priority_names_and_numbers():
    assert p.parse_priority("urgent") == 20
    assert p.parse_priority("low") == -10
    assert p.parse_priority("7") == 7
    with pytest.raises(ValueError, match="out of range"):
        p.parse_priority(101)
    with pytest.raises(ValueError, match="low, normal, high, urgent"):
        p.parse_priority("soon")


@pytest.mark.parametrize(
    "kw,code,words",
    [
        ({"prompt": "x", "argv": ["y"]}, "bad_request", "not both"),
        ({"agent": "command", "prompt": "x"}, "bad_request", "after `--`"),
        ({"prompt": "  "}, "bad_request", "needs a prompt"),
        ({"prompt": "x", "agent": "gpt"}, "bad_request", "unknown agent"),
        ({"prompt": "x", "role": "chef"}, "bad_request", "unknown role 'chef'"),
        ({"prompt": "x", "priority": 500}, "bad_request", "out of range"),
        ({"prompt": "x", "cwd": "relative/dir"}, "bad_request", "absolute path"),
        ({"prompt": "x", "timeout": 0}, "bad_request", "timeout must be"),
        ({"prompt": "x", "idle_timeout": -1}, "bad_request", "idle timeout must be"),
        ({"prompt": "x", "budget_usd": 0}, "bad_request", "budget"),
        ({"prompt": "x", "after": [42]}, "not_found", "no task 42"),
    ],
)
def test_invalid_submits_are_refused_with_a_reason(kw, code, words):
    core = Core()
    kw.setdefault("cwd", "/tmp")
    with pytest.raises(OrchestraError) as err:
        core.do(p.Submit(**kw))
    assert err.value.code.value == code
    assert words in err.value.message


def test_submit_after_a_failed_task_is_refused():
    core = Core()
    failed = task_in(core, Status.FAILED)
    with pytest.raises(OrchestraError, match=f"task {failed} already ended failed"):
        core.do(p.Submit(cwd="/tmp", prompt="x", after=[failed]))


def test_duplicate_dependencies_are_kept_once():
    core = Core()
    a = core.submit()
    [event] = core.do(p.Submit(cwd="/tmp", argv=["true"], after=[a, a]))
    assert event.spec.after == [a]


def test_no_environment_value_reaches_an_event():
    core = Core()
    env = {"PATH": "/bin", "OPENAI_API_KEY": "sk-1", "DSN": "pg://u:pw2@h", "CONN": "plain-looking"}
    [event] = core.do(p.Submit(cwd="/tmp", argv=["env"], env=env))
    assert event.spec.env == {}
    assert event.spec.secret_env == ["CONN", "DSN", "OPENAI_API_KEY", "PATH"]
    encoded = ev.encode(0.0, event)
    for value in (b"/bin", b"sk-1", b"pw2", b"plain-looking"):
        assert value not in encoded


def test_stop_is_idempotent_while_stopping():
    core = Core()
    task = task_in(core, Status.RUNNING)
    assert [type(e) for e in core.do(p.Stop(task=task))] == [ev.StopRequested]
    assert core.do(p.Stop(task=task)) == []
    core.exit(task, None, 15)
    assert core.status(task) is Status.CANCELLED
    assert core.state.tasks[task].reason == "stopped on request"


class TestRespond:
    def test_permission_allow_and_deny(self):
        core = Core()
        task = task_in(core, Status.WAITING)
        [given] = core.do(p.Respond(task=task, deny=True, message="not that"))
        assert given.answer == "deny: not that" and given.request_id == "r1"
        assert core.status(task) is Status.RUNNING

    def test_permission_refuses_free_text(self):
        core = Core()
        task = task_in(core, Status.WAITING)
        with pytest.raises(OrchestraError, match="--allow or --deny"):
            core.do(p.Respond(task=task, text="maybe"))

    def test_question_by_number_label_or_words(self):
        core = Core()
        task = core.submit(prompt="x")
        core.spawn(task)
        ask = ev.InputRequested(task=task, request_id="q", kind="question", prompt="Which db?", options=["sqlite", "postgres"])
        core.apply([ask])
        [given] = core.do(p.Respond(task=task, text="2"))
        assert given.answer == "postgres"
        core.apply([ask])
        with pytest.raises(OrchestraError, match="choose 1..2"):
            core.do(p.Respond(task=task, text="3"))
        with pytest.raises(OrchestraError, match="not for permission"):
            core.do(p.Respond(task=task, allow=True))
        [given] = core.do(p.Respond(task=task, text="duckdb, please"))
        assert given.answer == "duckdb, please"

    def test_command_agent_takes_a_line_while_running(self):
        core = Core()
        task = task_in(core, Status.RUNNING, agent="command")
        [given] = core.do(p.Respond(task=task, text="hello"))
        assert given == ev.InputGiven(task=task, request_id="", answer="hello")
        with pytest.raises(OrchestraError, match="line of text"):
            core.do(p.Respond(task=task, allow=True))

    def test_running_claude_task_that_asks_nothing(self):
        core = Core()
        task = task_in(core, Status.RUNNING)
        with pytest.raises(OrchestraError, match="not waiting for input"):
            core.do(p.Respond(task=task, text="hello"))


class TestConfig:
    def test_set_and_unchanged(self):
        core = Core()
        assert [type(e) for e in core.do(p.ConfigSet(key="max_concurrent", value=4))] == [ev.ConfigChanged]
        assert core.state.config.max_concurrent == 4
        assert core.do(p.ConfigSet(key="max_concurrent", value=4)) == []

    @pytest.mark.parametrize(
        "key,value,words",
        [
            ("max_concurrent", 0, "at least 1"),
            ("max_concurrent", True, "whole number"),
            ("max_concurent", 3, "unknown setting 'max_concurent'"),
            ("default_agent", "gpt", "one of " + ", ".join(kinds())),
            ("role_limits", {"tester": -1}, "role name to a whole number"),
            ("kill_grace", "soon", "seconds"),
        ],
    )
    def test_invalid_values(self, key, value, words):
        core = Core()
        with pytest.raises(OrchestraError, match=words):
            core.do(p.ConfigSet(key=key, value=value))


class TestObservations:
    def test_exit_codes_and_signals(self):
        core = Core()
        a, b, c = (task_in(core, Status.RUNNING, agent="command") for _ in range(3))
        core.exit(a, 0)
        core.exit(b, 3)
        core.exit(c, None, 9)
        assert core.status(a) is Status.SUCCEEDED
        assert (core.status(b), core.state.tasks[b].reason) == (Status.FAILED, "exited with code 3")
        assert (core.status(c), core.state.tasks[c].reason) == (Status.FAILED, "killed by SIGKILL")
        assert core.state.tasks[c].signal == 9 and core.state.active == set()

    def test_reconcile_interrupts_every_active_task(self):
        core = Core()
        running = task_in(core, Status.RUNNING)
        waiting = task_in(core, Status.WAITING)
        queued = core.submit()
        core.apply(d.reconcile(core.state))
        assert core.status(running) is core.status(waiting) is Status.INTERRUPTED
        assert core.status(queued) is Status.QUEUED
        assert d.reconcile(core.state) == []

    def test_spawn_failure(self):
        core = Core()
        task = core.submit()
        core.apply(d.spawn_failed(core.state, task, "no such program: 'nope'"))
        assert core.status(task) is Status.FAILED and "nope" in core.state.tasks[task].reason

    def test_purge_keeps_recent_and_needed_tasks(self):
        core = Core()
        old = task_in(core, Status.SUCCEEDED, agent="command")
        needed = task_in(core, Status.SUCCEEDED, agent="command")
        core.submit(after=[needed])
        core.now += 8 * 86400
        recent = task_in(core, Status.SUCCEEDED, agent="command")
        [purged] = core.apply(d.purge(core.state, core.now))
        assert purged.tasks == [old]
        assert old not in core.state.tasks and needed in core.state.tasks and recent in core.state.tasks
        with pytest.raises(OrchestraError, match="removed or purged"):
            d.get_task(core.state, old)


class TestContinuing:
    def finished_with_session(self, core: Core, status: Status = Status.SUCCEEDED) -> int:
        task = core.submit(prompt="build it")
        core.spawn(task)
        core.apply([ev.SessionStarted(task=task, session_id="sess-1")])
        if status is Status.INTERRUPTED:
            core.apply(d.reconcile(core.state))
        else:
            core.exit(task, 0 if status is Status.SUCCEEDED else 1)
        return task

    def test_follow_up_message_continues_the_conversation(self):
        core = Core()
        task = self.finished_with_session(core)
        [event] = core.do(p.Respond(task=task, text="now add tests"))
        assert event == ev.TaskContinued(task=task, message="now add tests", reason="follow-up")
        t = core.state.tasks[task]
        assert t.status is Status.QUEUED and t.pending_message == "now add tests"
        assert core.tick() == [task]
        assert t.attempts == 2 and t.pending_message == "" and t.session_id == "sess-1"

    def test_follow_up_needs_a_conversation(self):
        core = Core()
        task = core.submit(prompt="x")
        core.apply(d.spawn_failed(core.state, task, "claude not found"))
        with pytest.raises(OrchestraError, match="never started a conversation"):
            core.do(p.Respond(task=task, text="hello?"))

    def test_resume_an_interrupted_conversation(self):
        core = Core()
        task = self.finished_with_session(core, Status.INTERRUPTED)
        [event] = core.do(p.Resume(task=task))
        assert event.reason == "resume" and event.message == d.RESUME_MESSAGE

    def test_command_tasks_are_retried_from_scratch(self):
        core = Core()
        task = task_in(core, Status.FAILED, agent="command")
        [event] = core.do(p.Resume(task=task))
        assert event.reason == "retry" and event.message == ""

    def test_auto_resume_after_restart(self):
        core = Core()
        core.do(p.ConfigSet(key="auto_resume", value=True))
        task = core.submit(prompt="x")
        core.spawn(task)
        core.apply([ev.SessionStarted(task=task, session_id="s")])
        command = core.submit(argv=["sleep", "9"])
        core.spawn(command)
        core.apply(d.reconcile(core.state))
        assert core.status(task) is Status.QUEUED and core.state.tasks[task].continued == "resume"
        assert core.status(command) is Status.INTERRUPTED

    def test_agent_error_result_fails_the_task_with_its_message(self):
        core = Core()
        task = core.submit(prompt="x")
        core.spawn(task)
        core.apply([ev.AgentResult(task=task, text="API Error: 401 invalid x-api-key\nmore", is_error=True)])
        core.exit(task, 1)
        assert core.status(task) is Status.FAILED
        assert core.state.tasks[task].reason == "the agent reported an error: API Error: 401 invalid x-api-key"

    def test_an_agent_that_exits_without_a_result_has_failed(self):
        core = Core()
        task = core.submit(prompt="x")
        core.spawn(task)
        core.exit(task, 0, result=None)
        assert core.status(task) is Status.FAILED
        assert "exited without giving a result" in core.state.tasks[task].reason

    def test_exit_reason_quotes_the_agents_last_words(self):
        core = Core()
        task = core.submit(prompt="x")
        core.spawn(task)
        core.apply(d.process_exited(core.state, task, 1, 2, None, "Invalid model name"))
        assert core.state.tasks[task].reason == "exited with code 2: Invalid model name"


# ---------------------------------------------------------------------------------------
# Who may ask what: an agent is not the user


def test_an_agent_may_read_everything_and_act_for_nobody():
    core = Core()
    agent = task_in(core, Status.WAITING)
    other = task_in(core, Status.RUNNING, agent="command")
    queued = core.submit()
    me = d.Actor(task=agent)
    for read in (p.ListTasks(), p.Show(task=other), p.Logs(task=other), p.Wait(tasks=[other]), p.ConfigGet(), p.Info()):
        d.authorize(core.state, read, me)
    refused = [
        p.Respond(task=agent, allow=True),  # its own question: above all
        p.Respond(task=other, text="y"),
        p.ConfigSet(key="permission_mode", value="bypassPermissions"),
        p.Stop(task=other),
        p.SetPriority(task=queued, priority=20),
        p.Remove(task=queued),
        p.AssignRole(task=queued, role="devops"),
        p.Submit(cwd="/tmp", argv=["true"]),  # its role does not delegate
        p.RunWorkflow(template="bug-fix", goal="x", cwd="/tmp"),
        p.Cleanup(),
        p.Shutdown(),
    ]
    for request in refused:
        with pytest.raises(p.OrchestraError) as caught:
            d.decide(core.state, request, core.now, me) if type(request) in d._HANDLERS else d.authorize(core.state, request, me)
        assert caught.value.code is p.ErrorCode.FORBIDDEN, request
    d.authorize(core.state, p.Stop(task=agent), me)  # it may end itself
    for request in refused:  # the user may do all of it (decide's own checks aside)
        d.authorize(core.state, request, None)


def test_a_delegated_task_records_its_parent_and_inherits_its_limits():
    core = Core()
    lead_role = p.Role(name="lead", prompt="lead", delegate=["tester"], timeout=100, budget_usd=2.0)
    core.apply([ev.CatalogChanged(roles=[lead_role], templates=[], problems=[])])
    lead = core.submit(prompt="lead the work", role="lead", cwd="/work/repo", priority=5)
    core.spawn(lead)
    me = d.Actor(task=lead)
    [event] = d.decide(core.state, p.Submit(cwd="/work/repo/sub", argv=["pytest"], role="tester", timeout=5000, priority=20), core.now, me)
    spec = event.spec
    assert (spec.parent, spec.role, spec.timeout, spec.budget_usd, spec.priority) == (lead, "tester", 100, 2.0, 5)
    for request, words in [
        (p.Submit(cwd="/work/repo", argv=["true"], role="devops"), "as tester only"),
        (p.Submit(cwd="/work/other", argv=["true"], role="tester"), "only in its own directory"),
        (p.Submit(cwd="/work/repository", argv=["true"], role="tester"), "only in its own directory"),
    ]:
        with pytest.raises(p.OrchestraError, match=words):
            d.decide(core.state, request, core.now, me)
    core.exit(lead, 0)
    with pytest.raises(p.OrchestraError, match="only the agent of a running task"):
        d.decide(core.state, p.Submit(cwd="/work/repo", argv=["true"], role="tester"), core.now, me)


def test_a_workflow_whose_steps_the_agent_cannot_run_is_refused_at_submit():
    core = Core()
    with pytest.raises(p.OrchestraError, match="gives a prompt, and the command agent needs a command to run") as caught:
        core.do(p.RunWorkflow(template="code-review", goal="look", cwd="/tmp", agent="command"))
    assert caught.value.code is p.ErrorCode.BAD_REQUEST and "--agent claude" in caught.value.message
    assert not core.state.tasks and not core.state.workflows


@pytest.mark.parametrize(("status", "said"), [
    (Status.SUCCEEDED, "already succeeded"), (Status.FAILED, "already failed"), (Status.TIMED_OUT, "already timed out"),
    (Status.CANCELLED, "was already cancelled"), (Status.INTERRUPTED, "was already interrupted"),
])
def test_stopping_a_finished_task_says_how_it_ended_in_plain_words(status, said):
    core = Core()
    task = task_in(core, status)
    with pytest.raises(OrchestraError) as caught:
        core.do(p.Stop(task=task))
    assert caught.value.message == f"task {task} {said}; there is nothing to stop"


def test_errors_name_a_finished_task_by_how_it_ended():
    core = Core()
    task = task_in(core, Status.SUCCEEDED)
    with pytest.raises(OrchestraError, match=rf"^task {task} succeeded; priority only orders tasks that are still queued$"):
        core.do(p.SetPriority(task=task, priority=1))
    queued = task_in(core, Status.QUEUED)
    with pytest.raises(OrchestraError, match=rf"^task {queued} is queued; only a finished task can be resumed$"):
        core.do(p.Resume(task=queued))
