"""The MCP resources: `orchestra://status`, `orchestra://tasks/{task_id}/logs` (a template),
`orchestra://roles` and `orchestra://workflows`. Each read is a few daemon requests; a
daemon error comes back as a JSON-RPC error with the daemon's message."""

from __future__ import annotations

from typing import Any

import msgspec
from mcp.shared.exceptions import MCPError
from mcp_types import (
    Completion,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    ReadResourceResult,
    Resource,
    ResourceTemplate,
    TextResourceContents,
)

from orchestra.shared import protocol as p
from orchestra.mcp.daemon import Daemon, unreachable_message
from orchestra.wire import DaemonUnreachable

STATUS_URI = "orchestra://status"
ROLES_URI = "orchestra://roles"
WORKFLOWS_URI = "orchestra://workflows"
LOGS_TEMPLATE = "orchestra://tasks/{task_id}/logs"
LOG_RESOURCE_LINES = 2000  # a logs resource is the transcript's last lines, not megabytes
STATUS_QUEUE = 1000  # the head of the queue in the status resource (counts has how many are queued)
STATUS_WORKFLOWS = 50  # the newest workflows looked at for the unfinished ones


def logs_uri(task_id: int) -> str:
    return f"orchestra://tasks/{task_id}/logs"


def logs_task(uri: str) -> int | None:
    """The task id in a logs URI; None if `uri` is not one."""
    prefix, suffix = "orchestra://tasks/", "/logs"
    if uri.startswith(prefix) and uri.endswith(suffix):
        middle = uri[len(prefix) : -len(suffix)]
        if middle.isdigit():
            return int(middle)
    return None


def is_resource(uri: str) -> bool:
    return uri in (STATUS_URI, ROLES_URI, WORKFLOWS_URI) or logs_task(uri) is not None


def resources() -> list[Resource]:
    return [
        Resource(uri=STATUS_URI, name="orchestration-status", title="Orchestration status", mime_type="application/json",
                 description="The daemon (pid, version, counts by status), the tasks that are running and those waiting for an answer (previews), the ids of the first 1000 queued tasks in run order, and the unfinished workflows among the newest 50. Updated (resources/updated) when a task changes status or starts waiting."),
        Resource(uri=ROLES_URI, name="role-definitions", title="Role definitions", mime_type="application/json",
                 description="Every role: its description, system prompt, the tools it may use without asking, permission mode, model and limits; which are the user's own; files that failed to load."),
        Resource(uri=WORKFLOWS_URI, name="workflow-templates", title="Workflow templates", mime_type="application/json",
                 description="Every workflow template: its steps, their roles, prompts and order."),
    ]


def templates() -> list[ResourceTemplate]:
    return [
        ResourceTemplate(uri_template=LOGS_TEMPLATE, name="process-logs", title="Task output", mime_type="text/plain",
                         description=f"A task's output as a readable transcript (the last {LOG_RESOURCE_LINES} lines): the agent's messages, tool uses and results, questions and answers. Updated when the task starts waiting or finishes."),
    ]


async def read_resource(daemon: Daemon, uri: str) -> ReadResourceResult:
    """The resource at `uri`; an MCPError saying what went wrong if it cannot be read."""
    try:
        mime, text = await _content(daemon, uri)
    except LookupError as exc:
        raise MCPError(INVALID_PARAMS, str(exc), {"uri": uri}) from None
    except p.OrchestraError as exc:
        code = INVALID_PARAMS if exc.code is p.ErrorCode.NOT_FOUND else INTERNAL_ERROR
        raise MCPError(code, exc.message, {"uri": uri}) from None
    except DaemonUnreachable as exc:
        raise MCPError(INTERNAL_ERROR, unreachable_message(exc, daemon.autostart), {"uri": uri}) from None
    return ReadResourceResult(contents=[TextResourceContents(uri=uri, text=text, mime_type=mime)])


async def _content(daemon: Daemon, uri: str) -> tuple[str, str]:
    """(mime type, text) for `uri`."""
    if uri == STATUS_URI:
        info = await daemon.call(p.Info(), p.DaemonStatus)
        page = await daemon.call(p.ListTasks(status=[p.Status.RUNNING, p.Status.WAITING, p.Status.CHECKING, p.Status.REVIEW]), p.TaskPage)
        queue = await daemon.call(p.Queue(limit=STATUS_QUEUE), list[p.TaskView])
        workflows = await daemon.call(p.ListWorkflows(limit=STATUS_WORKFLOWS), list[p.WorkflowView])
        tasks = sorted(page.tasks, key=lambda t: t.id)
        status = {
            "daemon": info,
            "counts": info.counts,
            "waiting": [t for t in tasks if t.status in (p.Status.WAITING, p.Status.REVIEW)],
            "active": tasks,
            "queue": [t.id for t in queue],
            "workflows": [w for w in workflows if w.status not in ("succeeded", "failed", "cancelled")],
        }
        return "application/json", _json(status)
    if uri == ROLES_URI:
        return "application/json", _json(await daemon.call(p.Roles(), p.RolesResult))
    if uri == WORKFLOWS_URI:
        return "application/json", _json(await daemon.call(p.Templates(), p.TemplatesResult))
    task_id = logs_task(uri)
    if task_id is not None:
        await daemon.call(p.Show(task=task_id))  # a clear "no task N" first
        return "text/plain", await daemon.log_tail(task_id, LOG_RESOURCE_LINES)
    raise LookupError(f"no resource {uri}; the resources are {STATUS_URI}, {LOGS_TEMPLATE}, {ROLES_URI} and {WORKFLOWS_URI}")


def _json(value: Any) -> str:
    return msgspec.json.format(msgspec.json.encode(value).decode(), indent=2)


COMPLETIONS = 100  # task ids offered at most


async def complete(daemon: Daemon, params) -> Completion:
    """`completion/complete`: the task ids that begin with what was typed, for the logs'
    URI template (the newest first); nothing for any other reference (orchestra has no
    prompts)."""
    ref, argument = params.ref, params.argument
    if getattr(ref, "type", "") != "ref/resource" or ref.uri != LOGS_TEMPLATE or argument.name != "task_id":
        return Completion(values=[], total=0, has_more=False)
    typed = argument.value.strip()
    if typed and not typed.isdigit():
        return Completion(values=[], total=0, has_more=False)
    page = await daemon.call(p.ListTasks(limit=p.PAGE_MAX), p.TaskPage)
    ids = [str(t.id) for t in page.tasks if str(t.id).startswith(typed)]
    return Completion(values=ids[:COMPLETIONS], total=len(ids), has_more=len(ids) > COMPLETIONS or page.more)
