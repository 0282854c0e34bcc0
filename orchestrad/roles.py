"""Roles: named profiles that specialise an agent for one job.

A role carries a system prompt appended to the agent's own, the tools it may use without
asking and the tools it may never use, its permission mode, and optionally a model, limits
and whether its tasks get their own git worktree. The seven built-ins below are written for
their jobs; reviewer and architect are read-only by default.

People add or override roles with TOML files in `<config dir>/roles/NAME.toml`::

    description = "Reviews database migrations"
    prompt = "You review SQL migrations for locking and data loss..."
    allowed_tools = ["Read", "Grep"]
    disallowed_tools = ["Write", "Edit"]
    permission_mode = "default"
    model = "claude-sonnet-4-5"
    timeout = 1800
    worktree = false
    policy = ["allow Bash(alembic upgrade *)", "deny Bash(psql *)"]

Edits, tests and git inside the task's directory need no `allowed_tools`: the built-in
roles' permission rules allow them (`orchestrad.policy.BUILTIN_ROLE_RULES`), scoped to the
task's directory, and a role file's `policy` rules come before them.

Loaded roles are recorded in the log (`CatalogChanged`), so the Role struct is part of the
log's schema: fields are only ever added at the end, with defaults.
"""

from __future__ import annotations

from orchestra.shared.protocol import MAX_BUDGET_USD, MAX_SECONDS, Role
from orchestrad import policy, tomlfile
from orchestrad.config import EXECUTORS, PERMISSION_MODES, SANDBOX_MODES

READ_ONLY_DENIED = ["Write", "Edit", "NotebookEdit"]  # only tools the CLI knows: it names unknown ones in every transcript


BUILTIN: dict[str, Role] = {
    r.name: r
    for r in [
        Role(
            name="architect",
            description="Designs the system: components, interfaces, data flow and trade-offs.",
            prompt=(
                "You are the architect on a small team of coding agents. Produce a design that "
                "another engineer can implement without guessing: the components and their "
                "responsibilities, the interfaces between them (names, signatures, data shapes), "
                "where each change goes (files and modules), the order of work, and the risks and "
                "trade-offs you weighed. Read the existing code first and follow its conventions. "
                "Do not write the implementation. End with a numbered implementation plan."
            ),
            allowed_tools=["Read", "Glob", "Grep", "LS"],
            disallowed_tools=READ_ONLY_DENIED,
        ),
        Role(
            name="implementer",
            description="Writes the code: features and changes, following the design and the codebase's style.",
            prompt=(
                "You are the implementer on a small team of coding agents. Make the change asked "
                "for, completely: follow the design if one is given and the codebase's existing "
                "style, keep changes focused, and run the project's build and tests before you "
                "finish. End with a short summary of what you changed, file by file, and anything "
                "left undone and why."
            ),
            allowed_tools=["Read", "Glob", "Grep", "LS"],
            expects_change=True,
        ),
        Role(
            name="tester",
            description="Writes and runs tests; reports failures precisely.",
            prompt=(
                "You are the tester on a small team of coding agents. Write tests that pin down "
                "the behaviour asked about, including edge cases and error paths, using the "
                "project's test framework and conventions. Run them. Report each failure "
                "precisely: the test, the command that runs it, the expected and the actual "
                "result, and the file and line where it fails. Do not change the code under test "
                "unless asked; if a test fails because of a bug, say so and stop there."
            ),
            allowed_tools=["Read", "Glob", "Grep", "LS"],
        ),
        Role(
            name="reviewer",
            description="Reviews code for correctness, clarity and risk; reports findings, does not edit.",
            prompt=(
                "You are the reviewer on a small team of coding agents. Read the change and the "
                "code around it and report findings; do not edit files. For each finding give the "
                "file and line, what is wrong, why it matters (a bug, a risk, unclear code, a "
                "missing test), and a concrete suggestion. Order findings by severity. Say "
                "plainly when the change is good to merge."
            ),
            allowed_tools=["Read", "Glob", "Grep", "LS"],
            disallowed_tools=READ_ONLY_DENIED,
        ),
        Role(
            name="devops",
            description="Build, CI, packaging, deployment and infrastructure.",
            prompt=(
                "You are the devops engineer on a small team of coding agents. Work on builds, "
                "CI, packaging, deployment and infrastructure. Prefer small, reversible changes; "
                "explain every command that changes a system before running it; never put secrets "
                "in files or logs. End with how to verify the change."
            ),
        ),
        Role(
            name="documenter",
            description="Writes documentation: READMEs, guides, references, docstrings.",
            prompt=(
                "You are the technical writer on a small team of coding agents. Write "
                "documentation that lets a newcomer succeed without guessing: what it is, how to "
                "set it up, how to use it with real examples that you have checked against the "
                "code, and how to fix common problems. Match the project's existing docs."
            ),
            allowed_tools=["Read", "Glob", "Grep", "LS"],
        ),
        Role(
            name="generalist",
            description="Any development task, end to end.",
            prompt=(
                "You are a software engineer on a small team of coding agents. Do the task asked, "
                "end to end, following the codebase's conventions, and finish with a short summary "
                "of what you did and what is left."
            ),
        ),
    ]
}

NAMES = tuple(BUILTIN)


def get(name: str, custom: dict[str, Role] | None = None) -> Role | None:
    """The role called `name`: a user's file overrides a built-in of the same name."""
    if custom and name in custom:
        return custom[name]
    return BUILTIN.get(name)


def names(custom: dict[str, Role] | None = None) -> list[str]:
    return sorted({*BUILTIN, *(custom or {})})


def parse(name: str, text: str) -> Role:
    """A role from a TOML file's text; ValueError saying what is wrong, with the line where
    the TOML parser knows it."""
    role = tomlfile.load(text, Role, name)
    if role.permission_mode not in PERMISSION_MODES:
        raise ValueError(f"permission_mode must be one of {', '.join(PERMISSION_MODES)}, not {role.permission_mode!r}")
    if role.sandbox is not None and role.sandbox not in SANDBOX_MODES:
        raise ValueError(f"sandbox must be one of {', '.join(SANDBOX_MODES)} (or left out: as the config says), not {role.sandbox!r}")
    if role.executor is not None and role.executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)} (or left out: as the config says), not {role.executor!r}")
    if not role.prompt.strip():
        raise ValueError("prompt is empty: say what this role does and how")
    problem = policy.check_rules(role.policy)
    if problem is not None:
        raise ValueError(f"policy: {problem}")
    if any(not c.strip() for c in role.check):
        raise ValueError("check: each check is a shell line that passes when it exits 0, e.g. \"pytest -q\"; an empty one checks nothing")
    if role.check_rounds is not None and not 1 <= role.check_rounds <= 20:
        raise ValueError(f"check_rounds must be a whole number from 1 to 20, not {role.check_rounds}")
    for field, most in (("timeout", MAX_SECONDS), ("idle_timeout", MAX_SECONDS), ("budget_usd", MAX_BUDGET_USD)):
        value = getattr(role, field)
        if value is not None and not 0 < value <= most:  # also refuses nan; inf is over the top
            raise ValueError(f"{field} must be above 0 and at most {most:,.0f}, not {value}")
    return role
