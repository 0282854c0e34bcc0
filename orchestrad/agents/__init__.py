"""Agent adapters: how to start one kind of agent and turn its I/O into events.

The engine tells an adapter about its task's process at a few points and acts on what it
returns; the adapter itself does no I/O:

* `command(task, config, custom_roles)` — the argv to run;
* `prepare(task, cwd, env)` — just before the process starts, where it will work and with
  what environment; the one call in which an adapter may touch the disk, for a CLI whose own
  state must be put right first (Gemini CLI: `gemini._move_aside`); an OSError is logged;
* `greeting(task)` — what to write to stdin first (a `Reaction`);
* `output(task, stream, chunk)` — a chunk of output becomes a `Reaction`: events to record
  (the output itself, and whatever the adapter understood in it), bytes to write back, and
  whether to close stdin;
* `answer(task, given)` — a person's recorded answer becomes a `Reaction`;
* a `Reaction`'s `asks` are tool calls for the permission policy (`orchestrad.policy`);
  the engine rules on each and hands the ruling to `ruled(task, ask, ruling)`, which
  answers the agent itself or, when no rule decides, asks a person;
* `spawn_error(message)` and `failure_detail()` — words for a person when it goes wrong;
* `render(stream, data)` — a readable transcript of stored output, for `orchestra logs`;
  `shown_as_stored(stream)` says when that is the output as stored;
* `inherit_env` — the credential-like variables of the daemon's environment this kind of
  agent needs (see `orchestrad.agentenv`);
  `default_env` — variables it gets unless its environment sets them (Claude Code: no
  retries of its own, see `orchestrad.retries`);
* `sandbox_state(env)` — where this kind keeps its own state, which it must be able to
  write inside a sandbox, and what in there stays read-only (see `orchestrad.sandbox`);
* `program`, `version_args` and `missing_credentials(env)` — its CLI's name on PATH (the
  setting `agent_paths` may name another), how to ask the CLI its version, and whether
  the daemon's environment holds what the CLI needs to sign in (for `orchestra agents`).

One adapter instance serves one process, so it may keep what it needs between chunks
(a partial line, the requests waiting for an answer).

Adding an agent kind is one module in this package that defines `AGENT`, its `Agent`
subclass: the kinds are the modules found here (docs/AGENTS.md is the guide).
"""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from typing import Callable, NamedTuple, Protocol

from orchestra.shared.protocol import Role
from orchestrad import events as ev
from orchestrad.config import Config
from orchestrad.state import Task

Item = ev.Event | tuple[ev.Event, bytes]
log = logging.getLogger(__name__)


class Ask(NamedTuple):
    """A tool call the agent wants to make, for the permission policy to rule on."""

    request_id: str
    tool: str
    input: dict
    stage: str  # "before" (every call, before the agent's own rules) | "permission" (the agent would ask a person)


class Ruling(Protocol):
    """What the policy decided (`orchestrad.policy.Decision`, or None: no rule did)."""

    effect: str
    by: str
    reason: str


class Reaction(NamedTuple):
    items: list[Item] = []
    write: bytes = b""
    close_stdin: bool = False
    asks: list[Ask] = []  # for the engine to put to the policy, then to `Agent.ruled`


class Traits(NamedTuple):
    """What an agent kind is, for the rules that depend on it (the pure core asks these,
    never the kind's name)."""

    runs_argv: bool = False  # it is given a program to run, not a prompt; input is a line on stdin
    converses: bool = False  # it keeps a conversation: a follow-up or a resume continues its session
    reports_result: bool = False  # it says its own result; else its result is the end of its stdout
    needs_network: bool = False  # it cannot work without the network (its model's API)
    credentials: tuple[str, ...] = ()  # the variables that choose its account (whose usage limits it meets)
    reports_cost: bool = False  # it says what it spends, and stops at a budget it is given (orchestrad.budgets)


class SandboxState(NamedTuple):
    """What an agent kind must be able to write inside a sandbox (see `orchestrad.sandbox`)."""

    writable: tuple[str, ...] = ()  # directories it keeps its state in (made where missing)
    read_only: tuple[str, ...] = ()  # within them, what would change later runs outside the sandbox
    seed: tuple[tuple[str, str | None], ...] = ()  # of those, what to make where missing (None: a directory), so that it can be kept read-only


class Agent:
    name = ""
    program = ""  # its CLI, a name on PATH ("": it runs the task's own argv)
    version_args: tuple[str, ...] = ("--version",)
    traits = Traits()
    inherit_env: tuple[str, ...] = ()  # credential-like daemon variables (globs) this kind needs
    default_env: dict[str, str] = {}  # variables it gets unless the daemon's or the task's environment sets them

    def command(self, task: Task, config: Config, custom_roles: dict[str, Role]) -> list[str]:
        raise NotImplementedError

    def prepare(self, task: Task, cwd: str, env: dict[str, str]) -> None:
        """Called once, before `greeting`, with the process's working directory and environment."""

    def greeting(self, task: Task) -> Reaction:
        return Reaction()

    def sandbox_state(self, env: dict[str, str]) -> SandboxState:
        """Its own state, for a process with environment `env`."""
        return SandboxState()

    def workdir_state(self, cwd: str, env: dict[str, str]) -> list[str]:
        """The directories where its CLI keeps state of its own tied to the working
        directory `cwd` (Claude Code: the project's session transcripts), for a process
        with environment `env`: carried with a task that runs on another machine."""
        return []

    def output(self, task: Task, stream: str, chunk: bytes) -> Reaction:
        return Reaction([(ev.OutputAppended(task=task.id, stream=stream, size=len(chunk)), chunk)])

    def answer(self, task: Task, given: ev.InputGiven) -> Reaction:
        return Reaction()

    def ruled(self, task: Task, ask: Ask, ruling: Ruling | None) -> Reaction:
        """The policy's ruling on `ask` (None: no rule decides) becomes a `Reaction`."""
        return Reaction()

    def spawn_error(self, message: str) -> str:
        return message

    @classmethod
    def missing_credentials(cls, env: dict[str, str], home: str) -> str:
        """"" when the environment `env` (and the files under `home`) hold what the CLI
        needs to sign in; else a sentence that says what to set."""
        return ""

    def failure_detail(self) -> str:
        return ""

    @staticmethod
    def render(stream: str, data: bytes) -> bytes:
        return b"" if stream == "stdin" else data

    @staticmethod
    def shown_as_stored(stream: str) -> bool:
        """Whether `render` gives this stream's output exactly as stored (so `logs` can send
        it straight from the log, part by part)."""
        return stream != "stdin"


def read_message(handle: Callable[[Task, dict], Reaction], task: Task, message: dict) -> Reaction:
    """`handle(task, message)` for one message an agent wrote, or nothing when it is not what
    the kind's protocol says (a field of the wrong type): an agent's output is not to be
    trusted, and one malformed message is passed over (its bytes are kept all the same)."""
    try:
        return handle(task, message)
    except Exception as exc:  # noqa: BLE001 - whatever the malformed message made it trip on
        log.warning("task %s: passed over a message its agent wrote that could not be read (%r): %.300s", task.id, exc, message)
        return Reaction()


@functools.cache
def _factories() -> dict[str, type[Agent]]:
    """The agent kinds: every module of this package that defines `AGENT`, imported once
    (decide asks for their traits on every submit)."""
    found: dict[str, type[Agent]] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
        kind = getattr(importlib.import_module(f"{__name__}.{module}"), "AGENT", None)
        if isinstance(kind, type) and issubclass(kind, Agent) and kind.name:
            found[kind.name] = kind
    return found


def program(name: str, config: Config) -> str:
    """The CLI agent kind `name` runs: as `agent_paths` (or, for Claude Code, `claude_path`)
    names it, else its name on PATH."""
    kind = _factories().get(name)
    default = kind.program if kind is not None else ""
    if name == "claude" and config.claude_path != "claude":
        return config.claude_path
    return config.agent_paths.get(name) or default


def kind(name: str) -> type[Agent]:
    """The adapter class of agent kind `name` (LookupError if there is none)."""
    found = _factories().get(name)
    if found is None:
        raise LookupError(f"no adapter for agent {name!r}")
    return found


def agent_for(name: str) -> Agent:
    """A fresh adapter for one process of agent `name`."""
    factory = _factories().get(name)
    if factory is None:
        raise LookupError(f"no adapter for agent {name!r}")
    return factory()


def kinds() -> list[str]:
    """The names of the agent kinds there are."""
    return list(_factories())


def traits(name: str) -> Traits:
    """The traits of agent kind `name` (an unknown kind has none)."""
    factory = _factories().get(name)
    return factory.traits if factory is not None else Agent.traits


def renderer(name: str) -> Callable[[str, bytes], bytes]:
    """How `orchestra logs` shows agent `name`'s output. What an agent writes is not to be
    trusted: a chunk the kind's renderer cannot read is shown line by line, and a line it
    cannot read is shown as stored."""
    factory = _factories().get(name)
    render = factory.render if factory is not None else Agent.render

    def safe(stream: str, data: bytes) -> bytes:
        try:
            return render(stream, data)
        except Exception:  # noqa: BLE001 - any line an agent wrote may be malformed
            shown = []
            for line in data.splitlines(keepends=True):
                try:
                    shown.append(render(stream, line))
                except Exception:  # noqa: BLE001
                    shown.append(line)
            return b"".join(shown)

    return safe


def shown_as_stored(name: str) -> Callable[[str], bool]:
    """For agent `name`: whether `renderer(name)` shows a stream's output as stored."""
    factory = _factories().get(name)
    return factory.shown_as_stored if factory is not None else Agent.shown_as_stored
