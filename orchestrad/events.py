"""Events: the facts the daemon records, in the past tense.

The log holds nothing else, and the daemon's state is what `state.evolve` folds out of these
events. Each event is a frozen msgspec Struct tagged with its class name, encoded as a
MessagePack array (``array_like``) inside a `Record` that adds the wall-clock time. The
sequence number is the record's position in the log, so it is not repeated here.

Schema evolution (an event, once written, is never reinterpreted):

* a new field goes at the end of its struct and has a default, so old records decode;
* a field never changes type and is never reordered or removed;
* a new kind of event gets a new class (and so a new tag); old kinds stay decodable forever;
* the log's own framing is versioned in each segment's header (see `orchestrad.log.format`).

`tests/data/golden.log` holds a log written by the first version; every later version must
still load it (tests/test_golden.py).

It is long because it is the log's whole schema: one small class per kind of fact, kept in one
place so that what may never change is seen together.
"""

from __future__ import annotations

from typing import Literal, Union

import msgspec

from orchestra.shared.protocol import ConfigValue, Status
from orchestrad.roles import Role
from orchestrad.workflows import Template


class Event(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=True, gc=False):
    pass


class Condition(msgspec.Struct, frozen=True, array_like=True):
    """Run only if `task` ended with `outcome` (a workflow step's if_succeeded/if_failed)."""

    task: int
    outcome: Status


class TaskSpec(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """What a person asked for, after defaults were filled in. No environment value is
    here: `secret_env` names the variables, and their values are in the engine's env store
    (`orchestrad.envstore`). `env` holds values only in logs written before that store."""

    prompt: str
    argv: list[str]
    role: str
    agent: str
    priority: int
    after: list[int]
    cwd: str
    env: dict[str, str]  # always empty now; old logs kept the values of "plain" names here
    secret_env: list[str]  # the names of the task's environment variables (values: env store)
    timeout: float | None
    idle_timeout: float | None
    budget_usd: float | None
    model: str | None
    title: str
    workflow: int | None = None
    step: str = ""  # the workflow step this task is
    run_if: Condition | None = None
    worktree: bool = False  # run in a git worktree (its own, or the workflow's shared one)
    workspace: str = ""  # for a workflow step: "shared" or "own"
    parent: int | None = None  # the task whose agent submitted this one (delegation)
    checks: list[str] = []  # acceptance checks, shell lines run in order once the agent ends well (orchestrad.verify)
    check_rounds: int = 0  # rounds of checks before it fails (0 in older logs: no checks)
    review: bool = False  # once the checks pass, wait for a person's approval
    expects_change: bool = False  # ending well having changed nothing (in a git directory) fails it
    executor: str = "local"  # where its processes run (orchestrad.executor)
    node_labels: list[str] = []  # labels the node it runs on must have (a remote executor)


class DaemonStarted(Event):
    pid: int
    version: str
    accounts: dict[str, str] = {}  # agent kind -> the account its agents use by default (see scheduler.account_of)


class TaskSubmitted(Event):
    task: int
    spec: TaskSpec


class TaskReprioritized(Event):
    task: int
    priority: int


class TaskRoleChanged(Event):
    task: int
    role: str


class TaskRemoved(Event):
    """A queued task was taken out of the queue before it ever ran."""

    task: int


class TaskCancelled(Event):
    """A queued task will not run (cancelled by a person, or a dependency failed)."""

    task: int
    reason: str


class StopRequested(Event):
    """An active task is to be ended; the outcome it will have once its process is gone."""

    task: int
    outcome: Status
    reason: str


class TaskStarting(Event):
    """A queued task is being started. It is made durable before any process exists, so a
    crash in between leaves the task interrupted and never runs it twice."""

    task: int
    attempt: int


class ProcessSpawned(Event):
    task: int
    attempt: int
    pid: int
    argv: list[str]
    cgroup: str = ""  # the cgroup it was born in (see orchestrad.containment), if any
    sandbox: str = ""  # the sandbox it runs in (see orchestrad.sandbox), if any
    node: str = ""  # the id of the remote executor's node it runs on; "" on this machine
    host: str = ""  # ... and that node's host name


class SessionStarted(Event):
    """An agent reported its conversation id (used to continue or resume it)."""

    task: int
    session_id: str
    model: str = ""


Stream = Literal["stdout", "stderr", "stdin", "check"]  # stdin: what was written to the agent; check: its checks' output


class OutputAppended(Event):
    """A coalesced chunk of a task's output. The bytes are the record's data, not in here."""

    task: int
    stream: Stream  # a str on the wire; decoded as one of these three shared strings
    size: int


class InputRequested(Event):
    task: int
    request_id: str
    kind: str  # "permission" | "question" | "input"
    prompt: str
    options: list[str] = []
    tool: str = ""


class InputGiven(Event):
    task: int
    request_id: str  # "" for a line written to a command agent's stdin
    answer: str
    by: str = ""  # who answered: "a person (cli)", "the auto-deny timeout"; "" in older logs


class PermissionDecided(Event):
    """The permission policy answered a tool call itself: no person was asked."""

    task: int
    request_id: str
    tool: str
    summary: str  # the command, the file, the URL (as `InputRequested.prompt` shows it)
    effect: str  # allow | deny
    by: str  # "rule 3 of role tester (allow Bash(pytest *))"


class UsageRecorded(Event):
    """Cost and tokens spent since the previous record for this task (deltas, not totals)."""

    task: int
    cost_usd: float
    input_tokens: int
    output_tokens: int
    role: str = ""  # the task's role when it spent this (its role's daily budget counts it); "" in older logs
    session: str = ""  # the agent's conversation it was spent in; "" in older logs (and for agents without one)


class ToolUsed(Event):
    """The agent used a tool (a one-line summary of its input)."""

    task: int
    tool: str
    summary: str


# `AgentResult.subtype` of an attempt the agent ended itself because it reached the budget it
# was given (Claude Code's `--max-budget-usd`); adapters of other agents report the same.
BUDGET_SUBTYPE = "error_max_budget_usd"


class AgentResult(Event):
    """The agent's final answer for this attempt."""

    task: int
    text: str
    is_error: bool
    subtype: str = ""
    turns: int = 0
    duration_ms: int = 0
    api_error: str = ""  # an error of the API's availability ended it: "usage limit", "overloaded", ... (orchestrad.retries)
    resets_at: float | None = None  # a usage limit: when it resets (epoch seconds)


class TaskContinued(Event):
    """A finished task goes back in the queue for another attempt: a follow-up message to
    its conversation, a resume of an interrupted one, or a plain retry."""

    task: int
    message: str
    reason: str  # "follow-up" | "resume" | "retry"
    check_round: int = 0  # a follow-up telling the agent a check failed: that round (its next checks are the round after)


class ProcessExited(Event):
    task: int
    pid: int
    exit_code: int | None
    signal: int | None


class TaskFinished(Event):
    task: int
    outcome: Status
    reason: str


class WorkflowCreated(Event):
    workflow: int
    template: str
    goal: str
    steps: dict[str, int]  # step name -> task id
    cwd: str = ""
    worktree: bool = False
    budget_usd: float | None = None  # what all its tasks together may spend (orchestrad.budgets)
    merge: bool = False  # merge its branches onto their target once it succeeds (orchestrad.merges)


class WorktreeCreated(Event):
    """A git worktree on a new branch, for a task or for a workflow's shared steps."""

    path: str
    branch: str
    repo: str
    task: int | None = None
    workflow: int | None = None
    workdir: str = ""  # where the work happens inside it (the submitted cwd's counterpart)
    base: str = ""  # the commit it started from; "" in older logs
    target: str = ""  # the branch HEAD was on when it was made ("" for a detached HEAD, or in older logs)


class WorktreeRemoved(Event):
    path: str


class CatalogChanged(Event):
    """The roles and workflow templates people keep as files, as loaded; and what was wrong
    with the files that could not be loaded (the last good version stays in force)."""

    roles: list[Role]
    templates: list[Template]
    problems: list[str]


class ConfigChanged(Event):
    changes: dict[str, ConfigValue]
    source: str = ""  # "file" when config.toml changed; "" for `orchestra config set`


class TasksPurged(Event):
    """Finished tasks dropped by retention; their output may then be compacted away."""

    tasks: list[int]


class TaskParked(Event):
    """The task's attempt ended on its account's usage limit: it goes back in the queue and
    starts again at `until`, continuing its session with `message`; until then no other
    task of `account` starts."""

    task: int
    until: float
    reason: str  # "usage limit"
    account: str  # a name or a hash, never a credential (scheduler.account_of)
    message: str = ""  # what the resumed attempt is told; "": it starts over from its prompt
    detail: str = ""  # the agent's own words ("You've hit your session limit · resets 2pm")


class RetryScheduled(Event):
    """The task's attempt failed on a transient error (overloaded, a server error, the
    connection): attempt number `attempt` of this run starts at `at`, continuing the
    session with `message`."""

    task: int
    attempt: int  # the attempt of the run that will start at `at`: 2 for the first retry
    at: float
    error: str  # the kind: "overloaded", "server error", "rate limited", "connection error"
    detail: str = ""  # the agent's own words for it, shortened
    message: str = ""  # what the next attempt is told; "": it starts over from its prompt


class BudgetReached(Event):
    """The task reached a budget (`orchestrad.budgets`): its own, its workflow's, or its
    role's for the day. Its attempt has ended (or it was about to start), and it waits for a
    person to raise that budget or stop it, holding no slot."""

    task: int
    scope: str  # "task" | "workflow" | "role"
    name: str  # the workflow's id or the role's name ("" for the task's own)
    spent: float  # what was spent under that budget
    budget: float
    day: float = 0.0  # a role's budget: the start of the day it counts (epoch seconds)


class BudgetRaised(Event):
    """A person raised a budget (`orchestra respond ID --budget N`); the tasks it paused go on
    (each a `TaskContinued`)."""

    scope: str  # as BudgetReached
    name: str
    budget: float
    by: str  # "a person (cli)"
    task: int  # the task it was raised through
    day: float = 0.0  # a role's budget: the day it is raised for (another day has the configured one)


class MergeQueued(Event):
    """A branch joins the merge queue (`orchestrad.merges`)."""

    merge: int
    repo: str
    branch: str
    target: str
    mode: str  # "merge" | "rebase"
    checks: list[str]
    resolve: bool
    task: int | None = None
    workflow: int | None = None
    delete_branch: bool = False


class MergeStarted(Event):
    """The merge began in the integration worktree `path`, from the target's head `onto`."""

    merge: int
    onto: str
    path: str


class MergeConflicted(Event):
    """The branch conflicts with its target in `files`; task `resolver` (submitted in the
    same batch) resolves them in the integration worktree."""

    merge: int
    files: list[str]
    resolver: int


class MergeResolved(Event):
    """The resolver task left a finished merge, commit `head`: the checks run next."""

    merge: int
    head: str


class MergeFinished(Event):
    merge: int
    outcome: str  # "merged" | "conflicted" | "failed" | "cancelled"
    reason: str = ""
    head: str = ""  # the target's new head, when merged
    files: list[str] = []  # the files in conflict, when conflicted


class MergesSkipped(Event):
    """A workflow that was to merge its branches ended without succeeding: nothing is merged."""

    workflow: int
    reason: str


class ChangesRecorded(Event):
    """What a worktree task's attempt left changed, when its process exited: its worktree
    (its own, or its workflow's shared one) against the commit that started from,
    committed or not."""

    task: int
    base: str
    head: str  # the commit its branch was at
    files: int
    insertions: int
    deletions: int
    stat: str = ""  # `git diff --stat`, shortened when long
class StartDeferred(Event):
    """The task could not start where it is to run (its Ray cluster cannot be reached, or
    no node with a free slot and its labels is there): back in the queue, tried again at
    `until`, with `reason` shown meanwhile. Its attempt did not happen."""

    task: int
    until: float
    reason: str


class BaselineRecorded(Event):
    """Where a task that is to change something started, in its git directory: HEAD and a
    digest of what was uncommitted. Its end is compared with it (`expects_change`)."""

    task: int
    head: str
    digest: str


class ChecksStarted(Event):
    """The agent's attempt ended well; the task's acceptance checks run, round `round`
    (`orchestrad.verify`). The task holds its slot while they do."""

    task: int
    round: int


class CheckStarted(Event):
    """Check `index` of the round runs, as process `pid` (`sh -c command` in the task's directory)."""

    task: int
    index: int
    command: str
    pid: int


class CheckFinished(Event):
    """Check `index` ended; `tail` is the end of its output (or why it could not run)."""

    task: int
    index: int
    exit_code: int | None
    signal: int | None
    tail: str
    timed_out: bool = False


class ReviewRequested(Event):
    """The checks passed and the task waits for a person to approve or reject it, with no
    process and no slot."""

    task: int


class ReviewDecided(Event):
    """A person approved the task in review (it succeeds), or rejected it with `message`
    (its agent is told, and works on)."""

    task: int
    approved: bool
    message: str
    by: str  # "a person (cli)"


AnyEvent = Union[
    DaemonStarted,
    TaskSubmitted,
    TaskReprioritized,
    TaskRoleChanged,
    TaskRemoved,
    TaskCancelled,
    StopRequested,
    TaskStarting,
    ProcessSpawned,
    SessionStarted,
    OutputAppended,
    InputRequested,
    InputGiven,
    UsageRecorded,
    ToolUsed,
    AgentResult,
    TaskContinued,
    ProcessExited,
    TaskFinished,
    WorkflowCreated,
    WorktreeCreated,
    WorktreeRemoved,
    CatalogChanged,
    ConfigChanged,
    TasksPurged,
    PermissionDecided,
    TaskParked,
    RetryScheduled,
    BudgetReached,
    BudgetRaised,
    MergeQueued,
    MergeStarted,
    MergeConflicted,
    MergeResolved,
    MergeFinished,
    MergesSkipped,
    ChangesRecorded,
    BaselineRecorded,
    ChecksStarted,
    CheckStarted,
    CheckFinished,
    ReviewRequested,
    ReviewDecided,
    StartDeferred,
]


class Record(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The body of one log record: when it happened, and what."""

    ts: float
    event: AnyEvent


_encoder = msgspec.msgpack.Encoder()


def encode(ts: float, event: Event) -> bytes:
    return _encoder.encode(Record(ts, event))


# `decode(body) -> Record`: the decoder's own bound method.
decode = msgspec.msgpack.Decoder(Record).decode

# A record body as replay decodes it (`Log.replay_decoded`): `(ts, event)`, a tuple rather
# than a `Record`, which is cheaper to make and to take apart.
Body = tuple[float, AnyEvent]
