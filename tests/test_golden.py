"""Logs written by each version of the format, checked in: every later version must still
open them and rebuild the same state from them.

tests/data/golden/ holds the log (segments and their data files) as `build()` below wrote
it in format 1, tests/data/golden-format-2/ the same events as format 2 wrote them (with the
index files of its sealed segments), and tests/data/golden.json what replaying either gives.
Never regenerate them to make this test pass: a failure means old logs no longer load. (Run
this file as a script with --create only to add the log of a new format version, beside the
old ones.)

tests/data/snapshot-format-1/ holds a snapshot of that state as snapshot format 1 wrote it
(tasks as maps): a daemon upgraded from it must start from it, not ignore it, since its log
may have been compacted behind it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import msgspec
import pytest

from orchestra.shared.protocol import Role, Status, WorkflowStep, WorkflowTemplate
from orchestrad import events as ev
from orchestrad.log import Log
from orchestrad.snapshots import SnapshotStore
from orchestrad.state import State, from_snapshot, output_refs
from orchestrad.store import Store, replay_log

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden"
GOLDEN_LOGS = {1: GOLDEN, 2: DATA / "golden-format-2"}
SUMMARY = DATA / "golden.json"
SNAPSHOT_FORMAT_1 = DATA / "snapshot-format-1"

SPEC = ev.TaskSpec(
    prompt="fix the parser", argv=[], role="implementer", agent="claude", priority=10, after=[],
    cwd="/work/repo", env={"PROJECT": "demo"}, secret_env=["API_TOKEN"], timeout=600.0,
    idle_timeout=None, budget_usd=2.5, model=None, title="fix the parser",
)


def every_event() -> list[tuple[ev.Event, bytes]]:
    """One of every kind of event, in an order the daemon could have written them."""
    cmd = msgspec.structs.replace(SPEC, prompt="", argv=["pytest", "-q"], agent="command", title="pytest -q", after=[1])
    role = Role(name="dba", description="migrations", prompt="You review migrations.", allowed_tools=["Read"])
    template = WorkflowTemplate(name="mine", steps=[WorkflowStep(name="a", argv=["true"])])
    return [
        (ev.DaemonStarted(pid=100, version="0.1.0"), b""),
        (ev.ConfigChanged(changes={"max_concurrent": 3}), b""),
        (ev.CatalogChanged(roles=[role], templates=[template], problems=["roles/bad.toml: line 2"]), b""),
        (ev.TaskSubmitted(task=1, spec=SPEC), b""),
        (ev.TaskSubmitted(task=2, spec=cmd), b""),
        (ev.TaskReprioritized(task=2, priority=5), b""),
        (ev.TaskRoleChanged(task=2, role="tester"), b""),
        (ev.TaskStarting(task=1, attempt=1), b""),
        (ev.ProcessSpawned(task=1, attempt=1, pid=4242, argv=["claude", "-p"]), b""),
        (ev.SessionStarted(task=1, session_id="sess-1", model="claude-sonnet"), b""),
        (ev.OutputAppended(task=1, stream="stdout", size=12), b'{"a": "b"}\n\n'),
        (ev.OutputAppended(task=1, stream="stderr", size=5), b"oops\n"),
        (ev.OutputAppended(task=1, stream="stdin", size=4), b"hi!\n"),
        (ev.ToolUsed(task=1, tool="Bash", summary="ls"), b""),
        (ev.InputRequested(task=1, request_id="r1", kind="permission", prompt="Bash: rm x", tool="Bash"), b""),
        (ev.InputGiven(task=1, request_id="r1", answer="deny: no"), b""),
        (ev.UsageRecorded(task=1, cost_usd=0.25, input_tokens=1000, output_tokens=200), b""),
        (ev.AgentResult(task=1, text="fixed", is_error=False, subtype="success", turns=3, duration_ms=900), b""),
        (ev.ProcessExited(task=1, pid=4242, exit_code=0, signal=None), b""),
        (ev.TaskFinished(task=1, outcome=Status.SUCCEEDED, reason=""), b""),
        (ev.TaskContinued(task=1, message="and add a test", reason="follow-up"), b""),
        (ev.StopRequested(task=1, outcome=Status.CANCELLED, reason="stopped on request"), b""),
        (ev.TaskCancelled(task=1, reason="stopped before it started"), b""),
        (ev.TaskSubmitted(task=3, spec=msgspec.structs.replace(cmd, after=[])), b""),
        (ev.TaskRemoved(task=3), b""),
        (ev.WorkflowCreated(workflow=1, template="mine", goal="g", steps={"a": 4}, cwd="/work/repo", worktree=True), b""),
        (ev.TaskSubmitted(task=4, spec=msgspec.structs.replace(cmd, after=[], workflow=1, step="a", worktree=True, workspace="shared")), b""),
        (ev.WorktreeCreated(path="/w/wt", branch="orchestra/w1-g", repo="/work/repo", workflow=1, workdir="/w/wt"), b""),
        (ev.WorktreeRemoved(path="/w/wt"), b""),
        (ev.TaskCancelled(task=4, reason="not needed"), b""),
        (ev.TasksPurged(tasks=[4]), b""),
    ]


def build(directory: Path) -> None:
    with Log.open(directory, segment_bytes=1024) as log:
        for event, data in every_event():
            log.append([(ev.encode(1_700_000_000.0 + len(data), event), data)])
        log.sync()


def summary(state: State, log: Log) -> dict:
    tasks = {
        str(t.id): {
            "status": t.status.value, "role": t.role, "priority": t.priority, "attempts": t.attempts,
            "session": t.session_id, "cost": t.cost_usd, "tokens": [t.input_tokens, t.output_tokens],
            "result": t.result, "reason": t.reason, "pending": t.pending_message, "activity": t.activity,
            "output": [[r.stream, log.read_data(_ref(r)).decode()] for r in output_refs(state, t.id)],
        }
        for t in state.tasks.values()
    }
    return {
        "last_seq": state.last_seq, "next_task": state.next_task, "tasks": tasks,
        "config": _changed(state.config), "roles": sorted(state.roles),
        "templates": sorted(state.templates), "problems": state.catalog_problems,
        "workflows": {str(w.id): [w.template, w.goal, w.steps, w.workdir] for w in state.workflows.values()},
        "worktrees": sorted(state.worktrees), "config_file": state.config_file,
    }


def _changed(config) -> dict:
    """The settings the log changed (defaults belong to the code, not the log)."""
    from orchestrad.config import DEFAULT

    now, default = msgspec.to_builtins(config), msgspec.to_builtins(DEFAULT)
    return {k: v for k, v in now.items() if default.get(k) != v}


def _ref(r):
    from orchestrad.log import DataRef

    return DataRef(r.segment, r.offset, r.length, r.crc)


def replayed(directory: Path) -> dict:
    with Log.open(directory, readonly=True) as log:
        state = replay_log(log, State())
        return json.loads(json.dumps(summary(state, log)))


@pytest.mark.parametrize("version", sorted(GOLDEN_LOGS))
def test_the_golden_log_still_loads_to_the_same_state(tmp_path, version):
    copy = tmp_path / "log"
    shutil.copytree(GOLDEN_LOGS[version], copy)
    assert {p.read_bytes()[8] for p in copy.glob("*.seg")} == {version}
    assert replayed(copy) == json.loads(SUMMARY.read_text())
    with Log.open(copy) as log:  # and a read-write open neither cuts nor complains
        assert log.report.truncated == [] and log.last_seq == len(every_event())


def test_a_format_1_snapshot_of_it_still_loads_to_the_same_state(tmp_path):
    shutil.copytree(GOLDEN, tmp_path / "log")
    shutil.copytree(SNAPSHOT_FORMAT_1, tmp_path / "snapshots")
    snapshot = SnapshotStore(tmp_path / "snapshots").latest()
    assert (snapshot.seq, snapshot.version) == (len(every_event()), 1)
    with Log.open(tmp_path / "log", readonly=True) as log:
        assert from_snapshot(snapshot.payload, snapshot.version) == replay_log(log, State())
    store = Store.open(tmp_path / "log", tmp_path / "snapshots", readonly=True)
    assert store.notes == []  # no warning: the snapshot was used
    store.log.close()


if __name__ == "__main__" and sys.argv[1:] == ["--create"]:
    from orchestrad.log.format import FORMAT_VERSION

    target = GOLDEN_LOGS[FORMAT_VERSION]
    if target.exists():
        sys.exit(f"{target} exists: golden files are never rewritten; add new ones for a new format")
    build(target)
    if not SUMMARY.exists():
        SUMMARY.write_text(json.dumps(replayed(target), indent=1, sort_keys=True) + "\n")
    elif replayed(target) != json.loads(SUMMARY.read_text()):
        sys.exit(f"{target} does not replay to {SUMMARY}: the events, not the format, changed")
    print(f"wrote {target}")
