"""Notifications, the pure part: which facts make a notice, what it holds, the rate window,
and the settings that name the sinks."""

from __future__ import annotations

import asyncio
import json

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import config as config_mod
from orchestrad import events as ev
from orchestrad import notify
from tests.core import Core


def found(core: Core, events: list[ev.Event]) -> list[notify.Notice]:
    """Apply `events` as one batch and return its notices, as the engine does."""
    core.apply(events)
    return notify.notices(core.state, events, core.now)


def ended(core: Core, task_id: int, code: int = 0) -> list[notify.Notice]:
    task = core.state.tasks[task_id]
    from orchestrad import decide as d

    return found(core, d.process_exited(core.state, task_id, task.pid or 0, code, None))


def test_a_failed_task_notifies_with_what_show_shows_and_never_an_environment_value():
    core = Core()
    core.do(p.ConfigSet(key="default_agent", value="command"))
    task = core.submit(argv=["make", "test"], title="run the tests", role="tester", env={"API_TOKEN": "s3cret-value"})
    core.spawn(task)
    [notice] = ended(core, task, 3)
    assert (notice.kind, notice.task, notice.title, notice.role, notice.status) == ("failed", task, "run the tests", "tester", "failed")
    assert notice.reason == "exited with code 3"
    assert notice.message == f"Task {task} (tester: run the tests) failed: exited with code 3"
    assert notice.headline == f"orchestra: task {task} failed"
    body = json.loads(notify.payload(notice))
    assert body["kind"] == "failed" and body["task"] == task and body["time"].endswith("Z") and body["schema"] == 1
    text = notify.payload(notice).decode()
    assert "s3cret-value" not in text and "API_TOKEN" not in text and "make" not in text  # no env, no argv


@pytest.mark.parametrize("code, outcome, notified", [(0, "succeeded", False), (1, "failed", True)])
def test_only_failures_notify(code, outcome, notified):
    core = Core()
    task = core.submit()
    core.spawn(task)
    notices = ended(core, task, code)
    assert core.status(task).value == outcome
    assert [n.kind for n in notices] == (["failed"] if notified else [])


def test_a_timeout_notifies_as_a_failure_and_a_stop_or_shutdown_does_not():
    core = Core()
    timed, stopped, interrupted = core.submit(), core.submit(), core.submit()
    for task, outcome in ((timed, Status.TIMED_OUT), (stopped, Status.CANCELLED), (interrupted, Status.INTERRUPTED)):
        core.spawn(task)
        core.apply([ev.StopRequested(task=task, outcome=outcome, reason="why")])
    assert [n.message for n in ended(core, timed, None)] == [f"Task {timed} (generalist: true) timed out: why"]
    assert ended(core, stopped, None) == [] and ended(core, interrupted, None) == []


def test_a_failure_retried_in_the_same_batch_is_not_announced():
    core = Core()
    task = core.submit()
    core.spawn(task)
    batch = [
        ev.TaskFinished(task=task, outcome=Status.FAILED, reason="overloaded"),
        ev.TaskContinued(task=task, message="", reason="retry"),
    ]
    assert found(core, batch) == []


def test_a_waiting_task_notifies_with_its_question_and_how_to_answer():
    core = Core()
    task = core.submit(prompt="tidy up", title="tidy")
    core.spawn(task)
    asked = ev.InputRequested(task=task, request_id="r1", kind="permission", prompt="Bash: rm -rf build", tool="Bash")
    [notice] = found(core, [asked])
    assert notice.kind == "waiting" and notice.status == "waiting"
    assert notice.question == notify.Asked(kind="permission", prompt="Bash: rm -rf build", tool="Bash")
    assert notice.message == f"Task {task} (generalist: tidy) is waiting for permission: Bash: rm -rf build. Answer: orchestra respond {task} --allow (or --deny)"
    question = ev.InputRequested(task=task, request_id="r2", kind="question", prompt="Which database?", options=["SQLite", "PostgreSQL"])
    core.apply([ev.InputGiven(task=task, request_id="r1", answer="allow")])
    [notice] = found(core, [question])
    assert "Which database? [1. SQLite / 2. PostgreSQL]" in notice.message and f"orchestra respond {task} N" in notice.message


def test_a_question_answered_in_the_same_batch_is_not_announced():
    """A policy that answers at once leaves nothing for a person to do."""
    core = Core()
    task = core.submit(prompt="x")
    core.spawn(task)
    batch = [
        ev.InputRequested(task=task, request_id="r1", kind="permission", prompt="Bash: pytest"),
        ev.InputGiven(task=task, request_id="r1", answer="allow"),
    ]
    assert found(core, batch) == []


WORKFLOW = """
[[steps]]
name = "build"
argv = ["make"]

[[steps]]
name = "deploy"
after = ["build"]
argv = ["deploy"]

[[steps]]
name = "report"
if_failed = "build"
argv = ["report"]
"""


def _workflow(core: Core) -> dict[str, int]:
    from orchestrad import workflows

    template = workflows.parse("ship", WORKFLOW, {"generalist"})
    core.apply([ev.CatalogChanged(roles=[], templates=[template], problems=[])])
    [created, *_] = core.do(p.RunWorkflow(template="ship", goal="ship it", cwd="/repo"))
    return created.steps


def test_a_workflow_notifies_once_when_its_last_step_ends():
    core = Core()
    steps = _workflow(core)
    [started] = core.tick()
    assert started == steps["build"]
    notices = ended(core, steps["build"], 2)
    assert [n.kind for n in notices] == ["failed"]  # deploy and report have not ended yet
    plan = core.plan()  # deploy is cancelled (its dependency failed), report starts
    notices = found(core, plan.events)
    assert notices == []
    core.spawn(steps["report"])
    [notice] = ended(core, steps["report"], 0)
    assert notice.kind == "workflow_ended" and notice.workflow == 1 and notice.template == "ship" and notice.status == "failed"
    assert notice.steps == {"build": "failed", "deploy": "cancelled", "report": "succeeded"}
    assert notice.message == "Workflow 1 (ship: ship it) ended: failed; step build failed: exited with code 2"


def test_a_workflow_cut_off_by_a_shutdown_has_not_ended():
    """Its interrupted step may be resumed, so its end is not announced."""
    core = Core()
    steps = _workflow(core)
    core.tick()
    core.apply([ev.StopRequested(task=steps["build"], outcome=Status.INTERRUPTED, reason="the daemon was shut down")])
    assert ended(core, steps["build"], None) == []
    rest = [ev.TaskCancelled(task=steps[name], reason="cancelled") for name in ("deploy", "report") if not core.status(steps[name]).finished]
    assert rest and found(core, rest) == []
    assert all(core.status(t).finished for t in steps.values())


def test_a_task_parked_on_a_usage_limit_notifies_with_when_it_resumes():
    import msgspec

    from orchestrad import decide as d
    from tests.test_retries import RESET, SESSION, USAGE_LIMIT, agent_result, claude_core

    core = claude_core()
    task = core.submit(prompt="refactor the cache", agent="claude", title="refactor")
    core.tick()
    core.apply([ev.SessionStarted(task=task, session_id=SESSION), msgspec.structs.replace(agent_result(USAGE_LIMIT), task=task)])
    t = core.state.tasks[task]
    [notice] = found(core, d.process_exited(core.state, task, t.pid or 0, 1, None))
    assert (notice.kind, notice.task, notice.resumes_at) == ("parked", task, RESET)
    assert "is parked until" in notice.message and "(usage limit); it resumes by itself" in notice.message


def test_the_summary_of_what_was_left_out():
    notice = notify.more(190, {"failed": 180, "waiting": 10}, 10, 60.0, 1_000_000.0)
    assert notice.kind == "more" and notice.count == 190 and notice.counts == {"failed": 180, "waiting": 10}
    assert notice.message == "…and 190 more notices (180 failed, 10 waiting) not sent one by one, to keep to 10 per minute; `orchestra ps` shows the tasks"


def test_the_window_allows_limit_sends_in_any_window():
    window = notify.Window()
    for t in (0.0, 1.0, 2.0):
        assert window.wait(t, 3, 10.0) == 0
        window.sent(t)
    assert window.wait(5.0, 3, 10.0) == 5.0  # the first ages out at 10
    assert window.wait(10.0, 3, 10.0) == 0
    window.sent(10.0)
    assert window.wait(10.5, 3, 10.0) == 0.5
    assert window.wait(10.5, 1, 10.0) == 9.5  # a lower limit: until all but the newest age out


# -- settings ---------------------------------------------------------------------------


def test_the_notification_settings_and_their_defaults():
    c = config_mod.DEFAULT
    assert (c.notify_command, c.notify_webhook, c.notify_desktop) == (None, None, False)
    assert c.notify_on == ["waiting", "failed", "parked", "workflow_ended", "review"]
    for key, value in [
        ("notify_command", ["notify-me", "--json"]),
        ("notify_command", "jq -c . >> ~/notices.jsonl"),
        ("notify_webhook", "http://127.0.0.1:8080/orchestra"),
        ("notify_webhook", "https://hooks.example.com/services/T0/B0?channel=dev"),
        ("notify_webhook_token_env", "ORCHESTRA_HOOK_TOKEN"),
        ("notify_desktop", True),
        ("notify_on", ["failed", "workflow_ended"]),
        ("notify_limit", 5),
        ("notify_window", 30),
        ("notify_timeout", 2.5),
    ]:
        assert config_mod.check(key, value) is None, (key, value)


@pytest.mark.parametrize("key, value, words", [
    ("notify_webhook", "ftp://example.com/x", "http:// or https:// URL"),
    ("notify_webhook", "http://example.com:port/x", "http:// or https:// URL"),
    ("notify_webhook", "https://hooks.example.com/x?token=abc", "its query holds what looks like a secret"),
    ("notify_webhook", "https://hooks.example.com/x?api_key=abc", "notify_webhook_token_env"),
    ("notify_webhook", "https://me:pw@hooks.example.com/x", "it holds a user or password"),
    ("notify_command", [], "a command as a list of arguments"),
    ("notify_command", True, "a command as a list of arguments"),
    ("notify_webhook_token_env", "MY-TOKEN", "the name of a variable"),
    ("notify_on", ["failures"], "waiting, failed, parked, workflow_ended"),
    ("notify_desktop", "yes", "true or false"),
    ("notify_limit", 0, "at least 1"),
])
def test_bad_notification_settings_say_what_they_take(key, value, words):
    problem = config_mod.check(key, value)
    assert problem is not None and words in problem, problem


# -- a sink's queue and rate limit (the shell's Channel, with a delivery that records) ---


def _notice(i: int) -> notify.Notice:
    return notify.Notice(kind="failed", message=f"notice {i}", headline="", ts=0.0, time="")


def _channel(limit: int, window: float, deliver):
    import msgspec

    from orchestrad.notifier import Channel, Notifier

    notifier = Notifier({})
    notifier.config = msgspec.structs.replace(config_mod.DEFAULT, notify_limit=limit, notify_window=window)
    return Channel("test", deliver, notifier)


def _durable():
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def test_a_sink_sends_up_to_its_limit_then_one_summary_once_the_window_allows():
    async def main() -> list[str]:
        got: list[notify.Notice] = []
        summed = asyncio.Event()

        async def deliver(notice, config):
            got.append(notice)
            if notice.kind == "more":
                summed.set()
            return "test"

        channel = _channel(2, 0.2, deliver)
        channel.add([_notice(i) for i in range(5)], _durable())
        await asyncio.wait_for(summed.wait(), 10)
        await channel.stop(1.0)
        return [n.message if n.kind != "more" else f"more {n.count}" for n in got]

    assert asyncio.run(main()) == ["notice 0", "notice 1", "more 3"]


def test_a_slow_sink_keeps_the_newest_notices_and_counts_the_dropped_ones():
    from orchestrad.notifier import QUEUE

    async def main() -> list[str]:
        got: list[notify.Notice] = []
        release = asyncio.Event()

        async def deliver(notice, config):
            got.append(notice)
            await release.wait()  # the first one hangs until released
            return "test"

        channel = _channel(1000, 60.0, deliver)
        channel.add([_notice(0)], _durable())
        while not got:
            await asyncio.sleep(0)
        channel.add([_notice(i) for i in range(1, QUEUE + 51)], _durable())
        assert len(channel.pending) == QUEUE
        release.set()
        while len(got) < QUEUE + 2:
            await asyncio.sleep(0.01)
        await channel.stop(1.0)
        return [n.message if n.kind != "more" else f"more {n.count}" for n in got]

    sent = asyncio.run(main())
    assert sent == ["notice 0", "more 50", *[f"notice {i}" for i in range(51, QUEUE + 51)]]
