"""Notifications, the pure part: which recorded facts a person is told of, and the notice.

`notices(state, events, now)` looks at a batch of facts just recorded (and the state they
made) and returns a `Notice` for each that a person should hear of:

* ``waiting``: a task asks for permission, an answer or input (`InputRequested`), and
  still does once the batch is folded (a request answered in the same batch, by a policy
  say, is not announced); or it is paused on a budget (`BudgetReached`);
* ``failed``: a task ended failed or timed out (`TaskFinished`), and was not retried in
  the same batch;
* ``parked``: a task waits on a usage limit (the facts in `PARKED_EVENTS`);
* ``workflow_ended``: the last unfinished step of a workflow finished, so the workflow
  is over (succeeded, failed or cancelled), once per batch. A workflow with a step cut
  off by a shutdown or crash (interrupted) has not ended: that step may be resumed.

A notice holds only what `ps` and `show` already show (ids, title, role, status, reason,
the question, the workflow and its steps' statuses): never an environment value, never the
task's prompt or argv. `payload` is its JSON. `Window` is the rate limit each sink keeps.

Pure: no I/O, no clock (the time is passed in). The shell that delivers notices is
`orchestrad.notifier`.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timezone
from typing import Iterable

import msgspec

from orchestra.shared.protocol import Status
from orchestra.shared.vocab import shorten
from orchestrad import events as ev
from orchestrad import workflows as workflows_mod
from orchestrad.config import NOTIFY_KINDS as KINDS  # noqa: F401 - re-exported
from orchestrad.state import State, Task

# The facts that park a task on a usage limit (`_parked` builds their notice).
PARKED_EVENTS: tuple[type, ...] = (ev.TaskParked,)

FAILED = frozenset({Status.FAILED, Status.TIMED_OUT})  # interrupted and cancelled are not failures
SCHEMA = 1  # the payload's version; fields are only ever added

_PROMPT = 2000  # characters of a question kept in a notice
_REASON = 1000
_GOAL = 300
_IN_MESSAGE = 160  # characters of a title, question or reason quoted in the one-line message


class Asked(msgspec.Struct, frozen=True, kw_only=True):
    """What a waiting task asks (as `show` shows it)."""

    kind: str  # permission | question | input
    prompt: str
    options: list[str] = []
    tool: str = ""


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # one of KINDS, or "more": notices left out by the rate limit
    message: str  # one line a person reads
    headline: str  # a few words: a desktop notice's title
    ts: float  # when, in seconds since the epoch
    time: str  # the same, in ISO 8601 (UTC)
    task: int | None = None
    title: str = ""
    role: str = ""
    agent: str = ""
    status: str = ""
    reason: str = ""
    question: Asked | None = None
    cwd: str = ""
    cost_usd: float = 0.0
    workflow: int | None = None
    step: str = ""
    template: str = ""
    goal: str = ""
    steps: dict[str, str] = {}  # a workflow's steps and their statuses
    resumes_at: float | None = None  # parked: when the task resumes
    count: int = 0  # "more": how many notices were left out
    counts: dict[str, int] = {}  # "more": of which kinds
    schema: int = SCHEMA


_encoder = msgspec.json.Encoder()


def payload(notice: Notice) -> bytes:
    """The notice as JSON: what a command reads on stdin and a webhook receives."""
    return _encoder.encode(notice)


def notices(state: State, events: Iterable[ev.Event], now: float) -> list[Notice]:
    """The notices that a batch of just-recorded `events` calls for, given the `state`
    they made."""
    found: list[Notice] = []
    ended: list[int] = []
    for event in events:
        kind = type(event)
        if kind is ev.InputRequested:
            notice = _waiting(state, event, now)  # type: ignore[arg-type]
        elif kind is ev.BudgetReached:
            notice = _paused(state, event, now)  # type: ignore[arg-type]
        elif kind is ev.ReviewRequested:
            notice = _review(state, event, now)  # type: ignore[arg-type]
        elif kind is ev.TaskFinished:
            notice = _failed(state, event, now)  # type: ignore[arg-type]
        elif kind in PARKED_EVENTS:
            notice = _parked(state, event, now)
        else:
            notice = None
        if notice is not None:
            found.append(notice)
        if kind is ev.TaskFinished or kind is ev.TaskCancelled:
            workflow = _workflow_of(state, event.task)  # type: ignore[attr-defined]
            if workflow is not None and workflow not in ended:
                ended.append(workflow)
    for workflow in ended:
        notice = _workflow_ended(state, workflow, now)
        if notice is not None:
            found.append(notice)
    return found


def more(count: int, counts: dict[str, int], limit: int, window: float, now: float) -> Notice:
    """The one notice that stands for `count` left out: the rate limit's summary."""
    kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(counts.items()))
    message = (
        f"…and {count} more notice{'s' if count != 1 else ''} ({kinds}) not sent one by one, to keep to "
        f"{limit} per {_seconds(window)}; `orchestra ps` shows the tasks"
    )
    return Notice(kind="more", message=message, headline=f"orchestra: {count} more", count=count, counts=dict(counts), **_when(now))


# ---------------------------------------------------------------------------------------
# One builder per kind


def _waiting(state: State, e: ev.InputRequested, now: float) -> Notice | None:
    task = state.tasks.get(e.task)
    if task is None or task.waiting is None or task.waiting.request_id != e.request_id:
        return None  # answered already (in the same batch), or gone
    asked = Asked(kind=e.kind, prompt=shorten(e.prompt, _PROMPT), options=list(e.options), tool=e.tool)
    line = shorten(_question_line(asked), _IN_MESSAGE)
    if e.kind == "permission":
        how = f"orchestra respond {task.id} --allow (or --deny)"
        message = f"{_who(task)} is waiting for permission: {line}. Answer: {how}"
    elif e.options:
        message = f"{_who(task)} is waiting for an answer: {line}. Answer: orchestra respond {task.id} N (an option number, or your own words)"
    else:
        message = f'{_who(task)} is waiting for an answer: {line}. Answer: orchestra respond {task.id} "your answer"'
    return _task_notice("waiting", task, now, message, f"orchestra: task {task.id} is waiting", question=asked)


def _paused(state: State, e: ev.BudgetReached, now: float) -> Notice | None:
    task = state.tasks.get(e.task)
    if task is None or task.paused is None or task.waiting is None:
        return None  # raised or stopped in the same batch
    asked = Asked(kind="budget", prompt=shorten(task.waiting.prompt, _PROMPT))
    return _task_notice("waiting", task, now, f"{_who(task)} is paused: {shorten(task.waiting.prompt, _IN_MESSAGE)}",
                        f"orchestra: task {task.id} is paused on a budget", question=asked)


def _review(state: State, e: ev.ReviewRequested, now: float) -> Notice | None:
    task = state.tasks.get(e.task)
    if task is None or task.waiting is None or task.waiting.kind != "review":
        return None  # decided or stopped in the same batch
    asked = Asked(kind="review", prompt=shorten(task.waiting.prompt, _PROMPT))
    message = (
        f"{_who(task)} passed its checks and waits for your review: orchestra review {task.id}; then "
        f"orchestra respond {task.id} --approve, or --reject -m \"what to change\""
    )
    return _task_notice("review", task, now, message, f"orchestra: task {task.id} waits for review", question=asked)


def _failed(state: State, e: ev.TaskFinished, now: float) -> Notice | None:
    task = state.tasks.get(e.task)
    if e.outcome not in FAILED or task is None or task.status is not e.outcome:
        return None  # not a failure; or retried in the same batch
    what = "timed out" if e.outcome is Status.TIMED_OUT else "failed"
    reason = f": {shorten(e.reason, _IN_MESSAGE)}" if e.reason else ""
    return _task_notice("failed", task, now, f"{_who(task)} {what}{reason}", f"orchestra: task {task.id} {what}")


def _parked(state: State, e: ev.TaskParked, now: float) -> Notice | None:
    task = state.tasks.get(e.task)
    if task is None:
        return None
    resumes_at = e.until
    until = f" until {_when(resumes_at)['time']}" if isinstance(resumes_at, (int, float)) else ""
    reason = e.reason or "usage limit"
    message = f"{_who(task)} is parked{until} ({shorten(reason, _IN_MESSAGE)}); it resumes by itself"
    return _task_notice("parked", task, now, message, f"orchestra: task {task.id} is parked", resumes_at=resumes_at)


def _workflow_ended(state: State, workflow_id: int, now: float) -> Notice | None:
    workflow = state.workflows.get(workflow_id)
    if workflow is None:
        return None
    tasks = {name: state.tasks[t] for name, t in workflow.steps.items() if t in state.tasks}
    if not tasks or any(not t.status.finished or t.status is Status.INTERRUPTED for t in tasks.values()):
        return None  # still going; or cut off by a shutdown or crash, and so may be resumed
    status = workflows_mod.status(tasks.values())
    goal = shorten(workflow.goal, _GOAL)
    message = f"Workflow {workflow.id} ({workflow.template}: {shorten(goal, _IN_MESSAGE)}) ended: {status}"
    failed = [(name, t) for name, t in tasks.items() if t.status in FAILED]
    if failed:
        name, t = failed[0]
        message += f"; step {name} {t.status.value.replace('_', ' ')}" + (f": {shorten(t.reason, _IN_MESSAGE)}" if t.reason else "")
    return Notice(
        kind="workflow_ended",
        message=message,
        headline=f"orchestra: workflow {workflow.id} {status}",
        status=status,
        workflow=workflow.id,
        template=workflow.template,
        goal=goal,
        cwd=workflow.workdir or workflow.cwd,
        steps={name: t.status.value for name, t in tasks.items()},
        cost_usd=sum(t.cost_usd for t in tasks.values()),
        **_when(now),
    )


# ---------------------------------------------------------------------------------------


def _task_notice(kind: str, task: Task, now: float, message: str, headline: str, **more) -> Notice:
    spec = task.spec
    return Notice(
        kind=kind,
        message=message,
        headline=headline,
        task=task.id,
        title=spec.title,
        role=task.role,
        agent=spec.agent,
        status=task.status.value,
        reason=shorten(task.reason, _REASON),
        cwd=task.cwd,
        cost_usd=task.cost_usd,
        workflow=spec.workflow,
        step=spec.step,
        **_when(now),
        **more,
    )


def _who(task: Task) -> str:
    title = shorten(task.spec.title, _IN_MESSAGE)
    return f"Task {task.id} ({task.role}{': ' + title if title else ''})"


def _question_line(asked: Asked) -> str:
    text = " ".join(asked.prompt.split())  # one line
    if asked.options:
        text += " [" + " / ".join(f"{i}. {o}" for i, o in enumerate(asked.options, 1)) + "]"
    return text


def _workflow_of(state: State, task_id: int) -> int | None:
    task = state.tasks.get(task_id)
    return task.spec.workflow if task is not None else None


def _when(ts: float) -> dict:
    return {"ts": ts, "time": datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")}


def _seconds(window: float) -> str:
    if window == 60:
        return "minute"
    if window % 60 == 0:
        return f"{int(window // 60)} minutes"
    return f"{window:g} seconds"


class Window:
    """A sliding-window rate limit: at most `limit` sends in any `window` seconds. Each
    sink keeps one; the times are passed in."""

    def __init__(self) -> None:
        self._sent: deque[float] = deque()

    def wait(self, now: float, limit: int, window: float) -> float:
        """Seconds until another send is allowed (0: now)."""
        sent = self._sent
        while sent and sent[0] <= now - window:
            sent.popleft()
        if len(sent) < limit:
            return 0.0
        return sent[len(sent) - limit] + window - now  # when enough have aged out

    def sent(self, now: float) -> None:
        self._sent.append(now)
