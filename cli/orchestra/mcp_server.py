"""`orchestra mcp`: the Model Context Protocol server on stdio.

A thin shim over the daemon, built on the MCP SDK's low-level `Server` (mcp 2.x), so that
every schema comes from the same msgspec types as the rest of orchestra:

* ten tools, named as in the product this replaces (`submit-task`, `list-processes`,
  `process-details`, `respond-to-process`, `manage-queue`, `stop-process`,
  `configure-orchestrator`, `assign-role`, `create-workflow`, `status-dashboard`). Each is
  one daemon request (two for `process-details`, three for `status-dashboard`). Arguments
  are msgspec Structs: their JSON Schema is the tool's input schema and `msgspec.convert`
  validates the call, so a bad argument reads like "Expected `int`, got `str` - at
  `$.task_id`". Results carry structured content (with an output schema) and the same
  thing as text. A daemon error comes back as a tool error (`isError`) with the daemon's
  message;
* `cwd` (submit-task, create-workflow) is optional and defaults to the directory the server
  was started in: Claude Code starts it in the project, so "this project" needs no path.
  Claude Desktop starts servers elsewhere, so there the model must pass one; the input
  schema says which directory the default is;
* four resources: `orchestra://status`, `orchestra://tasks/{task_id}/logs` (a template),
  `orchestra://roles` and `orchestra://workflows`;
* notifications: a background `Watch` stream on the daemon. When a task starts waiting
  for a person, subscribers of `orchestra://status` and of that task's logs URI get
  `notifications/resources/updated`, and the client gets a log message
  (`notifications/message`) saying what the task asks and how to answer. Any status change
  updates `orchestra://status`; a task that finishes updates its logs URI;
* elicitation: `respond-to-process` called with neither `decision` nor `answer` puts the
  task's question to the person directly, as a form, when the client can show one.

The SDK serves two protocol eras on the same stdio pipe and the client's first request picks
one. Handshake clients (2025-11-25 and before: Claude Code, Claude Desktop, the MCP
Inspector) subscribe with `resources/subscribe`, get log messages, and are asked by an
`elicitation/create` request during the tool call. 2026-07-28 clients subscribe with
`subscriptions/listen` (the SDK's subscription bus), get no connection-wide log messages
(that era has none), and are asked through an `InputRequiredResult` that they answer by
retrying the call.

Calls to the daemon go through `orchestra.aclient` (asyncio, one short connection per call),
so a slow daemon never blocks the server's loop. Nothing is written to stdout except the
protocol: the daemon's autostart notice and all logging go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Literal, Union

import anyio
import msgspec
from msgspec import UNSET, Meta, UnsetType

from orchestra import protocol as p
from orchestra.paths import Paths
from orchestra.wire import DaemonUnreachable

log = logging.getLogger("orchestra.mcp")

SERVER_NAME = "orchestra"
STATUS_URI = "orchestra://status"
ROLES_URI = "orchestra://roles"
WORKFLOWS_URI = "orchestra://workflows"
LOGS_TEMPLATE = "orchestra://tasks/{task_id}/logs"
LOG_RESOURCE_LINES = 2000  # a logs resource is the transcript's last lines, not megabytes
NOTICE_LEVEL = "warning"  # a task blocked on a person is something to act on
BUILTIN_TEMPLATES = ("code-review", "feature-development", "bug-fix", "refactoring")

INSTRUCTIONS = """\
orchestra runs a team of coding agents (Claude Code processes, or plain commands) on this
machine. submit-task queues work for a role (architect, implementer, tester, reviewer,
devops, documenter, generalist, or the user's own); create-workflow turns a goal into a
small team of dependent tasks. Task ids are small integers. A task with status "waiting"
is blocked until someone answers it: list-processes and status-dashboard show what it asks;
respond-to-process answers (decision allow/deny for a permission, answer for a question).
When unsure whether to allow something, call respond-to-process with only task_id: the user
is asked directly if this client supports it."""


def logs_uri(task_id: int) -> str:
    return f"orchestra://tasks/{task_id}/logs"


# ---------------------------------------------------------------------------------------
# Tool arguments. Their JSON Schema is what the client sees; msgspec validates calls.


class Args(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


TaskId = Annotated[int, Meta(ge=1, description="The task's id, as submit-task and list-processes show it.")]
Positive = Annotated[float, Meta(gt=0)]
PriorityName = Literal["low", "normal", "high", "urgent"]
Priority = Annotated[
    Union[PriorityName, Annotated[int, Meta(ge=p.PRIORITY_MIN, le=p.PRIORITY_MAX)]],
    Meta(description="low (-10), normal (0), high (10), urgent (20), or a number from -100 to 100. Higher runs first."),
]
Agent = Annotated[
    Literal["claude", "command"],
    Meta(description="claude: a Claude Code agent works on `prompt`. command: runs `command` (an argv). Default: command when `command` is given, else the configured default agent (claude)."),
]


class SubmitTaskArgs(Args):
    """Queue a task."""

    prompt: Annotated[str, Meta(description="What the agent should do, in plain words, as you would brief a colleague: the goal, where to look, what done means. For the claude agent.")] = ""
    command: Annotated[list[str], Meta(description='For the command agent instead of a prompt: the program and its arguments, e.g. ["pytest", "-q"]. Not run through a shell.')] = []
    role: Annotated[str | None, Meta(description="ROLES")] = None
    agent: Agent | None = None
    cwd: Annotated[str | None, Meta(description="CWD")] = None
    priority: Priority = "normal"
    after: Annotated[list[int], Meta(description="Task ids that must succeed before this one starts. If one fails or is cancelled, this task does not run.")] = []
    title: Annotated[str, Meta(description="A short name shown in lists and the dashboard.")] = ""
    model: Annotated[str | None, Meta(description="Model for the claude agent, e.g. sonnet or opus (default: the role's or Claude Code's).")] = None
    timeout_seconds: Annotated[Positive | None, Meta(description="Stop the task after this many seconds of wall-clock time.")] = None
    idle_timeout_seconds: Annotated[Positive | None, Meta(description="Stop the task after this many seconds without output.")] = None
    budget_usd: Annotated[Positive | None, Meta(description="Dollars the claude agent may spend on this task.")] = None
    worktree: Annotated[bool | None, Meta(description="Work in a git worktree of its own, on a new branch (default: as the role says). cwd must be in a git repository.")] = None
    env: Annotated[dict[str, str], Meta(description="Extra environment variables for the task. Values are never shown back.")] = {}


class ListProcessesArgs(Args):
    """List tasks."""

    status: Annotated[list[p.Status], Meta(description="Only tasks in these statuses (default: all). waiting means blocked on a person's answer.")] = []
    role: Annotated[str | None, Meta(description="Only tasks with this role.")] = None
    active_only: Annotated[bool, Meta(description="Only queued, running and waiting tasks (leave out finished ones).")] = False


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


class ManageQueueArgs(Args):
    """List or change the queue."""

    action: Annotated[Literal["list", "prioritize", "remove"], Meta(description="list: the queue in run order. prioritize: set task_id's priority. remove: take task_id out of the queue.")] = "list"
    task_id: Annotated[Annotated[int, Meta(ge=1)] | None, Meta(description="The queued task, for prioritize and remove.")] = None
    priority: Priority | None = None


class StopProcessArgs(Args):
    """Stop a task."""

    task_id: TaskId


class ConfigureArgs(Args):
    """Read or change settings."""

    key: Annotated[str | None, Meta(description="SETTINGS")] = None
    value: Annotated[p.ConfigValue | UnsetType, Meta(description="The new value (JSON: a number, text, true/false, null, a list of names, or a table of role name to number). Leave out to read.")] = UNSET


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


class StatusDashboardArgs(Args):
    """The whole team at a glance."""

    width: Annotated[int, Meta(ge=60, le=300, description="Line width of the text picture.")] = 100


# ---------------------------------------------------------------------------------------
# Tool results: the structured content, with its output schema.


class TaskResult(msgspec.Struct, kw_only=True):
    task: p.TaskView


class TaskListResult(msgspec.Struct, kw_only=True):
    tasks: list[p.TaskView]


class DetailsResult(msgspec.Struct, kw_only=True):
    task: p.TaskView
    log_tail: str


class RespondResult(msgspec.Struct, kw_only=True):
    task: p.TaskView
    answered: bool  # false when the person declined or dismissed the form
    answer: str  # what was sent: "allow", "deny: why", or the words


class QueueResult(msgspec.Struct, kw_only=True):
    action: str
    queue: list[p.TaskView]
    task: p.TaskView | None = None  # the task prioritized
    removed: int | None = None


class SettingsResult(msgspec.Struct, kw_only=True):
    settings: dict[str, Any]


class AssignRoleResult(msgspec.Struct, kw_only=True):
    task: p.TaskView
    note: str


class WorkflowResult(msgspec.Struct, kw_only=True):
    workflow: p.WorkflowView


class DashboardResult(msgspec.Struct, kw_only=True):
    dashboard: str
    counts: dict[str, int]
    waiting: list[p.TaskView]
    queue: list[int]
    cost_usd: float


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


# ---------------------------------------------------------------------------------------
# The daemon


class Daemon:
    """Calls to the daemon, each on its own short connection; starts one if none answers."""

    def __init__(self, paths: Paths, autostart: bool) -> None:
        self.paths = paths
        self.autostart = autostart and not os.environ.get("ORCHESTRA_NO_AUTOSTART")
        self._starting = anyio.Lock()
        self.started = anyio.Event()  # set when a call started the daemon: the watcher reconnects

    async def connect(self, *, start: bool = True):
        from orchestra import aclient

        try:
            return await aclient.connect(self.paths, client="orchestra-mcp")
        except DaemonUnreachable:
            if not (start and self.autostart):
                raise
        async with self._starting:  # two calls at once start one daemon
            await anyio.to_thread.run_sync(self._start_blocking)
        self.started.set()
        return await aclient.connect(self.paths, client="orchestra-mcp")

    def _start_blocking(self) -> None:
        from orchestra.client import connect_or_start

        connect_or_start(self.paths, autostart=True, timeout=10).close()

    async def call(self, request: p.Request, result_type: Any = Any) -> Any:
        conn = await self.connect()
        try:
            return await conn.call(request, result_type)
        finally:
            await conn.aclose()

    async def log_tail(self, task_id: int, lines: int) -> str:
        if lines <= 0:
            return ""
        conn = await self.connect()
        try:
            chunks = [c.data async for c in conn.stream(p.Logs(task=task_id, tail=lines), p.LogChunk)]
        finally:
            await conn.aclose()
        return b"".join(chunks).decode(errors="replace")


class ToolFailure(Exception):
    """A tool call that cannot be done: becomes a tool error (isError) with this text."""


def unreachable_message(exc: Exception, autostart: bool) -> str:
    hint = "start it with `orchestra daemon start`" if not autostart else "see `orchestra daemon status` and the daemon's log"
    return f"{exc}; {hint}"


# ---------------------------------------------------------------------------------------
# Tools


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    args: type[Args]
    result: type
    run: Callable[..., Awaitable[Any]]
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False


class Output(msgspec.Struct):
    """What a tool handler returns: the structured result and its text form."""

    value: Any
    text: str


class Orchestra:
    """The MCP server's state: the daemon, the tools, the subscriptions and the watcher."""

    def __init__(self, paths: Paths, autostart: bool, cwd: str | None = None) -> None:
        self.daemon = Daemon(paths, autostart)
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.subscribed: set[str] = set()  # URIs a handshake-era client subscribed to
        self.session = None  # the handshake-era client's session, for notifications
        self.log_level = "debug"  # the level the client asked for (logging/setLevel)
        self.last: dict[int, p.TaskView] = {}  # what the watcher last saw of each task
        self.asked: set[tuple[int, str]] = set()  # (task, request id) seen waiting
        self.announced: set[tuple[int, str]] = set()  # (task, request id) told to the client
        from mcp.server.subscriptions import InMemorySubscriptionBus

        self.bus = InMemorySubscriptionBus()
        self.tools = {t.name: t for t in self._tool_specs()}
        self.server = self._build_server()

    # -- the tools ----------------------------------------------------------------------

    def _tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                "submit-task", "Submit a task",
                "Queue a coding task for one agent of the team. Give `prompt` (what a Claude Code agent "
                "should do) or `command` (an argv the command agent runs). It starts when a slot is free "
                "and every task in `after` has succeeded; higher priority first, then oldest. Returns the "
                "task; its id is what the other tools take. A claude task may stop to ask permission for a "
                "tool or ask a question: it is then `waiting` until respond-to-process answers it.",
                SubmitTaskArgs, TaskResult, self.submit_task,
            ),
            ToolSpec(
                "list-processes", "List tasks",
                "List the tasks: id, status (queued, running, waiting, succeeded, failed, timed_out, "
                "cancelled, interrupted), role, agent, priority, dependencies, runtime, cost, and for a "
                "waiting task what it asks. Finished tasks are included unless active_only is true.",
                ListProcessesArgs, TaskListResult, self.list_processes, read_only=True, idempotent=True,
            ),
            ToolSpec(
                "process-details", "Task details",
                "Everything about one task: status and why it ended, prompt or command, role, agent, "
                "limits, attempts, cost and tokens, session, its final result, the question it waits on, "
                "and the last lines of its output transcript.",
                ProcessDetailsArgs, DetailsResult, self.process_details, read_only=True, idempotent=True,
            ),
            ToolSpec(
                "respond-to-process", "Answer a waiting task",
                "Answer a task that is waiting for a person. A permission request (the agent wants to run "
                "a tool): decision allow or deny, with an optional message saying why. A question: answer "
                "with an option number, the option's text, or your own words. For a running command task, "
                "answer is written as a line to its stdin; for a finished claude task, answer is a new "
                "message that continues its conversation. With only task_id, the user is asked directly with a "
                "form (when this client supports elicitation) and their answer is passed on; prefer that "
                "when the decision is the user's to make.",
                RespondArgs, RespondResult, self.respond,
            ),
            ToolSpec(
                "manage-queue", "Manage the queue",
                "The queue of tasks not yet started. action list: the queue in the order tasks will run. "
                "action prioritize: give a queued task (task_id) a new priority. action remove: take a "
                "queued task out of the queue. Returns the queue in run order after the change.",
                ManageQueueArgs, QueueResult, self.manage_queue,
            ),
            ToolSpec(
                "stop-process", "Stop a task",
                "Stop a task: a queued one is cancelled; a running or waiting one is terminated (SIGTERM, "
                "then SIGKILL after the configured grace). Tasks that depend on it will not run.",
                StopProcessArgs, TaskResult, self.stop_process, destructive=True,
            ),
            ToolSpec(
                "configure-orchestrator", "Settings",
                "Read or change the orchestrator's settings. No key: every setting. key alone: that "
                "setting. key and value: change it (recorded by the daemon, in force at once).",
                ConfigureArgs, SettingsResult, self.configure,
            ),
            ToolSpec(
                "assign-role", "Assign a role",
                "Give a task another role (its system prompt, tool rules, model and limits). A queued task "
                "runs as the new role; a running one takes it from its next attempt.",
                AssignRoleArgs, AssignRoleResult, self.assign_role, idempotent=True,
            ),
            ToolSpec(
                "create-workflow", "Run a workflow",
                "Turn a goal into a small team: one task per step of a workflow template (each step a "
                "role and a prompt that quotes the goal and the earlier steps' results), wired by "
                "dependencies so each starts when the steps before it succeeded. Returns the workflow "
                "with its tasks.",
                CreateWorkflowArgs, WorkflowResult, self.create_workflow,
            ),
            ToolSpec(
                "status-dashboard", "Status dashboard",
                "A text picture of the whole team: what waits for an answer (the question, its options and "
                "how to answer), what runs (runtime, cost, latest activity), the queue in run order, "
                "workflows and their steps, the latest finished tasks, and the total cost.",
                StatusDashboardArgs, DashboardResult, self.status_dashboard, read_only=True, idempotent=True,
            ),
        ]

    async def _live_names(self) -> tuple[list[str], list[str], list[str]]:
        """Roles, templates and setting names, from the daemon when it answers."""
        roles, templates, settings = list(p.BUILTIN_ROLES), list(BUILTIN_TEMPLATES), []
        try:
            roles = [r.name for r in (await self.daemon.call(p.Roles(), p.RolesResult)).roles]
            templates = [t.name for t in (await self.daemon.call(p.Templates(), p.TemplatesResult)).templates]
            settings = list(await self.daemon.call(p.ConfigGet()))
        except (DaemonUnreachable, p.OrchestraError, OSError) as exc:
            log.info("listing tools without the daemon's names: %s", exc)
        return roles, templates, settings

    def _input_schema(self, spec: ToolSpec, roles: list[str], templates: list[str], settings: list[str]) -> dict[str, Any]:
        schema = json_schema(spec.args)
        props = schema.get("properties", {})
        custom = [r for r in roles if r not in p.BUILTIN_ROLES]
        texts = {
            "ROLES": "The role: a named profile (system prompt, tools it may use, model, limits). Built in: "
            + ", ".join(p.BUILTIN_ROLES)
            + (f". The user's own: {', '.join(custom)}" if custom else "")
            + ". Default: the configured default role (generalist).",
            "TEMPLATES": "The workflow template: " + ", ".join(templates) + ". The orchestra://workflows resource shows their steps.",
            "SETTINGS": "The setting"
            + (": " + ", ".join(settings) if settings else " (e.g. max_concurrent, default_role, permission_mode)")
            + ". Leave out to read them all.",
            "CWD": f"Absolute path of the directory the agents work in (the project). Default: {self.cwd}, where this server was started.",
        }
        for prop in props.values():
            description = prop.get("description")
            if description in texts:
                prop["description"] = texts[description]
                if description == "ROLES":
                    prop["examples"] = roles
                if description == "TEMPLATES":
                    prop["examples"] = templates
        return schema

    async def list_tools(self) -> list:
        from mcp_types import Tool, ToolAnnotations

        roles, templates, settings = await self._live_names()
        return [
            Tool(
                name=spec.name,
                title=spec.title,
                description=spec.description,
                input_schema=self._input_schema(spec, roles, templates, settings),
                output_schema=json_schema(spec.result),
                annotations=ToolAnnotations(
                    title=spec.title,
                    read_only_hint=spec.read_only,
                    destructive_hint=spec.destructive,
                    idempotent_hint=spec.idempotent,
                    open_world_hint=False,
                ),
            )
            for spec in self.tools.values()
        ]

    async def call_tool(self, ctx, params):
        from mcp.shared.exceptions import MCPError
        from mcp_types import INVALID_PARAMS, CallToolResult, TextContent

        spec = self.tools.get(params.name)
        if spec is None:
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r}; the tools are: {', '.join(self.tools)}")
        try:
            args = msgspec.convert(params.arguments or {}, spec.args, strict=False)
        except msgspec.ValidationError as exc:
            return _error(f"invalid arguments for {spec.name}: {exc}")
        try:
            out = await spec.run(args, ctx, params)
        except p.OrchestraError as exc:
            return _error(exc.message)
        except ToolFailure as exc:
            return _error(str(exc))
        except DaemonUnreachable as exc:
            return _error(unreachable_message(exc, self.daemon.autostart))
        except (OSError, ConnectionError) as exc:
            return _error(f"lost the connection to the daemon: {exc}")
        if not isinstance(out, Output):
            return out  # an InputRequiredResult (2026-07-28 elicitation)
        return CallToolResult(content=[TextContent(type="text", text=out.text)], structured_content=msgspec.to_builtins(out.value))

    # -- one handler per tool -------------------------------------------------------------

    async def submit_task(self, a: SubmitTaskArgs, ctx, params) -> Output:
        from orchestra.render import table

        view = await self.daemon.call(
            p.Submit(
                cwd=self._cwd(a.cwd),
                prompt=a.prompt,
                argv=a.command,
                role=a.role,
                agent=a.agent,
                priority=_priority(a.priority),
                after=a.after,
                env=a.env,
                timeout=a.timeout_seconds,
                idle_timeout=a.idle_timeout_seconds,
                budget_usd=a.budget_usd,
                model=a.model,
                title=a.title,
                worktree=a.worktree,
            ),
            p.TaskView,
        )
        return Output(TaskResult(task=view), f"queued task {view.id}\n\n{table([view])}")

    async def list_processes(self, a: ListProcessesArgs, ctx, params) -> Output:
        from orchestra.render import grouped

        tasks = await self.daemon.call(p.ListTasks(status=a.status, role=a.role, include_finished=not a.active_only), list[p.TaskView])
        tasks.sort(key=lambda t: t.id)
        if not tasks:
            return Output(TaskListResult(tasks=[]), "no tasks")
        workflows = {}
        if any(t.workflow is not None for t in tasks):
            workflows = {w.id: w for w in await self.daemon.call(p.ListWorkflows(), list[p.WorkflowView])}
        return Output(TaskListResult(tasks=tasks), grouped(tasks, workflows, width=160))

    async def process_details(self, a: ProcessDetailsArgs, ctx, params) -> Output:
        from orchestra.render import details

        view = await self.daemon.call(p.Show(task=a.task_id), p.TaskView)
        tail = await self.daemon.log_tail(a.task_id, a.log_lines)
        text = details(view)
        if a.log_lines:
            text += f"\n\nlast {a.log_lines} lines of output:\n" + (tail.rstrip("\n") or "(no output yet)")
        return Output(DetailsResult(task=view, log_tail=tail), text)

    async def respond(self, a: RespondArgs, ctx, params) -> Any:
        if a.decision is None and a.answer is None:
            return await self._ask_the_person(a.task_id, ctx, params)
        return await self._respond(a.task_id, a.decision, a.answer, a.message)

    async def _respond(self, task_id: int, decision: str | None, answer: str | None, message: str) -> Output:
        view = await self.daemon.call(
            p.Respond(task=task_id, text=answer, allow=decision == "allow", deny=decision == "deny", message=message),
            p.TaskView,
        )
        sent = decision if decision else (answer or "")
        if decision == "deny" and message:
            sent = f"deny: {message}"
        return Output(RespondResult(task=view, answered=True, answer=sent), f"answered task {view.id} ({sent}); it is {view.status.value}")

    async def manage_queue(self, a: ManageQueueArgs, ctx, params) -> Output:
        from orchestra.render import table

        task = removed = None
        if a.action != "list" and a.task_id is None:
            raise ToolFailure(f"action {a.action} needs task_id: the queued task to change (manage-queue with action list shows them)")
        if a.action == "prioritize":
            if a.priority is None:
                raise ToolFailure("action prioritize needs priority: low, normal, high, urgent or a number from -100 to 100")
            task = await self.daemon.call(p.SetPriority(task=a.task_id, priority=_priority(a.priority)), p.TaskView)
        elif a.action == "remove":
            await self.daemon.call(p.Remove(task=a.task_id))
            removed = a.task_id
        queue = await self.daemon.call(p.Queue(), list[p.TaskView])
        head = {"list": "", "prioritize": f"task {a.task_id} has priority {task.priority if task else '?'}\n\n", "remove": f"removed task {removed} from the queue\n\n"}[a.action]
        body = f"the queue, in run order:\n{table(queue)}" if queue else "the queue is empty"
        return Output(QueueResult(action=a.action, queue=queue, task=task, removed=removed), head + body)

    async def stop_process(self, a: StopProcessArgs, ctx, params) -> Output:
        view = await self.daemon.call(p.Stop(task=a.task_id), p.TaskView)
        state = "stopping" if view.status.active else view.status.value
        return Output(TaskResult(task=view), f"task {view.id} is {state}")

    async def configure(self, a: ConfigureArgs, ctx, params) -> Output:
        if a.value is not UNSET:
            if a.key is None:
                raise ToolFailure("a value needs a key: the setting to change (call without arguments to see them all)")
            settings = await self.daemon.call(p.ConfigSet(key=a.key, value=a.value))
        else:
            settings = await self.daemon.call(p.ConfigGet(key=a.key))
        text = "\n".join(f"{k} = {msgspec.json.encode(v).decode()}" for k, v in settings.items())
        return Output(SettingsResult(settings=settings), text)

    async def assign_role(self, a: AssignRoleArgs, ctx, params) -> Output:
        result = await self.daemon.call(p.AssignRole(task=a.task_id, role=a.role))
        view = msgspec.convert(result["task"], p.TaskView)
        return Output(AssignRoleResult(task=view, note=result["note"]), result["note"])

    async def create_workflow(self, a: CreateWorkflowArgs, ctx, params) -> Output:
        from orchestra.render import workflow_block

        view = await self.daemon.call(
            p.RunWorkflow(template=a.template, goal=a.goal, cwd=self._cwd(a.cwd), worktree=a.worktree, priority=_priority(a.priority), agent=a.agent),
            p.WorkflowView,
        )
        steps = ", ".join(f"{step} = task {task}" for step, task in view.steps.items())
        return Output(WorkflowResult(workflow=view), f"workflow {view.id}: {steps}\n\n{workflow_block(view, width=160)}")

    async def status_dashboard(self, a: StatusDashboardArgs, ctx, params) -> Output:
        from orchestra.dashboard import render

        tasks = await self.daemon.call(p.ListTasks(), list[p.TaskView])
        queue = await self.daemon.call(p.Queue(), list[p.TaskView])
        workflows = await self.daemon.call(p.ListWorkflows(), list[p.WorkflowView])
        text = render(tasks, queue, workflows, width=a.width, hint=False)
        counts: dict[str, int] = {}
        for t in tasks:
            counts[t.status.value] = counts.get(t.status.value, 0) + 1
        waiting = sorted((t for t in tasks if t.status is p.Status.WAITING), key=lambda t: t.id)
        result = DashboardResult(dashboard=text, counts=counts, waiting=waiting, queue=[t.id for t in queue], cost_usd=sum(t.cost_usd for t in tasks))
        return Output(result, text)

    def _cwd(self, cwd: str | None) -> str:
        if cwd is None:
            return self.cwd
        if not os.path.isabs(os.path.expanduser(cwd)):
            raise ToolFailure(f"cwd must be an absolute path, not {cwd!r} (this server runs in {self.cwd})")
        return os.path.expanduser(cwd)

    # -- elicitation ----------------------------------------------------------------------

    async def _ask_the_person(self, task_id: int, ctx, params) -> Any:
        """Put a waiting task's question to the person through the client, then answer it."""
        from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        view = await self.daemon.call(p.Show(task=task_id), p.TaskView)
        if view.waiting is None:
            if view.agent == "command" and view.status.active:
                raise ToolFailure(f"task {task_id} is a running command; give answer: the line to write to its stdin")
            raise ToolFailure(f"task {task_id} is {view.status.value}, not waiting for an answer; nothing to respond to")
        if not _can_elicit(ctx.session.client_capabilities):
            raise ToolFailure(
                f"task {task_id} asks: {_question_line(view.waiting)}. This client cannot show the user a form "
                "(no elicitation support), so ask the user and call respond-to-process again with "
                + ("decision allow or deny." if view.waiting.kind == "permission" else "answer.")
            )
        message, schema = elicitation_form(view)
        state = f"{task_id}:{view.waiting.request_id}"
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            responses = params.input_responses or {}
            reply = responses.get("answer") if params.request_state == state else None
            if reply is None:
                request = ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema))
                return InputRequiredResult(input_requests={"answer": request}, request_state=state)
        else:
            reply = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        if getattr(reply, "action", None) != "accept":
            action = getattr(reply, "action", "no answer")
            text = f"the user chose not to answer ({action}); task {task_id} is still waiting: {_question_line(view.waiting)}"
            return Output(RespondResult(task=view, answered=False, answer=""), text)
        decision, answer, note = read_form(view.waiting, reply.content or {})
        now = await self.daemon.call(p.Show(task=task_id), p.TaskView)
        if now.waiting is None or now.waiting.request_id != view.waiting.request_id:
            raise ToolFailure(f"task {task_id} no longer asks that (it was answered elsewhere or withdrawn) and is {now.status.value}; the answer was not sent")
        return await self._respond(task_id, decision, answer, note)

    # -- resources ----------------------------------------------------------------------

    async def read_resource(self, uri: str) -> tuple[str, str]:
        """(mime type, text) for `uri`."""
        if uri == STATUS_URI:
            info = await self.daemon.call(p.Info(), p.DaemonStatus)
            tasks = await self.daemon.call(p.ListTasks(include_finished=False), list[p.TaskView])
            queue = await self.daemon.call(p.Queue(), list[p.TaskView])
            workflows = await self.daemon.call(p.ListWorkflows(), list[p.WorkflowView])
            tasks.sort(key=lambda t: t.id)
            status = {
                "daemon": info,
                "counts": info.counts,
                "waiting": [t for t in tasks if t.status is p.Status.WAITING],
                "active": tasks,
                "queue": [t.id for t in queue],
                "workflows": [w for w in workflows if w.status not in ("succeeded", "failed", "cancelled")],
            }
            return "application/json", _json(status)
        if uri == ROLES_URI:
            return "application/json", _json(await self.daemon.call(p.Roles(), p.RolesResult))
        if uri == WORKFLOWS_URI:
            return "application/json", _json(await self.daemon.call(p.Templates(), p.TemplatesResult))
        task_id = _logs_task(uri)
        if task_id is not None:
            await self.daemon.call(p.Show(task=task_id))  # a clear "no task N" first
            return "text/plain", await self.daemon.log_tail(task_id, LOG_RESOURCE_LINES)
        raise LookupError(f"no resource {uri}; the resources are {STATUS_URI}, {LOGS_TEMPLATE}, {ROLES_URI} and {WORKFLOWS_URI}")

    # -- notifications ------------------------------------------------------------------

    async def watch_forever(self) -> None:
        """Follow the daemon's Watch stream; reconnect (1 s, then up to 10 s apart) if it goes."""
        delay = 1.0
        while True:
            try:
                conn = await self.daemon.connect(start=False)
            except DaemonUnreachable:
                with anyio.move_on_after(delay):
                    await self.daemon.started.wait()  # or until a tool call starts one
                self.daemon.started = anyio.Event()
                delay = min(10.0, delay * 2)
                continue
            delay = 1.0
            try:
                async for view in conn.stream(p.Watch(), p.TaskView):
                    await self.on_view(view)
            except (DaemonUnreachable, p.OrchestraError, OSError) as exc:
                log.info("the daemon's watch stream ended: %s", exc)
            finally:
                await conn.aclose()
            await anyio.sleep(delay)

    async def on_view(self, view: p.TaskView) -> None:
        """One task change: what the subscribers and the client should hear about it."""
        before = self.last.get(view.id)
        if view.status.finished:
            self.last.pop(view.id, None)
        else:
            self.last[view.id] = view
        changed = before is None or before.status is not view.status
        key = (view.id, view.waiting.request_id) if view.waiting is not None else None
        newly_waiting = key is not None and key not in self.asked
        if changed or newly_waiting:
            await self.publish(STATUS_URI)
        if newly_waiting or (changed and view.status.finished):
            await self.publish(logs_uri(view.id))
        if newly_waiting:
            self.asked.add(key)
            await self.announce(view)
        if view.status.finished:
            self.asked = {k for k in self.asked if k[0] != view.id}
            self.announced = {k for k in self.announced if k[0] != view.id}

    async def publish(self, uri: str) -> None:
        from mcp.shared.subscriptions import ResourceUpdated

        await self.bus.publish(ResourceUpdated(uri=uri))  # 2026-07-28 listen streams
        if self.session is not None and uri in self.subscribed:  # resources/subscribe
            try:
                await self.session.send_resource_updated(uri)
            except Exception as exc:  # the client went away: nothing to tell
                log.info("could not send resources/updated for %s: %s", uri, exc)

    async def announce(self, view: p.TaskView) -> None:
        """A log message for the client, once per question: what the task asks and how to
        answer. Handshake-era clients only; questions that were pending before the client
        was ready are announced when it is (`announce_pending`)."""
        from mcp_types import LoggingMessageNotification, LoggingMessageNotificationParams

        if view.waiting is None or self.session is None:
            return
        key = (view.id, view.waiting.request_id)
        if key in self.announced or _LEVELS.index(NOTICE_LEVEL) < _LEVELS.index(self.log_level):
            return
        self.announced.add(key)
        notification = LoggingMessageNotification(
            params=LoggingMessageNotificationParams(level=NOTICE_LEVEL, logger="orchestra", data=waiting_message(view))
        )
        try:
            await self.session.send_notification(notification)
        except Exception as exc:
            log.info("could not send the waiting notice for task %s: %s", view.id, exc)

    async def announce_pending(self) -> None:
        for view in sorted(self.last.values(), key=lambda v: v.id):
            await self.announce(view)

    # -- the SDK server -----------------------------------------------------------------

    def _build_server(self):
        from mcp.server.lowlevel import Server
        from mcp.server.subscriptions import ListenHandler
        from mcp.shared.exceptions import MCPError
        from mcp_types import (
            INTERNAL_ERROR,
            INVALID_PARAMS,
            EmptyResult,
            ListResourcesResult,
            ListResourceTemplatesResult,
            ListToolsResult,
            NotificationParams,
            ReadResourceResult,
            Resource,
            ResourceTemplate,
            SetLevelRequestParams,
            TextResourceContents,
        )

        orchestra = self

        async def on_list_tools(ctx, params) -> ListToolsResult:
            return ListToolsResult(tools=await orchestra.list_tools())

        async def on_list_resources(ctx, params) -> ListResourcesResult:
            return ListResourcesResult(resources=[
                Resource(uri=STATUS_URI, name="orchestration-status", title="Orchestration status", mime_type="application/json",
                         description="The daemon (pid, version, counts by status), the tasks that are active and those waiting for an answer, the queue in run order, and unfinished workflows. Updated (resources/updated) when a task changes status or starts waiting."),
                Resource(uri=ROLES_URI, name="role-definitions", title="Role definitions", mime_type="application/json",
                         description="Every role: its description, system prompt, the tools it may use without asking, permission mode, model and limits; which are the user's own; files that failed to load."),
                Resource(uri=WORKFLOWS_URI, name="workflow-templates", title="Workflow templates", mime_type="application/json",
                         description="Every workflow template: its steps, their roles, prompts and order."),
            ])

        async def on_list_templates(ctx, params) -> ListResourceTemplatesResult:
            return ListResourceTemplatesResult(resource_templates=[
                ResourceTemplate(uri_template=LOGS_TEMPLATE, name="process-logs", title="Task output", mime_type="text/plain",
                                 description=f"A task's output as a readable transcript (the last {LOG_RESOURCE_LINES} lines): the agent's messages, tool uses and results, questions and answers. Updated when the task starts waiting or finishes."),
            ])

        async def on_read_resource(ctx, params) -> ReadResourceResult:
            uri = str(params.uri)
            try:
                mime, text = await orchestra.read_resource(uri)
            except LookupError as exc:
                raise MCPError(INVALID_PARAMS, str(exc), {"uri": uri}) from None
            except p.OrchestraError as exc:
                code = INVALID_PARAMS if exc.code is p.ErrorCode.NOT_FOUND else INTERNAL_ERROR
                raise MCPError(code, exc.message, {"uri": uri}) from None
            except DaemonUnreachable as exc:
                raise MCPError(INTERNAL_ERROR, unreachable_message(exc, orchestra.daemon.autostart), {"uri": uri}) from None
            return ReadResourceResult(contents=[TextResourceContents(uri=uri, text=text, mime_type=mime)])

        async def on_subscribe(ctx, params) -> EmptyResult:
            uri = str(params.uri)
            if uri not in (STATUS_URI, ROLES_URI, WORKFLOWS_URI) and _logs_task(uri) is None:
                raise MCPError(INVALID_PARAMS, f"no resource {uri} to subscribe to", {"uri": uri})
            orchestra.session = ctx.session
            orchestra.subscribed.add(uri)
            return EmptyResult()

        async def on_unsubscribe(ctx, params) -> EmptyResult:
            orchestra.subscribed.discard(str(params.uri))
            return EmptyResult()

        async def on_set_level(ctx, params) -> EmptyResult:
            orchestra.session = ctx.session
            orchestra.log_level = params.level
            return EmptyResult()

        async def on_initialized(ctx, params) -> None:
            orchestra.session = ctx.session  # the connection's channel for notifications
            await orchestra.announce_pending()

        @asynccontextmanager
        async def lifespan(_server) -> AsyncIterator[dict]:
            async with anyio.create_task_group() as tg:
                tg.start_soon(orchestra.watch_forever)
                try:
                    yield {}
                finally:
                    tg.cancel_scope.cancel()

        server = Server(
            SERVER_NAME,
            version=_version(),
            title="orchestra",
            instructions=INSTRUCTIONS,
            lifespan=lifespan,
            on_list_tools=on_list_tools,
            on_call_tool=orchestra.call_tool,
            on_list_resources=on_list_resources,
            on_list_resource_templates=on_list_templates,
            on_read_resource=on_read_resource,
            on_subscribe_resource=on_subscribe,
            on_unsubscribe_resource=on_unsubscribe,
            on_subscriptions_listen=ListenHandler(self.bus),
        )
        # Added after construction: passing it to the constructor warns that logging is
        # deprecated in 2026-07-28, but handshake-era clients still use it.
        server.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)
        server.add_notification_handler("notifications/initialized", NotificationParams, on_initialized)
        return server

    async def run_stdio(self) -> None:
        from mcp.server.stdio import stdio_server

        async with stdio_server() as (read_stream, write_stream):
            await self.server.run(read_stream, write_stream, self.server.create_initialization_options())


# ---------------------------------------------------------------------------------------
# Helpers


_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def _error(text: str):
    from mcp_types import CallToolResult, TextContent

    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


def _priority(value: str | int) -> int:
    return p.parse_priority(value)


def _json(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value).decode(), indent=2)


def _logs_task(uri: str) -> int | None:
    prefix, suffix = "orchestra://tasks/", "/logs"
    if uri.startswith(prefix) and uri.endswith(suffix):
        middle = uri[len(prefix) : -len(suffix)]
        if middle.isdigit():
            return int(middle)
    return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orchestra")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"


def _can_elicit(capabilities) -> bool:
    """Whether the client can show a form: `elicitation: {}` (the original shape) or with form."""
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None:
        return False
    return elicitation.form is not None or elicitation.url is None


def _question_line(q: p.Question) -> str:
    text = q.prompt
    if q.options:
        text += " [" + " / ".join(f"{i}. {o}" for i, o in enumerate(q.options, 1)) + "]"
    return text


def waiting_message(view: p.TaskView) -> str:
    """The notice a client gets when a task starts waiting: what it asks, how to answer."""
    q = view.waiting
    assert q is not None
    who = f"Task {view.id} ({view.role}{': ' + view.title if view.title else ''})"
    if q.kind == "permission":
        return (f"{who} is waiting for permission: {q.prompt}. Answer with respond-to-process "
                f"(task_id {view.id}, decision allow or deny; with only task_id the user is asked), "
                f"or in a terminal: orchestra respond {view.id} --allow (or --deny).")
    return (f"{who} is waiting for an answer: {_question_line(q)}. Answer with respond-to-process "
            f"(task_id {view.id}, answer: an option number, the option or your own words; with only "
            f"task_id the user is asked), or in a terminal: orchestra respond {view.id} ANSWER.")


def elicitation_form(view: p.TaskView) -> tuple[str, dict[str, Any]]:
    """The message and the form (a flat JSON Schema, as elicitation allows) for a waiting task."""
    q = view.waiting
    assert q is not None
    about = f"task {view.id} ({view.role}{': ' + view.title if view.title else ''})"
    if q.kind == "permission":
        message = f"orchestra {about} asks permission to use {q.tool or 'a tool'}:\n{q.prompt}"
        schema = {
            "type": "object",
            "properties": {
                "decision": {"type": "string", "title": "Allow or deny?", "enum": ["allow", "deny"]},
                "message": {"type": "string", "title": "Message for the agent", "description": "Optional: why you deny it, or what to do instead."},
            },
            "required": ["decision"],
        }
        return message, schema
    message = f"orchestra {about} asks:\n{q.prompt}"
    options = list(dict.fromkeys(o for o in q.options if o))
    if options:
        schema = {
            "type": "object",
            "properties": {
                "choice": {"type": "string", "title": "Choose an option", "enum": options},
                "answer": {"type": "string", "title": "Or answer in your own words", "description": "Used instead of the option when given."},
            },
        }
    else:
        schema = {
            "type": "object",
            "properties": {"answer": {"type": "string", "title": "Your answer"}},
            "required": ["answer"],
        }
    return message, schema


def read_form(q: p.Question, content: dict[str, Any]) -> tuple[str | None, str | None, str]:
    """(decision, answer, message) from a submitted form; ToolFailure if it says nothing."""
    if q.kind == "permission":
        decision = content.get("decision")
        if decision not in ("allow", "deny"):
            raise ToolFailure(f"the form came back without a decision (got {decision!r}); the task is still waiting")
        return decision, None, str(content.get("message") or "")
    words = str(content.get("answer") or "").strip()
    choice = str(content.get("choice") or "").strip()
    if not (words or choice):
        raise ToolFailure("the form came back empty; the task is still waiting")
    return None, words or choice, ""


# ---------------------------------------------------------------------------------------
# Entry point


def serve(paths: Paths, autostart: bool) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="orchestra mcp: %(message)s")
    from orchestra.client import connect_or_start

    try:  # start the daemon now rather than on the first tool call (its notice goes to stderr)
        connect_or_start(paths, autostart=autostart, timeout=10).close()
    except DaemonUnreachable as exc:
        log.warning("%s; tools will report this until a daemon answers", unreachable_message(exc, autostart))
    anyio.run(Orchestra(paths, autostart).run_stdio)
