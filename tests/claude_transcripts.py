"""Claude Code's stream-json as each supported version really speaks it: scenarios run with the
real CLI against tests/scripted_api.py, driven by the adapter alone (a `Core` plays the daemon:
no process of ours, no socket), and recorded whole into tests/data/transcripts/<version>/.

    python -m tests.claude_transcripts            # record every scenario with both CLIs

A transcript is one JSON object per line, in the order they happened: `{"p": N, "out": {...}}`
for a line the CLI wrote (process N of the task), `{"p": N, "in": {...}}` for one the adapter
wrote to its stdin. What varies from run to run (paths, uuids, request ids) is replaced by
stable stand-ins, the same everywhere in a scenario, so a request's id still matches its answer.
`replay` feeds a transcript's CLI lines to a fresh adapter per process, with the same rulings
and answers, and gives what the adapter made of them (tests/test_claude_contract.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from orchestra.shared import protocol as p
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad import launch
from orchestrad.agents import Ask, Reaction, agent_for
from orchestrad.budgets import utc_day
from tests.core import Core
from tests.scripted_api import Reply, ScriptedAPI, find_claude, reply

TRANSCRIPTS = Path(__file__).parent / "data" / "transcripts"
VERSIONS = ("old", "current")  # .local/npm (2.1.197, the oldest supported), .local/npm-claude-current (2.1.332)


class Rule(NamedTuple):
    effect: str
    by: str = "rule: scripted"
    reason: str = ""


@dataclass
class Scenario:
    """One task: its prompt, what the API answers, the follow-ups (each a process of its own,
    resuming the session), what the policy rules (by stage and tool), a person's answers in order."""

    prompt: str
    replies: Callable[[], list[Reply]]
    follow_ups: list[str] = field(default_factory=list)
    rules: dict[tuple[str, str], str] = field(default_factory=dict)  # ("before"|"permission", tool) -> effect
    answers: list[str] = field(default_factory=list)
    budget: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    oauth: bool = False


QUESTIONS = {"questions": [
    {"question": "Which database should I use?", "header": "Database", "multiSelect": False,
     "options": [{"label": "SQLite", "description": "a file"}, {"label": "PostgreSQL", "description": "a server"}]},
    {"question": "Which colors should the buttons have?", "header": "Colors", "multiSelect": True,
     "options": [{"label": "Red", "description": "warm"}, {"label": "Green", "description": "calm"}, {"label": "Blue", "description": "cool"}]},
]}

SCENARIOS: dict[str, Scenario] = {
    # a Bash call no rule decides: the CLI asks, a person allows it, it runs
    "permission": Scenario(
        "run it", lambda: [reply.tool_use("Bash", {"command": "echo ran > out.txt", "description": "write out.txt"}, id="toolu_bash1"), reply.text("done")],
        answers=["allow"],
    ),
    # the policy denies a Bash call in the PreToolUse hook, before the CLI's own rules
    "denied": Scenario(
        "delete it", lambda: [reply.tool_use("Bash", {"command": "rm -rf build"}, id="toolu_bash2"), reply.text("I did not delete it.")],
        rules={("before", "Bash"): "deny"},
    ),
    # AskUserQuestion with two questions, the second multi-select: each answered in turn
    "questions": Scenario(
        "set it up", lambda: [reply.tool_use("AskUserQuestion", QUESTIONS, id="toolu_ask1"), reply.text("PostgreSQL, red and blue buttons.")],
        answers=["2", "1,3"],
    ),
    # an answer, then two follow-ups: three processes, the later two resuming the session
    "follow_ups": Scenario(
        "what is the answer?", lambda: [reply.text("42."), reply.text("Because."), reply.text("Yes.")],
        follow_ups=["why?", "sure?"],
    ),
    # a budget the first reply spends: the CLI stops there (error_max_budget_usd)
    "budget": Scenario(
        "do the steps", lambda: [reply.tool_use("Bash", {"command": "echo step1"}, id="toolu_bash3"), reply.text("unreached")],
        budget=0.0005, rules={("before", "Bash"): "deny"},
    ),
    # a 500 from the API: an error result under subtype "success"
    "api_error": Scenario("anything", lambda: [reply.error(500, message="scripted failure", repeat=None)]),
    # the CLI retries a 529 once by itself (system/api_retry), then succeeds
    "retried": Scenario(
        "try", lambda: [reply.overloaded(), reply.text("made it")], env={"CLAUDE_CODE_MAX_RETRIES": "1"},
    ),
    # logged in with OAuth: a rate_limit_event after the answer
    "oauth": Scenario("hello", lambda: [reply.text("hi")], oauth=True),
}


def claude_path(version: str) -> str | None:
    return find_claude(version)


# ---------------------------------------------------------------------------------------
# Driving: a Core plays the daemon around one adapter per process


class Task:
    """One task of a scenario, the Core holding its state."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.core = Core()
        self.id = self.core.submit(prompt=scenario.prompt, agent="claude", cwd="/work", budget_usd=scenario.budget)
        self.answers = list(scenario.answers)
        self.events: list[ev.Event] = []  # everything the adapters said, in order

    def start(self, message: str | None = None) -> tuple[Any, list[str], bytes]:
        """A new process: (its adapter, its argv, its greeting)."""
        if message is not None:
            self.core.do(p.Respond(task=self.id, text=message))
        self.core.tick()
        task = launch.prepared(self.core.state, self.core.state.tasks[self.id], utc_day(self.core.now))
        agent = agent_for("claude")
        argv = agent.command(task, self.core.state.config, {})
        greeting = agent.greeting(task)
        self._record(greeting)
        return agent, argv, greeting.write

    def output(self, agent, line: bytes) -> tuple[bytes, bool]:
        """A line the CLI wrote: what the adapter writes back, and whether it closes stdin."""
        reaction = agent.output(self.core.state.tasks[self.id], "stdout", line)
        write, close = bytearray(reaction.write), reaction.close_stdin
        asked = self._record(reaction)
        for ask in reaction.asks:
            effect = self.scenario.rules.get((ask.stage, ask.tool))
            more = agent.ruled(self.core.state.tasks[self.id], ask, Rule(effect) if effect else None)
            write += more.write
            asked += self._record(more)
        while asked:
            question = asked.pop(0)
            answer = self.answers.pop(0)
            given = self.core.do(p.Respond(task=self.id, text=answer, allow=answer == "allow" and question.kind == "permission"))
            for event in given:
                self.events.append(event)
                if isinstance(event, ev.InputGiven):
                    more = agent.answer(self.core.state.tasks[self.id], event)
                    write += more.write
                    asked += self._record(more)
        return bytes(write), close

    def exited(self, code: int) -> None:
        task = self.core.state.tasks[self.id]
        self.core.apply(d.process_exited(self.core.state, self.id, task.pid or 0, code, None, now=self.core.now))

    def _record(self, reaction: Reaction) -> list[ev.InputRequested]:
        events = [item[0] if isinstance(item, tuple) else item for item in reaction.items]
        self.core.apply(events)
        self.events += events
        return [e for e in events if isinstance(e, ev.InputRequested)]


def run_live(claude: str, name: str) -> tuple[list[dict[str, Any]], Task]:
    """Run scenario `name` with the CLI at `claude`: its transcript (unscrubbed) and the task."""
    scenario = SCENARIOS[name]
    entries: list[dict[str, Any]] = []
    with ScriptedAPI(scenario.replies()) as api, tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, "work")
        os.mkdir(work)
        env = api.oauth_env() if scenario.oauth else api.env()
        env.update(scenario.env)
        task = Task(scenario)
        for n, message in enumerate([None, *scenario.follow_ups]):
            agent, argv, greeting = task.start(message)
            proc = subprocess.Popen([claude, *argv[1:]], cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            assert proc.stdin is not None and proc.stdout is not None
            _write(proc, greeting, entries, n)
            for raw in proc.stdout:
                if not raw.strip():
                    continue
                entries.append({"p": n, "out": json.loads(raw)})
                write, close = task.output(agent, raw)
                _write(proc, write, entries, n)
                if close and not proc.stdin.closed:
                    proc.stdin.close()
            code = proc.wait(timeout=60)
            task.exited(code)
        return scrub(entries, {work: "/work", os.path.realpath(work): "/work", api.home: "/home", str(api.port): "PORT"}), task


def _write(proc: subprocess.Popen, data: bytes, entries: list[dict[str, Any]], n: int) -> None:
    if not data or proc.stdin is None or proc.stdin.closed:
        return
    for line in data.splitlines():
        entries.append({"p": n, "in": json.loads(line)})
    proc.stdin.write(data)
    proc.stdin.flush()


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SCRIPTED_ID = re.compile(r"req_scripted_[0-9a-f]{12}")
VARYING = re.compile(r'("pid": |/tmp/cc-socks/)\d+')  # the CLI's pid, also in its socket's name


def scrub(entries: list[dict[str, Any]], paths: dict[str, str]) -> list[dict[str, Any]]:
    """The transcript with what varies between runs made stable (the same stand-in for the
    same value throughout)."""
    seen: dict[str, str] = {}

    def stand_in(match: re.Match[str]) -> str:
        value = match.group(0)
        if value not in seen:
            seen[value] = f"00000000-0000-4000-8000-{len(seen) + 1:012d}" if UUID.fullmatch(value) else f"req_scripted_{len(seen) + 1:012d}"
        return seen[value]

    out = []
    for entry in entries:
        text = json.dumps(entry, ensure_ascii=False)
        for path, instead in sorted(paths.items(), key=lambda kv: -len(kv[0])):
            if path != instead and len(path) > 4:  # as it is, and as a project's directory name
                text = text.replace(path, instead).replace(re.sub(r"[^A-Za-z0-9]", "-", path), instead.replace("/", "-"))
        text = VARYING.sub(lambda m: m.group(1) + "1", text)
        text = SCRIPTED_ID.sub(stand_in, UUID.sub(stand_in, text))
        out.append(json.loads(text))
    return out


def path(version: str, name: str) -> Path:
    return TRANSCRIPTS / version / f"{name}.jsonl"


def load(version: str, name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path(version, name).read_text().splitlines() if line.strip()]


class Replayed(NamedTuple):
    task: Task
    written: list[dict[str, Any]]  # what the adapters wrote to stdin, in order
    argv: list[list[str]]  # each process's


def replay(entries: list[dict[str, Any]], name: str) -> Replayed:
    """Transcript `entries` of scenario `name` through fresh adapters, as the daemon would."""
    task = Task(SCENARIOS[name])
    written: list[dict[str, Any]] = []
    argvs: list[list[str]] = []
    for n in sorted({e["p"] for e in entries}):
        agent, argv, greeting = task.start(None if n == 0 else SCENARIOS[name].follow_ups[n - 1])
        argvs.append(argv)
        written += [json.loads(line) for line in greeting.splitlines()]
        for entry in entries:
            if entry["p"] == n and "out" in entry:
                write, _ = task.output(agent, json.dumps(entry["out"]).encode() + b"\n")
                written += [json.loads(line) for line in write.splitlines()]
        result = [e for e in task.events if isinstance(e, ev.AgentResult)][-1]
        task.exited(1 if result.is_error else 0)
    return Replayed(task, written, argvs)


def record(versions: tuple[str, ...] = VERSIONS, names: tuple[str, ...] = tuple(SCENARIOS)) -> None:
    for version in versions:
        claude = claude_path(version)
        if claude is None:
            sys.exit(f"no Claude Code for {version!r}: run .ci/run's npm lines first")
        for name in names:
            entries, _ = run_live(claude, name)
            target = path(version, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in entries))
            print(f"{target}: {len(entries)} lines")


if __name__ == "__main__":
    record(tuple(sys.argv[1:2]) or VERSIONS, tuple(sys.argv[2:]) or tuple(SCENARIOS))
