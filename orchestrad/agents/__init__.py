"""Agent adapters: how to start one kind of agent and turn its I/O into events.

An adapter is told about a task's process at three points — what to run (`command`), what
to write first (`greeting`), and each chunk of output (`output`) — and turns a recorded
answer into bytes for the process's stdin (`answer`). It does no I/O itself; the engine and
the supervisor do. New agents (Codex CLI, Gemini CLI) fit the same interface.
"""

from __future__ import annotations

from orchestrad import events as ev
from orchestrad.config import Config
from orchestrad.state import Task

Item = ev.Event | tuple[ev.Event, bytes]


class Agent:
    name = ""

    def command(self, task: Task, config: Config) -> list[str]:
        raise NotImplementedError

    def greeting(self, task: Task) -> bytes:
        return b""

    def output(self, task: Task, stream: str, chunk: bytes) -> list[Item]:
        return [(ev.OutputAppended(task=task.id, stream=stream, size=len(chunk)), chunk)]

    def answer(self, task: Task, given: ev.InputGiven) -> bytes:
        return b""


class CommandAgent(Agent):
    """Any argv: scripts, tests, other CLIs. Its output is kept as it is; a response is a
    line written to its stdin."""

    name = "command"

    def command(self, task: Task, config: Config) -> list[str]:
        return list(task.spec.argv)

    def answer(self, task: Task, given: ev.InputGiven) -> bytes:
        text = given.answer
        return (text if text.endswith("\n") else text + "\n").encode()


_AGENTS: dict[str, Agent] = {"command": CommandAgent()}


def agent_for(name: str) -> Agent:
    try:
        return _AGENTS[name]
    except KeyError:
        raise LookupError(f"no adapter for agent {name!r}") from None
