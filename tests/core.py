"""A pure harness for the functional core: decide, evolve and plan, with a fake clock.

It keeps every record it applied, so tests can replay them and compare.
"""

from __future__ import annotations

from orchestra.shared import protocol as p
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad import scheduler
from orchestrad.state import State, evolve, replay


class Core:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.state = State()
        self.now = now
        self.records: list[tuple[int, float, ev.Event, object]] = []

    def apply(self, events: list[ev.Event]) -> list[ev.Event]:
        for event in events:
            seq = len(self.records) + 1
            self.records.append((seq, self.now, event, None))
            evolve(self.state, event, seq=seq, ts=self.now)
        return events

    def do(self, command: p.Request) -> list[ev.Event]:
        return self.apply(d.decide(self.state, command, self.now))

    def submit(self, **kw) -> int:
        kw.setdefault("cwd", "/tmp")
        if "prompt" not in kw and "argv" not in kw:
            kw["argv"] = ["true"]
        [event] = self.do(p.Submit(**kw))
        return event.task

    def plan(self) -> scheduler.Plan:
        return scheduler.plan(self.state, self.now)

    def tick(self) -> list[int]:
        """Apply the plan's events and start what it says, as the daemon would (pids fake)."""
        result = self.plan()
        self.apply(result.events)
        for task_id in result.start:
            self.spawn(task_id)
        return result.start

    def spawn(self, task_id: int, pid: int | None = None) -> None:
        attempt = self.state.tasks[task_id].attempts + 1
        self.apply([
            ev.TaskStarting(task=task_id, attempt=attempt),
            ev.ProcessSpawned(task=task_id, attempt=attempt, pid=pid or 10_000 + task_id, argv=[]),
        ])

    def exit(self, task_id: int, code: int | None = 0, signal: int | None = None, *, result: str | None = "done") -> None:
        """The process exits; an agent (not a command) first gives `result`, unless None."""
        task = self.state.tasks[task_id]
        if task.spec.agent != "command" and result is not None and code == 0:
            self.apply([ev.AgentResult(task=task_id, text=result, is_error=False)])
        self.apply(d.process_exited(self.state, task_id, task.pid or 0, code, signal, now=self.now))

    def status(self, task_id: int) -> p.Status:
        return self.state.tasks[task_id].status

    def replayed(self) -> State:
        return replay(self.records)
