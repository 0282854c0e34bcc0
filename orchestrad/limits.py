"""Limits on what a request may carry: every field a person or an agent gives is checked
here before anything is decided, so that no task can be too big to list, to log or to run.

Pure: each check raises a `bad_request` that says which field, what it holds and what is
allowed, quoting at most a short piece of the value (a 7 MiB title is not echoed back).
The numbers live in `orchestra.shared.protocol`, where clients can see them too.
"""

from __future__ import annotations

import math
import re

from orchestra.shared.vocab import shorten
from orchestra.shared import protocol as p
from orchestra.shared.protocol import bad_request

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_submit(cmd: p.Submit) -> None:
    """Raise if any field of a `Submit` is out of bounds."""
    text("title", cmd.title, p.MAX_TITLE)
    length("prompt", cmd.prompt, p.MAX_PROMPT)
    _argv(cmd.argv)
    _env(cmd.env)
    path("working directory", cmd.cwd)
    for what, name in (("role", cmd.role), ("agent", cmd.agent), ("model", cmd.model)):
        if name is not None:
            text(what, name, p.MAX_NAME)
    if len(cmd.after) > p.MAX_AFTER:
        raise bad_request(f"a task may run after at most {p.MAX_AFTER:,} others, not {len(cmd.after):,}; make it depend on a few that depend on the rest")
    for dep in cmd.after:
        task_id(dep, "dependency")
    seconds("timeout", cmd.timeout)
    seconds("idle timeout", cmd.idle_timeout)
    budget(cmd.budget_usd)


def check_run(cmd: p.RunWorkflow) -> None:
    """Raise if any field of a `RunWorkflow` is out of bounds."""
    text("template name", cmd.template, p.MAX_NAME)
    length("goal", cmd.goal, p.MAX_PROMPT)
    path("working directory", cmd.cwd)
    if cmd.agent is not None:
        text("agent", cmd.agent, p.MAX_NAME)
    budget(cmd.budget_usd)


def check_answer(text: str | None, message: str) -> None:
    """Raise if a `Respond` (or a `Resume`'s message) carries too much text."""
    length("answer", text or "", p.MAX_PROMPT)
    length("message", message, p.MAX_PROMPT)


def length(what: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise bad_request(f"the {what} is {len(value):,} characters, over the limit of {limit:,}{_HINTS.get(what, '')}")


def text(what: str, value: str, limit: int) -> None:
    """At most `limit` characters, and no NUL: it becomes an argument, a path or a name."""
    length(what, value, limit)
    if "\0" in value:
        raise bad_request(f"the {what} {_quote(value)} holds a NUL character, which no program can be given")


_HINTS = {
    "title": "; a title is a short name for lists (the prompt or command can be long)",
    "prompt": "; put long material in a file and tell the agent where it is",
    "goal": "; put long material in a file and say where it is in the goal",
    "answer": "; put long material in a file and tell the agent where it is",
}


def path(what: str, value: str) -> None:
    text(what, value, p.MAX_PATH)
    if not value.startswith("/"):
        raise bad_request(f"{what} {_quote(value)} must be an absolute path")


def task_id(value: int, what: str = "task") -> None:
    if not 1 <= value <= p.MAX_TASK_ID:
        raise bad_request(f"{what} {str(value)[:40]} is not a task id: ids are whole numbers from 1, as `orchestra ps` shows")


def seconds(what: str, value: float | None) -> None:
    """None (no limit), or a finite number of seconds above 0 and at most MAX_SECONDS."""
    if value is None:
        return
    if not (math.isfinite(value) and 0 < value <= p.MAX_SECONDS):
        raise bad_request(f"{what} must be a number of seconds above 0 and at most {p.MAX_SECONDS:,.0f} (30 days), not {value}")


def budget(value: float | None) -> None:
    if value is None:
        return
    if not (math.isfinite(value) and 0 < value <= p.MAX_BUDGET_USD):
        raise bad_request(f"budget must be above 0 and at most {p.MAX_BUDGET_USD:,.0f} dollars, not {value}")


def _argv(argv: list[str]) -> None:
    if len(argv) > p.MAX_ARGS:
        raise bad_request(f"the command has {len(argv):,} arguments, over the limit of {p.MAX_ARGS:,}; pass long lists in a file")
    size = sum(len(arg.encode()) for arg in argv)
    if size > p.MAX_ARGV_BYTES:
        raise bad_request(f"the command is {size:,} bytes long, over the limit of {p.MAX_ARGV_BYTES:,}; pass long material in a file")
    for i, arg in enumerate(argv, 1):
        if "\0" in arg:
            raise bad_request(f"word {i} of the command, {_quote(arg)}, holds a NUL character, which no program can be given")


def _env(env: dict[str, str]) -> None:
    if len(env) > p.MAX_ENV:
        raise bad_request(f"the task has {len(env):,} environment variables, over the limit of {p.MAX_ENV:,}")
    for name, value in env.items():
        if len(name) > p.MAX_NAME or not ENV_NAME.fullmatch(name):
            raise bad_request(
                f"{_quote(name)} is not an environment variable name: letters, digits and _, "
                f"not starting with a digit, at most {p.MAX_NAME} characters"
            )
        if len(value) > p.MAX_ENV_VALUE:
            raise bad_request(f"the value of {name} is {len(value):,} characters, over the limit of {p.MAX_ENV_VALUE:,}; pass long material in a file")
        if "\0" in value:
            raise bad_request(f"the value of {name} holds a NUL character, which no environment can hold")


def _quote(value: str, limit: int = 60) -> str:
    """`value` as a person can read it in an error: quoted, escapes visible, cut short."""
    shown = shorten(value, limit)
    return repr(shown)
