"""The scheduler: what should happen next, given the state and the time. Pure.

`plan(state, now)` looks only at the work in flight (the state's indexes: the tasks that
may run, in order, those that never can, and the active ones), never at the whole history
nor at tasks waiting on others, so it costs the same with 10 or 100,000 tasks queued.
It returns a `Plan`:

* `start` — queued tasks to start now, in order: every dependency has succeeded, a slot is
  free (where it runs, and for the task's role where a per-role limit is set), nothing
  holds it until a later time (see below); highest priority first, then oldest;
* `events` — decisions that are facts to record: a queued task that can never run because a
  dependency failed, was cancelled or removed (it is cancelled, and the reason names the
  dependency), an active task past its timeout or idle timeout (a stop is requested with
  the outcome it will have), a question left unanswered past `auto_deny_after` (it is
  denied), and budgets (`orchestrad.budgets`): a task that would start under a budget
  already spent is paused, a running one that reached a budget is stopped to be paused,
  and tasks paused on a role's budget of an earlier `day` go on;
* `wake_at` — the earliest moment a deadline falls due or a hold ends, so the shell sets
  one timer instead of polling;
* `room` — a task that would make a new worktree waits because the worktrees use more
  than `worktree_quota` (`worktree_use`, measured by the shell and passed in): the shell
  makes room (`orchestrad.hygiene`) and plans again.

A queued task may be held until a time: parked on its account's usage limit until the
reset, or waiting out a retry's backoff (`Task.not_before`); and no task of an account
whose usage limit was met starts before that limit resets (`State.limits`). Held tasks
keep their place in the queue but hold no slot.

Slots are counted where tasks run (`TaskSpec.executor`): `max_concurrent` on this machine,
and for a remote executor (Ray) the agent slots its nodes offer, as the shell last saw
them (`remote`; an executor not seen yet gets one slot, so that a first start finds out).
Which node a task goes to, with its labels, is the executor's to decide; one that finds no
room defers the start (`StartDeferred`).

A task waiting for a person keeps its slot (its process is alive) and its wall-clock
timeout, but its idle timeout is paused: silence is expected while a person decides.

A running task is idle when it has neither written output nor used CPU for its idle
timeout: `busy` (the shell's observation, never a fact in the log) gives, per task, the
last time its processes were seen using CPU, so an agent that prints nothing while it
works (a long test run) is not stopped. Without `busy` (no way to read CPU use here),
only output counts, and the reason says so.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping

import msgspec

from orchestra.shared.protocol import Status
from orchestra.shared.vocab import size
from orchestrad import budgets, merges
from orchestrad import events as ev
from orchestrad.agents import traits
from orchestrad.budgets import Day
from orchestrad.config import EXECUTORS
from orchestrad.state import State, Task, blocked_for_good, run_key


class Plan(msgspec.Struct, frozen=True):
    start: list[int]
    events: list[ev.Event]
    wake_at: float | None
    room: bool = False  # a task that needs a new worktree waits for worktree space: make room


def plan(
    state: State, now: float, *, day: Day | None = None, busy: Mapping[int, float] | None = None,
    worktree_use: int | None = None, remote: Mapping[str, int] | None = None,
) -> Plan:
    """What to do at `now`; `day` is the local day a role's budget counts (the shell knows
    the time zone; without it, the UTC day); `busy` when each running task last used CPU
    (the shell reads it; without it, only output keeps a task from its idle timeout);
    `worktree_use` the bytes all worktrees use together, as the shell measured them (None:
    not measured, no quota applies); `remote` the agent slots of each remote executor."""
    day = day or budgets.utc_day(now)
    events: list[ev.Event] = []
    wake_at: float | None = None

    if state.paused:
        events += budgets.renewed(state, day)
        if any(state.tasks[t].paused.scope == "role" for t in state.paused):  # type: ignore[union-attr]
            wake_at = day.end  # a new day's budget
    for task_id in sorted(state.active):
        task = state.tasks[task_id]
        if task.stopping is not None:
            continue
        expired, deadline = _expiry(state, task, now, day, busy)
        if expired is not None:
            events.append(expired)
        elif deadline is not None and (wake_at is None or deadline < wake_at):
            wake_at = deadline

    # The fold keeps the queued tasks that can never run (`doomed`): only those are looked at.
    for task_id in state.doomed:
        events.append(ev.TaskCancelled(task=task_id, reason=blocked_for_good(state, state.tasks[task_id]) or ""))
    events.sort(key=lambda e: e.task)  # type: ignore[attr-defined]
    if state.merge_pending:
        events += merges.due(state)  # workflows that ended, and merge their branches

    config = state.config
    free = _free_slots(state, remote)
    if not any(n > 0 for n in free.values()) or not state.queued:  # no slot, or nothing waiting:
        return Plan(start=[], events=events, wake_at=wake_at)  # no need to look at the queue
    per_role = _per_role(state)
    start: list[int] = []
    room = False
    for *_, task_id in state.run_order:  # those that may run, in order; stops at the last free slot
        if not any(n > 0 for n in free.values()):
            break
        task = state.tasks[task_id]
        if free.get(task.spec.executor, 0) <= 0:
            continue
        held = _held_until(state, task, now)
        if held is not None:
            if wake_at is None or held < wake_at:
                wake_at = held
            continue
        limit = config.role_limits.get(task.role)
        if limit is not None and per_role.get(task.role, 0) >= limit:
            continue
        if over_quota(state, task, worktree_use):
            room = True
            continue
        if budgets.reached(state, task, day) is not None:
            events.append(budgets.pause(state, task, day))  # waits for a person instead
            continue
        start.append(task.id)
        free[task.spec.executor] -= 1
        per_role[task.role] = per_role.get(task.role, 0) + 1
    return Plan(start=start, events=events, wake_at=wake_at, room=room)


def _free_slots(state: State, remote: Mapping[str, int] | None) -> dict[str, int]:
    """Free slots per executor: this machine's, and each remote one's (one for a remote
    executor not seen yet) while queued tasks are for one: so that with this machine's
    slots taken and no remote work, planning stops before looking at the queue."""
    running: dict[str, int] = {}
    for task_id in state.active:
        name = state.tasks[task_id].spec.executor
        running[name] = running.get(name, 0) + 1
    slots = {"local": state.config.max_concurrent}
    if state.queued_remote:
        slots = {**{name: 1 for name in EXECUTORS}, **(remote or {}), **slots}
    return {name: total - running.get(name, 0) for name, total in slots.items()}


def needs_worktree(state: State, task: Task) -> bool:
    """Starting `task` makes a new worktree: it asks for one and has none yet, nor has the
    workflow whose shared worktree it would work in."""
    if not task.spec.worktree or task.workdir:
        return False
    workflow = state.workflows.get(task.spec.workflow) if task.spec.workflow else None
    return not (workflow is not None and task.spec.workspace == "shared" and workflow.workdir)


def over_quota(state: State, task: Task, worktree_use: int | None) -> bool:
    """`task` would make a new worktree while the worktrees use more than worktree_quota."""
    quota = state.config.worktree_quota
    return quota is not None and worktree_use is not None and worktree_use > quota and needs_worktree(state, task)


def account_of(state: State, task: Task) -> str | None:
    """The account whose usage limits `task`'s agent meets, or None for a kind that has
    none (a command). Agents of a kind share the account the daemon's environment gives
    them; a task given credentials of its own (`--env ANTHROPIC_API_KEY=...`) is an
    account of its own, since its values are not in the state (only their names)."""
    names = traits(task.spec.agent).credentials
    if not names:
        return None
    if any(name in names for name in task.spec.secret_env) or any(name in names for name in task.spec.env):
        return f"{task.spec.agent}:task {task.id}"
    return state.accounts.get(task.spec.agent, task.spec.agent)


def hold(state: State, task: Task, now: float) -> tuple[str, float, str] | None:
    """What holds a queued `task` until a later time, as (kind, until, why): ("parked",
    the reset, "usage limit") for a task parked on a usage limit, ("retry", its time,
    "attempt 2 of 5: overloaded") for a retry's backoff, ("account", the reset, "usage
    limit") for a task whose account's limit has not reset yet; None if nothing does."""
    if task.status is not Status.QUEUED:
        return None
    if task.not_before is not None and task.not_before > now:
        return (task.hold or "retry", task.not_before, task.hold_reason)
    until = _account_limit(state, task, now)
    return ("account", until, "usage limit") if until is not None else None


def _held_until(state: State, task: Task, now: float) -> float | None:
    if task.not_before is not None and task.not_before > now:
        return task.not_before
    return _account_limit(state, task, now)


def _account_limit(state: State, task: Task, now: float) -> float | None:
    if not state.limits:
        return None
    account = account_of(state, task)
    until = state.limits.get(account) if account is not None else None
    return until if until is not None and until > now else None


def run_order(state: State) -> list[int]:
    """Queued tasks in priority order (highest first, then oldest)."""
    return [task_id for *_, task_id in _queue_order(state)]


def _queue_order(state: State) -> Iterable[tuple[int, int, int]]:
    """The run keys of every queued task in priority order: those that may run (the fold
    keeps them in order) merged with those waiting on others (sorted here)."""
    if not state.unready:
        return state.run_order
    return heapq.merge(state.run_order, sorted(run_key(state.tasks[t]) for t in state.unready))


def waits_for(state: State, task: Task, worktree_use: int | None = None) -> str:
    """What the queued `task` waits for, in words ("" if it is about to start). Looks at
    the task and the active ones only, so it is cheap enough for every view: a task that
    could start would have been started by the last plan, so what holds it is its
    dependencies, its role's limit, worktree space (given `worktree_use`) or the slots."""
    deps = _waited_on(state, task)
    if deps:
        return deps
    if over_quota(state, task, worktree_use):
        return (
            f"worktree space ({size(worktree_use)} of {size(state.config.worktree_quota)} used; "
            "merged and unchanged worktrees of finished tasks are removed to make room: `orchestra worktrees`)"
        )
    config = state.config
    limit = config.role_limits.get(task.role)
    running = _per_role(state).get(task.role, 0) if limit is not None else 0
    if limit == 0:
        return f"role_limits allows no {task.role} task (its limit is 0); raise it with `orchestra config set role_limits`"
    if limit is not None and running >= limit:
        return f"a {task.role} slot (role_limits: {running} of {limit} running)"
    if task.spec.executor != "local":
        return ""  # its executor's slots are the executor's to count (the hold says when it found none)
    local = _local_running(state)
    if local >= config.max_concurrent:
        return f"a free slot ({local} of {config.max_concurrent} running)"
    return ""


def _local_running(state: State) -> int:
    return sum(1 for t in state.active if state.tasks[t].spec.executor == "local")


def start_order(state: State, now: float | None = None, worktree_use: int | None = None) -> Iterator[tuple[int, str]]:
    """Every queued task in the order it is expected to start, with what it waits for
    ("" for none: it starts now). Priority order, except that a task comes after the queued
    tasks it runs after (one that waits on a running task keeps its place: its slot frees
    as it becomes ready), tasks held by their role's limit come after the others, and those
    whose role's limit is 0 last; a task held until a later time (`hold`, given `now`) takes
    no slot. For `orchestra queue`: lazily, so that the head of a long queue costs what the
    head costs (a reader that stops early never orders the rest)."""
    config = state.config
    per_role = _per_role(state)
    free = config.max_concurrent - _local_running(state)
    placed: set[int] = set()
    held: list[tuple[int, str]] = []
    never: list[tuple[int, str]] = []
    deferred: dict[int, Task] = {}  # waiting for queued tasks to be placed before them, in run order

    def ready(task: Task) -> bool:  # its queued dependencies are placed before it
        return all(dep in placed or dep not in state.queued for dep in task.spec.after)

    def place(task: Task) -> tuple[int, str]:
        nonlocal free
        placed.add(task.id)
        reason = waits_for(state, task, worktree_use)
        held = hold(state, task, now) if now is not None else None
        if not reason and held is not None:
            reason = held[0]
        elif not reason and free <= 0 and task.spec.executor == "local":
            reason = f"a free slot ({_local_running(state)} of {config.max_concurrent} running)"
        elif not reason and task.spec.executor == "local":
            free -= 1
            per_role[task.role] = per_role.get(task.role, 0) + 1
        return (task.id, reason)

    for *_, task_id in _queue_order(state):
        task = state.tasks[task_id]
        limit = config.role_limits.get(task.role)
        if limit == 0:
            never.append((task_id, waits_for(state, task)))
        elif limit is not None and per_role.get(task.role, 0) >= limit:
            held.append((task_id, waits_for(state, task)))
        elif not ready(task):
            deferred[task_id] = task
        else:
            yield place(task)
            # Those waiting on it may follow now: only its own waiters can have become
            # ready, and the first of them in run order goes first, as it would in the queue.
            now_ready = [run_key(deferred[w]) for w in state.dependents.get(task_id, ()) if w in deferred and ready(deferred[w])]
            heapq.heapify(now_ready)
            while now_ready:
                *_, later_id = heapq.heappop(now_ready)
                if later_id not in deferred:
                    continue
                yield place(deferred.pop(later_id))
                for w in state.dependents.get(later_id, ()):
                    if w in deferred and ready(deferred[w]):
                        heapq.heappush(now_ready, run_key(deferred[w]))
    for t in deferred.values():  # after tasks that never start
        yield (t.id, waits_for(state, t))
    yield from held
    yield from never


def _per_role(state: State) -> dict[str, int]:
    per_role: dict[str, int] = {}
    for task_id in state.active:
        role = state.tasks[task_id].role
        per_role[role] = per_role.get(role, 0) + 1
    return per_role


def _waited_on(state: State, task: Task) -> str:
    """The other tasks `task` still waits for, in words; "" if none."""
    pending = [dep for dep in task.spec.after if not _succeeded(state, dep)]
    words = []
    if pending:
        words.append(("task " if len(pending) == 1 else "tasks ") + ", ".join(map(str, pending)) + " to succeed")
    condition = task.spec.run_if
    if condition is not None and not _condition_met(state, task):
        dep = state.tasks.get(condition.task)
        name = f"step {dep.spec.step}" if dep is not None and dep.spec.step else f"task {condition.task}"
        words.append(f"{name} to end {condition.outcome.value}")
    return " and ".join(words)


def _condition_met(state: State, task: Task) -> bool:
    condition = task.spec.run_if
    if condition is None:
        return True
    dep = state.tasks.get(condition.task)
    return dep is not None and dep.status is condition.outcome


def _succeeded(state: State, task_id: int) -> bool:
    dep = state.tasks.get(task_id)
    return dep is not None and dep.status is Status.SUCCEEDED


def _expiry(state: State, task: Task, now: float, day: Day, busy: Mapping[int, float] | None = None) -> tuple[ev.Event | None, float | None]:
    """A stop to request if a limit is exceeded, else the next deadline (or None)."""
    spec, config = task.spec, state.config
    deadlines: list[float] = []
    if budgets.stops_for(task) and (hit := budgets.reached(state, task, day)) is not None:
        return _stop(task, Status.WAITING, f"{hit.words(task.id)}: paused, to wait for a person"), None
    if spec.timeout is not None and task.started_at is not None:
        deadline = task.started_at + spec.timeout
        if now >= deadline:
            return _stop(task, Status.TIMED_OUT, f"timed out after {_seconds(spec.timeout)}"), None
        deadlines.append(deadline)
    if config.auto_deny_after is not None and task.waiting is not None:
        deadline = task.waiting.since + config.auto_deny_after
        if now >= deadline:
            answer = f"deny: no answer came within {_seconds(config.auto_deny_after)}"
            return ev.InputGiven(task=task.id, request_id=task.waiting.request_id, answer=answer, by="the auto-deny timeout"), None
        deadlines.append(deadline)
    if spec.idle_timeout is not None and task.status is Status.RUNNING:
        deadline = max(task.last_activity, busy.get(task.id, 0.0) if busy is not None else 0.0) + spec.idle_timeout
        if now >= deadline:
            return _stop(task, Status.TIMED_OUT, idle_reason(spec.idle_timeout, cpu=busy is not None)), None
        deadlines.append(deadline)
    return None, min(deadlines) if deadlines else None


def idle_reason(idle_timeout: float, *, cpu: bool) -> str:
    """Why an idle task was stopped: "no output and no CPU use for 10 min (idle timeout)",
    or, where CPU use could not be read, "no output for 10 min (idle timeout)"."""
    quiet = "no output and no CPU use" if cpu else "no output"
    return f"{quiet} for {_seconds(idle_timeout)} (idle timeout)"


def _stop(task: Task, outcome: Status, reason: str) -> ev.StopRequested:
    return ev.StopRequested(task=task.id, outcome=outcome, reason=reason)


def _seconds(value: float) -> str:
    if value >= 120 and value % 60 == 0:
        return f"{int(value // 60)} min"
    return f"{value:g} s"
