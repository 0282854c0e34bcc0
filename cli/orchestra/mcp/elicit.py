"""Elicitation: `respond-to-process` called with neither `decision` nor `answer` puts the
task's question to the person directly, as a form, when the client can show one.

Handshake-era clients (2025-11-25 and before) are asked by an `elicitation/create` request
during the tool call; 2026-07-28 clients get an `InputRequiredResult` and answer it by
retrying the call with the same request state.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from mcp_types import ElicitRequest, ElicitRequestFormParams, InputRequiredResult
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from orchestra.shared import protocol as p
from orchestra.shared.vocab import usd
from orchestra.mcp.daemon import Daemon
from orchestra.mcp.notify import question_line
from orchestra.mcp.tool_types import Output, RespondResult, ToolFailure

# Sends an answer to the daemon: (task id, decision, answer, message) -> the tool's output.
Respond = Callable[[int, str | None, str | None, str], Awaitable[Output]]


async def ask_the_person(daemon: Daemon, task_id: int, ctx, params, respond: Respond) -> Any:
    """Put a waiting task's question to the person through the client, then answer it."""
    view = await daemon.call(p.Show(task=task_id), p.TaskView)
    if view.waiting is None:
        if view.agent == "command" and view.status.active:
            raise ToolFailure(f"task {task_id} is a running command; give answer: the line to write to its stdin")
        raise ToolFailure(f"task {task_id} is {view.status.value}, not waiting for an answer; nothing to respond to")
    if not can_elicit(ctx.session.client_capabilities):
        raise ToolFailure(
            f"task {task_id} asks: {question_line(view.waiting)}. This client cannot show the user a form "
            "(no elicitation support), so ask the user and call respond-to-process again with "
            + {"permission": "decision allow or deny.", "budget": "budget_usd (a new budget in dollars)."}.get(view.waiting.kind, "answer.")
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
        text = f"the user chose not to answer ({action}); task {task_id} is still waiting: {question_line(view.waiting)}"
        return Output(RespondResult(task=view, answered=False, answer=""), text)
    decision, answer, note = read_form(view.waiting, reply.content or {})
    now = await daemon.call(p.Show(task=task_id), p.TaskView)
    if now.waiting is None or now.waiting.request_id != view.waiting.request_id:
        raise ToolFailure(f"task {task_id} no longer asks that (it was answered elsewhere or withdrawn) and is {now.status.value}; the answer was not sent")
    if view.waiting.kind == "budget":
        raised = await daemon.call(p.Respond(task=task_id, budget_usd=float(answer or 0), via="mcp"), p.TaskView)
        sent = f"budget raised to {usd(float(answer or 0))}"
        return Output(RespondResult(task=raised, answered=True, answer=sent), f"task {task_id}: {sent}; it is {raised.status.value}")
    return await respond(task_id, decision, answer, note)


def can_elicit(capabilities) -> bool:
    """Whether the client can show a form: `elicitation: {}` (the original shape) or with form."""
    elicitation = capabilities.elicitation if capabilities is not None else None
    if elicitation is None:
        return False
    return elicitation.form is not None or elicitation.url is None


def elicitation_form(view: p.TaskView) -> tuple[str, dict[str, Any]]:
    """The message and the form (a flat JSON Schema, as elicitation allows) for a waiting task."""
    q = view.waiting
    assert q is not None
    about = f"task {view.id} ({view.role}{': ' + view.title if view.title else ''})"
    if q.kind == "budget":
        message = f"orchestra {about} is paused:\n{q.prompt}"
        schema = {
            "type": "object",
            "properties": {"budget": {"type": "number", "title": "New budget in dollars", "exclusiveMinimum": 0}},
            "required": ["budget"],
        }
        return message, schema
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
    if q.kind == "budget":
        budget = content.get("budget")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
            raise ToolFailure(f"the form came back without a budget above 0 (got {budget!r}); the task is still paused")
        return None, repr(float(budget)), ""
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
