"""scheduler.plan(state, now): start order, limits, dependencies and deadlines."""

from __future__ import annotations

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import events as ev
from orchestrad import scheduler
from tests.core import Core


def test_highest_priority_first_then_oldest():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=10))
    low = core.submit(priority=-10)
    first = core.submit()
    urgent = core.submit(priority=20)
    second = core.submit()
    assert core.plan().start == [urgent, first, second, low]


def test_reprioritized_task_moves_ahead():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=1))
    a, b = core.submit(), core.submit()
    core.do(p.SetPriority(task=b, priority=5))
    assert core.plan().start == [b]
    assert a in core.state.queued


def test_global_limit_counts_running_and_waiting():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=2))
    tasks = [core.submit() for _ in range(4)]
    assert core.tick() == tasks[:2]
    assert core.plan().start == []
    core.apply([ev.InputRequested(task=tasks[0], request_id="r", kind="input", prompt="?")])
    assert core.plan().start == []  # a waiting task keeps its slot
    core.exit(tasks[1])
    assert core.tick() == [tasks[2]]


def test_per_role_limit_lets_other_roles_pass():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=3))
    core.do(p.ConfigSet(key="role_limits", value={"tester": 1}))
    t1 = core.submit(role="tester")
    t2 = core.submit(role="tester")
    r1 = core.submit(role="reviewer")
    assert core.tick() == [t1, r1]
    core.exit(t1)
    assert core.tick() == [t2]


def test_dependencies_wait_for_success():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=4))
    a = core.submit()
    b = core.submit(after=[a], priority=20)
    assert core.tick() == [a]
    assert core.tick() == []
    core.exit(a, 0)
    assert core.tick() == [b]


def test_failed_dependency_cancels_dependents_with_its_name():
    core = Core()
    a = core.submit()
    b = core.submit(after=[a])
    c = core.submit(after=[b])
    core.tick()
    core.exit(a, 2)
    core.tick()
    assert core.status(b) is Status.CANCELLED
    assert core.state.tasks[b].reason == f"not run: dependency {a} ended failed"
    core.tick()
    assert core.status(c) is Status.CANCELLED
    assert core.state.tasks[c].reason == f"not run: dependency {b} ended cancelled"


def test_removed_dependency_cancels_dependents():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=1))
    blocker = core.submit()
    a = core.submit()
    b = core.submit(after=[a])
    core.tick()
    core.do(p.Remove(task=a))
    core.tick()
    assert core.status(b) is Status.CANCELLED and "was removed" in core.state.tasks[b].reason
    assert core.status(blocker) is Status.RUNNING


def test_timeout_requests_a_stop_and_sets_the_wakeup():
    core = Core()
    task = core.submit(timeout=30)
    core.tick()
    started = core.now
    assert core.plan().wake_at == started + 30
    core.now = started + 29.9
    assert core.plan().events == []
    core.now = started + 30
    [stop] = core.plan().events
    assert stop == ev.StopRequested(task=task, outcome=Status.TIMED_OUT, reason="timed out after 30 s")
    core.apply([stop])
    assert core.plan().events == []  # asked once
    core.exit(task, None, 15)
    assert core.status(task) is Status.TIMED_OUT


def test_idle_timeout_follows_output_and_pauses_while_waiting():
    core = Core()
    task = core.submit(idle_timeout=10)
    core.tick()
    core.now += 8
    core.apply([ev.OutputAppended(task=task, stream="stdout", size=3)])
    core.now += 8
    assert core.plan().events == []
    assert core.plan().wake_at == core.now + 2
    core.apply([ev.InputRequested(task=task, request_id="r", kind="input", prompt="name?")])
    core.now += 100
    assert core.plan().events == [] and core.plan().wake_at is None
    core.apply([ev.InputGiven(task=task, request_id="r", answer="x")])
    core.now += 10
    [stop] = core.plan().events
    assert stop.outcome is Status.TIMED_OUT and "idle" in stop.reason


def test_cpu_use_moves_the_idle_deadline_and_the_reason_names_both():
    core = Core()
    task = core.submit(idle_timeout=10)
    core.tick()
    started = core.now
    core.now += 10
    assert scheduler.plan(core.state, core.now, busy={task: started + 7}).events == []  # it used CPU 7 s in: not idle yet
    assert scheduler.plan(core.state, core.now, busy={task: started + 7}).wake_at == started + 17
    assert scheduler.plan(core.state, core.now, busy={task: started - 5}).events != []  # older CPU use than its output
    core.now = started + 17
    [stop] = scheduler.plan(core.state, core.now, busy={task: started + 7}).events
    assert stop == ev.StopRequested(task=task, outcome=Status.TIMED_OUT, reason="no output and no CPU use for 10 s (idle timeout)")
    [unread] = scheduler.plan(core.state, core.now).events  # no CPU readings: only output counts, and it says so
    assert unread.reason == "no output for 10 s (idle timeout)"
    assert scheduler.plan(core.state, core.now, busy={}).events[0].reason == stop.reason  # read, and it used none


def test_cpu_use_does_not_move_a_wall_clock_timeout():
    core = Core()
    task = core.submit(timeout=30, idle_timeout=10)
    core.tick()
    core.now += 30
    [stop] = scheduler.plan(core.state, core.now, busy={task: core.now}).events
    assert stop.reason == "timed out after 30 s"


def test_the_idle_reason_says_minutes():
    assert scheduler.idle_reason(600, cpu=True) == "no output and no CPU use for 10 min (idle timeout)"
    assert scheduler.idle_reason(600, cpu=False) == "no output for 10 min (idle timeout)"


def test_plan_looks_only_at_work_in_flight():
    core = Core()
    for _ in range(200):
        task = core.submit()
        core.tick()
        core.exit(task)
    assert core.state.queued == set() and core.state.active == set()
    assert core.plan().start == [] and core.plan().events == []


def test_auto_deny_answers_a_question_left_waiting():
    core = Core()
    core.do(p.ConfigSet(key="auto_deny_after", value=60))
    task = core.submit(prompt="x")
    core.tick()
    core.apply([ev.InputRequested(task=task, request_id="r", kind="permission", prompt="Bash: ls", tool="Bash")])
    assert core.plan().wake_at == core.now + 60
    core.now += 60
    [deny] = core.plan().events
    assert deny == ev.InputGiven(task=task, request_id="r", answer="deny: no answer came within 60 s", by="the auto-deny timeout")
    core.apply([deny])
    assert core.status(task) is Status.RUNNING


def test_every_queued_task_says_what_it_waits_for_in_the_order_it_will_start():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=2))
    core.do(p.ConfigSet(key="role_limits", value={"tester": 1, "reviewer": 0}))
    running = core.submit(role="tester")
    core.tick()
    dep = core.submit(priority=50)  # high priority, but others wait on it
    after = core.submit(after=[dep], priority=90)
    tester = core.submit(role="tester", priority=80)
    reviewer = core.submit(role="reviewer", priority=70)
    low = core.submit(priority=-10)
    order = list(scheduler.start_order(core.state))
    assert [t for t, _ in order] == [dep, after, low, tester, reviewer]
    reasons = dict(order)
    assert reasons[dep] == ""  # starts at the next pass: the one free slot is its
    assert reasons[low] == "a free slot (1 of 2 running)"
    assert reasons[tester] == "a tester slot (role_limits: 1 of 1 running)"
    assert "allows no reviewer task (its limit is 0)" in reasons[reviewer]
    assert reasons[after] == f"task {dep} to succeed"
    assert core.tick() == [dep]
    assert running in core.state.active


def test_role_limits_must_name_known_roles():
    core = Core()
    with pytest.raises(p.OrchestraError, match="role_limits names no known role: testr; the roles are"):
        core.do(p.ConfigSet(key="role_limits", value={"testr": 1}))


def test_one_task_says_what_it_waits_for_without_looking_at_the_queue():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=1))
    first = core.submit()
    core.tick()
    second = core.submit()
    after = core.submit(after=[first])
    assert scheduler.waits_for(core.state, core.state.tasks[second]) == "a free slot (1 of 1 running)"
    assert scheduler.waits_for(core.state, core.state.tasks[after]) == f"task {first} to succeed"


def test_past_the_worktree_quota_only_tasks_that_would_make_a_worktree_wait_and_room_is_asked_for():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=5))
    core.do(p.ConfigSet(key="worktree_quota", value=1000))
    isolated = core.submit(worktree=True)
    plain = core.submit()
    over = scheduler.plan(core.state, core.now, worktree_use=1001)
    assert over.start == [plain] and over.room
    words = scheduler.waits_for(core.state, core.state.tasks[isolated], 1001)
    assert words.startswith("worktree space (1001 B of 1000 B used;")
    assert scheduler.plan(core.state, core.now, worktree_use=1000).start == [isolated, plain]  # at the quota, not past it
    assert scheduler.plan(core.state, core.now, worktree_use=None).start == [isolated, plain]  # not measured: no quota
    core.do(p.ConfigSet(key="worktree_quota", value=None))
    unlimited = scheduler.plan(core.state, core.now, worktree_use=10**12)
    assert unlimited.start == [isolated, plain] and not unlimited.room


def test_slots_are_counted_where_tasks_run():
    core = Core()
    core.do(p.ConfigSet(key="max_concurrent", value=1))
    core.do(p.ConfigSet(key="ray_address", value="10.0.0.5:6379"))
    local = [core.submit() for _ in range(2)]
    remote = [core.submit(executor="ray") for _ in range(4)]
    # The cluster not seen yet: one remote start finds out; this machine's one slot is its own.
    assert core.plan().start == [local[0], remote[0]]
    plan = scheduler.plan(core.state, core.now, remote={"ray": 3})
    assert plan.start == [local[0], *remote[:3]]
    for task_id in plan.start:
        core.spawn(task_id)
    assert scheduler.plan(core.state, core.now, remote={"ray": 3}).start == []  # both full
    assert scheduler.plan(core.state, core.now, remote={"ray": 4}).start == [remote[3]]  # a node joined
    assert scheduler.waits_for(core.state, core.state.tasks[local[1]]) == "a free slot (1 of 1 running)"


def test_a_deferred_start_is_the_same_attempt_again_and_waits_its_time():
    core = Core()
    core.do(p.ConfigSet(key="ray_address", value="10.0.0.5:6379"))
    task = core.submit(executor="ray", node_labels=["gpu"])
    [started] = core.plan().start
    core.apply([ev.TaskStarting(task=task, attempt=1)])
    core.apply([ev.StartDeferred(task=task, until=core.now + 5, reason="no node of the Ray cluster has the label gpu")])
    view = core.state.tasks[task]
    assert view.status is Status.QUEUED and view.attempts == 0 and view.hold == "executor"
    plan = core.plan()
    assert plan.start == [] and plan.wake_at == core.now + 5
    core.now += 5
    assert core.tick() == [task] and core.state.tasks[task].attempts == 1
    assert core.replayed().tasks[task].attempts == 1


def test_node_labels_need_a_cluster_and_are_words():
    core = Core()
    with pytest.raises(p.OrchestraError, match="--executor ray"):
        core.submit(node_labels=["gpu"])
    with pytest.raises(p.OrchestraError, match="ray_address"):
        core.submit(executor="ray")
    core.do(p.ConfigSet(key="ray_address", value="10.0.0.5:6379"))
    with pytest.raises(p.OrchestraError, match="a node label is a word"):
        core.submit(executor="ray", node_labels=["g p u"])
    with pytest.raises(p.OrchestraError, match="unknown executor"):
        core.submit(executor="k8s")
    task = core.submit(executor="ray", node_labels=["gpu", "big", "gpu"])
    assert core.state.tasks[task].spec.node_labels == ["big", "gpu"]


def test_output_up_to_the_limit_is_kept_and_one_byte_past_it_stops_the_task():
    from orchestrad import decide as d

    core = Core()
    core.do(p.ConfigSet(key="max_output_bytes", value=1024))
    task = core.submit()
    core.spawn(task)
    core.apply([ev.OutputAppended(task=task, stream="stdout", size=1000)])
    assert d.output_over_limit(core.state, task, 24) == []  # exactly the limit: a 1 GiB run under the 1 GiB default
    [stop] = d.output_over_limit(core.state, task, 25)
    assert stop.outcome is Status.FAILED and "output limit of 1 KiB" in stop.reason
