"""What the MCP tools take and give.

Arguments are msgspec Structs: their JSON Schema is the tool's input schema and
`msgspec.convert` validates the call, so a bad argument reads like "Expected `int`, got
`str` - at `$.task_id`". Results are Structs too, whose schema is the tool's output schema.
A handler ends with an `Output` (the structured result and its text) or raises
`ToolFailure` (a tool error with that text).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

from orchestra.shared import protocol as p


class ToolFailure(Exception):
    """A tool call that cannot be done: becomes a tool error (isError) with this text."""


class Output(msgspec.Struct):
    """What a tool handler returns: the structured result and its text form."""

    value: Any
    text: str


# ---------------------------------------------------------------------------------------
# Tool arguments. Their JSON Schema is what the client sees; msgspec validates calls.
# A description that is a placeholder (ROLES, TEMPLATES, SETTINGS, CWD) is filled in by
# `input_schema` when the tools are listed.


class Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


TaskId = Annotated[int, Meta(ge=1, description="The task's id, as submit-task and list-processes show it.")]
Positive = Annotated[float, Meta(gt=0)]
PriorityName = Literal["low", "normal", "high", "urgent"]
Priority = Annotated[
    Union[PriorityName, Annotated[int, Meta(ge=p.PRIORITY_MIN, le=p.PRIORITY_MAX)]],
    Meta(description="low (-10), normal (0), high (10), urgent (20), or a number from -100 to 100. Higher runs first."),
]
Agent = Annotated[str, Meta(description="AGENTS")]
Executor = Literal["local", "ray"]
EXECUTOR = ("Where it runs: local (this machine) or ray (a node of the Ray cluster set as ray_address; it then works in a "
            "clone of its git repository on a branch of its own, brought back here when it ends). Default: the role's, else the config's.")
NODE_LABELS = 'With executor ray: run only on a node with every one of these labels, e.g. ["gpu"].'


class SubmitTaskArgs(Args):
    """Queue a task."""

    prompt: Annotated[str, Meta(description="What the agent should do, in plain words, as you would brief a colleague: the goal, where to look, what done means. For every agent but command.")] = ""
    command: Annotated[list[str], Meta(description='For the command agent instead of a prompt: the program and its arguments, e.g. ["pytest", "-q"]. Not run through a shell.')] = []
    role: Annotated[str | None, Meta(description="ROLES")] = None
    agent: Agent | None = None
    cwd: Annotated[str | None, Meta(description="CWD")] = None
    priority: Priority = "normal"
    after: Annotated[list[int], Meta(description="Task ids that must succeed before this one starts. If one fails or is cancelled, this task does not run.")] = []
    title: Annotated[str, Meta(description="A short name shown in lists and the dashboard.")] = ""
    model: Annotated[str | None, Meta(description="Model for the agent, e.g. sonnet or opus for claude (default: the role's, else the agent CLI's own).")] = None
    timeout_seconds: Annotated[Positive | None, Meta(description="Stop the task after this many seconds of wall-clock time.")] = None
    idle_timeout_seconds: Annotated[Positive | None, Meta(description="Stop the task after this many seconds without output or CPU use.")] = None
    budget_usd: Annotated[Positive | None, Meta(description="Dollars the agent may spend on this task.")] = None
    worktree: Annotated[bool | None, Meta(description="Work in a git worktree of its own, on a new branch (default: as the role says). cwd must be in a git repository.")] = None
    env: Annotated[dict[str, str], Meta(description="Extra environment variables for the task. Values are never shown back.")] = {}
    checks: Annotated[list[str], Meta(description='Acceptance checks: shell lines that must exit 0 once the agent is done, run in its directory, e.g. ["pytest -q"]. A failing one is sent back to a conversing agent (claude, codex, gemini) to fix (check_rounds times at most); a command task fails at once.')] = []
    check_rounds: Annotated[Annotated[int, Meta(ge=1, le=20)] | None, Meta(description="How often the checks may run before the task fails (default: the role's, else 2).")] = None
    review: Annotated[bool | None, Meta(description="Once the checks pass, wait in status review for the user's approval (review-task); default: as the role says.")] = None
    executor: Annotated[Executor | None, Meta(description=EXECUTOR)] = None
    node_labels: Annotated[list[str], Meta(description=NODE_LABELS)] = []


class ListProcessesArgs(Args):
    """List tasks."""

    status: Annotated[list[p.Status], Meta(description="Only tasks in these statuses (default: all). waiting means blocked on a person's answer.")] = []
    role: Annotated[str | None, Meta(description="Only tasks with this role.")] = None
    active_only: Annotated[bool, Meta(description="Only queued, running, waiting, checking and review tasks (leave out finished ones).")] = False
    limit: Annotated[int, Meta(ge=1, le=p.PAGE_MAX, description=f"How many tasks to return, newest first (at most {p.PAGE_MAX}).")] = 50
    cursor: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(description="next_cursor of the previous call: the next page, of older tasks. Leave out for the newest.")] = None
    since_seconds: Annotated[Positive | None, Meta(description="Only tasks submitted in the last this many seconds.")] = None
    grep: Annotated[str, Meta(max_length=p.MAX_NAME, description="Only tasks with this text in their title or their result (any case).")] = ""


class ProcessDetailsArgs(Args):
    """One task in full."""

    task_id: TaskId
    log_lines: Annotated[int, Meta(ge=0, le=1000, description="How many of the last lines of its output transcript to include (0: none).")] = 40


class RespondArgs(Args):
    """Answer a waiting task."""

    task_id: TaskId
    decision: Annotated[Literal["allow", "deny"] | None, Meta(description="For a permission request: allow it, or deny it.")] = None
    answer: Annotated[str | None, Meta(description="For a question: an option number (1, 2, ...), the option's text, or your own words. For a command task: a line written to its stdin.")] = None
    message: Annotated[str, Meta(description="With decision deny: why, or what to do instead (the agent reads it).")] = ""
    budget_usd: Annotated[Positive | None, Meta(description="For a task paused on a budget: raise that budget to this many dollars (only the user decides this), and the tasks it paused go on.")] = None


class ManageQueueArgs(Args):
    """List or change the queue."""

    action: Annotated[Literal["list", "prioritize", "remove"], Meta(description="list: the queue in run order. prioritize: set task_id's priority. remove: take task_id out of the queue.")] = "list"
    task_id: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(description="The queued task, for prioritize and remove.")] = None
    priority: Priority | None = None


class TaskDiffArgs(Args):
    """What a worktree task changed."""

    task_id: TaskId
    stat: Annotated[bool, Meta(description="Only the files changed and their counts, not the patch.")] = False
class ReviewTaskArgs(Args):
    """Review a task that waits for review."""

    task_id: TaskId
    decision: Annotated[Literal["approve", "reject"] | None, Meta(description="approve: the task succeeds. reject: its agent is told `message` and works on. Leave out to see what it did (its summary and its checks) first.")] = None
    message: Annotated[str, Meta(description="With reject: what to change (the agent reads it).")] = ""


class StopProcessArgs(Args):
    """Stop a task."""

    task_id: TaskId


class ConfigureArgs(Args):
    """Read or change settings."""

    key: Annotated[str | None, Meta(description="SETTINGS")] = None
    value: Annotated[p.ConfigValue | UnsetType, Meta(description="The new value (JSON: a number, text, true/false, null, a list of names, or a table: role name to number, agent kind to a path). Leave out to read.")] = UNSET


class AssignRoleArgs(Args):
    """Give a task another role."""

    task_id: TaskId
    role: Annotated[str, Meta(description="ROLES")]


class CreateWorkflowArgs(Args):
    """Run a workflow template."""

    template: Annotated[str, Meta(description="TEMPLATES")]
    goal: Annotated[str, Meta(min_length=1, description="What the team should achieve, in plain words; every step's prompt quotes it.")]
    cwd: Annotated[str | None, Meta(description="CWD")] = None
    worktree: Annotated[bool | None, Meta(description="Work in a git worktree on a new branch (default: as the template says).")] = None
    priority: Priority = "normal"
    agent: Agent | None = None
    budget_usd: Annotated[Positive | None, Meta(description="Dollars all its tasks together may spend; reaching it pauses the next step until the user raises it.")] = None
    executor: Annotated[Executor | None, Meta(description=EXECUTOR + " A step's own executor wins.")] = None
    node_labels: Annotated[list[str], Meta(description=NODE_LABELS)] = []


class StatusDashboardArgs(Args):
    """The whole team at a glance."""

    width: Annotated[int, Meta(ge=60, le=300, description="Line width of the text picture.")] = 100


# ---------------------------------------------------------------------------------------
# Tool results: the structured content, with its output schema.


class TaskResult(msgspec.Struct, kw_only=True):
    task: p.TaskView


class TaskListResult(msgspec.Struct, kw_only=True):
    tasks: list[p.TaskView]  # previews (process-details has all of a task), newest first
    total: int = 0  # tasks that match, on every page
    next_cursor: int | None = None  # pass as cursor for the next page; none when this is the last


class DetailsResult(msgspec.Struct, kw_only=True):
    task: p.TaskView
    log_tail: str


class DiffResult(msgspec.Struct, kw_only=True):
    diff: p.DiffResult


class RespondResult(msgspec.Struct, kw_only=True):
    task: p.TaskView
    answered: bool  # false when the person declined or dismissed the form
    answer: str  # what was sent: "allow", "deny: why", or the words


class ReviewResult(msgspec.Struct, kw_only=True):
    task: p.TaskView
    decision: str  # "approve", "reject", or "" when only shown
    review: str  # what `orchestra review` shows: the summary, the checks, how to answer


class QueueResult(msgspec.Struct, kw_only=True):
    action: str
    queue: list[p.TaskView]
    task: p.TaskView | None = None  # the task prioritized
    removed: int | None = None


class SettingsResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    settings: dict[str, Any]
    agents: list[p.AgentView] = []  # with every setting: the agent kinds, as `orchestra agents` shows them


class AssignRoleResult(msgspec.Struct, kw_only=True):
    task: p.TaskView
    note: str


class WorkflowResult(msgspec.Struct, kw_only=True):
    workflow: p.WorkflowView


class DashboardResult(msgspec.Struct, kw_only=True):
    dashboard: str
    counts: dict[str, int]
    waiting: list[p.TaskView]
    queue: list[int]  # the head of the queue, in run order (counts has how many are queued)
    cost_usd: float


# ---------------------------------------------------------------------------------------
# Schemas


def json_schema(t: Any) -> dict[str, Any]:
    """msgspec's JSON Schema for `t`, with every `$ref` inlined (no `$defs`): an object at
    the root, as MCP asks, and simple enough for every client's form renderer."""
    schema = msgspec.json.schema(t)
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            target = inline(defs[node["$ref"].rsplit("/", 1)[1]])
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        node = {k: inline(v) for k, v in node.items()}
        if "anyOf" in node:  # `A | None` where A is itself a union: one flat anyOf
            flat = []
            for option in node["anyOf"]:
                if "description" in option and "description" not in node:  # onto the property
                    option = dict(option)
                    node["description"] = option.pop("description")
                if set(option) == {"anyOf"}:
                    flat += option["anyOf"]
                else:
                    flat.append(option)
            node["anyOf"] = flat
        if "enum" in node and "type" not in node and all(isinstance(v, str) for v in node["enum"]):
            node["type"] = "string"
        return node

    return inline(schema)


def input_schema(args: type[Args], roles: list[str], templates: list[str], settings: list[str], cwd: str,
                 agents: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """The input schema of a tool taking `args`, its placeholder descriptions filled in with
    the roles, templates, settings and agent kinds there are, and the directory `cwd`
    defaults to."""
    schema = json_schema(args)
    props = schema.get("properties", {})
    texts = {
        "ROLES": "The role: a named profile (system prompt, tools it may use, model, limits)"
        + (": " + ", ".join(roles) if roles else " (the orchestra://roles resource lists them)")
        + ". Default: the configured default role (generalist).",
        "TEMPLATES": "The workflow template"
        + (": " + ", ".join(templates) if templates else "")
        + ". The orchestra://workflows resource shows their steps.",
        "SETTINGS": "The setting"
        + (": " + ", ".join(settings) if settings else " (e.g. max_concurrent, default_role, permission_mode)")
        + ". Leave out to read them all.",
        "AGENTS": "The agent kind that works on it"
        + (": " + ", ".join(agents) if agents else " (configure-orchestrator lists them)")
        + ". command runs `command` (an argv); the others work on `prompt`. Default: command when `command` is given, "
        "else the role's agent, else the configured default agent.",
        "CWD": f"Absolute path of the directory the agents work in (the project). Default: {cwd}, where this server was started.",
    }
    for prop in props.values():
        description = prop.get("description")
        if description in texts:
            prop["description"] = texts[description]
            if description == "ROLES":
                prop["examples"] = roles
            if description == "TEMPLATES":
                prop["examples"] = templates
            if description == "AGENTS" and agents:  # the kinds this daemon has, and no other
                for choice in prop.get("anyOf", [prop]):
                    if choice.get("type") == "string":
                        choice["enum"] = list(agents)
    return schema
