"""Workflow templates: a goal becomes a small team, each step's result feeding the next.

A template is a small DAG of steps. Each step has a name, a role, a prompt template (or an
argv, for the command agent), the steps it runs after, its workspace, and optionally a
condition: run only if a named step succeeded, or only if it failed. A prompt may quote the
goal and earlier steps' results: ``{goal}``, ``{steps.design.result}``,
``{steps.design.status}``, ``{steps.implement.changes}`` (what it changed in its worktree:
a diff's stat). Quoting is resolved when the step starts, so it carries what the
earlier step actually produced (long results are shortened in the middle).

Workspaces, when the workflow runs with a git worktree: ``shared`` steps work in the
workflow's worktree (so the tester sees the implementer's change), ``own`` steps get a
worktree of their own, on a branch from where the shared one is when they start (so steps
that run side by side do not write into one tree, and still see the work before them).
Without a worktree every step works in the workflow's directory.

People add templates as TOML files in `<config dir>/workflows/NAME.toml`::

    description = "Fix a flaky test"
    worktree = true

    [[steps]]
    name = "reproduce"
    role = "tester"
    prompt = "Find out why this test is flaky: {goal}"

    [[steps]]
    name = "fix"
    role = "implementer"
    after = ["reproduce"]
    prompt = "Fix it. What the tester found:\\n{steps.reproduce.result}"

Loaded templates are recorded in the log (`CatalogChanged`): fields are only ever added at
the end, with defaults. Pure: parsing, checking and rendering do no I/O.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Protocol

from orchestra.shared.protocol import Status
from orchestra.shared.protocol import WorkflowStep as Step
from orchestra.shared.protocol import WorkflowTemplate as Template
from orchestrad.config import EXECUTORS
from orchestrad import roles as roles_mod
from orchestrad import tomlfile

RESULT_LIMIT = 6000  # characters of an earlier step's result quoted in a later prompt
MAX_STEPS = 100  # a template is a small team, not a build graph
MAX_STEP_TEXT = 64_000  # characters in one step's prompt, or in its argv together
_PLACEHOLDER = re.compile(r"\{(goal|steps\.([A-Za-z0-9_-]+)\.(result|status|changes))\}")


def _steps(*steps: Step) -> list[Step]:
    return list(steps)


BUILTIN: dict[str, Template] = {
    t.name: t
    for t in [
        Template(
            name="code-review",
            description="A thorough review: the reviewer reads the code while the tester runs the tests; then one report.",
            steps=_steps(
                Step(name="review", role="reviewer", prompt=(
                    "Review this code: {goal}\n\nReport findings with file and line, ordered by severity.")),
                Step(name="tests", role="tester", prompt=(
                    "Run the project's tests and checks relevant to: {goal}\n\n"
                    "Report each failure precisely; do not fix anything.")),
                Step(name="report", role="reviewer", after=["review", "tests"], prompt=(
                    "Write the final review of: {goal}\n\nFindings from reading the code:\n"
                    "{steps.review.result}\n\nWhat the tests showed:\n{steps.tests.result}\n\n"
                    "Merge both into one prioritised list, and say whether it is ready to merge.")),
            ),
        ),
        Template(
            name="feature-development",
            description="Architect designs, implementer builds, tester and documenter work in parallel, reviewer checks.",
            steps=_steps(
                Step(name="design", role="architect", prompt=(
                    "Design this feature: {goal}\n\nProduce a plan another engineer can implement.")),
                Step(name="implement", role="implementer", after=["design"], prompt=(
                    "Implement this feature: {goal}\n\nFollow the architect's design:\n{steps.design.result}")),
                Step(name="test", role="tester", after=["implement"], workspace="own", prompt=(
                    "Write and run tests for the feature just implemented: {goal}\n\n"
                    "What the implementer did:\n{steps.implement.result}")),
                Step(name="document", role="documenter", after=["implement"], workspace="own", prompt=(
                    "Document the feature just implemented: {goal}\n\n"
                    "What the implementer did:\n{steps.implement.result}")),
                Step(name="review", role="reviewer", after=["test", "document"], prompt=(
                    "Review the change made for: {goal}\n\nDesign:\n{steps.design.result}\n\n"
                    "Implementation:\n{steps.implement.result}\n\nTests:\n{steps.test.result}\n\n"
                    "Documentation:\n{steps.document.result}")),
            ),
        ),
        Template(
            name="bug-fix",
            description="Reproduce with a failing test, fix, verify, review.",
            steps=_steps(
                Step(name="reproduce", role="tester", prompt=(
                    "Reproduce this bug with a failing test: {goal}\n\n"
                    "Report the test, how to run it, and how it fails.")),
                Step(name="fix", role="implementer", after=["reproduce"], prompt=(
                    "Fix this bug: {goal}\n\nThe tester reproduced it:\n{steps.reproduce.result}\n\n"
                    "Make the failing test pass without breaking others.")),
                Step(name="verify", role="tester", after=["fix"], prompt=(
                    "Verify the fix for: {goal}\n\nThe fix:\n{steps.fix.result}\n\n"
                    "Run the reproducing test and the whole suite; report precisely.")),
                Step(name="review", role="reviewer", after=["verify"], prompt=(
                    "Review the fix for: {goal}\n\nThe fix:\n{steps.fix.result}\n\n"
                    "Verification:\n{steps.verify.result}")),
            ),
        ),
        Template(
            name="refactoring",
            description="Pin behaviour with tests, refactor, verify nothing changed, review.",
            steps=_steps(
                Step(name="pin", role="tester", prompt=(
                    "Before a refactoring of {goal}, write tests that pin down the current behaviour. "
                    "Run them; they must pass now.")),
                Step(name="refactor", role="implementer", after=["pin"], prompt=(
                    "Refactor: {goal}\n\nBehaviour must not change; these tests pin it:\n{steps.pin.result}")),
                Step(name="verify", role="tester", after=["refactor"], prompt=(
                    "Verify the refactoring of {goal} changed no behaviour: run the pinning tests "
                    "and the whole suite.\n\nWhat changed:\n{steps.refactor.result}")),
                Step(name="review", role="reviewer", after=["verify"], prompt=(
                    "Review the refactoring of {goal}.\n\nWhat changed:\n{steps.refactor.result}\n\n"
                    "Verification:\n{steps.verify.result}")),
            ),
        ),
    ]
}


def get(name: str, custom: dict[str, Template] | None = None) -> Template | None:
    if custom and name in custom:
        return custom[name]
    return BUILTIN.get(name)


def names(custom: dict[str, Template] | None = None) -> list[str]:
    return sorted({*BUILTIN, *(custom or {})})


def parse(name: str, text: str, role_names: list[str] | set[str]) -> Template:
    """A template from a TOML file's text, checked; ValueError saying what is wrong."""
    template = tomlfile.load(text, Template, name)
    problems = check(template, role_names)
    if problems:
        raise ValueError("; ".join(problems))
    return template


def check(template: Template, role_names: list[str] | set[str]) -> list[str]:
    """Everything wrong with a template, in sentences; empty when it can run."""
    problems: list[str] = []
    if not template.steps:
        return ["it has no steps"]
    if len(template.steps) > MAX_STEPS:
        return [f"it has {len(template.steps):,} steps, over the limit of {MAX_STEPS}; split it into smaller workflows"]
    names = Counter(s.name for s in template.steps)
    for name in sorted(n for n, count in names.items() if count > 1):
        problems.append(f"two steps are called {name!r}")
    known = set(names)
    for step in template.steps:
        where = f"step {step.name!r}"
        size = len(step.prompt) + sum(len(a) for a in step.argv)
        if size > MAX_STEP_TEXT:
            problems.append(f"{where}: its prompt (or argv) holds {size:,} characters, over the limit of {MAX_STEP_TEXT:,}")
            continue
        if not step.name or not step.name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"{where}: a step name may use only letters, digits, - and _")
        if step.role not in role_names:
            problems.append(f"{where}: unknown role {step.role!r} (known: {', '.join(sorted(role_names))})")
        if bool(step.prompt.strip()) == bool(step.argv):
            problems.append(f"{where}: give either a prompt or an argv")
        for ref in [*step.after, *filter(None, [step.if_succeeded, step.if_failed])]:
            if ref not in known:
                problems.append(f"{where}: refers to unknown step {ref!r}")
            elif ref == step.name:
                problems.append(f"{where}: refers to itself")
        if step.if_succeeded and step.if_failed:
            problems.append(f"{where}: give if_succeeded or if_failed, not both")
        if step.executor is not None and step.executor not in EXECUTORS:
            problems.append(f"{where}: executor must be one of {', '.join(EXECUTORS)}, not {step.executor!r}")
    if problems:
        return problems
    cycle = _cycle(template)
    if cycle:
        return [f"the steps form a cycle: {' -> '.join(cycle)}"]
    for step in template.steps:
        upstream = ancestors(template, step.name)
        for text in [step.prompt, *step.argv]:
            for match in _PLACEHOLDER.finditer(text):
                ref = match.group(2)
                if ref is not None and ref not in upstream:
                    problems.append(
                        f"step {step.name!r}: quotes {{steps.{ref}.{match.group(3)}}}, but {ref!r} "
                        "does not run before it (add it to `after`)"
                    )
    return problems


def _deps(step: Step) -> list[str]:
    return [*step.after, *filter(None, [step.if_succeeded, step.if_failed])]


def _cycle(template: Template) -> list[str] | None:
    """A cycle among the steps, as the names along it with the first repeated at the end;
    None if there is none. A walk with a stack of its own, so that a long chain of steps is
    never limited by Python's."""
    steps = {s.name: s for s in template.steps}
    done: set[str] = set()
    for start in steps:
        if start in done:
            continue
        path, on_path = [start], {start}  # the steps being visited, each depending on the one before
        deps = [iter(_deps(steps[start]))]  # for each of them, its dependencies still to see
        while path:
            dep = next(deps[-1], None)
            if dep is None:
                on_path.discard(path[-1])
                done.add(path.pop())
                deps.pop()
            elif dep in on_path:
                return path[path.index(dep):] + [dep]
            elif dep not in done:
                path.append(dep)
                on_path.add(dep)
                deps.append(iter(_deps(steps[dep])))
    return None


def ancestors(template: Template, name: str) -> set[str]:
    steps = {s.name: s for s in template.steps}
    seen: set[str] = set()
    todo = list(_deps(steps[name]))
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo += _deps(steps[dep])
    return seen


def order(template: Template) -> list[Step]:
    """Steps in an order where each comes after everything it depends on (each step's
    dependencies first, in the order they are listed). For a checked template: ValueError
    if the steps form a cycle."""
    steps = {s.name: s for s in template.steps}
    done: dict[str, None] = {}  # a set that keeps the order
    for first in template.steps:
        if first.name in done:
            continue
        path, on_path = [first.name], {first.name}
        deps = [iter(_deps(first))]
        while path:
            dep = next(deps[-1], None)
            if dep is None:
                on_path.discard(path[-1])
                done[path.pop()] = None
                deps.pop()
            elif dep in on_path:
                raise ValueError(f"the steps form a cycle through {dep!r}")
            elif dep not in done:
                path.append(dep)
                on_path.add(dep)
                deps.append(iter(_deps(steps[dep])))
    return [steps[n] for n in done]


def shorten(text: str, limit: int = RESULT_LIMIT) -> str:
    """Keep the beginning and the end of a long result; say how much was left out."""
    text = text.strip()
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 3
    return f"{text[:head]}\n[… {len(text) - head - tail:,} characters left out …]\n{text[-tail:]}"


def render(text: str, goal: str, results: dict[str, tuple[str, str]], changes: dict[str, str] | None = None) -> str:
    """Fill in {goal} and {steps.NAME.result|status|changes}; `results` maps a step to
    (status, result), `changes` a step to what it left changed in its worktree (a diff's
    stat, `ChangesRecorded`). Other braces are left alone, so prompts may contain code."""

    def fill(match: re.Match) -> str:
        if match.group(1) == "goal":
            return goal
        status, result = results.get(match.group(2), ("not run", ""))
        if match.group(3) == "changes":
            return (changes or {}).get(match.group(2)) or f"(step {match.group(2)} recorded no changes in a worktree)"
        return status if match.group(3) == "status" else shorten(result) or f"(step {match.group(2)} gave no result)"

    return _PLACEHOLDER.sub(fill, text)


def role_names(custom_roles: dict[str, roles_mod.Role] | None) -> set[str]:
    return set(roles_mod.names(custom_roles))


class _Step(Protocol):  # a task as the state holds it, or its view
    status: Status
    reason: str


def status(tasks: Iterable[_Step]) -> str:
    """One word for a workflow: what its steps' tasks add up to. It has ended when it is
    none of waiting, running and queued (a step in review is waiting; one checking, running)."""
    tasks = list(tasks)
    statuses = {t.status for t in tasks}
    if statuses & {Status.WAITING, Status.REVIEW}:
        return "waiting"
    if statuses & {Status.RUNNING, Status.CHECKING}:
        return "running"
    if Status.QUEUED in statuses:
        return "queued" if statuses == {Status.QUEUED} else "running"
    if statuses & {Status.FAILED, Status.TIMED_OUT, Status.INTERRUPTED}:
        return "failed"
    if any(t.status is Status.CANCELLED and not t.reason.startswith("skipped") for t in tasks):
        return "cancelled"
    return "succeeded"
