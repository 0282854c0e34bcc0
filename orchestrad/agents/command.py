"""The `command` agent: any argv (scripts, tests, other CLIs). Its output is kept as it is;
a response is a line written to its stdin."""

from __future__ import annotations

from orchestra.shared.protocol import Role
from orchestrad import events as ev
from orchestrad.agents import Agent, Reaction, Traits
from orchestrad.config import Config
from orchestrad.state import Task


class CommandAgent(Agent):
    name = "command"
    traits = Traits(runs_argv=True)

    def command(self, task: Task, config: Config, custom_roles: dict[str, Role]) -> list[str]:
        return list(task.spec.argv)

    def answer(self, task: Task, given: ev.InputGiven) -> Reaction:
        text = given.answer
        return Reaction(write=(text if text.endswith("\n") else text + "\n").encode())


AGENT = CommandAgent
