"""The daemon's state, and `evolve`, the fold that builds it from events.

`evolve(state, event, seq=, ts=, data=)` is deterministic and does no I/O: no clock (the
record's timestamp is passed in), no randomness. It updates `state` in place and returns it.
The state is owned by a single writer (the daemon's core), and an in-place fold keeps replay
O(1) per event; a copy-on-write map of every task would make a long history quadratic to
replay. Everything that only reads the state (`decide`, `scheduler.plan`, the views) never
writes to it, and tests check that the live state equals a fresh replay of its log.

The state keeps small indexes of the work in flight, `queued` and `active`, and of the
queue: the tasks that may run in the order they would start (`run_order`), those waiting on
other tasks (`unready`, with `dependents` from each task to the queued tasks waiting on it,
so only those are looked at again when it changes), and those that never can run (`doomed`).
Scheduling never looks at the whole history nor walks the queue past what it starts; and for each task the places in the log where its output lies
(`outputs`), so its output is read back without scanning the log.

It is long because the fold must see every kind of event in one table, each folded by a
small function, with the structs it fills and the views and snapshots that read them.
"""

from __future__ import annotations

import bisect
import struct
from typing import Callable, Iterable, Iterator, get_args

import msgspec

from orchestra.shared.vocab import shorten, usd
from orchestra.shared.protocol import (
    DECISIONS_KEPT, ChangeStat, CheckResult, Decided, Question, ReviewDecision, Setback, Status, TaskView,
)
from orchestrad import config as config_mod
from orchestrad import events as ev
from orchestrad import roles as roles_mod
from orchestrad import workflows as workflows_mod
from orchestrad.refs import DataRef


class OutputRef(DataRef, frozen=True, array_like=True):
    """Where one output chunk's bytes lie in the log (a record's data), and which stream
    they came from: a `DataRef` the log reads back as it is."""

    stream: str


# A task's output places are packed 25 bytes each into one bytearray per task, not kept as
# a list of objects: a long history then costs little memory, and a snapshot decodes one
# bytes object per task instead of one object per chunk (this is what keeps start-up fast).
_REF = struct.Struct("<QQIIB")
_STREAMS = get_args(ev.Stream)
_STREAM_CODES = {name: code for code, name in enumerate(_STREAMS)}
_pack_ref = _REF.pack


def output_refs(state: "State", task_id: int, start: int = 0) -> Iterator[OutputRef]:
    """The places of the task's output chunks from the `start`-th on, as there are now.

    Each is unpacked by its offset, never through a view of the bytearray: a reader (a
    `logs --follow` stream) may keep this generator suspended for as long as its client
    does not read, while the fold appends to the same bytearray, and Python refuses to
    resize a buffer that has a view alive (BufferError), which would lose the places.
    """
    packed = state.outputs.get(task_id)
    if not packed:
        return
    unpack, size = _REF.unpack_from, _REF.size
    for at in range(start * size, len(packed), size):
        segment, offset, length, crc, stream = unpack(packed, at)
        yield OutputRef(segment, offset, length, crc, _STREAMS[stream])


def output_ref(state: "State", task_id: int, index: int) -> OutputRef:
    """The place of the task's `index`-th output chunk (IndexError if it has none)."""
    packed = state.outputs.get(task_id, b"")
    if not 0 <= index < len(packed) // _REF.size:
        raise IndexError(f"task {task_id} has no output chunk {index}")
    segment, offset, length, crc, stream = _REF.unpack_from(packed, index * _REF.size)
    return OutputRef(segment, offset, length, crc, _STREAMS[stream])


def output_count(state: "State", task_id: int) -> int:
    return len(state.outputs.get(task_id, b"")) // _REF.size


class Stopping(msgspec.Struct, frozen=True, array_like=True):
    outcome: Status
    reason: str


class Paused(msgspec.Struct, frozen=True, array_like=True):
    """The budget a task was paused on (`BudgetReached`), and whether an attempt had run."""

    scope: str  # "task" | "workflow" | "role"
    name: str
    spent: float
    budget: float
    day: float  # a role's budget: the start of its day
    ran: bool  # an attempt ended on it (it continues its session); else it was about to start


# A role's spending is kept per quarter of an hour for two days (`State.role_spend`): any
# local midnight falls on a quarter-hour boundary, so the sum for a day is exact.
BUCKET_SECONDS = 900
SPEND_KEPT = 2 * 86400


def budget_words(scope: str, name: str, spent: float, budget: float, task_id: int) -> str:
    """"task 7 spent $5.00 of its $5.00 budget", "role tester spent ... budget for today"."""
    who = {"workflow": f"workflow {name}", "role": f"role {name}"}.get(scope, f"task {task_id}")
    today = " for today" if scope == "role" else ""
    return f"{who} spent {usd(spent)} of its {usd(budget)} budget{today}"


def budget_question(task_id: int, paused: Paused) -> str:
    """What a task paused on a budget asks a person, in one line."""
    words = budget_words(paused.scope, paused.name, paused.spent, paused.budget, task_id)
    more = max(paused.budget * 2, paused.spent + 1.0)
    return f"{words}; raise the budget (orchestra respond {task_id} --budget {more:g}) or stop it (orchestra stop {task_id})"


class Task(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """A task, as the events so far made it.

    Snapshots encode it as an array of its fields: a new field goes at the end, with a
    default, so older snapshots still decode; any other change needs a new snapshot format.
    """

    id: int
    spec: ev.TaskSpec
    status: Status = Status.QUEUED
    priority: int = 0
    role: str = ""
    submitted_at: float = 0.0
    submitted_seq: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    waiting: Question | None = None
    stopping: Stopping | None = None
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    session_id: str = ""
    output_bytes: int = 0
    last_activity: float = 0.0
    activity: str = ""  # the latest thing the agent did (a tool use), for `ps`
    result: str = ""  # the agent's final answer of its latest attempt
    result_error: bool = False
    answered: bool = False  # the agent gave a result in this attempt
    pending_message: str = ""  # what the next attempt starts with (follow-up or resume)
    continued: str = ""  # why the next attempt happens: "follow-up" | "resume" | "retry"
    workdir: str = ""  # its git worktree, once made; else it works in spec.cwd
    decisions: list[Decided] = []  # the latest permission decisions (up to DECISIONS_KEPT)
    decisions_total: int = 0
    sandbox: str = ""  # the sandbox its latest process runs in ("" for none)
    api_error: str = ""  # its latest result was an error of the API's availability (AgentResult.api_error)
    resets_at: float | None = None  # ... a usage limit that resets then
    not_before: float | None = None  # a queued task that may not start before then (parked, or a retry)
    hold: str = ""  # why: "parked" | "retry"
    hold_reason: str = ""  # "usage limit", "attempt 2 of 5: overloaded"
    retried: int = 0  # retries of the current run so far (RetryScheduled); 0 again once it ends
    setbacks: list[Setback] = []  # its attempts that were retried or parked, oldest first
    budget_usd: float | None = None  # its own budget, as a person raised it (else spec.budget_usd)
    paused: Paused | None = None  # waiting for a person to raise the budget it reached
    budget_stopped: bool = False  # its agent ended the attempt on the budget it was given
    changes: ChangeStat | None = None  # what its latest attempt left changed in its worktree
    check_round: int = 0  # the round of acceptance checks that ran last (orchestrad.verify)
    checks: list[CheckResult] = []  # that round's checks so far, in order
    baseline_head: str | None = None  # where its git directory was when it first started (BaselineRecorded)
    baseline_digest: str = ""  # ... and a digest of what was uncommitted then
    reviews: list[ReviewDecision] = []  # what people decided of it in review
    session_cost_usd: float = 0.0  # what its current session (session_id) cost so far, over its attempts (as recorded since UsageRecorded.session)
    node: str = ""  # the id of the remote executor's node its latest process ran on (ProcessSpawned.node)
    host: str = ""  # ... and its host name

    @property
    def cwd(self) -> str:
        return self.workdir or self.spec.cwd


class Workflow(msgspec.Struct, kw_only=True):
    id: int
    template: str
    goal: str
    steps: dict[str, int]
    created_at: float
    cwd: str = ""
    worktree: bool = False
    workdir: str = ""  # the shared worktree of its steps, once made
    budget_usd: float | None = None  # what all its tasks together may spend
    merge: bool = False  # merge its branches once it succeeds
    merge_note: str = ""  # why they were not (MergesSkipped)


class Merge(msgspec.Struct, kw_only=True):
    """A branch in the merge queue (`orchestrad.merges`), as the events so far made it."""

    id: int
    repo: str
    branch: str
    target: str
    mode: str
    checks: list[str]
    resolve: bool
    task: int | None = None
    workflow: int | None = None
    delete_branch: bool = False
    status: str = "queued"  # queued | merging | resolving | merged | conflicted | failed | cancelled
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    onto: str = ""  # the target's head it started from
    path: str = ""  # the integration worktree
    conflicts: list[str] = []
    resolver: int | None = None
    reason: str = ""
    head: str = ""


class Worktree(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    branch: str
    repo: str
    task: int | None
    workflow: int | None
    created_at: float
    base: str = ""  # the commit it started from ("" in older logs)
    target: str = ""  # the branch it started from ("" for a detached HEAD, or in older logs)


class State(msgspec.Struct, kw_only=True):
    last_seq: int = 0
    next_task: int = 1
    next_workflow: int = 1
    config: config_mod.Config = config_mod.DEFAULT
    tasks: dict[int, Task] = {}
    outputs: dict[int, bytearray] = {}  # task -> packed output places (see output_refs)
    workflows: dict[int, Workflow] = {}
    worktrees: dict[str, Worktree] = {}  # path -> what it is for
    roles: dict[str, roles_mod.Role] = {}  # roles people keep as files (override built-ins)
    templates: dict[str, workflows_mod.Template] = {}  # workflow templates people keep as files
    catalog_problems: list[str] = []  # files that could not be loaded, and why
    config_file: dict[str, config_mod.ConfigValue] = {}  # what config.toml said when last applied
    queued: set[int] = set()  # ids of queued tasks
    run_order: list[tuple[int, int, int]] = []  # (-priority, submitted_seq, id) of each queued task that may run, sorted
    queued_deps: set[int] = set()  # the queued tasks that wait on other tasks
    unready: set[int] = set()  # ... of them, those whose dependencies are not met yet (not in run_order)
    doomed: set[int] = set()  # ... and of those, the ones that never can be (a dependency failed, or is gone)
    dependents: dict[int, set[int]] = {}  # a task -> the queued tasks that wait on it
    active: set[int] = set()  # ids of running or waiting tasks
    accounts: dict[str, str] = {}  # agent kind -> the account its agents use by default (DaemonStarted)
    limits: dict[str, float] = {}  # account -> when the usage limit it met resets (TaskParked)
    paused: set[int] = set()  # tasks paused on a budget (BudgetReached), waiting for a person
    role_spend: dict[str, dict[int, float]] = {}  # role -> quarter-hour -> dollars, the last two days
    role_raises: dict[str, tuple[float, float]] = {}  # role -> (the day's start, its raised budget that day)
    merges: dict[int, Merge] = {}
    next_merge: int = 1
    merge_queue: list[int] = []  # merges not finished, in the order they run (the first may be running)
    merge_pending: set[int] = set()  # workflows that merge their branches once they succeed, until they do
    queued_remote: set[int] = set()  # the queued tasks that run on a remote executor (an index, like run_order)
    # Finished tasks moved out of memory into the history (orchestrad.history): by task id,
    # how each ended (a code of _IN_HISTORY; 0: not there), and those taken back since the
    # last snapshot, whose rows a snapshot without them lets go.
    cold: bytearray = msgspec.field(default_factory=bytearray)
    released: list[int] = []


# ---------------------------------------------------------------------------------------
# The history: finished tasks out of memory (orchestrad.history keeps them on disk)

_IN_HISTORY: tuple[Status | None, ...] = (
    None, Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED, Status.INTERRUPTED,
)  # a code's meaning never changes: snapshots hold the codes
_CODE = {status: code for code, status in enumerate(_IN_HISTORY) if status is not None}


def status_of(s: State, task_id: int) -> Status | None:
    """How task `task_id` stands, in memory or in the history; None if there is none."""
    t = s.tasks.get(task_id)
    if t is not None:
        return t.status
    return _IN_HISTORY[s.cold[task_id]] if 0 <= task_id < len(s.cold) else None


def in_history(s: State, task_id: int) -> bool:
    """Task `task_id` is in the history, not in memory."""
    return 0 <= task_id < len(s.cold) and s.cold[task_id] != 0


def history_counts(s: State) -> dict[Status, int]:
    """How many tasks in the history ended each way."""
    return {status: n for code, status in enumerate(_IN_HISTORY) if status is not None and (n := s.cold.count(code))}


def move_out(s: State, task_ids: list[int]) -> list[tuple[Task, bytes]]:
    """Take finished tasks out of memory: each, with its packed output places, for the
    history to keep; the state keeps only how it ended."""
    moved = []
    cold = s.cold
    top = max(task_ids, default=0)
    if top >= len(cold):
        cold.extend(bytes(top + 1 - len(cold)))
    for task_id in task_ids:
        t = s.tasks.pop(task_id)
        assert t.status.finished, f"task {task_id} is {t.status.value}: only finished tasks leave memory"
        moved.append((t, bytes(s.outputs.pop(task_id, b""))))
        cold[task_id] = _CODE[t.status]
    return moved


def take_back(s: State, task: Task, outputs: bytes) -> None:
    """A task of the history, back in memory (a fact is about to change it)."""
    s.tasks[task.id] = task
    if outputs:
        s.outputs[task.id] = bytearray(outputs)
    s.cold[task.id] = 0
    s.released.append(task.id)


def whole(s: State, rows: Iterable[tuple]) -> State:
    """`s` with the history's `rows` back in memory, as if nothing had moved out: what a
    replay of the whole log gives (`--verify` and the tests compare the two)."""
    full = msgspec.structs.replace(s, tasks=dict(s.tasks), outputs=dict(s.outputs), cold=bytearray(), released=[])
    for task, outputs, *_ in rows:
        full.tasks[task.id] = task
        if outputs:
            full.outputs[task.id] = bytearray(outputs)
    return full


# ---------------------------------------------------------------------------------------
# The fold: one small function per event kind, dispatched through a table.


def _daemon_started(s: State, e: ev.DaemonStarted, ts: float, data) -> None:
    if e.accounts:
        s.accounts = dict(e.accounts)


def _submitted(s: State, e: ev.TaskSubmitted, ts: float, data) -> None:
    spec = e.spec
    t = s.tasks[e.task] = Task(
        id=e.task,
        spec=spec,
        priority=spec.priority,
        role=spec.role,
        submitted_at=ts,
        submitted_seq=s.last_seq,
    )
    _enqueue(s, t)
    if e.task >= s.next_task:
        s.next_task = e.task + 1


def _reprioritized(s: State, e: ev.TaskReprioritized, ts: float, data) -> None:
    t = s.tasks[e.task]
    queued = t.id in s.queued
    if queued:
        _dequeue(s, t)
    t.priority = e.priority
    if queued:
        _enqueue(s, t)


def _role_changed(s: State, e: ev.TaskRoleChanged, ts: float, data) -> None:
    s.tasks[e.task].role = e.role


def _removed(s: State, e: ev.TaskRemoved, ts: float, data) -> None:
    t = s.tasks.pop(e.task, None)
    s.outputs.pop(e.task, None)
    if t is not None:
        _dequeue(s, t)


def _cancelled(s: State, e: ev.TaskCancelled, ts: float, data) -> None:
    _finish(s, s.tasks[e.task], Status.CANCELLED, e.reason, ts)


def _stop_requested(s: State, e: ev.StopRequested, ts: float, data) -> None:
    s.tasks[e.task].stopping = Stopping(e.outcome, e.reason)


def _starting(s: State, e: ev.TaskStarting, ts: float, data) -> None:
    _start(s, s.tasks[e.task], e.attempt, ts)


def _start(s: State, t: Task, attempt: int, ts: float) -> None:
    t.status = Status.RUNNING
    t.attempts = attempt
    t.pid = None
    t.started_at = ts
    t.finished_at = None
    t.exit_code = t.signal = None
    t.reason = ""
    t.stopping = None
    t.last_activity = ts
    t.answered = False
    t.api_error = ""
    t.resets_at = None
    t.budget_stopped = False
    _unhold(t)
    _dequeue(s, t)
    s.active.add(t.id)


def _unhold(t: Task) -> None:
    t.not_before = None
    t.hold = t.hold_reason = ""


def _spawned(s: State, e: ev.ProcessSpawned, ts: float, data) -> None:
    t = s.tasks[e.task]
    if e.task not in s.active:  # logs from before TaskStarting existed
        _start(s, t, e.attempt, ts)
    t.pid = e.pid
    t.pending_message = ""
    t.sandbox = e.sandbox
    t.node, t.host = e.node, e.host


def _session(s: State, e: ev.SessionStarted, ts: float, data) -> None:
    t = s.tasks[e.task]
    if t.session_id != e.session_id:
        t.session_cost_usd = 0.0  # a new conversation (a resumed one keeps its id)
    t.session_id = e.session_id


def _output(s: State, e: ev.OutputAppended, ts: float, data) -> None:
    _add_output(s.tasks[e.task], e.size, ts)
    if data is not None:
        packed = s.outputs.get(e.task)
        if packed is None:
            packed = s.outputs[e.task] = bytearray()
        packed += _pack_ref(data.segment, data.offset, data.length, data.crc, _STREAM_CODES[e.stream])


def _add_output(t: Task, size: int, ts: float) -> None:
    """`size` more bytes of output, the last of them at `ts` (one chunk or a run of them)."""
    t.output_bytes += size
    t.last_activity = ts


def _input_requested(s: State, e: ev.InputRequested, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.status = Status.WAITING
    t.waiting = Question(
        request_id=e.request_id,
        kind=e.kind,  # type: ignore[arg-type]
        prompt=e.prompt,
        options=e.options,
        tool=e.tool,
        since=ts,
    )


def _input_given(s: State, e: ev.InputGiven, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.last_activity = ts
    if t.waiting is not None and t.waiting.request_id == e.request_id:
        if t.waiting.kind == "permission" and e.by:  # older logs did not say who: no decision to list
            effect = "deny" if e.answer == "deny" or e.answer.startswith("deny: ") else "allow"
            summary = t.waiting.prompt.removeprefix(f"{t.waiting.tool}: ")
            _decided(t, Decided(at=ts, tool=t.waiting.tool, summary=summary, effect=effect, by=e.by))
        t.waiting = None
        t.status = Status.RUNNING


def _permission_decided(s: State, e: ev.PermissionDecided, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.last_activity = ts
    _decided(t, Decided(at=ts, tool=e.tool, summary=e.summary, effect=e.effect, by=e.by))


def _decided(t: Task, decision: Decided) -> None:
    t.decisions = [*t.decisions[-(DECISIONS_KEPT - 1):], decision]
    t.decisions_total += 1


def _usage(s: State, e: ev.UsageRecorded, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.cost_usd += e.cost_usd
    if e.session and e.session == t.session_id:
        t.session_cost_usd += e.cost_usd
    t.input_tokens += e.input_tokens
    t.output_tokens += e.output_tokens
    if e.role and e.cost_usd:
        _spend(s, e.role, e.cost_usd, ts)


def _spend(s: State, role: str, amount: float, ts: float) -> None:
    bucket = int(ts // BUCKET_SECONDS)
    spent = s.role_spend.get(role)
    if spent is None:
        spent = s.role_spend[role] = {}
    spent[bucket] = spent.get(bucket, 0.0) + amount
    oldest = bucket - SPEND_KEPT // BUCKET_SECONDS
    if next(iter(spent)) < oldest:  # buckets come in time order
        for old in [b for b in spent if b < oldest]:
            del spent[old]


def _tool_used(s: State, e: ev.ToolUsed, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.activity = f"{e.tool}: {e.summary}" if e.summary else e.tool
    t.last_activity = ts


def _agent_result(s: State, e: ev.AgentResult, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.result = e.text
    t.result_error = e.is_error
    t.answered = True
    t.api_error = e.api_error
    t.resets_at = e.resets_at
    t.budget_stopped = e.subtype == ev.BUDGET_SUBTYPE


def _continued(s: State, e: ev.TaskContinued, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.status = Status.QUEUED
    t.pending_message = e.message
    t.continued = e.reason
    t.finished_at = None
    t.reason = ""
    t.result_error = False
    t.retried = 0
    t.check_round = e.check_round  # 0 (a fresh round of checks) unless a check's failure sent it back
    if e.check_round:
        t.activity = ""  # it no longer checks
    t.pid = None
    if t.waiting is not None and t.waiting.kind == "review":  # rejected in review
        t.waiting = None
    s.active.discard(t.id)  # a task sent back from its checks held a slot until now
    _unpause(s, t)
    _enqueue(s, t)


def _budget_reached(s: State, e: ev.BudgetReached, ts: float, data) -> None:
    t = s.tasks[e.task]
    ran = t.id in s.active
    t.paused = Paused(e.scope, e.name, e.spent, e.budget, e.day, ran)
    t.status = Status.WAITING
    t.waiting = Question(request_id="budget", kind="budget", prompt=budget_question(t.id, t.paused), since=ts)
    t.stopping = None
    t.pid = None
    if ran:
        t.finished_at = ts  # its attempt is over: its runtime stops here
    _unhold(t)
    _dequeue(s, t)
    s.active.discard(t.id)
    s.paused.add(t.id)


def _budget_raised(s: State, e: ev.BudgetRaised, ts: float, data) -> None:
    if e.scope == "task" and e.task in s.tasks:
        s.tasks[e.task].budget_usd = e.budget
    elif e.scope == "workflow" and e.name.isdigit() and int(e.name) in s.workflows:
        s.workflows[int(e.name)].budget_usd = e.budget
    elif e.scope == "role":
        s.role_raises = {**s.role_raises, e.name: (e.day, e.budget)}


def _baseline(s: State, e: ev.BaselineRecorded, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.baseline_head, t.baseline_digest = e.head, e.digest


def check_activity(t: Task, index: int, command: str, rounds: int) -> str:
    """"check 2 of 3, round 1 of 2: pytest -q": what `ps` says a checking task does."""
    return f"check {index + 1} of {len(t.spec.checks)}, round {t.check_round} of {rounds}: {command}"


def _checks_started(s: State, e: ev.ChecksStarted, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.status = Status.CHECKING
    t.check_round = e.round
    t.checks = []
    t.pid = None
    t.last_activity = ts
    t.activity = f"checking, round {e.round} of {t.spec.check_rounds}"


def _check_started(s: State, e: ev.CheckStarted, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.pid = e.pid
    t.checks = [*t.checks, CheckResult(command=e.command, running=True)]
    t.activity = check_activity(t, e.index, e.command, t.spec.check_rounds)
    t.last_activity = ts


def _check_finished(s: State, e: ev.CheckFinished, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.pid = None
    running = bool(t.checks) and t.checks[-1].running
    # A check that could not start has no CheckStarted: its command is the spec's.
    command = t.checks[-1].command if running else (t.spec.checks[e.index] if e.index < len(t.spec.checks) else "")
    done = CheckResult(command=command, exit_code=e.exit_code, signal=e.signal, timed_out=e.timed_out, tail=e.tail)
    t.checks = [*t.checks[:-1], done] if running else [*t.checks, done]
    t.last_activity = ts


def review_question(task_id: int) -> str:
    """What a task in review asks a person, in one line."""
    return (
        f"review task {task_id} (orchestra review {task_id}): approve it (orchestra respond {task_id} --approve) "
        f"or reject it with what to change (orchestra respond {task_id} --reject -m \"...\")"
    )


def _review_requested(s: State, e: ev.ReviewRequested, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.status = Status.REVIEW
    t.waiting = Question(request_id="review", kind="review", prompt=review_question(t.id), since=ts)
    t.pid = None
    t.stopping = None
    t.finished_at = ts  # its attempt is over: its runtime stops here
    t.activity = ""
    s.active.discard(t.id)


def _review_decided(s: State, e: ev.ReviewDecided, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.reviews = [*t.reviews, ReviewDecision(approved=e.approved, message=e.message, by=e.by, at=ts)]


def _unpause(s: State, t: Task) -> None:
    if t.paused is not None:
        t.paused = None
        t.waiting = None
        s.paused.discard(t.id)


def _parked(s: State, e: ev.TaskParked, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.setbacks = [*t.setbacks, Setback(attempt=t.attempts, kind="parked", error=e.reason, detail=e.detail, at=ts, until=e.until)]
    _requeue(s, t, e.message, e.until, "parked", e.reason)
    s.limits = {**s.limits, e.account: e.until}


def _retry_scheduled(s: State, e: ev.RetryScheduled, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.setbacks = [*t.setbacks, Setback(attempt=t.attempts, kind="retry", error=e.error, detail=e.detail, at=ts, until=e.at)]
    t.retried = e.attempt - 1
    _requeue(s, t, e.message, e.at, "retry", f"attempt {e.attempt} of {s.config.retries + 1}: {e.error}")


def _requeue(s: State, t: Task, message: str, not_before: float, hold: str, why: str) -> None:
    """An attempt that ended on the API's availability: back in the queue, not before
    `not_before`, to continue its session with `message` (or start over without one)."""
    t.status = Status.QUEUED
    t.pending_message = message
    t.continued = "resume" if message else "retry"
    t.result_error = False
    t.waiting = None
    t.stopping = None
    t.pid = None
    t.not_before, t.hold, t.hold_reason = not_before, hold, why
    s.active.discard(t.id)
    _enqueue(s, t)


def _start_deferred(s: State, e: ev.StartDeferred, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.status = Status.QUEUED
    t.attempts -= 1  # it did not happen: the next start is the same attempt, so never run twice
    t.pid = None
    t.not_before, t.hold, t.hold_reason = e.until, "executor", e.reason
    s.active.discard(t.id)
    _enqueue(s, t)


def _exited(s: State, e: ev.ProcessExited, ts: float, data) -> None:
    t = s.tasks[e.task]
    t.pid = None
    t.exit_code = e.exit_code
    t.signal = e.signal


def _finished(s: State, e: ev.TaskFinished, ts: float, data) -> None:
    _finish(s, s.tasks[e.task], e.outcome, e.reason, ts)


def _finish(s: State, t: Task, outcome: Status, reason: str, ts: float) -> None:
    t.status = outcome
    t.reason = reason
    t.finished_at = ts
    t.waiting = None
    t.stopping = None
    t.pid = None
    t.retried = 0
    _unhold(t)
    _unpause(s, t)
    _dequeue(s, t)
    s.active.discard(t.id)


def _enqueue(s: State, t: Task) -> None:
    s.queued.add(t.id)
    if t.spec.executor != "local":
        s.queued_remote.add(t.id)
    deps = _deps(t)
    if deps:
        s.queued_deps.add(t.id)
        for dep in deps:
            s.dependents.setdefault(dep, set()).add(t.id)
        readiness = _readiness(s, t)
        if readiness is not READY:
            s.unready.add(t.id)
            if readiness is DOOMED:
                s.doomed.add(t.id)
            return
    bisect.insort(s.run_order, run_key(t))


def _dequeue(s: State, t: Task) -> None:
    if t.id not in s.queued:
        return
    s.queued.discard(t.id)
    s.queued_remote.discard(t.id)
    if t.id in s.queued_deps:
        s.queued_deps.discard(t.id)
        s.doomed.discard(t.id)
        for dep in _deps(t):
            waiting = s.dependents.get(dep)
            if waiting is not None:
                waiting.discard(t.id)
                if not waiting:
                    del s.dependents[dep]
        if t.id in s.unready:
            s.unready.discard(t.id)
            return
    _unorder(s, t)


def _unorder(s: State, t: Task) -> None:
    key = run_key(t)
    order = s.run_order
    i = bisect.bisect_left(order, key)
    if i < len(order) and order[i] == key:
        del order[i]


def _deps(t: Task) -> list[int]:
    """The tasks `t` waits on: those it runs after, and the one its condition names."""
    condition = t.spec.run_if
    return [*t.spec.after, condition.task] if condition is not None else t.spec.after


READY, WAITING, DOOMED = "ready", "waiting", "doomed"


def _readiness(s: State, t: Task) -> str:
    """Whether the queued `t` may run as far as the tasks it waits on go: READY (each ended
    as it must), WAITING (some have not ended yet), or DOOMED (one ended otherwise, or was
    removed: `blocked_for_good` says which)."""
    if blocked_for_good(s, t) is not None:
        return DOOMED
    condition = t.spec.run_if
    if condition is not None and status_of(s, condition.task) is not condition.outcome:
        return WAITING
    for dep_id in t.spec.after:
        if status_of(s, dep_id) is not Status.SUCCEEDED:
            return WAITING
    return READY


def blocked_for_good(s: State, task: Task) -> str | None:
    """Why the queued `task` can never run (a task it waits on ended otherwise than it
    must, or was removed), in words; None if it still may."""
    condition = task.spec.run_if
    if condition is not None:
        status = status_of(s, condition.task)
        if status is None:
            return f"not run: task {condition.task}, which it depends on, was removed"
        if status.finished and status is not condition.outcome:
            dep = s.tasks.get(condition.task)
            name = f"step {dep.spec.step}" if dep is not None and dep.spec.step else f"task {condition.task}"
            return f"skipped: it runs only if {name} {condition.outcome.value}, and it {status.value}"
    for dep_id in task.spec.after:
        status = status_of(s, dep_id)
        if status is None:
            return f"not run: dependency {dep_id} was removed from the queue"
        if status.finished and status is not Status.SUCCEEDED:
            return f"not run: dependency {dep_id} ended {status.value}"
    return None


def _recheck(s: State, task_id: int) -> None:
    """`task_id` changed (its status, or it is gone): the queued tasks waiting on it move
    between run_order, unready and doomed as their dependencies now stand."""
    for waiter in s.dependents[task_id]:
        t = s.tasks[waiter]
        readiness = _readiness(s, t)
        was_ready = waiter not in s.unready
        if readiness is READY:
            if not was_ready:
                s.unready.discard(waiter)
                s.doomed.discard(waiter)
                bisect.insort(s.run_order, run_key(t))
            continue
        if was_ready:
            _unorder(s, t)
            s.unready.add(waiter)
        if readiness is DOOMED:
            s.doomed.add(waiter)
        else:
            s.doomed.discard(waiter)


def run_key(t: Task) -> tuple[int, int, int]:
    """Highest priority first, then the oldest."""
    return (-t.priority, t.submitted_seq, t.id)


def _workflow(s: State, e: ev.WorkflowCreated, ts: float, data) -> None:
    s.workflows[e.workflow] = Workflow(
        id=e.workflow, template=e.template, goal=e.goal, steps=e.steps, created_at=ts, cwd=e.cwd, worktree=e.worktree,
        budget_usd=e.budget_usd, merge=e.merge,
    )
    if e.merge:
        s.merge_pending.add(e.workflow)
    s.next_workflow = max(s.next_workflow, e.workflow + 1)


def _worktree_created(s: State, e: ev.WorktreeCreated, ts: float, data) -> None:
    s.worktrees[e.path] = Worktree(
        path=e.path, branch=e.branch, repo=e.repo, task=e.task, workflow=e.workflow, created_at=ts, base=e.base, target=e.target
    )
    workdir = e.workdir or e.path
    if e.task is not None and e.task in s.tasks:
        s.tasks[e.task].workdir = workdir
    if e.workflow is not None and e.workflow in s.workflows:
        wf = s.workflows[e.workflow]
        wf.workdir = workdir
        for task_id in wf.steps.values():  # every shared step works there
            t = s.tasks.get(task_id)
            if t is not None and t.spec.worktree and t.spec.workspace == "shared":
                t.workdir = workdir


def _worktree_removed(s: State, e: ev.WorktreeRemoved, ts: float, data) -> None:
    s.worktrees.pop(e.path, None)


def _merge_queued(s: State, e: ev.MergeQueued, ts: float, data) -> None:
    s.merges[e.merge] = Merge(
        id=e.merge, repo=e.repo, branch=e.branch, target=e.target, mode=e.mode, checks=list(e.checks), resolve=e.resolve,
        task=e.task, workflow=e.workflow, delete_branch=e.delete_branch, queued_at=ts,
    )
    s.merge_queue = [*s.merge_queue, e.merge]
    s.next_merge = max(s.next_merge, e.merge + 1)
    if e.workflow is not None:
        s.merge_pending.discard(e.workflow)


def _merge_started(s: State, e: ev.MergeStarted, ts: float, data) -> None:
    m = s.merges[e.merge]
    m.status, m.onto, m.path, m.started_at = "merging", e.onto, e.path, ts
    m.conflicts, m.resolver, m.reason = [], None, ""


def _merge_conflicted(s: State, e: ev.MergeConflicted, ts: float, data) -> None:
    m = s.merges[e.merge]
    m.status, m.conflicts, m.resolver = "resolving", list(e.files), e.resolver


def _merge_resolved(s: State, e: ev.MergeResolved, ts: float, data) -> None:
    m = s.merges[e.merge]
    m.status, m.head = "merging", e.head


def _merge_finished(s: State, e: ev.MergeFinished, ts: float, data) -> None:
    m = s.merges[e.merge]
    m.status, m.reason, m.head, m.finished_at = e.outcome, e.reason, e.head, ts
    if e.files:
        m.conflicts = list(e.files)
    s.merge_queue = [x for x in s.merge_queue if x != e.merge]


def _merges_skipped(s: State, e: ev.MergesSkipped, ts: float, data) -> None:
    s.merge_pending.discard(e.workflow)
    if e.workflow in s.workflows:
        s.workflows[e.workflow].merge_note = e.reason


def _catalog(s: State, e: ev.CatalogChanged, ts: float, data) -> None:
    s.roles = {r.name: r for r in e.roles}
    s.templates = {t.name: t for t in e.templates}
    s.catalog_problems = list(e.problems)


def _config(s: State, e: ev.ConfigChanged, ts: float, data) -> None:
    s.config = config_mod.apply(s.config, e.changes)
    if e.source == "file":
        s.config_file = {**s.config_file, **e.changes}


def _purged(s: State, e: ev.TasksPurged, ts: float, data) -> None:
    cold = s.cold
    for task in e.tasks:
        s.tasks.pop(task, None)
        s.outputs.pop(task, None)
        if task < len(cold) and cold[task]:
            cold[task] = 0
            s.released.append(task)


def _changes(s: State, e: ev.ChangesRecorded, ts: float, data) -> None:
    t = s.tasks.get(e.task)
    if t is not None:
        t.changes = ChangeStat(base=e.base, head=e.head, files=e.files, insertions=e.insertions, deletions=e.deletions, stat=e.stat)


_FOLD: dict[type, Callable[[State, ev.Event, float, object], None]] = {
    ev.DaemonStarted: _daemon_started,
    ev.TaskSubmitted: _submitted,
    ev.TaskReprioritized: _reprioritized,
    ev.TaskRoleChanged: _role_changed,
    ev.TaskRemoved: _removed,
    ev.TaskCancelled: _cancelled,
    ev.StopRequested: _stop_requested,
    ev.TaskStarting: _starting,
    ev.ProcessSpawned: _spawned,
    ev.SessionStarted: _session,
    ev.OutputAppended: _output,
    ev.InputRequested: _input_requested,
    ev.InputGiven: _input_given,
    ev.UsageRecorded: _usage,
    ev.ToolUsed: _tool_used,
    ev.AgentResult: _agent_result,
    ev.TaskContinued: _continued,
    ev.ProcessExited: _exited,
    ev.TaskFinished: _finished,
    ev.WorkflowCreated: _workflow,
    ev.WorktreeCreated: _worktree_created,
    ev.WorktreeRemoved: _worktree_removed,
    ev.CatalogChanged: _catalog,
    ev.ConfigChanged: _config,
    ev.TasksPurged: _purged,
    ev.PermissionDecided: _permission_decided,
    ev.TaskParked: _parked,
    ev.RetryScheduled: _retry_scheduled,
    ev.BudgetReached: _budget_reached,
    ev.BudgetRaised: _budget_raised,
    ev.MergeQueued: _merge_queued,
    ev.MergeStarted: _merge_started,
    ev.MergeConflicted: _merge_conflicted,
    ev.MergeResolved: _merge_resolved,
    ev.MergeFinished: _merge_finished,
    ev.MergesSkipped: _merges_skipped,
    ev.ChangesRecorded: _changes,
    ev.BaselineRecorded: _baseline,
    ev.ChecksStarted: _checks_started,
    ev.CheckStarted: _check_started,
    ev.CheckFinished: _check_finished,
    ev.ReviewRequested: _review_requested,
    ev.ReviewDecided: _review_decided,
    ev.StartDeferred: _start_deferred,
}


def evolve(state: State, event: ev.Event, *, seq: int, ts: float, data=None) -> State:
    """Fold one event (the record at `seq`, written at `ts`) into `state`."""
    state.last_seq = seq
    _FOLD[type(event)](state, event, ts, data)
    if state.dependents:
        _waiters(state, event)
    return state


def _waiters(state: State, event: ev.Event) -> None:
    """After `event` is folded: recheck the queued tasks waiting on a task it changed."""
    task = getattr(event, "task", None)
    if task in state.dependents:
        _recheck(state, task)
    if type(event) is ev.TasksPurged:
        for task in event.tasks:
            if task in state.dependents:
                _recheck(state, task)


def replay(records, state: State | None = None) -> State:
    """Fold `(seq, ts, event, data)` tuples into `state` (a new one by default)."""
    state = State() if state is None else state
    fold = _FOLD
    for seq, ts, event, data in records:
        state.last_seq = seq
        fold[type(event)](state, event, ts, data)
        if state.dependents:
            _waiters(state, event)
    return state


def replay_decoded(batches, state: State, back: Callable[[int], None] | None = None) -> State:
    """Fold the records of `Log.replay_decoded(events.Body)`: replay's hot loop, kept flat.

    Output chunks are most of a log's records, and a task's come in runs, so they are
    folded right here, as `_output` folds them but without a call: a run's places are
    packed as they come, and its totals written to the task once, when the run ends. The
    tests replay real logs and compare with `evolve`.

    A fact about a task in the history (the state came from a snapshot that had moved it
    out) first has `back(task)` take it back into memory, as the live store did.
    """
    fold, add_output = _FOLD, _add_output
    output = ev.OutputAppended
    tasks, outputs = state.tasks, state.outputs  # never rebound by the fold, only changed
    pack, codes = _pack_ref, _STREAM_CODES
    run_task = None  # whose output chunks came last: the run's task, places and totals
    t = packed = None
    grown, last_ts = 0, 0.0
    for first_seq, segment, records in batches:
        for i, r in enumerate(records):  # i, not seq: ints below 257 are never allocated
            ts, event = r.body
            if type(event) is output:
                if event.task != run_task:
                    if run_task is not None:
                        add_output(t, grown, last_ts)
                    run_task = event.task
                    t, packed, grown = tasks[run_task], outputs.get(run_task), 0
                grown += event.size
                last_ts = ts
                if r.data_len:
                    if packed is None:
                        packed = outputs[run_task] = bytearray()
                    packed += pack(segment, r.data_off, r.data_len, r.data_crc, codes[event.stream])
                continue
            if run_task is not None:
                add_output(t, grown, last_ts)
                run_task = None
            state.last_seq = first_seq + i
            data = DataRef(segment, r.data_off, r.data_len, r.data_crc) if r.data_len else None
            if state.cold and back is not None:
                task = getattr(event, "task", None)
                if type(task) is int and in_history(state, task):
                    back(task)
            fold[type(event)](state, event, ts, data)
            if state.dependents:
                _waiters(state, event)
        if records:
            state.last_seq = first_seq + len(records) - 1
    if run_task is not None:
        add_output(t, grown, last_ts)
    return state


# ---------------------------------------------------------------------------------------
# Snapshots of the state and views of it


# A snapshot payload is the State as MessagePack. Format 2 (see orchestrad.snapshots)
# encodes each task as an array of its fields; format 1 encoded it as a map, field names and
# all, which made a payload half as large again and slower to decode. Format 1 is still read, so
# an upgrade keeps its snapshots: the log may have been compacted behind them.

_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(State)


def to_snapshot(state: State) -> bytes:
    """The payload of a snapshot of `state`, in the current format (2)."""
    return _snapshot_encoder.encode(state)


def from_snapshot(payload: bytes | memoryview, version: int = 2) -> State:
    """The state a snapshot payload of format `version` (1 or 2) holds."""
    state = _from_format_1(payload) if version == 1 else _snapshot_decoder.decode(payload)
    # Indexes, not facts: rebuilt rather than trusted, whichever version wrote them.
    queued = sorted(state.queued, key=lambda t: run_key(state.tasks[t]))
    state.queued, state.run_order, state.queued_deps, state.queued_remote = set(), [], set(), set()
    state.unready, state.doomed, state.dependents = set(), set(), {}
    for t in queued:
        _enqueue(state, state.tasks[t])
    return state


def _as_map(cls: type, **types: object) -> type:
    """A struct with the fields of `cls` (some retyped), encoded as a map: format 1's Task."""
    fields = [
        (f.name, types.get(f.name, f.type), msgspec.field(default=f.default, default_factory=f.default_factory))
        for f in msgspec.structs.fields(cls)
    ]
    return msgspec.defstruct(f"{cls.__name__}Format1", fields, kw_only=True)


_decode_format_1 = msgspec.msgpack.Decoder(_as_map(State, tasks=dict[int, _as_map(Task)])).decode


def _from_format_1(payload: bytes | memoryview) -> State:
    old = _decode_format_1(payload)
    state = State(**msgspec.structs.asdict(old))
    state.tasks = {task_id: Task(**msgspec.structs.asdict(t)) for task_id, t in old.tasks.items()}
    return state


def view(
    task: Task, now: float, *, preview: int | None = None, waits_for: str = "", hold: tuple[str, float, str] | None = None,
    cpu: tuple[float, float | None] | None = None, silent_after: float | None = None,
) -> TaskView:
    """What clients see of `task`. With `preview`, its title, prompt, command and result are
    cut to that many characters each (list replies), and its setbacks left out; without,
    they are whole (`show`). `hold` is what holds a queued task until a time (kind, until,
    why: see `scheduler.hold`); `cpu` what the shell read of an active task's CPU use
    (seconds, the last time it used some: see `orchestrad.cpu`), and `silent_after` the
    setting by which clients call it silent."""
    active = task.status.active
    spec = task.spec
    title, prompt, argv, result = spec.title, spec.prompt, spec.argv, task.result
    if preview is not None:
        title, prompt, result = _cut(title, preview), _cut(prompt, preview), _cut(result, preview)
        argv = _cut_argv(argv, preview)
    runtime = None
    if task.started_at is not None and task.status is not Status.QUEUED:  # queued again: no attempt runs
        runtime = (task.finished_at if task.finished_at is not None else now) - task.started_at
    return TaskView(
        id=task.id,
        status=task.status,
        role=task.role,
        agent=spec.agent,
        priority=task.priority,
        after=spec.after,
        title=title,
        prompt=prompt,
        argv=argv,
        cwd=task.cwd,
        submitted_at=task.submitted_at,
        started_at=task.started_at,
        finished_at=task.finished_at,
        runtime=runtime,
        attempts=task.attempts,
        pid=task.pid,
        exit_code=task.exit_code,
        signal=task.signal,
        reason=task.reason,
        waiting=task.waiting,
        cost_usd=task.cost_usd,
        input_tokens=task.input_tokens,
        output_tokens=task.output_tokens,
        session_id=task.session_id,
        output_bytes=task.output_bytes,
        timeout=spec.timeout,
        idle_timeout=spec.idle_timeout,
        budget_usd=task.budget_usd if task.budget_usd is not None else spec.budget_usd,
        env_keys=sorted([*spec.env, *spec.secret_env]),
        workflow=spec.workflow,
        activity=task.activity,
        result=result,
        step=spec.step,
        worktree=task.workdir,
        parent=spec.parent,
        waits_for=waits_for,
        decisions=task.decisions if preview is None else [],
        decisions_total=task.decisions_total,
        sandbox=task.sandbox,
        hold=hold[0] if hold else "",
        hold_until=hold[1] if hold else None,
        hold_reason=hold[2] if hold else "",
        setbacks=task.setbacks if preview is None else [],
        last_activity=task.last_activity if active else None,
        cpu_seconds=cpu[0] if cpu is not None and active else None,
        cpu_at=cpu[1] if cpu is not None and active else None,
        silent_after=silent_after if active else None,
        changes=task.changes if preview is None or task.changes is None else msgspec.structs.replace(task.changes, stat=""),
        checks=spec.checks,
        check_round=task.check_round,
        check_rounds=spec.check_rounds,
        check_results=task.checks if preview is None else [],
        review=spec.review,
        reviews=task.reviews if preview is None else [],
        executor=spec.executor,
        node=f"{task.host} ({task.node[:8]})" if task.node else "",
    )


def _cut(text: str, limit: int) -> str:
    return shorten(text, limit)


def _cut_argv(argv: list[str], limit: int) -> list[str]:
    """The first arguments, `limit` characters of them in all; the one that crosses the
    limit is cut, and a last "…" says that more followed."""
    if sum(map(len, argv)) <= limit:
        return argv
    kept: list[str] = []
    room = limit
    for arg in argv:
        if len(arg) >= room:
            kept.append(_cut(arg, max(room, 1)))
            break
        kept.append(arg)
        room -= len(arg)
    return [*kept, "…"] if len(kept) < len(argv) else kept
