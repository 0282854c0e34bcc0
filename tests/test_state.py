"""evolve(state, event): what each event does to the state, and replay properties."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestra.shared import protocol as p
from orchestra.shared.protocol import OrchestraError, Status
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad.log import Log
from orchestrad.refs import DataRef
from orchestrad.state import (
    READY, State, _deps, _readiness, blocked_for_good, evolve, from_snapshot, output_refs, replay, to_snapshot, view,
)
from orchestrad.store import replay_log
from tests.core import Core


def test_lifecycle_through_events():
    core = Core()
    task = core.submit(prompt="build it", budget_usd=3.0)
    t = core.state.tasks[task]
    assert (t.status, t.attempts, core.state.queued, core.state.active) == (Status.QUEUED, 0, {task}, set())
    core.spawn(task, pid=4242)
    assert (t.status, t.pid, t.attempts, core.state.active) == (Status.RUNNING, 4242, 1, {task})
    core.apply([ev.SessionStarted(task=task, session_id="s-1", model="m")])
    core.apply([ev.InputRequested(task=task, request_id="q", kind="permission", prompt="Bash: rm x", tool="Bash")])
    assert t.status is Status.WAITING and t.waiting.prompt == "Bash: rm x" and t.waiting.since == core.now
    core.apply([ev.InputGiven(task=task, request_id="other", answer="allow")])
    assert t.status is Status.WAITING  # an answer to another request changes nothing
    core.apply([ev.InputGiven(task=task, request_id="q", answer="allow")])
    assert t.status is Status.RUNNING and t.waiting is None
    core.apply([ev.UsageRecorded(task=task, cost_usd=0.25, input_tokens=100, output_tokens=7)] * 2)
    assert (t.cost_usd, t.input_tokens, t.output_tokens) == (0.5, 200, 14)
    core.now += 12
    core.exit(task, 0)
    assert (t.status, t.pid, t.exit_code, t.session_id) == (Status.SUCCEEDED, None, 0, "s-1")
    shown = view(t, core.now + 100)
    assert shown.runtime == 12 and shown.cost_usd == 0.5 and shown.budget_usd == 3.0


def test_a_preview_cuts_title_prompt_command_and_result_and_the_full_view_keeps_them():
    core = Core()
    task = core.submit(argv=["python", "-c", "x" * 500, "--flag"], title="t" * 200)
    core.apply([ev.AgentResult(task=task, text="r" * 6000, is_error=False)])
    t = core.state.tasks[task]
    brief = view(t, core.now, preview=20)
    assert brief.title == "t" * 19 + "…" and brief.result == "r" * 19 + "…"
    assert brief.argv == ["python", "-c", "x" * 11 + "…", "…"]  # 20 characters in all, and "more followed"
    assert view(t, core.now, preview=1000).argv == t.spec.argv
    whole = view(t, core.now)
    assert (whole.title, whole.argv, whole.result) == (t.spec.title, t.spec.argv, t.result)
    prompt = core.state.tasks[core.submit(prompt="p" * 300)]
    assert view(prompt, core.now, preview=p.PREVIEW).prompt == "p" * 199 + "…"


def test_output_locations_are_kept_per_task():
    class Where:
        def __init__(self, offset):
            self.segment, self.offset, self.length, self.crc = 1, offset, 5, 99

    state = State()
    core = Core()
    task = core.submit()
    state = replay(core.records)
    ev_out = ev.OutputAppended(task=task, stream="stderr", size=5)
    from orchestrad.state import evolve

    evolve(state, ev_out, seq=2, ts=1.0, data=Where(100))
    evolve(state, ev_out, seq=3, ts=2.0, data=Where(200))
    assert [(o.stream, o.offset) for o in output_refs(state, task)] == [("stderr", 100), ("stderr", 200)]
    assert [o.offset for o in output_refs(state, task, 1)] == [200]
    assert state.tasks[task].output_bytes == 10 and state.tasks[task].last_activity == 2.0


def test_a_reader_part_way_through_the_output_places_never_stops_the_fold_adding_more():
    """A `logs --follow` stream keeps its walk over the places suspended while its client
    does not read. The fold must still add places behind it (it used to raise BufferError:
    the walk held a view of the bytearray), and the reader sees the ones there when it began."""
    core = Core()
    task = core.submit()
    state = replay(core.records)
    out = ev.OutputAppended(task=task, stream="stdout", size=5)
    evolve(state, out, seq=2, ts=1.0, data=DataRef(1, 0, 5, 7))
    evolve(state, out, seq=3, ts=1.0, data=DataRef(1, 5, 5, 8))
    walk = output_refs(state, task)
    assert next(walk).offset == 0
    for seq in range(4, 4 + 1000):  # enough appends that the bytearray is moved
        evolve(state, out, seq=seq, ts=2.0, data=DataRef(1, 5 * (seq - 2), 5, seq))
    assert [r.offset for r in walk] == [5]
    assert [r.offset for r in output_refs(state, task, 1000)] == [5000, 5005]
    assert state.tasks[task].output_bytes == 5 * 1002

def test_workflow_and_purge():
    core = Core()
    a = core.submit()
    core.apply([ev.WorkflowCreated(workflow=1, template="bug-fix", goal="g", steps={"fix": a})])
    assert core.state.workflows[1].steps == {"fix": a} and core.state.next_workflow == 2
    core.apply([ev.TasksPurged(tasks=[a])])
    assert a not in core.state.tasks and core.state.next_task == 2


# ---------------------------------------------------------------------------------------
# Property: the live state always equals a replay, and a snapshot plus the tail.

action = st.one_of(
    st.tuples(st.just("submit"), st.integers(-20, 20), st.lists(st.integers(1, 12), max_size=2), st.booleans()),
    st.tuples(st.just("tick")),
    st.tuples(st.just("exit"), st.integers(0, 30), st.sampled_from([0, 1, None])),
    st.tuples(st.just("stop"), st.integers(1, 30)),
    st.tuples(st.just("remove"), st.integers(1, 30)),
    st.tuples(st.just("priority"), st.integers(1, 30), st.integers(-150, 150)),
    st.tuples(st.just("ask"), st.integers(0, 30)),
    st.tuples(st.just("respond"), st.integers(1, 30), st.sampled_from(["allow", "deny", "1", "words"])),
    st.tuples(st.just("output"), st.integers(0, 30)),
    st.tuples(st.just("time"), st.floats(0, 120)),
    st.tuples(st.just("config"), st.sampled_from(["max_concurrent", "kill_grace"]), st.integers(0, 4)),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("submit_if"), st.integers(1, 12), st.sampled_from([Status.SUCCEEDED, Status.FAILED]), st.integers(-20, 20)),
)


def run(core: Core, actions) -> list[tuple[int, bytes]]:
    snapshots = []
    for a in actions:
        try:
            run_one(core, a, snapshots)
        except OrchestraError:
            pass
    return snapshots


def run_one(core: Core, a, snapshots) -> None:
    kind = a[0]
    active = sorted(core.state.active)
    if kind == "submit":
        _, priority, picks, is_command = a
        known = sorted(core.state.tasks)  # dependencies on tasks there are (others are refused)
        after = sorted({known[i % len(known)] for i in picks}) if known else []
        kw = {"argv": ["true"]} if is_command else {"prompt": "p"}
        core.do(p.Submit(cwd="/tmp", priority=priority, after=after, timeout=60, idle_timeout=30, **kw))
    elif kind == "tick":
        before = len(core.state.active)
        core.tick()
        assert len(core.state.active) <= max(before, core.state.config.max_concurrent)
    elif kind in ("exit", "ask", "output") and active:
        task = active[a[1] % len(active)]
        if kind == "exit":
            code = a[2]
            core.exit(task, code, None if code is not None else 9)
        elif kind == "ask":
            core.apply([ev.InputRequested(task=task, request_id=f"r{len(core.records)}", kind="question", prompt="?", options=["a", "b"])])
        else:
            core.apply([ev.OutputAppended(task=task, stream="stdout", size=10)])
    elif kind == "stop":
        core.do(p.Stop(task=a[1]))
    elif kind == "remove":
        core.do(p.Remove(task=a[1]))
    elif kind == "priority":
        core.do(p.SetPriority(task=a[1], priority=a[2]))
    elif kind == "respond":
        answer = a[2]
        core.do(p.Respond(task=a[1], allow=answer == "allow", deny=answer == "deny", text=None if answer in ("allow", "deny") else answer))
    elif kind == "time":
        core.now += a[1]
    elif kind == "config":
        core.do(p.ConfigSet(key=a[1], value=a[2]))
    elif kind == "snapshot":
        snapshots.append((len(core.records), to_snapshot(core.state)))
    elif kind == "submit_if":  # a workflow step's condition: run only if a task ends so
        [submitted] = d.decide(core.state, p.Submit(cwd="/tmp", argv=["true"], priority=a[3]), core.now)
        known = sorted(core.state.tasks)
        spec = msgspec.structs.replace(submitted.spec, run_if=ev.Condition(known[a[1] % len(known)] if known else a[1], a[2]))
        core.apply([ev.TaskSubmitted(task=submitted.task, spec=spec)])


@settings(max_examples=150, deadline=None)
@given(st.lists(action, max_size=80))
def test_live_state_equals_full_replay_and_snapshot_plus_tail(actions):
    core = Core()
    snapshots = run(core, actions)
    assert core.replayed() == core.state
    for seq, payload in snapshots:
        restored = from_snapshot(payload)
        assert restored.last_seq == seq
        assert replay(core.records[seq:], restored) == core.state


@settings(max_examples=100, deadline=None)
@given(st.lists(action, max_size=60))
def test_invariants_hold(actions):
    core = Core()
    for a in actions:  # after every step: an index wrong for a moment is wrong
        run(core, [a])
        check_indexes(core.state)
    for t in core.state.tasks.values():
        assert (t.waiting is not None) == (t.status is Status.WAITING)
        assert (t.finished_at is not None) == t.status.finished
    for seq, ts, event, data in core.records:  # every event survives an encode/decode round trip
        assert ev.decode(ev.encode(ts, event)).event == event


def check_indexes(s: State) -> None:
    """The fold's indexes say what a scan of every task would."""
    assert s.queued == {t.id for t in s.tasks.values() if t.status is Status.QUEUED}
    assert s.active == {t.id for t in s.tasks.values() if t.status.active}
    assert s.queued_deps == {t for t in s.queued if s.tasks[t].spec.after or s.tasks[t].spec.run_if}
    ready = {t for t in s.queued if _readiness(s, s.tasks[t]) == READY}
    assert s.run_order == sorted((-s.tasks[t].priority, s.tasks[t].submitted_seq, t) for t in ready)
    assert s.unready == s.queued - ready
    assert s.doomed == {t for t in s.queued if blocked_for_good(s, s.tasks[t]) is not None}
    waits: dict[int, set[int]] = {}
    for t in s.queued_deps:
        for dep in _deps(s.tasks[t]):
            waits.setdefault(dep, set()).add(t)
    assert s.dependents == waits


disk_action = st.one_of(
    st.tuples(st.just("submit"), st.integers(-5, 5)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("output"), st.integers(0, 30), st.sampled_from(["stdout", "stderr", "stdin"]), st.integers(0, 2000)),
    st.tuples(st.just("exit"), st.integers(0, 30), st.sampled_from([0, 1, None])),
    st.tuples(st.just("usage"), st.integers(0, 30)),
    st.tuples(st.just("purge")),
    st.tuples(st.just("time"), st.floats(0, 60)),
)


def run_on_disk(core: Core, actions) -> None:
    """Submits that succeed, starts, output of every stream and size (0: no data), exits."""
    for a in actions:
        active = sorted(core.state.active)
        if a[0] == "submit":
            core.submit(prompt="p", priority=a[1])
        elif a[0] == "tick":
            core.tick()
        elif a[0] == "time":
            core.now += a[1]
        elif a[0] == "purge":
            done = [t.id for t in core.state.tasks.values() if t.status.finished]
            if done:
                core.apply([ev.TasksPurged(tasks=done[:2])])
        elif active:
            task = active[a[1] % len(active)]
            if a[0] == "output":
                core.apply([ev.OutputAppended(task=task, stream=a[2], size=a[3])])
            elif a[0] == "usage":
                core.apply([ev.UsageRecorded(task=task, cost_usd=0.5, input_tokens=3, output_tokens=4)])
            else:
                core.exit(task, a[2], None if a[2] is not None else 9)


@settings(max_examples=80, deadline=None)
@given(st.lists(disk_action, min_size=20, max_size=120), st.integers(300, 3000))
def test_a_replay_of_the_log_on_disk_equals_the_live_state(tmp_path_factory, actions, segment_bytes):
    """What the daemon does: each event is appended (output with its bytes as the record's
    data) and folded with `evolve`; a restart replays the log through `Log.replay_decoded`,
    whose loop folds output chunks itself, from the start or from a snapshot. Small
    segments: many are sealed, and replayed by their index files."""
    core = Core()
    run_on_disk(core, actions)
    live = State()
    snapshots = [to_snapshot(live)]
    with Log.open(tmp_path_factory.mktemp("log"), segment_bytes=segment_bytes) as log:
        for seq, ts, event, _ in core.records:
            data = bytes(event.size) if isinstance(event, ev.OutputAppended) else b""
            [(appended, _, ref)] = log.append([(ev.encode(ts, event), data)])
            assert appended == seq
            evolve(live, event, seq=seq, ts=ts, data=ref)
            if seq % 7 == 0:
                snapshots.append(to_snapshot(live))
        log.sync()
    assert msgspec.structs.replace(live, outputs={}) == msgspec.structs.replace(core.state, outputs={})
    with Log.open(log.directory, readonly=True) as log:
        for payload in snapshots:
            assert replay_log(log, from_snapshot(payload)) == live
