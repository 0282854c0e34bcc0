"""The wire protocol that the daemon and its clients share.

Everything both sides must agree on lives here and nowhere else: the task statuses, the
priority names, the requests a client may send, the replies and typed errors the daemon
sends back, and the views of tasks it returns. The daemon imports this module; the clients
import this module and never the daemon.

Messages are msgspec Structs encoded as MessagePack inside length-prefixed frames (see
`orchestra.wire`). Schema evolution follows msgspec's rules: a new field always has a
default, an existing field never changes type, and a new request gets a new tag. A client
opens every connection with `Hello`; a daemon that speaks another major protocol version
answers with an error saying which, so nobody gets a confusing decode failure instead.
"""

from __future__ import annotations

import enum
from typing import Any, Literal, Union

import msgspec

from orchestra.shared.vocab import FINISHED as FINISHED, Status as Status  # re-exported

from orchestra.shared.framing import MAX_FRAME as MAX_FRAME, PROTOCOL_VERSION as PROTOCOL_VERSION  # re-exported

# ---------------------------------------------------------------------------------------
# Vocabulary


PRIORITY_NAMES = {"low": -10, "normal": 0, "high": 10, "urgent": 20}
PRIORITY_MIN, PRIORITY_MAX = -100, 100



# ---------------------------------------------------------------------------------------
# Limits. Every field a person (or an agent) gives is bounded, so that no task, and no list
# of tasks, can grow a reply past MAX_FRAME. The daemon checks them when it decides
# (`orchestrad.limits`); clients may check earlier, with the same numbers.

MAX_TITLE = 200  # characters
MAX_PROMPT = 1 << 20  # characters of a prompt, a goal, an answer or a message
MAX_ARGS = 4096  # arguments of a command
MAX_ARGV_BYTES = 256 << 10  # of all arguments together, as UTF-8
MAX_ENV = 256  # environment variables of a task
MAX_ENV_VALUE = 64 << 10  # characters of one variable's value
MAX_PATH = 4096  # characters of a working directory (PATH_MAX)
MAX_NAME = 200  # characters of a role, model, agent or template name
MAX_AFTER = 1000  # dependencies of a task
MAX_TASK_ID = 2**63 - 1  # ids are positive and fit MessagePack's signed 64 bits
MAX_SECONDS = 30 * 86400.0  # timeouts and idle timeouts: 30 days at most
MAX_BUDGET_USD = 100_000.0
MAX_WAIT = 10_000  # tasks one `Wait` may name

# List replies carry previews: these many characters of a task's title, prompt, command
# and result (`Show` has all of it). A page holds at most PAGE_MAX tasks and PAGE_BYTES of
# them, so that even a history of a million tasks is read a page at a time.
PREVIEW = 200
from orchestra.shared.framing import PAGE_MAX as PAGE_MAX  # noqa: E402 - re-exported
PAGE_BYTES = 4 << 20


def parse_priority(text: str | int) -> int:
    """`high` -> 10, `"7"` -> 7; a ValueError that says what is accepted otherwise."""
    if isinstance(text, int):
        value = text
    elif text.strip().lower() in PRIORITY_NAMES:
        return PRIORITY_NAMES[text.strip().lower()]
    else:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"priority {text!r} is not a number or one of {', '.join(PRIORITY_NAMES)}"
            ) from None
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValueError(f"priority {value} is out of range {PRIORITY_MIN}..{PRIORITY_MAX}")
    return value


class ErrorCode(str, enum.Enum):
    BAD_REQUEST = "bad_request"  # the request is well-formed but asks for something invalid
    NOT_FOUND = "not_found"  # no such task, role, workflow or key
    CONFLICT = "conflict"  # valid, but not in the task's current state
    PROTOCOL = "protocol"  # malformed, oversized or version-mismatched frames
    UNAVAILABLE = "unavailable"  # the daemon cannot take work now (disk full, shutting down)
    INTERNAL = "internal"
    FORBIDDEN = "forbidden"  # asked by an agent's process, and only a person may ask it


# ---------------------------------------------------------------------------------------
# Requests. One closed set; the daemon has one handler per request type.


class Request(msgspec.Struct, frozen=True, kw_only=True, tag_field="method", tag=str.lower):
    pass


class Hello(Request):
    version: int
    client: str = ""
    # The processes a client acts for (those holding a web or HTTP request's peer socket,
    # `orchestra.peer`), each as (pid, start time in clock ticks after boot): the connection
    # gets the narrowest of the client's own rights and theirs. One gone, or whose pid now
    # names another process, counts as an agent's.
    for_pids: list[tuple[int, int]] = []


class Submit(Request):
    """Queue a task. Exactly one of `prompt` (for an agent) or `argv` (command agent)."""

    cwd: str
    prompt: str = ""
    argv: list[str] = []
    role: str | None = None  # None: the configured default role
    agent: str | None = None  # None: `command` when argv is given, else the default agent
    priority: int = 0
    after: list[int] = []
    env: dict[str, str] = {}
    timeout: float | None = None  # seconds of wall-clock time
    idle_timeout: float | None = None  # seconds without output or CPU use
    budget_usd: float | None = None
    model: str | None = None
    title: str = ""
    worktree: bool | None = None  # None: as the role says
    checks: list[str] = []  # acceptance checks: shell lines run once the agent ends well (added to the role's)
    check_rounds: int | None = None  # rounds of checks before it fails; None: the role's, else the config's
    review: bool | None = None  # wait for a person's approval once the checks pass; None: as the role says
    expects_change: bool | None = None  # fail if the agent ends well having changed nothing; None: as the role says
    executor: str | None = None  # where it runs: "local" or "ray"; None: as the role says, else the config
    node_labels: list[str] = []  # run only on a node with every one of these labels (a remote executor)


class ListTasks(Request):
    """A page of tasks, newest first (a `TaskPage`): those matching every filter given, at
    most `limit` of them (None, or more than PAGE_MAX: PAGE_MAX), with ids below `before`
    when it is set. The page's `next` is the `before` of the page after it."""

    status: list[Status] = []
    role: str | None = None
    include_finished: bool = True
    limit: int | None = None
    before: int | None = None
    since: float | None = None  # submitted at or after this time (epoch seconds)
    grep: str = ""  # text in its title or its result, in any case


class Show(Request):
    task: int


class Logs(Request):
    """The task's output. `follow` turns the reply into a stream of `LogChunk` frames."""

    task: int
    follow: bool = False
    tail: int | None = None  # last N lines only
    raw: bool = False


class Respond(Request):
    """Answer a waiting task, or write a line to a command agent's stdin."""

    task: int
    text: str | None = None
    allow: bool = False
    deny: bool = False
    message: str = ""
    via: str = ""  # how the person answers ("cli", "mcp"), for the record
    budget_usd: float | None = None  # raise the budget that paused the task (or its own) to this many dollars
    approve: bool = False  # a task in review: approve it (it succeeds)
    reject: bool = False  # a task in review: reject it; `message` goes to its agent, which works on


class Stop(Request):
    """End a task: a queued one is cancelled, an active one is terminated."""

    task: int


class Resume(Request):
    """Run a finished task again: a Claude task continues its conversation where it stopped."""

    task: int
    message: str = ""


class SetPriority(Request):
    task: int
    priority: int


class Remove(Request):
    task: int


class AssignRole(Request):
    task: int
    role: str


class Queue(Request):
    """The queue in run order: its first `limit` tasks (None: up to PAGE_MAX)."""

    limit: int | None = None


class Wait(Request):
    """Block until every named task has finished (at most MAX_WAIT of them); answered with
    their views, as previews."""

    tasks: list[int]


class Watch(Request):
    """A stream of `TaskView` frames: one per task change, starting with every live task."""

    pass


ConfigValue = Union[str, int, float, bool, None, list[str], dict[str, Union[int, float, str]]]


class ConfigGet(Request):
    key: str | None = None


class ConfigSet(Request):
    key: str
    value: ConfigValue


class Cleanup(Request):
    """Purge finished tasks older than the retention, then compact the log behind them.
    A worktree whose work would be lost with it is kept, unless `force`."""

    force: bool = False


class Roles(Request):
    pass


class Templates(Request):
    pass


class CheckPolicy(Request):
    """Which permission rule decides a tool call for a task of `role` in `cwd`, and why."""

    role: str
    call: str  # "Bash(git push origin main)", "Read(~/.ssh/id_rsa)", "WebFetch(https://...)"
    cwd: str


class RunWorkflow(Request):
    """Turn a goal into a team: one task per step of the template, wired by dependencies."""

    template: str
    goal: str
    cwd: str
    worktree: bool | None = None  # None: as the template says
    priority: int = 0
    agent: str | None = None  # run every step with this agent (default: the configured one)
    budget_usd: float | None = None  # what all its tasks together may spend
    merge: bool | None = None  # merge its branches onto their target once it succeeds; None: as the template says
    executor: str | None = None  # where its steps run unless a step says; None: as each step's role says, else the config
    node_labels: list[str] = []  # labels the nodes its steps run on must have (added to each step's)


class ShowWorkflow(Request):
    workflow: int


class ListWorkflows(Request):
    """Workflows, oldest first: those named in `workflows` (all when empty), the newest
    `limit` of them (None: up to PAGE_MAX). Their tasks are previews."""

    workflows: list[int] = []
    limit: int | None = None


class Diff(Request):
    """The changes a worktree task made against the commit it started from, committed or
    not (a `DiffResult`); with `workflow` instead of `task`, its shared worktree's. With
    `stat`, only the summary, not the patch."""

    task: int | None = None
    stat: bool = False
    workflow: int | None = None
    limit: int | None = None  # bytes of the patch at most (None, or more than the daemon's cap: its cap, 4 MiB)


class ListWorktrees(Request):
    """Every worktree orchestra made and still keeps: whose, its branch, whether its work
    is merged, and its disk use (a `WorktreeList`)."""

    pass


class Info(Request):
    """The daemon's own status (pid, uptime, counts)."""

    pass


class Shutdown(Request):
    pass


class Merge(Request):
    """Queue the branches of `tasks` (their git worktrees), or of `workflow`, to be merged
    onto their target branch, one at a time (`orchestrad.merges`)."""

    tasks: list[int] = []
    workflow: int | None = None
    into: str | None = None  # the target branch; None: the branch each started from
    mode: str | None = None  # "merge" | "rebase"; None: the merge_mode setting
    checks: list[str] = []  # shell lines run in the integration worktree before the target moves
    resolve: bool = False  # on a conflict, a resolver task resolves it instead of stopping


class MergeStatus(Request):
    """The merge queue: the merges not finished, and the latest finished ones."""

    limit: int = 20


class Agents(Request):
    """The agent kinds: each one's CLI, its version, and whether it can run here."""

    pass


class Nodes(Request):
    """The nodes of the Ray cluster tasks may run on (a `NodeList`): each one's agent slots,
    labels, health and running tasks. It joins the cluster if the daemon has not yet."""

    pass


AnyRequest = Union[
    Hello,
    Submit,
    ListTasks,
    Show,
    Logs,
    Respond,
    Stop,
    Resume,
    SetPriority,
    Remove,
    AssignRole,
    Queue,
    Wait,
    Watch,
    ConfigGet,
    ConfigSet,
    Roles,
    Templates,
    RunWorkflow,
    ShowWorkflow,
    ListWorkflows,
    Info,
    Cleanup,
    Shutdown,
    CheckPolicy,
    Merge,
    MergeStatus,
    Diff,
    ListWorktrees,
    Agents,
    Nodes,
]

# Requests that change state: their reply is sent only after the events they caused are durable.
MUTATING = (Submit, Respond, Stop, Resume, SetPriority, Remove, AssignRole, ConfigSet, RunWorkflow, Merge)

# ---------------------------------------------------------------------------------------
# Replies


class Reply(msgspec.Struct, frozen=True, kw_only=True, tag_field="reply", tag=str.lower):
    pass


class Ok(Reply):
    result: Any = None


class Error(Reply):
    code: ErrorCode
    message: str


class End(Reply):
    """Closes a stream; `error` is set when it ended for a reason other than the request's."""

    error: Error | None = None


AnyReply = Union[Ok, Error, End]


class OrchestraError(Exception):
    """An error with a code and a message written for the person who will read it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_reply(self) -> Error:
        return Error(code=self.code, message=self.message)


def not_found(message: str) -> OrchestraError:
    return OrchestraError(ErrorCode.NOT_FOUND, message)


def bad_request(message: str) -> OrchestraError:
    return OrchestraError(ErrorCode.BAD_REQUEST, message)


def conflict(message: str) -> OrchestraError:
    return OrchestraError(ErrorCode.CONFLICT, message)


def forbidden(message: str) -> OrchestraError:
    return OrchestraError(ErrorCode.FORBIDDEN, message)


# ---------------------------------------------------------------------------------------
# Results


class Question(msgspec.Struct, frozen=True, kw_only=True):
    """What a waiting task asks a person."""

    request_id: str
    kind: Literal["permission", "question", "input", "budget", "review"]  # budget: paused on a budget (no process)
    prompt: str  # one line a person can decide on
    options: list[str] = []  # numbered choices, when the agent offered some
    tool: str = ""
    since: float = 0.0


class Decided(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A permission decision: what a tool call was, the answer, and who gave it."""

    at: float
    tool: str
    summary: str  # the command, the file, the URL
    effect: str  # allow | deny
    by: str  # "rule 3 of role tester (allow Bash(pytest *))", "a person (cli)", "the auto-deny timeout"


DECISIONS_KEPT = 50  # per task, in its state and its view
class Setback(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt that ended on the API's availability rather than on the work: it was
    retried (`kind` "retry") or parked until its account's usage limit reset ("parked")."""

    attempt: int  # the task's attempt that ended so (its `attempts` count then)
    kind: Literal["retry", "parked"]
    error: str  # "overloaded", "server error", "usage limit", ...
    detail: str = ""  # the agent's own words, shortened
    at: float = 0.0  # when it ended
    until: float = 0.0  # when the next attempt was to start


class ChangeStat(msgspec.Struct, frozen=True, kw_only=True):
    """What a worktree task's latest attempt left changed against the commit it started
    from, committed or not (`ChangesRecorded`)."""

    base: str  # the commit it started from
    head: str  # the commit its branch was at
    files: int
    insertions: int
    deletions: int
    stat: str = ""  # `git diff --stat` (left out of list previews)


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    status: Status
    role: str
    agent: str
    priority: int
    after: list[int]
    title: str
    prompt: str
    argv: list[str]
    cwd: str
    submitted_at: float
    started_at: float | None = None
    finished_at: float | None = None
    runtime: float | None = None  # seconds, up to now for an active task
    attempts: int = 0
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    waiting: Question | None = None
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    session_id: str = ""
    output_bytes: int = 0
    timeout: float | None = None
    idle_timeout: float | None = None
    budget_usd: float | None = None
    env_keys: list[str] = []
    workflow: int | None = None
    activity: str = ""  # the latest thing the agent did
    result: str = ""  # the agent's final answer of its latest attempt
    step: str = ""  # the workflow step it is
    worktree: str = ""  # its git worktree, when it has one
    parent: int | None = None  # the task whose agent submitted it
    waits_for: str = ""  # a queued task: what it waits for ("a free slot", "task 3 to succeed")
    decisions: list[Decided] = []  # the latest permission decisions, oldest first (up to DECISIONS_KEPT)
    decisions_total: int = 0  # all of them, in every attempt
    sandbox: str = ""  # the sandbox its latest process ran in ("" for none)
    hold: str = ""  # a queued task held until a time: "parked" (usage limit), "retry", "account" (its account's limit)
    hold_until: float | None = None  # when that hold ends (epoch seconds)
    hold_reason: str = ""  # "usage limit", "attempt 2 of 5: overloaded"
    setbacks: list[Setback] = []  # attempts retried or parked (in `show`; lists leave them out)
    last_activity: float | None = None  # an active task: when it last wrote output, used a tool or was answered
    cpu_seconds: float | None = None  # an active task: the CPU its processes used in this attempt, as far as read
    cpu_at: float | None = None  # ... and the last time it was seen using CPU (None: not yet, or not read)
    silent_after: float | None = None  # an active task: quiet this long, it is "silent" (the daemon's setting)
    changes: ChangeStat | None = None  # a worktree task: what its latest attempt left changed
    checks: list[str] = []  # its acceptance checks, the shell lines, in the order they run
    check_round: int = 0  # the round of checks that ran last (0: none yet)
    check_rounds: int = 0  # rounds of checks it may have before it fails
    check_results: list["CheckResult"] = []  # the latest round's checks that ran, in order
    review: bool = False  # it waits for a person's approval once its checks pass
    reviews: list["ReviewDecision"] = []  # what people decided of it in review, oldest first
    executor: str = "local"  # where its processes run: "local" or "ray"
    node: str = ""  # the node of a remote executor its latest process ran on, "host (node id)"


class CheckResult(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One acceptance check of a task's latest round, as it ended (or runs: `running`)."""

    command: str
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    tail: str = ""  # the end of its output
    running: bool = False

    @property
    def passed(self) -> bool:
        return not self.running and self.exit_code == 0 and not self.timed_out


class ReviewDecision(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A person's decision on a task in review."""

    approved: bool
    message: str = ""
    by: str = ""  # "a person (cli)"
    at: float = 0.0


class TaskPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of `ListTasks`: task previews, newest first."""

    tasks: list[TaskView]
    more: bool = False  # older tasks match too: ask again with before=next
    next: int | None = None  # the `before` of the next page
    total: int = 0  # tasks that match the filters, on every page together


# Roles and workflow templates: what people write in their files, and what the daemon
# shows. They are recorded in the daemon's log too, so fields are only ever added at the
# end, with defaults.


class Role(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    prompt: str
    allowed_tools: list[str] = []
    disallowed_tools: list[str] = []
    permission_mode: str = "default"
    model: str | None = None
    timeout: float | None = None
    idle_timeout: float | None = None
    budget_usd: float | None = None
    worktree: bool = False
    delegate: list[str] = []  # roles its agents may submit tasks as ("*": any); none: they may not
    policy: list[str] = []  # permission rules, tried before config.toml's ("allow Bash(pytest *)")
    sandbox: str | None = None  # "on" | "off": whether its agents run in a sandbox; None: as the config says
    network: bool | None = None  # whether its sandboxed agents have the network; None: as the config says
    check: list[str] = []  # acceptance checks its tasks run once their agent ends well (shell lines)
    check_rounds: int | None = None  # rounds of checks before a task fails; None: the config's check_rounds
    review: bool = False  # its tasks wait for a person's approval once their checks pass
    expects_change: bool = False  # a task that ends well having changed nothing fails
    agent: str | None = None  # the agent kind its tasks run on unless a submit or a step names one; None: the config's
    executor: str | None = None  # where its tasks run ("local" | "ray") unless a submit or a step says; None: the config's
    node_labels: list[str] = []  # labels a node must have to run its tasks (a remote executor)


class WorkflowStep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    role: str = "generalist"
    prompt: str = ""
    argv: list[str] = []  # for the command agent, instead of a prompt
    agent: str | None = None
    after: list[str] = []
    workspace: Literal["shared", "own"] = "shared"
    if_succeeded: str | None = None  # run only if this step succeeded
    if_failed: str | None = None  # run only if this step failed
    check: list[str] = []  # acceptance checks (added to the role's)
    check_rounds: int | None = None  # None: the role's, else the config's
    review: bool | None = None  # None: as the role says
    expects_change: bool | None = None  # None: as the role says
    executor: str | None = None  # None: as the role says, else the config
    node_labels: list[str] = []  # added to the role's


class WorkflowTemplate(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    description: str = ""
    steps: list[WorkflowStep]
    worktree: bool = False  # run in a git worktree unless the run says otherwise
    merge: bool = False  # merge its branches onto their target once it succeeds, unless the run says otherwise


class RolesResult(msgspec.Struct, frozen=True, kw_only=True):
    roles: list[Role]
    custom: list[str]  # names defined (or overridden) by files
    problems: list[str]  # files that could not be loaded, and why


class PolicyVerdict(msgspec.Struct, frozen=True, kw_only=True):
    effect: str  # allow | deny | ask | "" (no rule decides: the agent's own rules apply)
    by: str  # the rule, as `show` names it; "" when none decides
    reason: str  # what matched, or what happens when nothing does
    rules: int  # how many rules were tried


class TemplatesResult(msgspec.Struct, frozen=True, kw_only=True):
    templates: list[WorkflowTemplate]
    custom: list[str]
    problems: list[str]


class WorkflowView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    template: str
    goal: str
    status: str  # queued | running | waiting | succeeded | failed | cancelled
    cost_usd: float
    created_at: float
    cwd: str
    worktree: str
    steps: dict[str, int]
    tasks: list[TaskView]
    budget_usd: float | None = None  # what all its tasks together may spend
    merge: bool = False  # its branches are merged once it succeeds
    merge_note: str = ""  # why they were not ("not merged: step implement failed")


class MergeView(msgspec.Struct, frozen=True, kw_only=True):
    """One branch in the merge queue."""

    id: int
    status: str  # queued | merging | resolving | merged | conflicted | failed | cancelled
    branch: str
    target: str
    repo: str
    mode: str
    task: int | None = None
    workflow: int | None = None
    checks: list[str] = []
    reason: str = ""
    conflicts: list[str] = []  # files in conflict (conflicted, or being resolved)
    resolver: int | None = None  # the task resolving them
    head: str = ""  # the target's head after the merge
    queued_at: float = 0.0
    finished_at: float | None = None
    path: str = ""  # the integration worktree it ran in


class MergeQueue(msgspec.Struct, frozen=True, kw_only=True):
    merges: list[MergeView]  # oldest first
    queued: list[int] = []  # the merges a `Merge` just queued


class LogChunk(msgspec.Struct, frozen=True, kw_only=True):
    stream: str  # "stdout" | "stderr"
    data: bytes


class LogsResult(msgspec.Struct, frozen=True, kw_only=True):
    task: int
    chunks: list[LogChunk]


class AgentView(msgspec.Struct, frozen=True, kw_only=True):
    """One agent kind as this daemon would run it."""

    name: str
    program: str  # its CLI as configured (a name on PATH or a path); "" for the command agent
    path: str  # where that is found ("" if it is not)
    version: str  # what the CLI says its version is ("" if it could not say)
    usable: bool  # found and signed in: a task of this kind could start now
    problem: str  # why it is not usable, and what to do ("" when it is)
    default: bool  # the kind tasks get when they name none (the default_agent setting)
    traits: list[str]  # what it does: "converses", "reports cost", "runs a program", ...


class AgentList(msgspec.Struct, frozen=True, kw_only=True):
    agents: list[AgentView]


class NodeView(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # Ray's node id
    host: str
    slots: int  # agent slots it offers (its orchestra_agent resource)
    labels: list[str] = []
    alive: bool = True
    running: list[int] = []  # the tasks whose processes run there


class NodeList(msgspec.Struct, frozen=True, kw_only=True):
    executor: str  # "ray"
    address: str  # the cluster's head, as config ray_address says ("" for none)
    nodes: list[NodeView] = []
    problem: str = ""  # why the cluster cannot be used now ("" when it can)


class DaemonStatus(msgspec.Struct, frozen=True, kw_only=True):
    pid: int
    version: str
    protocol: int
    home: str
    socket: str
    started_at: float
    last_seq: int
    counts: dict[str, int]
    cost_usd: float = 0.0  # of every task the daemon holds


class CleanupResult(msgspec.Struct, frozen=True, kw_only=True):
    purged: list[int]
    segments_removed: int
    bytes_freed: int
    saved: list[str] = []  # worktrees whose uncommitted work was committed to their branch first
    kept: list[str] = []  # worktrees not removed, and why


class DiffResult(msgspec.Struct, frozen=True, kw_only=True):
    """A worktree's changes against its base: the summary, and the patch unless only the
    stat was asked for. A patch longer than the limit is cut at a line, and `note` says how
    to see all of it."""

    path: str  # the worktree
    branch: str
    base: str
    head: str
    files: int
    insertions: int
    deletions: int
    stat: str
    diff: str = ""
    cut: bool = False
    note: str = ""
    task: int | None = None
    workflow: int | None = None


class WorktreeView(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    branch: str
    repo: str
    task: int | None
    workflow: int | None
    state: str  # merged | unmerged | dirty | unchanged | missing | removing | unknown
    detail: str  # in words: "2 commits not on main", "3 files with uncommitted changes"
    disk_bytes: int | None  # None: not measured
    base: str = ""
    target: str = ""
    finished: bool = False  # every task it is for has ended
    removable: bool = False  # finished, and nothing would be lost: the quota may remove it


class WorktreeList(msgspec.Struct, frozen=True, kw_only=True):
    worktrees: list[WorktreeView]
    disk_bytes: int  # all of them together
    quota: int | None = None  # worktree_quota


class Welcome(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    daemon: str
    pid: int


class Removed(msgspec.Struct, frozen=True, kw_only=True):
    removed: int  # the task taken out of the queue


class RoleAssigned(msgspec.Struct, frozen=True, kw_only=True):
    task: TaskView
    note: str  # when the role applies


class Stopping(msgspec.Struct, frozen=True, kw_only=True):
    stopping: int  # the pid of the daemon that is stopping


Settings = dict[str, ConfigValue]  # setting name -> value (all of them, or the one asked for)


# ---------------------------------------------------------------------------------------
# What each request is answered with: one closed table, so that both sides agree on the
# type of every reply and a client decodes it without being told (`reply_type`). Streams
# (`Logs`, `Watch`) answer with many `Ok` frames of the type named here, then `End`.

REPLIES: dict[type, object] = {
    Hello: Welcome,
    Submit: TaskView,
    ListTasks: TaskPage,
    Show: TaskView,
    Logs: LogChunk,
    Respond: TaskView,
    CheckPolicy: PolicyVerdict,
    Stop: TaskView,
    Resume: TaskView,
    SetPriority: TaskView,
    Remove: Removed,
    AssignRole: RoleAssigned,
    Queue: list[TaskView],
    Wait: list[TaskView],
    Watch: TaskView,
    ConfigGet: Settings,
    ConfigSet: Settings,
    Cleanup: CleanupResult,
    Roles: RolesResult,
    Templates: TemplatesResult,
    RunWorkflow: WorkflowView,
    ShowWorkflow: WorkflowView,
    ListWorkflows: list[WorkflowView],
    Info: DaemonStatus,
    Shutdown: Stopping,
    Merge: MergeQueue,
    MergeStatus: MergeQueue,
    Diff: DiffResult,
    ListWorktrees: WorktreeList,
    Agents: AgentList,
    Nodes: NodeList,
}


def reply_type(request: Request) -> object:
    """The type `request`'s result decodes to."""
    return REPLIES[type(request)]
