"""The MCP tools: the ten named as in the product this replaces (`submit-task`,
`list-processes`, `process-details`, `respond-to-process`, `manage-queue`, `stop-process`,
`configure-orchestrator`, `assign-role`, `create-workflow`, `status-dashboard`), and
`task-diff`.
`review-task` (approve or reject a task in review).

Each is one daemon request (two for `process-details`, three for `status-dashboard`).
Results carry structured content (with an output schema) and the same thing as text. A
daemon error comes back as a tool error (`isError`) with the daemon's message.

`cwd` (submit-task, create-workflow) is optional and defaults to the directory the server
was started in: Claude Code starts it in the project, so "this project" needs no path.
Claude Desktop starts servers elsewhere, so there the model must pass one; the input schema
says which directory the default is.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import msgspec
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent, Tool, ToolAnnotations
from msgspec import UNSET

from orchestra.shared import protocol as p
from orchestra.dashboard import picture, picture_requests, picture_types
from orchestra.render import agent_table
from orchestra import peer
from orchestra.mcp.daemon import ACTING_FOR, Daemon, unreachable_message
from orchestra.mcp.elicit import ask_the_person
from orchestra.mcp.tool_types import (
    Args,
    AssignRoleArgs,
    AssignRoleResult,
    ConfigureArgs,
    CreateWorkflowArgs,
    DashboardResult,
    DetailsResult,
    DiffResult,
    ListProcessesArgs,
    ManageQueueArgs,
    Output,
    ProcessDetailsArgs,
    QueueResult,
    RespondArgs,
    RespondResult,
    ReviewResult,
    ReviewTaskArgs,
    SettingsResult,
    StatusDashboardArgs,
    StopProcessArgs,
    SubmitTaskArgs,
    TaskDiffArgs,
    TaskListResult,
    TaskResult,
    ToolFailure,
    WorkflowResult,
    input_schema,
    json_schema,
)
from orchestra.render import details, grouped, review_text, table, workflow_block
from orchestra.shared.vocab import usd
from orchestra.wire import DaemonUnreachable

log = logging.getLogger("orchestra.mcp")

MCP_DIFF_LIMIT = 256 << 10  # bytes of a patch in one tool result: a model reads it whole



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


class Tools:
    """The tools: listing them, and turning a call into daemon requests and the answer
    into structured and text content."""

    def __init__(self, daemon: Daemon, cwd: str) -> None:
        self.daemon = daemon
        self.cwd = cwd  # where `cwd` defaults to
        self.specs = {t.name: t for t in self._specs()}

    def _specs(self) -> list[ToolSpec]:
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
                "List the tasks, newest first, a page at a time: id, status (queued, running, waiting, "
                "checking (its acceptance checks run), review (waits for a person's approval), "
                "succeeded, failed, timed_out, cancelled, interrupted), role, agent, priority, dependencies, "
                "runtime, cost, and for a waiting task what it asks. Titles, prompts, commands and results "
                "are previews (process-details has all of a task). Finished tasks are included unless "
                "active_only is true. When next_cursor is set, more (older) tasks match: pass it as cursor.",
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
                "review-task", "Review a task",
                "A task in status review passed its acceptance checks and waits for a person. Without "
                "decision: what it did (its agent's summary, its checks and how they ended). decision "
                "approve: it succeeds. decision reject with a message: its agent is told what to change and "
                "works on, in the same conversation; its checks run again and it comes back to review. "
                "Only the user decides this: ask them first.",
                ReviewTaskArgs, ReviewResult, self.review_task,
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
                "task-diff", "A task's changes",
                "What a task that worked in a git worktree changed since the commit it started from: its "
                "commits and what it left uncommitted, new files included. A step of a workflow that shares "
                "one worktree shows the workflow's changes so far. stat: only the files and their counts. A "
                f"long patch is cut at {MCP_DIFF_LIMIT >> 10} KiB, and the result says how to see all of it.",
                TaskDiffArgs, DiffResult, self.task_diff, read_only=True, idempotent=True,
            ),
            ToolSpec(
                "configure-orchestrator", "Settings",
                "Read or change the orchestrator's settings. No key: every setting, and the agent kinds "
                "(each one's CLI, version, and whether it can run here). key alone: that "
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
                "how to answer), what runs (runtime, cost, latest activity), the head of the queue in run "
                "order, the newest workflows and their steps, the latest finished tasks, the counts by "
                "status and the total cost.",
                StatusDashboardArgs, DashboardResult, self.status_dashboard, read_only=True, idempotent=True,
            ),
        ]

    async def _live_names(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """Roles, templates, setting names and agent kinds, from the daemon when it answers
        (the client keeps no list of its own: the daemon's are the ones there are)."""
        roles: list[str] = []
        templates: list[str] = []
        settings: list[str] = []
        agents: list[str] = []
        try:
            roles = [r.name for r in (await self.daemon.call(p.Roles(), p.RolesResult)).roles]
            templates = [t.name for t in (await self.daemon.call(p.Templates(), p.TemplatesResult)).templates]
            settings = list(await self.daemon.call(p.ConfigGet()))
            agents = [a.name for a in (await self.daemon.call(p.Agents(), p.AgentList)).agents]
        except (DaemonUnreachable, p.OrchestraError, OSError) as exc:
            log.info("listing tools without the daemon's names: %s", exc)
        return roles, templates, settings, agents

    async def list_tools(self) -> list[Tool]:
        roles, templates, settings, agents = await self._live_names()
        return [
            Tool(
                name=spec.name,
                title=spec.title,
                description=spec.description,
                input_schema=input_schema(spec.args, roles, templates, settings, self.cwd, agents),
                output_schema=json_schema(spec.result),
                annotations=ToolAnnotations(
                    title=spec.title,
                    read_only_hint=spec.read_only,
                    destructive_hint=spec.destructive,
                    idempotent_hint=spec.idempotent,
                    open_world_hint=False,
                ),
            )
            for spec in self.specs.values()
        ]

    async def call_tool(self, ctx, params):
        spec = self.specs.get(params.name)
        if spec is None:
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name!r}; the tools are: {', '.join(self.specs)}")
        try:
            args = msgspec.convert(params.arguments or {}, spec.args, strict=False)
        except msgspec.ValidationError as exc:
            return _error(f"invalid arguments for {spec.name}: {exc}")
        acting_for = await _peer(ctx)  # over HTTP: the daemon gives the call the rights of the process that made it
        if acting_for is None:
            return _error("could not tell which process made this call; it is refused")
        token = ACTING_FOR.set(acting_for)
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
        finally:
            ACTING_FOR.reset(token)
        if not isinstance(out, Output):
            return out  # an InputRequiredResult (2026-07-28 elicitation)
        return CallToolResult(content=[TextContent(type="text", text=out.text)], structured_content=msgspec.to_builtins(out.value))

    # -- one handler per tool -------------------------------------------------------------

    async def submit_task(self, a: SubmitTaskArgs, ctx, params) -> Output:
        view = await self.daemon.call(
            p.Submit(
                cwd=self._cwd(a.cwd),
                prompt=a.prompt,
                argv=a.command,
                role=a.role,
                agent=a.agent,
                priority=p.parse_priority(a.priority),
                after=a.after,
                env=a.env,
                timeout=a.timeout_seconds,
                idle_timeout=a.idle_timeout_seconds,
                budget_usd=a.budget_usd,
                model=a.model,
                title=a.title,
                worktree=a.worktree,
                checks=a.checks,
                check_rounds=a.check_rounds,
                review=a.review,
                executor=a.executor,
                node_labels=a.node_labels,
            ),
            p.TaskView,
        )
        return Output(TaskResult(task=view), f"queued task {view.id}\n\n{table([view])}")

    async def list_processes(self, a: ListProcessesArgs, ctx, params) -> Output:
        since = time.time() - a.since_seconds if a.since_seconds is not None else None
        request = p.ListTasks(status=a.status, role=a.role, include_finished=not a.active_only, limit=a.limit, before=a.cursor,
                              since=since, grep=a.grep)
        page = await self.daemon.call(request, p.TaskPage)
        result = TaskListResult(tasks=page.tasks, total=page.total, next_cursor=page.next)
        if not page.tasks:
            return Output(result, "no tasks")
        tasks = sorted(page.tasks, key=lambda t: t.id)
        workflows = {}
        wanted = sorted({t.workflow for t in tasks if t.workflow is not None})
        if wanted:
            workflows = {w.id: w for w in await self.daemon.call(p.ListWorkflows(workflows=wanted), list[p.WorkflowView])}
        text = grouped(tasks, workflows, width=160)
        if page.more:
            text += f"\n\n{len(page.tasks)} of {page.total} tasks; call again with cursor {page.next} for older ones"
        return Output(result, text)

    async def process_details(self, a: ProcessDetailsArgs, ctx, params) -> Output:
        view = await self.daemon.call(p.Show(task=a.task_id), p.TaskView)
        tail = await self.daemon.log_tail(a.task_id, a.log_lines)
        text = details(view)
        if a.log_lines:
            text += f"\n\nlast {a.log_lines} lines of output:\n" + (tail.rstrip("\n") or "(no output yet)")
        return Output(DetailsResult(task=view, log_tail=tail), text)

    async def respond(self, a: RespondArgs, ctx, params) -> Any:
        if a.budget_usd is not None:
            if a.decision is not None or a.answer is not None:
                raise ToolFailure("raise a budget on its own: give budget_usd without decision or answer")
            view = await self.daemon.call(p.Respond(task=a.task_id, budget_usd=a.budget_usd, via="mcp"), p.TaskView)
            sent = f"budget raised to {usd(a.budget_usd)}"
            return Output(RespondResult(task=view, answered=True, answer=sent), f"task {view.id}: {sent}; it is {view.status.value}")
        if a.decision is None and a.answer is None:
            return await ask_the_person(self.daemon, a.task_id, ctx, params, self._respond)
        return await self._respond(a.task_id, a.decision, a.answer, a.message)

    async def _respond(self, task_id: int, decision: str | None, answer: str | None, message: str) -> Output:
        view = await self.daemon.call(
            p.Respond(task=task_id, text=answer, allow=decision == "allow", deny=decision == "deny", message=message, via="mcp"),
            p.TaskView,
        )
        sent = decision if decision else (answer or "")
        if decision == "deny" and message:
            sent = f"deny: {message}"
        return Output(RespondResult(task=view, answered=True, answer=sent), f"answered task {view.id} ({sent}); it is {view.status.value}")

    async def review_task(self, a: ReviewTaskArgs, ctx, params) -> Output:
        if a.decision is None:
            view = await self.daemon.call(p.Show(task=a.task_id), p.TaskView)
            return Output(ReviewResult(task=view, decision="", review=review_text(view)), review_text(view))
        if a.decision == "reject" and not a.message.strip():
            raise ToolFailure("reject needs a message: what to change (the agent reads it)")
        request = p.Respond(task=a.task_id, approve=a.decision == "approve", reject=a.decision == "reject", message=a.message, via="mcp")
        view = await self.daemon.call(request, p.TaskView)
        done = "approved" if a.decision == "approve" else "rejected"
        return Output(ReviewResult(task=view, decision=a.decision, review=review_text(view)), f"{done} task {view.id}; it is {view.status.value}")

    async def manage_queue(self, a: ManageQueueArgs, ctx, params) -> Output:
        task = removed = None
        if a.action != "list" and a.task_id is None:
            raise ToolFailure(f"action {a.action} needs task_id: the queued task to change (manage-queue with action list shows them)")
        if a.action == "prioritize":
            if a.priority is None:
                raise ToolFailure("action prioritize needs priority: low, normal, high, urgent or a number from -100 to 100")
            task = await self.daemon.call(p.SetPriority(task=a.task_id, priority=p.parse_priority(a.priority)), p.TaskView)
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

    async def task_diff(self, a: TaskDiffArgs, ctx, params) -> Output:
        result = await self.daemon.call(p.Diff(task=a.task_id, stat=a.stat, limit=MCP_DIFF_LIMIT), p.DiffResult)
        counts = "no changes" if not result.files else f"{result.files} files, +{result.insertions} -{result.deletions}"
        text = f"task {a.task_id}: {counts} against {result.base[:12]} in {result.path} ({result.branch})\n{result.stat}"
        if result.diff:
            text += "\n\n" + result.diff
        if result.note:
            text += f"\n\n{result.note}"
        return Output(DiffResult(diff=result), text)

    async def configure(self, a: ConfigureArgs, ctx, params) -> Output:
        if a.value is not UNSET:
            if a.key is None:
                raise ToolFailure("a value needs a key: the setting to change (call without arguments to see them all)")
            settings = await self.daemon.call(p.ConfigSet(key=a.key, value=a.value))
        else:
            settings = await self.daemon.call(p.ConfigGet(key=a.key))
        text = "\n".join(f"{k} = {msgspec.json.encode(v).decode()}" for k, v in settings.items())
        if a.key is None and a.value is UNSET:  # everything: the agent kinds too
            agents = (await self.daemon.call(p.Agents(), p.AgentList)).agents
            return Output(SettingsResult(settings=settings, agents=agents), f"{text}\n\n{agent_table(agents)}")
        return Output(SettingsResult(settings=settings), text)

    async def assign_role(self, a: AssignRoleArgs, ctx, params) -> Output:
        result = await self.daemon.call(p.AssignRole(task=a.task_id, role=a.role))
        return Output(AssignRoleResult(task=result.task, note=result.note), result.note)

    async def create_workflow(self, a: CreateWorkflowArgs, ctx, params) -> Output:
        view = await self.daemon.call(
            p.RunWorkflow(template=a.template, goal=a.goal, cwd=self._cwd(a.cwd), worktree=a.worktree, priority=p.parse_priority(a.priority), agent=a.agent,
                          budget_usd=a.budget_usd, executor=a.executor, node_labels=a.node_labels),
            p.WorkflowView,
        )
        steps = ", ".join(f"{step} = task {task}" for step, task in view.steps.items())
        return Output(WorkflowResult(workflow=view), f"workflow {view.id}: {steps}\n\n{workflow_block(view, width=160)}")

    async def status_dashboard(self, a: StatusDashboardArgs, ctx, params) -> Output:
        types = picture_types()
        replies = {name: await self.daemon.call(request, types[name]) for name, request in picture_requests().items()}
        text = picture(replies, width=a.width, hint=False)
        info = replies["info"]
        waiting = sorted((t for t in replies["active"].tasks if t.status in (p.Status.WAITING, p.Status.REVIEW)), key=lambda t: t.id)
        result = DashboardResult(dashboard=text, counts=info.counts, waiting=waiting, queue=[t.id for t in replies["queue"]], cost_usd=info.cost_usd)
        return Output(result, text)

    def _cwd(self, cwd: str | None) -> str:
        if cwd is None:
            return self.cwd
        if not os.path.isabs(os.path.expanduser(cwd)):
            raise ToolFailure(f"cwd must be an absolute path, not {cwd!r} (this server runs in {self.cwd})")
        return os.path.expanduser(cwd)


def _error(text: str) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)


async def _peer(ctx) -> list[tuple[int, int]] | None:
    """The processes an HTTP request came from (`orchestra.peer`), looked for off the loop;
    [] on stdio, where the daemon sees this server's own process; None when they cannot be
    found."""
    import anyio

    scope = getattr(getattr(ctx, "request", None), "scope", None)
    if not isinstance(scope, dict) or scope.get("type") != "http":
        return []
    if "orchestra.peer" in scope:  # found already, as the request came in (http.BearerAuth)
        return scope["orchestra.peer"] or None
    why, processes = await anyio.to_thread.run_sync(lambda: peer.refusal(scope, changes=True))
    return None if why else processes
