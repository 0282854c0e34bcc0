"""The engine: the single writer. It owns the store (and so the log and the state), runs
commands through `decide`, records what the supervisor observes, and acts on the
scheduler's plan. Everything else asks it.

One pass, always the same, as a loop rather than calls that call each other: decide ->
append (the state is folded at once, in log order) -> act (signal, write, and append what
that produces) -> let watchers know -> plan -> record the plan's decisions and start what
may start, until the plan is empty -> set the next timer. A command's caller gets the
durability future and replies only once it is done. Nothing polls: the engine runs when a
request arrives, a process writes or exits, or the one timer for the next deadline fires.
While tasks run, a second timer reads their CPU use every few seconds (`orchestrad.cpu`):
an observation kept in memory, given to the plan as `busy`, never recorded.

It is long because it is the one writer: every fact passes through its append, and each
kind of side effect (processes, checks, merges, measurements) is wired here, each in a
few lines that hand the work to its own module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable, Sequence

from orchestra.shared import protocol as p
from orchestra.shared.paths import Paths
from orchestra.shared.protocol import Status
from orchestra.shared.vocab import version
from orchestrad import agentenv, budgets, changes, checks, configwatch, containment, cpu, launch, orphans, policy, roles, sandbox
from orchestrad import scheduler
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad import workflows as workflows_mod
from orchestrad.agents import Agent, Reaction, agent_for, traits
from orchestrad.agents import kinds as agent_kinds
from orchestrad.envstore import EnvStore
from orchestrad.hygiene import Hygiene
from orchestrad.leftovers import Sweeper
from orchestrad.merger import Merger
from orchestrad.notifier import Notifier
from orchestrad.state import Task, status_of
from orchestrad.store import Item, Store
from orchestrad.executor import Executor, SpawnError, Unavailable, WriteError
from orchestrad.remote import rayexec as remote
from orchestrad.remote.rayexec import RayExecutor
from orchestrad.supervisor import Supervisor
from orchestrad.worktrees import WorktreeError

log = logging.getLogger(__name__)

RETRY_AFTER = 1.0  # seconds between attempts to record what could not be written

# Facts after which there is nothing new to plan: output moves an idle deadline only later,
# and the timer already set for the earlier one re-plans when it fires.
_UNSCHEDULED = frozenset({ev.OutputAppended, ev.ToolUsed, ev.SessionStarted})


def local_day(now: float) -> budgets.Day:
    """The local day holding `now`, midnight to midnight (23 or 25 hours long when the
    clocks change): the day a role's budget counts."""
    t = time.localtime(now)
    start = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))
    end = time.mktime((t.tm_year, t.tm_mon, t.tm_mday + 1, 0, 0, 0, 0, 0, -1))  # mktime carries the day over
    return budgets.Day(start, end)


class Watcher:
    """One client's subscription to task changes: a set of dirty task ids and a flag.

    The set is bounded by the number of tasks, however slowly the client reads, so a
    stalled reader costs the daemon a little memory, never a growing queue.
    """

    def __init__(self) -> None:
        self.dirty: set[int] = set()
        self.flag = asyncio.Event()

    def mark(self, tasks: set[int]) -> None:
        self.dirty |= tasks
        self.flag.set()

    async def next(self) -> set[int]:
        await self.flag.wait()
        self.flag.clear()
        dirty, self.dirty = self.dirty, set()
        return dirty


REATTACH_FOR = 300.0  # seconds a restarted daemon keeps trying to find its remote processes again


def named(state, command: p.Request) -> list[int]:
    """The tasks `command` names: its task, tasks, dependencies and parent, and the steps of
    the workflow it names."""
    found: list[int] = []
    for field in ("task", "tasks", "after", "parent"):
        value = getattr(command, field, None)
        if type(value) is int:
            found.append(value)
        elif isinstance(value, list):
            found += [v for v in value if type(v) is int]
    workflow = state.workflows.get(getattr(command, "workflow", None))
    if workflow is not None:
        found += workflow.steps.values()
    return found


class Engine:
    def __init__(
        self,
        store: Store,
        *,
        paths: Paths | None = None,
        clock: Callable[[], float] = time.time,
        base_env: dict[str, str] | None = None,
    ) -> None:
        self.store = store
        self.paths = paths
        self.clock = clock
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.supervisor = Supervisor(on_output=self._on_output, on_exit=self._on_exit)  # this machine's processes
        self.executors: dict[str, Executor] = {self.supervisor.name: self.supervisor}  # where processes may run
        self._running_on: dict[int, Executor] = {}  # task -> where its agent's process runs, until it exits
        self.watchers: set[Watcher] = set()
        self.env_store = EnvStore(store.log.directory.parent / "env")
        self.home_mark = orphans.home_mark(str(store.log.directory))
        self._unrecorded: list[Item] = []  # observations the log could not take yet (disk full)
        self._retry: asyncio.TimerHandle | None = None
        self.workdirs = launch.Workdirs(paths.state / "worktrees" if paths is not None else None)
        own = [paths.state, paths.config, paths.runtime] if paths is not None else [store.log.directory.parent]
        self.sandboxes = sandbox.Sandboxes(hidden=own, socket=paths.socket if paths is not None else None)
        self._agents: dict[int, Agent] = {}
        self.sweeper = Sweeper(self.home_mark, lambda: set(self.supervisor.pids().values()), lambda: set(self.state.active))
        self._timer: asyncio.TimerHandle | None = None
        self.cpu = cpu.Sampler(self._cpu_targets, clock, self._on_busy)  # CPU use per running task: observed, not recorded
        self._accepting = True
        self.notifier = Notifier(self.base_env, clock)  # told of every batch appended
        self.merger = Merger(self, paths.state / "integration" if paths is not None else None)  # the merge queue
        self.hygiene = Hygiene()  # the worktrees' disk use, and room under worktree_quota
        self._ending: dict[int, asyncio.Task] = {}  # task -> its exit, waiting for its changes to be measured
        self.checks = checks.Checker(self)  # acceptance checks running (orchestrad.verify)

    @property
    def state(self):
        return self.store.state

    @property
    def accepting(self) -> bool:
        return self._accepting

    # -- commands -----------------------------------------------------------------------

    def identify(self, pid: int | None) -> d.Actor | None:
        """Who a peer is: None for the user, an `Actor` for an agent's process."""
        tasks_by_pid = {process: task for task, process in self.supervisor.pids().items()}
        return containment.identify(pid, tasks_by_pid, self.supervisor.cgroups, self.home_mark)

    async def execute(self, command: p.Request, actor: d.Actor | None = None) -> list[ev.Event]:
        """Decide and record `command` (asked by `actor`; None: the user); return its events
        once they are durable."""
        if not self._accepting:
            raise p.OrchestraError(p.ErrorCode.UNAVAILABLE, "the daemon is shutting down; try again once it is back")
        if self._unrecorded:
            self._flush_unrecorded()  # space may have come back since the last try
        if self._unrecorded:
            raise p.OrchestraError(p.ErrorCode.UNAVAILABLE, "the daemon cannot write its log (is the disk full?); free space, then retry")
        if isinstance(command, p.Respond) and command.task in self._agents:
            try:
                self.executor_of(command.task).check_writable(command.task, len((command.text or "").encode()) + 1)
            except WriteError as exc:
                raise p.conflict(str(exc)) from None
        self.store.take_back(named(self.state, command))  # the pure core sees tasks in memory only
        now = self.clock()
        events = d.decide(self.state, command, now, actor, day=local_day(now))
        if isinstance(command, p.Submit) and command.env and events:
            self._keep_env(events[0].task, command.env)  # type: ignore[attr-defined]
        if events:
            await self.record(events)
        return events

    def _keep_env(self, task_id: int, env: dict[str, str]) -> None:
        """The task's environment values, durable in the env store before its submission is
        recorded (a crash in between leaves a file that start-up prunes)."""
        try:
            self.env_store.put(task_id, env)
        except OSError as exc:
            message = f"the daemon cannot store the task's environment ({exc.strerror or exc}); free disk space, then retry"
            raise p.OrchestraError(p.ErrorCode.UNAVAILABLE, message) from exc

    def record_nowait(self, items: Sequence[Item]) -> asyncio.Future:
        """Append `items` and the facts that follow from them, act on each, then plan: the
        engine's one pass, as a loop. Returns the durability future of `items`."""
        durable, schedulable = self._append(items)
        if schedulable:
            self.schedule()
        return durable

    def _append(self, items: Sequence[Item]) -> tuple[asyncio.Future, bool]:
        """Append `items`, fold them, act on them, and append what acting produced (an
        adapter's reaction to an answer), until nothing more follows. Returns the
        durability future of `items`, and whether any fact could change the plan."""
        durable: asyncio.Future | None = None
        schedulable = False
        batch = list(items)
        appended: list[ev.Event] = []
        while batch:
            try:
                written = self.store.append(self.clock(), batch)
            except OSError as exc:
                message = f"the daemon cannot write its log ({exc.strerror or exc}); free disk space, then retry"
                raise p.OrchestraError(p.ErrorCode.UNAVAILABLE, message) from exc
            durable = durable or written
            follow_ups: list[Item] = []
            changed: set[int] = set()
            for item in batch:
                event = item[0] if isinstance(item, tuple) else item
                appended.append(event)
                task = getattr(event, "task", None)
                if task is not None:
                    changed.add(task)
                schedulable = schedulable or type(event) not in _UNSCHEDULED
                follow_ups += self._act(event)
            if changed:
                for watcher in self.watchers:
                    watcher.mark(changed)
            batch = follow_ups
        assert durable is not None, "nothing to append"
        self.notifier.saw(self.state, appended, written)  # once all of it is folded and durable
        self.merger.saw(appended)
        return durable, schedulable

    async def record(self, items: Sequence[Item]) -> None:
        durable = self.record_nowait(items)
        try:
            await asyncio.shield(durable)
        except OSError as exc:
            raise p.OrchestraError(p.ErrorCode.UNAVAILABLE, f"the log could not be made durable: {exc}") from exc

    def _act(self, event: ev.Event) -> list[Item]:
        """Side effects that follow from a recorded fact; returns further facts to record."""
        if isinstance(event, ev.StopRequested):
            self.executor_of(event.task).terminate(event.task, self.state.config.kill_grace)
        elif isinstance(event, ev.InputGiven):
            agent = self._agents.get(event.task)
            task = self.state.tasks.get(event.task)
            if agent is not None and task is not None:
                return self._react(event.task, agent.answer(task, event))
        elif isinstance(event, ev.TaskFinished | ev.TaskCancelled | ev.TaskParked | ev.RetryScheduled | ev.BudgetReached):
            self._agents.pop(event.task, None)
            self.cpu.meter.forget([event.task])
        elif isinstance(event, ev.ChecksStarted):
            self._agents.pop(event.task, None)  # its agent's process is gone; a check's is not the agent's
            self.checks.begin(event.task)
        elif isinstance(event, ev.TaskRemoved):
            self._forget(event.task)
        elif isinstance(event, ev.TasksPurged):
            for task in event.tasks:
                self._forget(task)
        elif isinstance(event, ev.WorktreeRemoved):
            self.hygiene.forget(event.path)
        elif self.state.config.worktree_quota is not None:
            self._measure_after(event)
        return []

    def _measure_after(self, event: ev.Event) -> None:
        """With a worktree quota, measure what a fact may have changed on disk."""
        if isinstance(event, ev.WorktreeCreated):
            self.hygiene.remeasure(self, [event.path])
        elif isinstance(event, ev.ChangesRecorded):
            task = self.state.tasks.get(event.task)
            tree = changes.worktree_of(self.state, task) if task is not None else None
            if tree is not None:
                self.hygiene.remeasure(self, [tree.path])
        elif isinstance(event, ev.ConfigChanged) and "worktree_quota" in event.changes:
            self.hygiene.remeasure(self, list(self.state.worktrees))

    def _react(self, task_id: int, reaction: Reaction) -> list[Item]:
        """Carry out an adapter's reaction's I/O, and put the tool calls it asks about to the
        permission policy; the events are for the caller to record."""
        try:
            if reaction.write:
                self.executor_of(task_id).write(task_id, reaction.write)
            if reaction.close_stdin:
                self.executor_of(task_id).close_stdin(task_id)
        except WriteError as exc:  # the process went away or stopped reading
            log.warning("task %s: could not write to it: %s", task_id, exc)
        items = list(reaction.items)
        agent = self._agents.get(task_id)
        task = self.state.tasks.get(task_id)
        for ask in reaction.asks:
            if agent is not None and task is not None:
                items += self._react(task_id, agent.ruled(task, ask, self.rule(task, ask.tool, ask.input)))
        return items

    def rule(self, task: Task, tool: str, tool_input: dict) -> policy.Decision | None:
        """The policy's decision on a tool call of `task`'s agent (None: no rule decides).
        The shell's part: where the task works, whose home ~ is, where symlinks lead."""
        return policy.decide(self.policy_for(task.role), self.call(tool, tool_input, task.cwd))

    def policy_for(self, role: str) -> policy.Policy:
        spec = roles.get(role, self.state.roles)
        builtin = role in roles.BUILTIN and role not in self.state.roles
        return policy.sources(role, spec.policy if spec is not None else [], self.state.config.policy, builtin)

    def call(self, tool: str, tool_input: dict, cwd: str) -> policy.Call:
        cwd = os.path.realpath(cwd or "/")
        home = os.path.expanduser("~")
        real = {path: os.path.realpath(path) for path in policy.paths_of(tool, tool_input, cwd, home)}
        places = {} if self.paths is None else {name: os.path.realpath(getattr(self.paths, name)) for name in ("state", "config", "runtime")}
        return policy.Call(tool, tool_input, cwd, home, real, places)

    def _forget(self, task: int) -> None:
        """A task that will never run again: its environment values go (they are kept until
        then, so that a resumed or retried task gets them again)."""
        self._agents.pop(task, None)
        self.cpu.meter.forget([task])
        try:
            self.env_store.remove([task])
        except OSError as exc:
            log.warning("task %s: could not remove its stored environment: %s", task, exc)

    # -- scheduling ---------------------------------------------------------------------

    def schedule(self) -> None:
        """Act on the plan until it has nothing more to record: record its decisions (a
        cancellation may cancel the tasks after it), start what may start, then set the
        one timer for the next deadline."""
        checked: set[int] = set()  # tasks read afresh in this pass, before a timeout stops them
        while self._accepting and not self._unrecorded:
            now = self.clock()
            quota = self.state.config.worktree_quota
            use = self.hygiene.used(self.state) if quota is not None else None
            plan = scheduler.plan(
                self.state, now, day=local_day(now), busy=self.cpu.busy(), worktree_use=use, remote=self._remote_slots()
            )
            due = {e.task for e in plan.events if isinstance(e, ev.StopRequested) and e.outcome is Status.TIMED_OUT} - checked
            if due:
                checked |= due
                if self.cpu.fresh(due, now):
                    continue  # it used CPU since it was last read: plan again with that
            if plan.room:
                self.hygiene.make_room(self)
            try:
                if plan.events:
                    self._append(plan.events)
                    continue
                if plan.start:
                    # Recorded first, and durable before any process exists: a crash in
                    # between leaves these tasks interrupted, never run twice.
                    starting = [ev.TaskStarting(task=t, attempt=self.state.tasks[t].attempts + 1) for t in plan.start]
                    durable, _ = self._append(starting)
                    for task_id in plan.start:
                        asyncio.get_running_loop().create_task(self._start(task_id, durable))
                    continue
            except p.OrchestraError as exc:
                log.error("could not record the scheduler's decisions: %s", exc.message)
                return
            self._set_timer(plan.wake_at, now)
            self.cpu.arm(self.state.config.silent_after)
            return

    def _set_timer(self, wake_at: float | None, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if wake_at is not None:
            delay = max(0.0, wake_at - now)
            self._timer = asyncio.get_running_loop().call_later(delay + 0.001, self.schedule)

    # -- CPU use ------------------------------------------------------------------------

    def _on_busy(self, moved: set[int], told: set[int]) -> None:
        if told:
            for watcher in self.watchers:
                watcher.mark(told)
        if self._accepting:
            self.schedule()  # their idle deadlines moved later

    def _cpu_targets(self, tasks: set[int] | None) -> dict[int, cpu.Target]:
        """What to read of `tasks` (None: every running task) that have a process."""
        pids, cgroups = self.supervisor.pids(), self.supervisor.cgroups
        targets = {}
        for task_id in self.state.active if tasks is None else tasks:
            task = self.state.tasks[task_id]
            if task_id in pids and task.status is Status.RUNNING:
                name = self.supervisor.cgroup_of(task_id)
                where = cgroups.path(name) if name and cgroups is not None else None
                targets[task_id] = cpu.Target(task.attempts, pids[task_id], where, task.started_at or 0.0)
        return targets

    async def _start(self, task_id: int, durable: asyncio.Future) -> None:
        try:
            await asyncio.shield(durable)
        except OSError as exc:
            log.error("task %s: its start could not be made durable (%s); not starting it", task_id, exc)
            return
        task = self.state.tasks[task_id]
        if task.status is not Status.RUNNING or task.pid is not None:
            return  # stopped while its start was being recorded
        agent = agent_for(task.spec.agent)
        try:
            own_env = launch.task_env(self.env_store, task)
            cwd = await self.workdirs.workdir(self.state, task, self.record_nowait)
            if task.spec.expects_change and task.baseline_head is None:
                baseline = await checks.where(cwd)  # what "changed nothing" is measured against
                if baseline is not None:
                    self._observe([ev.BaselineRecorded(task=task_id, head=baseline[0], digest=baseline[1])])
            task = launch.prepared(self.state, self.state.tasks[task_id], local_day(self.clock()))
            argv = agent.command(task, self.state.config, self.state.roles)
            mark = orphans.mark(self.home_mark, task_id, task.attempts)
            env = launch.environment(self.base_env, agent, self.state.config, own_env, mark)
            role = roles.get(task.role, self.state.roles)
            executor = self.executor_named(task.spec.executor)
            carry: list[tuple[str, str]] = []
            if executor is not self.supervisor:
                remote.check_remote(role, self.state.config)
                env[orphans.VARIABLE] = remote.mark(self.home_mark, task_id, task.attempts)  # not this machine's orphans
                carry = self._carried(agent, cwd, await executor.workdir(task_id, task.attempts, cwd, env), env)
            try:
                agent.prepare(task, await executor.workdir(task_id, task.attempts, cwd, env), env)
            except OSError as exc:
                log.warning("task %s: the %s adapter could not prepare its CLI's state: %s", task_id, task.spec.agent, exc)
            greeting = agent.greeting(task)  # before ProcessSpawned clears the pending message
            box = cgroup = ""
            if executor is self.supervisor:
                argv, box = await self.sandboxes.wrap(
                    argv, cwd=cwd, env=env, agent=agent, role=role, role_name=task.role, config=self.state.config
                )
                cgroup = containment.cgroup_name(task_id, task.attempts)
            pid = await executor.start(
                task_id, argv, cwd=cwd, env=env, cgroup=cgroup, attempt=task.attempts, labels=task.spec.node_labels,
                carry=carry,
            )
        except Unavailable as exc:
            self._observe([ev.StartDeferred(task=task_id, until=self.clock() + exc.retry_in, reason=str(exc))])
            return
        except (SpawnError, WorktreeError) as exc:
            self._observe(d.spawn_failed(self.state, task_id, agent.spawn_error(str(exc))))
            return
        except Exception as exc:  # a bug must not leave the task "starting" forever
            log.exception("task %s: could not start", task_id)
            self._observe(d.spawn_failed(self.state, task_id, f"could not start: {exc}"))
            return
        self._agents[task_id] = agent
        self._running_on[task_id] = executor
        node, host = executor.node_of(task_id) if isinstance(executor, RayExecutor) else ("", "")
        spawned = ev.ProcessSpawned(
            task=task_id, attempt=task.attempts, pid=pid, argv=launch.shown(argv), cgroup=self.supervisor.cgroup_of(task_id),
            sandbox=box, node=node, host=host,
        )
        self._observe([spawned, *self._react(task_id, greeting)])

    # -- observations from the supervisor -----------------------------------------------

    def _on_output(self, task_id: int, stream: str, chunk: bytes) -> None:
        agent = self._agents.get(task_id)
        task = self.state.tasks.get(task_id)
        if task is None or (agent is None and not self.checks.owns(task_id)):
            return
        if task.output_bytes >= self.state.config.max_output_bytes:
            return  # over its quota and being stopped: the rest is not kept
        if self.checks.owns(task_id):
            items = self.checks.output(task_id, chunk)
        else:
            try:
                reaction = agent.output(task, stream, chunk)
            except Exception:  # a bug in the adapter: the output is kept all the same, unread
                log.exception("task %s: its %s adapter could not read its output", task_id, task.spec.agent)
                reaction = Reaction([(ev.OutputAppended(task=task_id, stream=stream, size=len(chunk)), chunk)])
            items = self._react(task_id, reaction)
        over = d.output_over_limit(self.state, task_id, len(chunk))
        if items or over:
            self._observe([*items, *over])

    @staticmethod
    def _carried(agent, here: str, there: str, env: dict[str, str]) -> list[tuple[str, str]]:
        """The agent's own state of working directory `here`, and where it goes for `there`."""
        return list(zip(agent.workdir_state(here, env), agent.workdir_state(there, env)))

    def executor_of(self, task_id: int) -> Executor:
        """Where the task's process runs: its agent's executor while that runs, else this
        machine's (where its acceptance checks run)."""
        return self._running_on.get(task_id, self.supervisor)

    def executor_named(self, name: str) -> Executor:
        """The executor called `name`, made on first use; Unavailable when it cannot be
        made as configured now."""
        if name == "local":
            return self.supervisor
        address = self.state.config.ray_address
        executor = self.executors.get(name)
        if isinstance(executor, RayExecutor) and executor.address == address:
            return executor
        if not address:
            raise Unavailable("no Ray cluster is set: say where its head is with `orchestra config set ray_address HOST:PORT`", 60.0)
        if isinstance(executor, RayExecutor) and executor.pids():
            return executor  # its tasks run on: the new address is used once they are done
        executor = RayExecutor(
            on_output=self._on_output, on_exit=self._on_exit, address=address, namespace=remote.namespace(self.home_mark),
            env=self.base_env,
        )
        executor.on_nodes = self._nodes_changed
        self.executors[name] = executor
        return executor

    def _remote_slots(self) -> dict[str, int]:
        slots = {}
        for name, executor in self.executors.items():
            if isinstance(executor, RayExecutor) and executor.slots is not None:
                slots[name] = executor.slots
        return slots

    def _nodes_changed(self) -> None:
        if self._accepting:
            self.schedule()  # slots came or went

    def _on_exit(self, task_id: int, pid: int, exit_code: int | None, signal: int | None, lost: str = "") -> None:
        self._running_on.pop(task_id, None)
        if self.checks.owns(task_id):
            self.checks.exited(task_id, exit_code, signal)
            return
        if task_id not in self.state.active:
            return
        if lost:
            self.sweeper.task_ended(task_id, self.state.tasks[task_id].attempts)
            self._observe(d.process_lost(self.state, task_id, pid, lost))
            return
        self.sweeper.task_ended(task_id, self.state.tasks[task_id].attempts)
        agent = self._agents.get(task_id)
        detail = agent.failure_detail() if agent is not None else ""
        items: list[Item] = []
        if agent is not None and not agent.traits.reports_result:  # its result: the end of its stdout
            items.append(ev.AgentResult(task=task_id, text=self._stdout_tail(task_id), is_error=False))
        tree = changes.worktree_of(self.state, self.state.tasks[task_id])
        if tree is None or not tree.base or not self._accepting:  # no base: a worktree of an older log
            self._exited(task_id, pid, exit_code, signal, detail, items)
            return
        job = asyncio.get_running_loop().create_task(self._exited_with_changes(tree, task_id, pid, exit_code, signal, detail, items))
        self._ending[task_id] = job
        job.add_done_callback(lambda _: self._ending.pop(task_id, None))

    async def _exited_with_changes(self, tree, task_id: int, pid: int, exit_code: int | None, signal: int | None,
                                   detail: str, items: list[Item]) -> None:
        """The exit of a task that works in a worktree: what its attempt left changed is
        measured first (git, as subprocesses: the loop goes on meanwhile), so that the
        facts of its ending (and the steps it lets start) have it. A failure to measure is
        logged; the exit is recorded all the same."""
        try:
            found = await changes.measure(tree.path, tree.base)
            items = [*items, ev.ChangesRecorded(
                task=task_id, base=found.base, head=found.head, files=found.files, insertions=found.insertions,
                deletions=found.deletions, stat=changes.shorten_stat(found.stat),
            )]
        except Exception as exc:  # a worktree gone, git failing: the task's ending does not depend on it
            log.warning("task %s: could not record the changes in %s: %s", task_id, tree.path, exc)
        if task_id in self.state.active:
            self._exited(task_id, pid, exit_code, signal, detail, items)

    def _exited(self, task_id: int, pid: int, exit_code: int | None, signal: int | None, detail: str, items: list[Item]) -> None:
        now = self.clock()
        self._observe([*items, *d.process_exited(self.state, task_id, pid, exit_code, signal, detail, now=now, day=local_day(now))])

    def _stdout_tail(self, task_id: int) -> str:
        """A command's result: the end of what it wrote to stdout."""
        limit = workflows_mod.RESULT_LIMIT
        chunks: list[bytes] = []
        size = 0
        for index in range(self.store.output_count(task_id) - 1, -1, -1):
            stream, data = next(self.store.output(task_id, index))
            if stream == "stdout":
                chunks.append(data)
                size += len(data)
                if size >= limit:
                    break
        return b"".join(reversed(chunks))[-limit:].decode(errors="replace").strip()

    def _observe(self, items: Sequence[Item]) -> None:
        """Record what happened. A fact cannot be refused: if the log cannot take it now
        (disk full), it waits, in order, and is retried until the log takes it."""
        self._unrecorded.extend(items)
        self._flush_unrecorded()

    def _flush_unrecorded(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        pending, self._unrecorded = self._unrecorded, []
        if not pending:
            return
        try:
            self.record_nowait(pending)
        except p.OrchestraError as exc:
            self._unrecorded = pending + self._unrecorded
            if not self.supervisor.output_paused:
                log.error("could not record what agents did; not reading their output until it can: %s", exc.message)
                for executor in self.executors.values():
                    executor.pause_output()  # back-pressure: agents block on write
            if self._retry is None:
                self._retry = asyncio.get_running_loop().call_later(RETRY_AFTER, self._flush_unrecorded)
            return
        if self.supervisor.output_paused:  # planning waited too, and timers were not set
            log.info("the log takes records again; reading agents' output again")
            for executor in self.executors.values():
                executor.resume_output()
            self.schedule()

    # -- configuration files ------------------------------------------------------------

    def reload_files(self) -> None:
        """Load config.toml, roles/ and workflows/; record what changed."""
        if self.paths is not None:
            items = configwatch.changes(self.paths, self.state)
            if items:
                self._observe(items)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Reconcile what the log says with reality, then schedule."""
        # The previous daemon's agents (and anything they started) carry this home's mark;
        # a pid from the log may belong to someone else by now, so it is not trusted.
        left = orphans.kill(f"{self.home_mark}:")
        if left:
            log.warning("killed %d agent process(es) left from the previous daemon: %s", len(left), left)
        if not containment.become_subreaper():
            log.info("not a child subreaper here: processes agents detach are found by their mark only")
        self.supervisor.cgroups = cgroups = containment.Cgroups.probe(self.home_mark)
        if cgroups is not None:
            for name in cgroups.leftovers():  # what the previous daemon's tasks left, marks or not
                count = cgroups.kill(name)
                if count:
                    log.warning("killed %d process(es) left in cgroup %s by the previous daemon", count, name)
            await asyncio.sleep(0.05 if cgroups.leftovers() else 0)
            for name in cgroups.leftovers():
                if not cgroups.remove(name):
                    log.warning("could not remove the cgroup %s yet", cgroups.path(name))
        stale = self.env_store.prune(lambda t: status_of(self.state, t) is not None)  # in memory or in the history
        if stale:
            log.warning("removed the stored environments of %d task(s) that were never recorded: %s", len(stale), stale)
        followed = [  # remote processes run on without this daemon: found again below
            t for t in sorted(self.state.active)
            if self.state.tasks[t].spec.executor != "local" and self.state.tasks[t].pid is not None and self.state.tasks[t].node
        ]
        reconciled = d.reconcile(self.state, followed)
        events: list[ev.Event] = [ev.DaemonStarted(pid=os.getpid(), version=version(), accounts=self.accounts())]
        await self.record([*events, *reconciled])
        for task_id in followed:
            asyncio.get_running_loop().create_task(self._follow_again(task_id))
        self.reload_files()
        self.merger.poke()
        if self.state.config.worktree_quota is not None:
            self.hygiene.remeasure(self, list(self.state.worktrees))

    async def _follow_again(self, task_id: int) -> None:
        """Find the remote process of a task that ran when the previous daemon ended and
        carry on with it; one that cannot be found ends interrupted, resumable, saying why.
        A cluster that does not answer is asked again for REATTACH_FOR seconds."""
        task = self.state.tasks[task_id]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REATTACH_FOR
        pid: int | None = None
        why = ""
        while pid is None:
            try:
                executor = self.executor_named(task.spec.executor)
                agent = agent_for(task.spec.agent)
                env = launch.environment(self.base_env, agent, self.state.config, launch.task_env(self.env_store, task), "")
                there = await executor.workdir(task_id, task.attempts, task.cwd, env)
                pid = await executor.attach(
                    task_id, task.attempts, task.node, cwd=task.cwd, carry=self._carried(agent, task.cwd, there, env)
                )
            except Unavailable as exc:
                why = str(exc)
                if loop.time() + exc.retry_in > deadline or not self._accepting:
                    break
                await asyncio.sleep(exc.retry_in)
            except SpawnError as exc:
                why = str(exc)
                break
        if task_id not in self.state.active:
            return
        if pid is None:
            log.warning("task %s: its process on %s cannot be followed again: %s", task_id, task.host, why)
            self._observe(d.process_lost(self.state, task_id, task.pid or 0, f"the daemon restarted and could not find it again: {why}"))
            return
        self._agents[task_id] = agent_for(task.spec.agent)
        self._running_on[task_id] = executor
        log.info("task %s: following its process %s on %s again", task_id, pid, task.host)

    def accounts(self) -> dict[str, str]:
        """The account each agent kind uses by default: a hash of the credentials it finds
        in the daemon's environment (see `scheduler.account_of`), never the values."""
        return {
            kind: agentenv.account(kind, self.base_env, traits(kind).credentials)
            for kind in agent_kinds()
            if traits(kind).credentials
        }

    async def shutdown(self, grace: float) -> None:
        """Stop starting work, stop running agents (recorded as interrupted), flush."""
        self._accepting = False
        if self._timer is not None:
            self._timer.cancel()
        await self.merger.close()
        self.cpu.close()
        interrupted = [
            ev.StopRequested(task=t, outcome=Status.INTERRUPTED, reason="the daemon was shut down while it ran")
            for t in sorted(self.state.active)
            if self.state.tasks[t].stopping is None
        ]
        if interrupted:
            self.store.append(self.clock(), interrupted)
        await asyncio.gather(*(executor.shutdown(grace) for executor in self.executors.values()))
        if self._ending:  # exits waiting for their changes to be measured
            await asyncio.gather(*self._ending.values(), return_exceptions=True)
        await self.sweeper.settle()
        # Exits arrive through _on_exit -> record_nowait, which works while not accepting.
        leftovers = d.reconcile(self.state)
        if leftovers:
            self.store.append(self.clock(), leftovers)
        for watcher in self.watchers:
            watcher.flag.set()
        await self.notifier.close()


