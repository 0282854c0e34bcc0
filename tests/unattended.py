"""Built-in workflows run end to end by the real Claude Code CLI against a scripted API,
each step doing what such a step does in a tiny Python project: shared by
tests/test_unattended.py and bench/bench_unattended.py (which says what they do)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from orchestra.shared import protocol as p
from orchestrad import events as ev
from orchestrad import workflows
from tests.daemon import Daemon, wait_for
from tests.reliability.harness import read_log
from tests.scripted_api import Reply, ScriptedAPI, default_side_reply, reply, side_kind

FINISHED = tuple(p.FINISHED)
SECRET = "SECRET KEY 7f3a"
BAD_STEP = ("bug-fix", "fix")  # the step that makes the bad calls, in the second run of bug-fix

CALC = '''def add(a, b):
    return a + b


def parse(text):
    return text.strip()
'''
TEST_CALC = '''from calc import add, parse


def test_add():
    assert add(2, 3) == 5


def test_parse():
    assert parse("  x ") == "x"
'''
README = "# calc\n\nA tiny calculator.\n"


def make_repo(path: Path) -> Path:
    """A git repository holding a tiny Python project with a passing test, one commit."""
    (path / "tests").mkdir(parents=True)
    (path / "calc.py").write_text(CALC)
    (path / "tests" / "test_calc.py").write_text(TEST_CALC)
    (path / "README.md").write_text(README)
    for argv in (["init", "-q", "-b", "main"], ["config", "user.name", "Bench"], ["config", "user.email", "bench@example.invalid"],
                 ["add", "-A"], ["commit", "-q", "-m", "calc: add and parse"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True, capture_output=True)
    return path


def bash(command: str) -> tuple[str, dict]:
    return ("Bash", {"command": command, "description": command.split()[0]})


def role_calls(role: str, step: str, w: str) -> list[tuple[str, dict]]:
    """What a step of this role does, in its working directory `w`, one tool call a turn."""
    if role == "architect":
        return [("Read", {"file_path": f"{w}/calc.py"}), ("Glob", {"pattern": "**/*.py", "path": w}), bash("git log --oneline -5")]
    if role == "implementer":
        return [("Read", {"file_path": f"{w}/calc.py"}),
                ("Edit", {"file_path": f"{w}/calc.py", "old_string": "    return text.strip()\n",
                          "new_string": "    return text.strip().casefold()\n"}),
                bash("python3 -m pytest -q"), bash("git status"), bash(f"git add -A && git commit -m '{step}: casefold parsed text'")]
    if role == "tester":
        test = f"from calc import add\n\n\ndef test_{step.replace('-', '_')}():\n    assert add(1, 1) == 2\n"
        return [("Write", {"file_path": f"{w}/tests/test_{step}.py", "content": test}), bash("python3 -m pytest -q 2>&1 | tail -5")]
    if role == "reviewer":
        return [("Read", {"file_path": f"{w}/calc.py"}), ("Grep", {"pattern": "def ", "path": w}),
                bash("git diff HEAD --stat"), bash("git log --oneline -5")]
    if role == "documenter":
        return [("Read", {"file_path": f"{w}/README.md"}),
                ("Edit", {"file_path": f"{w}/README.md", "old_string": "A tiny calculator.\n",
                          "new_string": "A tiny calculator. `parse` casefolds its input.\n"}),
                bash("git diff --stat")]
    raise ValueError(f"no script for role {role!r}")


def bad_calls(repo: Path, home: str) -> list[tuple[str, dict]]:
    return [("Write", {"file_path": str(repo / "outside.txt"), "content": "written outside the worktree\n"}),
            bash("git push origin main"),
            ("Read", {"file_path": f"{home}/.ssh/id_rsa"})]


@dataclass
class Steps:
    """The scripted model: answers each request of a step with the step's next tool call,
    worked out from the conversation so far (one assistant message per call), then a result.
    A step is known by its prompt (each template step's text before its first placeholder);
    its directory by the CLI's system prompt ("Primary working directory: ...")."""

    repo: Path
    home: str
    bad: set[int] = field(default_factory=set)  # workflow ids whose BAD_STEP makes the bad calls
    workflow_of: dict[str, int] = field(default_factory=dict)  # goal -> workflow id
    last: dict[tuple[str, str], object] = field(default_factory=dict)  # (goal, step) -> its last request
    unknown: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prefixes = sorted(((s.prompt.split("{")[0], t.name, s) for t in workflows.BUILTIN.values() for s in t.steps),
                               key=lambda x: -len(x[0]))

    def __call__(self, request) -> Reply:
        if side_kind(request.body) is not None:
            return default_side_reply(request)
        messages = request.messages
        prompt = re.sub(r"<system-reminder>.*?</system-reminder>", "", request.text_of(messages[0]), flags=re.S).strip()
        found = next(((t, s) for prefix, t, s in self.prefixes if prompt.startswith(prefix) and f"[{t}]" in prompt), None)
        where = re.search(r"[Ww]orking directory: (\S+)", request.system_text)
        if found is None or where is None:
            self.unknown.append(prompt[:200])
            return reply.text("I cannot tell which step this is.")
        template, step = found
        goal = max((g for g in self.workflow_of if g in prompt), key=len, default="")
        calls = role_calls(step.role, step.name, where.group(1))
        if (template, step.name) == BAD_STEP and self.workflow_of.get(goal) in self.bad:
            calls = bad_calls(self.repo, self.home) + calls
        done = sum(m.get("role") == "assistant" for m in messages)
        self.last[(goal, step.name)] = request
        if done < len(calls):
            return reply.tool_use(*calls[done])
        return reply.text(f"RESULT<{template}/{step.name}>: done, {len(calls)} tool calls.")


def tool_errors(steps: Steps, goal: str, step: str) -> list[str]:
    """The tool results a step's CLI reported as errors (denials included), from the
    conversation its last request carried."""
    request = steps.last.get((goal, step))
    if request is None:
        return [f"{step}: no request reached the API"]
    out = []
    for block in request.tool_results():
        if block.get("is_error"):
            content = block.get("content")
            if isinstance(content, list):
                content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            out.append(f"{step}: {str(content)[:160]}")
    return out


def pytest_lines(steps: Steps, goal: str) -> list[str]:
    """pytest's summary lines in the workflow's conversations ("3 passed in 0.01s")."""
    found = re.compile(r"\d+ (?:passed|failed)[^\n]*in [\d.]+s")
    return [m for (g, _), r in steps.last.items() if g == goal for m in found.findall(r.conversation_text())]


@dataclass
class Run:
    workflow: int
    template: str
    goal: str
    steps: dict[str, p.TaskView]
    asked: list[p.Question]  # the questions a person was asked while it ran (each answered: deny)


def start_team(claude: str, api: ScriptedAPI, max_concurrent: int = 4) -> Daemon:
    d = Daemon()
    d.env.update(api.env(d.env))
    d.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{d.env.get('PATH', '')}"  # python3 with pytest
    d.start()
    d.call(p.ConfigSet(key="claude_path", value=claude))
    d.call(p.ConfigSet(key="max_concurrent", value=max_concurrent))
    return d


def run_workflows(
    d: Daemon, steps: Steps, templates: list[str], *, bad: bool = False, timeout: float = 240, merge: bool = False
) -> list[Run]:
    """Run `templates` at once in git worktrees of `steps.repo` (with `merge`, merging their
    branches at the end), until all have ended; each question to a person is recorded and
    answered `orchestra respond ID --deny`."""
    runs: list[Run] = []
    for name in templates:
        goal = f"[{name}] parse should casefold its input" + (" (with bad calls)" if bad else "")
        view = d.call(p.RunWorkflow(template=name, goal=goal, cwd=str(steps.repo), worktree=True, merge=merge or None), p.WorkflowView)
        steps.workflow_of[goal] = view.id
        if bad:
            steps.bad.add(view.id)
        runs.append(Run(view.id, name, goal, {}, []))
    tasks = {t: run for run in runs for t in d.call(p.ShowWorkflow(workflow=run.workflow), p.WorkflowView).steps.values()}
    answered: set[str] = set()

    def ended() -> bool:
        time.sleep(0.2)  # a person's pace: look again five times a second
        done = True
        for task, run in tasks.items():
            view = d.task(task)
            if view.status is p.Status.WAITING and view.waiting is not None and view.waiting.request_id not in answered:
                answered.add(view.waiting.request_id)
                run.asked.append(view.waiting)
                result = d.cli("respond", str(task), "--deny", "-m", "not in an unattended run")
                assert result.exit_code == 0, result.output
            done = done and view.status in FINISHED
        return done

    wait_for(ended, timeout, "the workflows to end")
    for run in runs:
        run.steps = {t.step: d.task(t.id) for t in d.call(p.ShowWorkflow(workflow=run.workflow), p.WorkflowView).tasks}
    return runs


@dataclass
class Count:
    tools: int = 0
    by_rule: int = 0
    asked: int = 0
    decisions: list[tuple[str, str, str, str]] = field(default_factory=list)  # (tool, summary, effect, by)


def count(d: Daemon, runs: list[Run]) -> dict[int, Count]:
    """Per workflow, from the log (the daemon must have stopped): tool calls, decisions by
    rule, and questions to a person (with who answered them, and how)."""
    task_run = {t.id: run.workflow for run in runs for t in run.steps.values()}
    counts = {run.workflow: Count() for run in runs}
    asks: dict[str, tuple[int, ev.InputRequested]] = {}
    for rec in read_log(d.paths.log_dir):
        e = rec.event
        w = task_run.get(getattr(e, "task", None))
        if w is None:
            continue
        c = counts[w]
        if isinstance(e, ev.ToolUsed):
            c.tools += 1
        elif isinstance(e, ev.PermissionDecided):
            c.by_rule += 1
            c.decisions.append((e.tool, e.summary, e.effect, e.by))
        elif isinstance(e, ev.InputRequested) and e.kind == "permission":
            c.asked += 1
            asks[e.request_id] = (w, e)
        elif isinstance(e, ev.InputGiven) and e.request_id in asks:
            w, ask = asks.pop(e.request_id)
            c.decisions.append((ask.tool, ask.prompt.splitlines()[0], "deny" if e.answer.startswith("deny") else "allow", e.by))
    return counts
