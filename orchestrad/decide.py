"""Decide: what a command means, given the state. Pure: no clock, no I/O, no randomness.

`decide(state, command, now)` returns the events a command causes, or raises an
`OrchestraError` whose message says what went wrong and what to do instead. New task ids
come from the state (`state.next_task`), so deciding is deterministic; the single writer
applies the events before it decides the next command.

The other functions here decide what the shell's observations mean: a process exited, a
process could not be started, the daemon restarted while tasks ran, retention is due.

It is long because it holds one small handler per command, and who may ask what, beside
the meaning of the shell's observations: the rules a reader checks together.
"""

from __future__ import annotations

import posixpath
import signal as signal_mod
from collections.abc import Collection, Iterable

import msgspec

from orchestra.shared.vocab import shorten
from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status, bad_request, conflict, forbidden, not_found
from orchestrad import config as config_mod
from orchestrad import budgets, limits, merges, retries, verify
from orchestrad.budgets import Day
from orchestrad.agents import kinds, traits
from orchestrad import roles as roles_mod
from orchestrad import workflows as workflows_mod
from orchestrad import events as ev
from orchestrad import state as state_mod
from orchestrad.state import State, Task


def get_task(state: State, task_id: int) -> Task:
    task = state.tasks.get(task_id)
    if task is None:
        if 0 < task_id < state.next_task:
            raise not_found(f"task {task_id} was removed or purged; `orchestra ps` lists tasks")
        raise not_found(f"no task {task_id}; `orchestra ps` lists tasks")
    return task


_ENDED = {  # how a finished task ended, as said of it: "task 3 failed", "task 3 was cancelled"
    Status.SUCCEEDED: ("", "succeeded"),
    Status.FAILED: ("", "failed"),
    Status.TIMED_OUT: ("", "timed out"),
    Status.CANCELLED: ("was ", "cancelled"),
    Status.INTERRUPTED: ("was ", "interrupted"),
}


def describe(task: Task, *, already: bool = False) -> str:
    """A task's status in a sentence a person reads: "task 3 is running", "task 3
    succeeded", "task 3 was already cancelled"."""
    if task.status not in _ENDED:
        return f"task {task.id} is {task.status.value}"
    verb, ended = _ENDED[task.status]
    return f"task {task.id} {verb}{'already ' if already else ''}{ended}"


def decide(state: State, command: p.Request, now: float, actor: Actor | None = None, day: Day | None = None) -> list[ev.Event]:
    """The events `command` causes in `state` at time `now`, asked by `actor` (None: the
    user); OrchestraError if it is invalid or not the actor's to ask. `day` is the local
    day a role's budget counts (default: the UTC day)."""
    handler = _HANDLERS.get(type(command))
    if handler is None:
        raise bad_request(f"{type(command).__name__} is not a command that changes anything")
    authorize(state, command, actor)
    if isinstance(command, p.Submit):
        return _submit(state, command, now, actor)
    if isinstance(command, p.Respond):
        return _respond(state, command, now, day or budgets.utc_day(now))
    return handler(state, command, now)


# ---------------------------------------------------------------------------------------
# Who may ask what. An agent is not the user: its process (or anything it started) may
# read everything, but may not act for the person: answer any task's question, change
# settings, stop or re-order others' work. It may submit tasks only where its role says
# it may delegate, and then the new task records it as its parent and inherits its limits.


class Actor(msgspec.Struct, frozen=True):
    """An agent's process asking the daemon: of task `task`, or of a task it cannot tell
    (a process the daemon adopted whose task is gone, another daemon's agent)."""

    task: int | None = None


READS = frozenset({
    p.Hello, p.ListTasks, p.Show, p.Logs, p.Watch, p.Wait, p.Queue, p.Roles, p.Templates,
    p.ConfigGet, p.Info, p.ShowWorkflow, p.ListWorkflows, p.CheckPolicy, p.MergeStatus, p.Diff, p.ListWorktrees,
    p.Agents, p.Nodes,
})

_ON_A_TASK = {p.Stop: "stop", p.SetPriority: "re-prioritise", p.Remove: "remove", p.AssignRole: "change the role of", p.Resume: "resume"}
_NEVER = {
    p.Respond: "answer tasks: only a person answers questions and permission requests",
    p.ConfigSet: "change settings",
    p.RunWorkflow: "start workflows",
    p.Cleanup: "run cleanup",
    p.Merge: "merge branches",
    p.Shutdown: "stop the daemon",
}


def authorize(state: State, request: p.Request, actor: Actor | None) -> None:
    """Nothing if `actor` (None: the user) may ask `request`; else a `forbidden` error that
    says why. Pure, like the rest of this module: the server tells who is asking."""
    if actor is None or type(request) in READS:
        return
    who = _who(actor)
    kind = type(request)
    if kind is p.Submit:
        _delegator(state, request, actor)
        return
    verb = _ON_A_TASK.get(kind)
    if verb is not None:
        target = get_task(state, request.task)  # type: ignore[attr-defined]
        own = actor.task is not None and (target.spec.parent == actor.task or (kind is p.Stop and target.id == actor.task))
        if not own:
            raise forbidden(f"{who} may not {verb} task {target.id}: an agent acts only on itself and the tasks it submitted")
        if kind is p.AssignRole:
            _delegable(state, state.tasks[actor.task], request.role)  # type: ignore[attr-defined, index]
        return
    raise forbidden(f"{who} may not {_NEVER.get(kind, 'ask this')}; run the command yourself, outside the agent")


def _who(actor: Actor) -> str:
    return f"task {actor.task}'s agent" if actor.task is not None else "an agent's process"


def _delegator(state: State, cmd: p.Submit, actor: Actor) -> Task:
    """The task whose agent submits `cmd`, if its role lets it delegate to the role asked."""
    parent = state.tasks.get(actor.task) if actor.task is not None else None
    if parent is None or parent.status.finished:
        raise forbidden(f"{_who(actor)} may not submit tasks: only the agent of a running task may, where its role delegates")
    _delegable(state, parent, cmd.role or parent.role)
    if not _inside(cmd.cwd, parent.cwd):
        raise forbidden(f"task {parent.id}'s agent may submit tasks only in its own directory {parent.cwd}, not {cmd.cwd}")
    return parent


def _delegable(state: State, parent: Task, role: str) -> None:
    own_role = roles_mod.get(parent.role, state.roles)
    allowed = own_role.delegate if own_role is not None else []
    if not allowed:
        raise forbidden(
            f"task {parent.id}'s agent may not submit tasks: its role {parent.role} does not delegate "
            f"(a role file with `delegate = [\"tester\"]` lets it)"
        )
    if "*" not in allowed and role not in allowed:
        raise forbidden(f"task {parent.id}'s agent may submit tasks as {', '.join(allowed)} only, not as {role}")


def _inside(path: str, directory: str) -> bool:
    path, directory = posixpath.normpath(path), posixpath.normpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _capped(value: float | None, cap: float | None) -> float | None:
    """A delegated task's limit: its own, but never past its parent's."""
    if cap is None:
        return value
    return cap if value is None else min(value, cap)


def _submit(state: State, cmd: p.Submit, now: float, actor: Actor | None = None) -> list[ev.Event]:
    limits.check_submit(cmd)
    cfg = state.config
    parent = _delegator(state, cmd, actor) if actor is not None else None
    if parent is not None and cmd.role is None:
        cmd = msgspec.structs.replace(cmd, role=parent.role)
    if cmd.prompt and cmd.argv:
        raise bad_request("give either a prompt or a command after `--`, not both")
    role_name = cmd.role or cfg.default_role
    role = _role(state, role_name)
    agent = cmd.agent or ("command" if cmd.argv else role.agent or cfg.default_agent)
    _check_agent(agent, role if agent == role.agent and not cmd.agent else None)
    kind = traits(agent)
    if kind.runs_argv and not cmd.argv:
        raise bad_request("the command agent runs a program: give it after `--`, e.g. `-- pytest -q`")
    if not kind.runs_argv and not cmd.prompt.strip():
        raise bad_request(f"the {agent} agent needs a prompt saying what to do")
    priority = _checked_priority(cmd.priority)
    after = list(dict.fromkeys(cmd.after))
    for dep in after:
        dep_task = get_task(state, dep)
        if dep_task.status.finished and dep_task.status is not Status.SUCCEEDED:
            raise conflict(
                f"task {dep} already ended {dep_task.status.value}, so a task after it would "
                f"never run; resubmit task {dep} first or drop --after {dep}"
            )
    placement = _placement(state, _first(cmd.executor, role.executor, cfg.executor), role.node_labels, cmd.node_labels)
    worktree = _first(cmd.worktree, role.worktree)
    if placement["executor"] != "local":
        if cmd.worktree is False:
            raise bad_request(
                f"a task on the {placement['executor']} executor works in a clone of its repository on a branch "
                "of its own, as in a worktree: drop --no-worktree, or run it with --executor local"
            )
        worktree = True
    spec = ev.TaskSpec(
        prompt=cmd.prompt,
        argv=list(cmd.argv),
        role=role.name,
        agent=agent,
        priority=priority,
        after=after,
        cwd=cmd.cwd,
        env={},  # no value reaches the log: the engine keeps them in its env store
        secret_env=sorted(cmd.env),
        timeout=_first(cmd.timeout, role.timeout, cfg.default_timeout),
        idle_timeout=_first(cmd.idle_timeout, role.idle_timeout, cfg.default_idle_timeout),
        budget_usd=_first(cmd.budget_usd, role.budget_usd),
        model=cmd.model or role.model,
        title=cmd.title or _title(cmd.prompt, cmd.argv),
        worktree=worktree or False,
        checks=[*role.check, *_checks(cmd.checks)],
        check_rounds=_check_rounds(_first(cmd.check_rounds, role.check_rounds, cfg.check_rounds)),
        review=_first(cmd.review, role.review) or False,
        expects_change=_first(cmd.expects_change, role.expects_change) or False,
        **placement,
    )
    if parent is not None:
        caps = parent.spec
        spec = msgspec.structs.replace(
            spec,
            parent=parent.id,
            priority=min(spec.priority, parent.priority),
            timeout=_capped(spec.timeout, caps.timeout),
            idle_timeout=_capped(spec.idle_timeout, caps.idle_timeout),
            budget_usd=_capped(spec.budget_usd, caps.budget_usd),
        )
    return [ev.TaskSubmitted(task=state.next_task, spec=spec)]


def _placement(state: State, executor: str, role_labels: list[str], labels: list[str]) -> dict:
    """Where a task runs: its executor and the labels its node must have, checked. A
    role's labels count where it runs on a cluster; labels asked for here need one."""
    if executor not in config_mod.EXECUTORS:
        raise bad_request(f"unknown executor {executor!r}; where a task runs is one of {', '.join(config_mod.EXECUTORS)}")
    if executor == "ray" and not state.config.ray_address:
        raise bad_request("no Ray cluster is set: say where its head is with `orchestra config set ray_address HOST:PORT`")
    for label in [*role_labels, *labels]:
        if not label or not all(c.isalnum() or c in "-_." for c in label) or len(label) > 64:
            raise bad_request(
                f"a node label is a word of letters, digits, '-', '_' or '.' (at most 64), like gpu; not {label!r}"
            )
    if labels and executor == "local":
        raise bad_request(f"node labels ({', '.join(labels)}) choose among a cluster's nodes: give them with --executor ray")
    if executor == "local":
        return {"executor": executor, "node_labels": []}
    return {"executor": executor, "node_labels": sorted({*role_labels, *labels})}


def _checks(commands: list[str]) -> list[str]:
    if any(not c.strip() for c in commands):
        raise bad_request("a check is a shell line that passes when it exits 0, e.g. --check 'pytest -q'; an empty one checks nothing")
    if any(len(c) > 4000 for c in commands):
        raise bad_request("a check is a shell line of at most 4,000 characters; put a longer one in a script and check with that")
    if len(commands) > 20:
        raise bad_request(f"{len(commands)} checks are too many for one task; give at most 20 (join them with && in one)")
    return list(commands)


def _check_rounds(rounds: int | None) -> int:
    if rounds is None or isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= 20:
        raise bad_request(f"check rounds are a whole number from 1 to 20 (how often the checks may run), not {rounds!r}")
    return rounds


def _first(*values):
    """The first value that is not None: what was asked, else the role's, else the config's."""
    return next((v for v in values if v is not None), None)


def _role(state: State, name: str) -> p.Role:
    role = roles_mod.get(name, state.roles)
    if role is None:
        raise bad_request(f"unknown role {name!r}; choose one of: {', '.join(roles_mod.names(state.roles))}")
    return role


def _run_workflow(state: State, cmd: p.RunWorkflow, now: float) -> list[ev.Event]:
    limits.check_run(cmd)
    template = workflows_mod.get(cmd.template, state.templates)
    if template is None:
        raise not_found(f"no workflow template {cmd.template!r}; `orchestra workflow list` shows them")
    if not cmd.goal.strip():
        raise bad_request("say what the workflow is for: give it a goal")
    problems = workflows_mod.check(template, workflows_mod.role_names(state.roles))
    if problems:
        raise bad_request(f"workflow template {template.name!r} cannot run: {'; '.join(problems)}")
    if cmd.agent is not None:
        _check_agent(cmd.agent)
    priority = _checked_priority(cmd.priority)
    cfg = state.config
    workflow = state.next_workflow
    worktree = template.worktree if cmd.worktree is None else cmd.worktree
    ids: dict[str, int] = {}
    submitted: list[ev.Event] = []
    for step in workflows_mod.order(template):
        task_id = state.next_task + len(ids)
        ids[step.name] = task_id
        role = _role(state, step.role)
        agent = step.agent or cmd.agent or ("command" if step.argv else role.agent or cfg.default_agent)
        _check_agent(agent, role if agent == role.agent and not (step.agent or cmd.agent) else None)
        if traits(agent).runs_argv != bool(step.argv):
            given, needs = ("a prompt", "a command to run") if not step.argv else ("a command", "a prompt")
            raise bad_request(
                f"step {step.name!r} of {template.name!r} gives {given}, and the {agent} agent needs {needs}; "
                f"run the workflow with an agent that takes {given[2:]}s" + (" (e.g. --agent claude)" if not step.argv else "")
            )
        condition = None
        if step.if_succeeded:
            condition = ev.Condition(ids[step.if_succeeded], Status.SUCCEEDED)
        elif step.if_failed:
            condition = ev.Condition(ids[step.if_failed], Status.FAILED)
        spec = ev.TaskSpec(
            prompt=step.prompt,
            argv=list(step.argv),
            role=role.name,
            agent=agent,
            priority=priority,
            after=[ids[dep] for dep in step.after],
            cwd=cmd.cwd,
            env={},
            secret_env=[],
            timeout=_first(role.timeout, cfg.default_timeout),
            idle_timeout=_first(role.idle_timeout, cfg.default_idle_timeout),
            budget_usd=role.budget_usd,
            model=role.model,
            title=_title(f"{step.name}: {cmd.goal}", []),
            workflow=workflow,
            step=step.name,
            run_if=condition,
            worktree=worktree,
            workspace=step.workspace,
            checks=[*role.check, *_checks(step.check)],
            check_rounds=_check_rounds(_first(step.check_rounds, role.check_rounds, cfg.check_rounds)),
            review=_first(step.review, role.review) or False,
            expects_change=_first(step.expects_change, role.expects_change) or False,
            **_placement(
                state, _first(step.executor, cmd.executor, role.executor, cfg.executor), role.node_labels,
                [*step.node_labels, *cmd.node_labels],
            ),
        )
        if spec.executor != "local" and not worktree:
            raise bad_request(
                f"step {step.name!r} runs on the {spec.executor} executor, in a clone of the repository on a branch "
                "of its own: run the workflow with --worktree, or the step with --executor local"
            )
        submitted.append(ev.TaskSubmitted(task=task_id, spec=spec))
    merge = template.merge if cmd.merge is None else cmd.merge
    if merge and not worktree:
        raise bad_request("a workflow merges the branches its worktrees leave: run it with --worktree too, or without --merge")
    created = ev.WorkflowCreated(
        workflow=workflow, template=template.name, goal=cmd.goal, steps=ids, cwd=cmd.cwd, worktree=worktree, budget_usd=cmd.budget_usd,
        merge=merge,
    )
    return [created, *submitted]


def _title(prompt: str, argv: list[str]) -> str:
    text = " ".join(argv) if argv else " ".join(prompt.split())
    return shorten(text, 60)


def _check_agent(agent: str, role: p.Role | None = None) -> None:
    """`agent` must be an agent kind; `role` is the role that named it, if one did."""
    if agent not in kinds():
        named = f"role {role.name!r} names agent {agent!r}, which is not an agent kind" if role else f"unknown agent {agent!r}"
        raise bad_request(f"{named}; choose one of: {', '.join(kinds())} (orchestra agents lists them)")


def _checked_priority(value: int) -> int:
    try:
        return p.parse_priority(value)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def _set_priority(state: State, cmd: p.SetPriority, now: float) -> list[ev.Event]:
    task = get_task(state, cmd.task)
    priority = _checked_priority(cmd.priority)
    if task.status is not Status.QUEUED:
        raise conflict(f"{describe(task)}; priority only orders tasks that are still queued")
    if priority == task.priority:
        return []
    return [ev.TaskReprioritized(task=task.id, priority=priority)]


def _remove(state: State, cmd: p.Remove, now: float) -> list[ev.Event]:
    task = get_task(state, cmd.task)
    if task.status is not Status.QUEUED:
        hint = f"use `orchestra stop {task.id}`" if task.status.active else "it is history now"
        raise conflict(f"{describe(task)}, so it is no longer in the queue; {hint}")
    return [ev.TaskRemoved(task=task.id)]


def _stop(state: State, cmd: p.Stop, now: float) -> list[ev.Event]:
    task = get_task(state, cmd.task)
    if task.paused is not None:
        return [ev.TaskCancelled(task=task.id, reason="stopped while paused on a budget")]
    if task.status is Status.REVIEW:
        return [ev.TaskCancelled(task=task.id, reason="stopped while it waited for review")]
    if task.status is Status.QUEUED:
        when = {"parked": "while parked on a usage limit", "retry": "while it waited to retry"}.get(task.hold, "before it started")
        return [ev.TaskCancelled(task=task.id, reason=f"stopped {when}")]
    if task.status.active:
        if task.stopping is not None:
            return []  # already on its way out
        return [ev.StopRequested(task=task.id, outcome=Status.CANCELLED, reason="stopped on request")]
    raise conflict(f"{describe(task, already=True)}; there is nothing to stop")


def _respond(state: State, cmd: p.Respond, now: float, day: Day) -> list[ev.Event]:
    limits.check_answer(cmd.text, cmd.message)
    task = get_task(state, cmd.task)
    if cmd.allow and cmd.deny:
        raise bad_request("answer with --allow or --deny, not both")
    if cmd.budget_usd is not None:
        return _raise_budget(state, task, cmd, day)
    if cmd.approve or cmd.reject or task.status is Status.REVIEW:
        return _review(task, cmd)
    if task.paused is not None:
        raise bad_request(
            f"task {task.id} is paused: {budgets.Budget(task.paused.scope, task.paused.name, task.paused.spent, task.paused.budget).words(task.id)}. "
            f"Raise the budget with `orchestra respond {task.id} --budget N` (dollars), or stop it with `orchestra stop {task.id}`"
        )
    question = task.waiting
    kind = traits(task.spec.agent)
    if question is None and task.status.finished and kind.converses:
        return _follow_up(task, cmd)
    if question is None:
        if task.status is Status.RUNNING and kind.runs_argv:
            if cmd.allow or cmd.deny or cmd.text is None:
                raise bad_request("a command agent takes a line of text on its stdin")
            return [ev.InputGiven(task=task.id, request_id="", answer=cmd.text)]
        raise conflict(f"{describe(task)}, not waiting for input; `orchestra ps` shows who is")
    by = f"a person ({cmd.via})" if cmd.via else "a person"
    return [ev.InputGiven(task=task.id, request_id=question.request_id, answer=_answer(cmd, question), by=by)]


def _review(task: Task, cmd: p.Respond) -> list[ev.Event]:
    """A person's decision on a task in review: --approve, or --reject -m "what to change"."""
    if task.status is not Status.REVIEW:
        raise conflict(f"{describe(task)}, not waiting for review; only a task in review is approved or rejected")
    if cmd.approve == cmd.reject or cmd.allow or cmd.deny or cmd.text is not None:
        raise bad_request(
            f"task {task.id} waits for review: answer `orchestra respond {task.id} --approve`, "
            f"or `orchestra respond {task.id} --reject -m \"what to change\"`"
        )
    if cmd.reject and not cmd.message.strip():
        raise bad_request(f"say what to change: `orchestra respond {task.id} --reject -m \"...\"`; its agent is told it")
    by = f"a person ({cmd.via})" if cmd.via else "a person"
    return verify.review(task, cmd.approve, cmd.message, by)


def _raise_budget(state: State, task: Task, cmd: p.Respond, day: Day) -> list[ev.Event]:
    if cmd.allow or cmd.deny or cmd.text is not None:
        raise bad_request("raise a budget on its own: `orchestra respond ID --budget N`, with no answer beside it")
    try:
        target = budgets.check_raise(state, task, cmd.budget_usd, day)  # type: ignore[arg-type]
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    by = f"a person ({cmd.via})" if cmd.via else "a person"
    return budgets.raised(state, task, target, float(cmd.budget_usd), by, day)  # type: ignore[arg-type]


def _follow_up(task: Task, cmd: p.Respond) -> list[ev.Event]:
    """A message to a finished agent task continues its conversation as a new attempt."""
    if cmd.allow or cmd.deny or not (cmd.text or "").strip():
        raise bad_request(f"{describe(task)}; to continue its conversation, send a message: orchestra respond {task.id} \"...\"")
    if not task.session_id:
        raise conflict(f"{describe(task)} and never started a conversation to continue; use `orchestra resume {task.id}` to run it again")
    return [ev.TaskContinued(task=task.id, message=cmd.text or "", reason="follow-up")]


RESUME_MESSAGE = "You were interrupted. Continue the task from where you stopped."


def _resume(state: State, cmd: p.Resume, now: float) -> list[ev.Event]:
    limits.check_answer(None, cmd.message)
    task = get_task(state, cmd.task)
    if not task.status.finished:
        raise conflict(f"{describe(task)}; only a finished task can be resumed")
    if task.status is Status.SUCCEEDED and not cmd.message:
        raise conflict(f"{describe(task)}; to continue it, send a message: orchestra respond {task.id} \"...\"")
    for dep in task.spec.after:
        dep_task = state.tasks.get(dep)
        if dep_task is not None and dep_task.status.finished and dep_task.status is not Status.SUCCEEDED:
            raise conflict(f"task {task.id} runs after task {dep}, which ended {dep_task.status.value}; resume task {dep} first")
    if traits(task.spec.agent).converses and task.session_id:
        return [ev.TaskContinued(task=task.id, message=cmd.message or RESUME_MESSAGE, reason="resume")]
    return [ev.TaskContinued(task=task.id, message=cmd.message, reason="retry")]


def _answer(cmd: p.Respond, question: p.Question) -> str:
    """The answer in the agent-neutral form the adapters understand."""
    if question.kind == "permission":
        if cmd.allow:
            return "allow"
        if cmd.deny:
            return "deny" + (f": {cmd.message}" if cmd.message else "")
        text = (cmd.text or "").strip().lower()
        if text in ("y", "yes", "allow"):
            return "allow"
        if text in ("n", "no", "deny"):
            return "deny" + (f": {cmd.message}" if cmd.message else "")
        raise bad_request(f"task asks permission for {question.tool or 'a tool'}: answer --allow or --deny")
    if cmd.allow or cmd.deny:
        raise bad_request("the task asks a question, not for permission: answer it with text")
    text = cmd.text
    if text is None or not text.strip():
        raise bad_request("give an answer: an option number, an option, or your own words")
    if question.options and text.strip().isdigit():
        number = int(text.strip())
        if not 1 <= number <= len(question.options):
            raise bad_request(f"option {number} does not exist; choose 1..{len(question.options)}")
        return question.options[number - 1]
    return text


def _assign_role(state: State, cmd: p.AssignRole, now: float) -> list[ev.Event]:
    task = get_task(state, cmd.task)
    _role(state, cmd.role)
    if cmd.role == task.role:
        return []
    return [ev.TaskRoleChanged(task=task.id, role=cmd.role)]


def _config_set(state: State, cmd: p.ConfigSet, now: float) -> list[ev.Event]:
    problem = config_mod.check(cmd.key, cmd.value)
    if problem is not None:
        raise bad_request(problem)
    if cmd.key in ("role_limits", "role_budgets"):
        unknown = sorted(name for name in cmd.value if roles_mod.get(name, state.roles) is None)  # type: ignore[union-attr]
        if unknown:
            raise bad_request(f"{cmd.key} names no known role: {', '.join(unknown)}; the roles are {', '.join(roles_mod.names(state.roles))}")
    value = cmd.value
    if isinstance(value, int) and isinstance(getattr(config_mod.DEFAULT, cmd.key), float):
        value = float(value)
    if getattr(state.config, cmd.key) == value:
        return []
    return [ev.ConfigChanged(changes={cmd.key: value})]


_HANDLERS = {
    p.Submit: _submit,
    p.SetPriority: _set_priority,
    p.Remove: _remove,
    p.Stop: _stop,
    p.Respond: _respond,
    p.Resume: _resume,
    p.AssignRole: _assign_role,
    p.ConfigSet: _config_set,
    p.RunWorkflow: _run_workflow,
    p.Merge: lambda state, cmd, now: merges.queue(state, cmd),
}


# ---------------------------------------------------------------------------------------
# What the shell's observations mean


def process_exited(
    state: State, task_id: int, pid: int, exit_code: int | None, signal: int | None, detail: str = "", now: float = 0.0,
    day: Day | None = None,
) -> list[ev.Event]:
    """How a task ends when its process exits at `now`; `detail` is the agent's own last
    words (e.g. the last line it wrote to stderr), quoted in a failure's reason. An error
    of the API's availability parks or retries it instead (`orchestrad.retries`); an
    attempt that ended on a budget pauses it (`orchestrad.budgets`)."""
    task = state.tasks[task_id]
    exited = ev.ProcessExited(task=task_id, pid=pid, exit_code=exit_code, signal=signal)
    done = task.answered and not task.result_error  # its work is done, whatever it spent
    if (task.stopping is not None and task.stopping.outcome is Status.WAITING and not done) or (
        task.stopping is None and task.budget_stopped
    ):
        return [exited, budgets.pause(state, task, day or budgets.utc_day(now))]
    if task.stopping is not None and task.stopping.outcome is Status.WAITING:
        return [exited, *verify.after_agent(state, task)]
    if task.stopping is not None:
        return [exited, ev.TaskFinished(task=task_id, outcome=task.stopping.outcome, reason=task.stopping.reason)]
    setback = retries.after_error(state, task, now) if task.result_error else None
    if setback is not None:
        return [exited, *setback]
    if task.result_error:
        reason = f"the agent reported an error: {_first_line(task.result) or detail or 'no message'}"
        return [exited, ev.TaskFinished(task=task_id, outcome=Status.FAILED, reason=reason)]
    if exit_code == 0 and traits(task.spec.agent).reports_result and not task.answered:
        reason = f"the {task.spec.agent} agent exited without giving a result" + (f": {detail}" if detail else "; is the agent path in config really that agent?")
        return [exited, ev.TaskFinished(task=task_id, outcome=Status.FAILED, reason=reason)]
    if exit_code == 0:
        return [exited, *verify.after_agent(state, task)]
    reason = exit_reason(exit_code, signal) + (f": {detail}" if detail else "")
    return [exited, ev.TaskFinished(task=task_id, outcome=Status.FAILED, reason=reason)]


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return shorten(line, limit)


def exit_reason(exit_code: int | None, signal: int | None) -> str:
    if signal is not None:
        try:
            name = signal_mod.Signals(signal).name
        except ValueError:
            name = f"signal {signal}"
        return f"killed by {name}"
    return f"exited with code {exit_code}"


def output_over_limit(state: State, task_id: int, more: int) -> list[ev.Event]:
    """A task whose output is about to pass `max_output_bytes` with `more` bytes is
    stopped, failed, with a reason that says so."""
    task = state.tasks[task_id]
    limit = state.config.max_output_bytes
    if task.output_bytes + more <= limit or task.stopping is not None:  # the limit itself may be written
        return []
    reason = (
        f"it wrote more than the output limit of {_size(limit)}; raise it with "
        f"`orchestra config set max_output_bytes N` if that much output is expected"
    )
    return [ev.StopRequested(task=task_id, outcome=Status.FAILED, reason=reason)]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def spawn_failed(state: State, task_id: int, reason: str) -> list[ev.Event]:
    return [ev.TaskFinished(task=task_id, outcome=Status.FAILED, reason=reason)]


def process_lost(state: State, task_id: int, pid: int, why: str) -> list[ev.Event]:
    """Its executor can no longer follow its process (the node it ran on died): it ends
    interrupted, resumable, the reason naming the node; with `auto_resume`, an agent task
    that had a conversation goes back in the queue to continue it."""
    task = state.tasks[task_id]
    events: list[ev.Event] = [
        ev.ProcessExited(task=task_id, pid=pid, exit_code=None, signal=None),
        ev.TaskFinished(task=task_id, outcome=Status.INTERRUPTED, reason=f"lost: {why}"),
    ]
    if state.config.auto_resume and traits(task.spec.agent).converses and task.session_id:
        events.append(ev.TaskContinued(task=task_id, message=RESUME_MESSAGE, reason="resume"))
    return events


def reconcile(state: State, followed: Collection[int] = ()) -> list[ev.Event]:
    """At start-up: tasks the log shows as active lost their process with the old daemon,
    but those in `followed` (their processes run on, elsewhere, and are found again). With
    `auto_resume`, agent tasks that had a conversation go back in the queue to continue it."""
    events: list[ev.Event] = []
    for task_id in sorted(state.active - set(followed)):
        events.append(ev.TaskFinished(task=task_id, outcome=Status.INTERRUPTED, reason="the daemon stopped while it ran"))
        task = state.tasks[task_id]
        if state.config.auto_resume and traits(task.spec.agent).converses and task.session_id:
            events.append(ev.TaskContinued(task=task_id, message=RESUME_MESSAGE, reason="resume"))
    return events


def purge(state: State, now: float, in_history: Iterable[int] = ()) -> list[ev.Event]:
    """Finished tasks older than the retention, except those an unfinished task waits on;
    `in_history` the tasks of the history that finished before the retention's horizon
    (the shell asks the history)."""
    horizon = now - state.config.retention_days * 86400
    needed = {dep for tid in state.queued for dep in state.tasks[tid].spec.after}
    old = [
        t.id
        for t in state.tasks.values()
        if t.status.finished and t.finished_at is not None and t.finished_at < horizon and t.id not in needed
    ]
    old += [t for t in in_history if state_mod.in_history(state, t) and t not in needed]
    return [ev.TasksPurged(tasks=sorted(old))] if old else []
