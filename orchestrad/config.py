"""Settings that shape scheduling and supervision, and their validation.

The settings in force are part of the state: they change only through `ConfigChanged`
events, so a replay schedules exactly as the live daemon did. Pure: no I/O here.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec

from orchestra.shared.protocol import MAX_BUDGET_USD, MAX_SECONDS, ConfigValue  # noqa: F401 - ConfigValue is re-exported
from orchestra.shared.vocab import LIVELY
from orchestrad import policy

PERMISSION_MODES = ("default", "acceptEdits", "plan", "bypassPermissions")
# What may notify (see orchestrad.notify); "parked" is notified once tasks can be parked.
NOTIFY_KINDS = ("waiting", "failed", "parked", "workflow_ended", "review")
SANDBOX_MODES = ("off", "on")
MERGE_MODES = ("merge", "rebase")
EXECUTORS = ("local", "ray")  # where an agent process may run (orchestrad.executor)


class Config(msgspec.Struct, frozen=True, kw_only=True):
    max_concurrent: int = 2  # agent processes at once (running or waiting for input)
    role_limits: dict[str, int] = {}  # optional per-role caps within max_concurrent
    default_agent: str = "claude"
    default_role: str = "generalist"
    default_timeout: float | None = None  # seconds; None: no limit
    default_idle_timeout: float | None = None
    kill_grace: float = 5.0  # seconds between SIGTERM and SIGKILL
    retention_days: float = 7.0  # finished tasks older than this may be purged
    snapshot_every: int = 20_000  # events between snapshots
    history_in_memory: int = 1_000  # finished tasks kept in memory; older ones move to the history database at a snapshot
    claude_path: str = "claude"  # the Claude Code CLI: a name on PATH or a path
    permission_mode: str = "default"  # default | acceptEdits | plan | bypassPermissions
    allowed_tools: list[str] = []  # tools agents may use without asking (added to the role's)
    disallowed_tools: list[str] = []  # tools agents may never use (added to the role's)
    auto_resume: bool = False  # after a restart, resume interrupted Claude tasks
    auto_deny_after: float | None = None  # seconds a question may wait before it is denied
    pass_env: list[str] = []  # daemon variables (globs) agents inherit though they look like credentials
    max_output_bytes: int = 1 << 30  # output a task may write in all; past it, it is stopped
    policy: list[str] = []  # permission rules for every task, after its role's (see orchestrad.policy)
    # Notifications (orchestrad.notify): where notices go, which kinds, and how many.
    notify_command: str | list[str] | None = None  # an argv, or a shell line; gets the notice as JSON on stdin
    notify_webhook: str | None = None  # an http(s) URL that gets the notice as a JSON POST; holds no secret
    notify_webhook_token_env: str | None = None  # a daemon variable whose value is sent as a bearer token
    notify_desktop: bool = False  # notify-send or osascript, where present
    notify_on: list[str] = msgspec.field(default_factory=lambda: list(NOTIFY_KINDS))
    notify_limit: int = 10  # notices per sink within notify_window; the rest become one "and N more"
    notify_window: float = 60.0  # seconds
    notify_timeout: float = 10.0  # seconds a command or one webhook attempt may take
    sandbox: str = "off"  # "on": every agent runs in a sandbox (orchestrad.sandbox) unless its role says "off"
    network: bool = True  # false: sandboxed agents have no network (unless their role says true)
    resume_after_limit: bool = True  # a task stopped by its account's usage limit resumes at the reset
    retries: int = 4  # retries of an attempt that failed on a transient API error (overloaded, 5xx, connection)
    retry_base: float = 2.0  # seconds before the first retry; each next one waits twice as long ...
    retry_cap: float = 300.0  # ... but never longer than this
    role_budgets: dict[str, float] = {}  # dollars a role's tasks may spend in a day, all together (orchestrad.budgets)
    merge_mode: str = "merge"  # how the merge queue puts a branch on its target: "merge" (a merge commit) or "rebase"
    merge_checks: list[str] = []  # shell lines every merge runs in its integration worktree before the target moves
    merge_check_timeout: float = 600.0  # seconds one of those checks may take
    delete_merged_branches: bool = False  # delete a task's branch once it is merged
    silent_after: float = LIVELY  # seconds without output, a tool use or CPU use before `ps` calls a running task silent
    worktree_quota: int | None = None  # bytes all worktrees together may use; past it new worktree tasks wait (orchestrad.hygiene)
    check_timeout: float = 600.0  # seconds one acceptance check may run before it fails (orchestrad.verify)
    check_rounds: int = 2  # rounds of checks a task has before it fails (a role, a step or submit may say otherwise)
    agent_paths: dict[str, str] = {}  # each agent kind's CLI, a name on PATH or a path, like { codex = "/opt/codex/bin/codex" }
    executor: str = "local"  # where tasks run unless a submit, a step or a role says otherwise: "local" or "ray"
    ray_address: str = ""  # the Ray cluster the "ray" executor runs agents on, HOST:PORT of its head (orchestrad.remote)


DEFAULT = Config()
KEYS = tuple(Config.__struct_fields__)

_CHECKS: dict[str, tuple[str, Any]] = {
    "max_concurrent": ("a whole number of at least 1", lambda v: isinstance(v, int) and v >= 1),
    "role_limits": (
        "a table of role name to a whole number of at least 0",
        lambda v: isinstance(v, dict) and all(isinstance(n, int) and n >= 0 for n in v.values()),
    ),
    "default_agent": ("one of {kinds}", lambda v: v in _kinds()),
    "default_role": ("a role name", lambda v: isinstance(v, str) and v != ""),
    "default_timeout": ("seconds above 0 and at most 30 days, or none", lambda v: v is None or _seconds(v)),
    "default_idle_timeout": ("seconds above 0 and at most 30 days, or none", lambda v: v is None or _seconds(v)),
    "kill_grace": ("seconds of at least 0 and at most 30 days", lambda v: _number(v) and 0 <= v <= MAX_SECONDS),
    "retention_days": ("days of at least 0", lambda v: _number(v) and v >= 0),
    "snapshot_every": ("a whole number of at least 100", lambda v: isinstance(v, int) and v >= 100),
    "history_in_memory": ("a whole number of at least 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "claude_path": ("a program name or path", lambda v: isinstance(v, str) and v.strip() != ""),
    "permission_mode": (
        f"one of {', '.join(PERMISSION_MODES)}",
        lambda v: v in PERMISSION_MODES,
    ),
    "allowed_tools": ("a list of tool names", lambda v: _names(v)),
    "disallowed_tools": ("a list of tool names", lambda v: _names(v)),
    "auto_resume": ("true or false", lambda v: isinstance(v, bool)),
    "auto_deny_after": ("seconds above 0 and at most 30 days, or none", lambda v: v is None or _seconds(v)),
    "pass_env": ("a list of variable names or globs, like [\"GH_TOKEN\", \"AWS_*\"]", lambda v: _names(v)),
    "max_output_bytes": ("a whole number of bytes of at least 1024", lambda v: isinstance(v, int) and v >= 1024),
    "policy": ("a list of rules, like [\"allow Bash(pytest *)\", \"deny Read(~/.ssh/**)\"]", lambda v: policy.check_rules(v) is None),
    "notify_command": (
        'a command as a list of arguments, like ["notify-me", "--json"], or a shell line, or none',
        lambda v: v is None or (isinstance(v, str) and v.strip() != "") or (_names(v) and len(v) > 0),
    ),
    "notify_webhook": ("an http:// or https:// URL, or none", lambda v: v is None or _url(v)),
    "notify_webhook_token_env": (
        "the name of a variable in the daemon's environment (letters, digits and _), or none",
        lambda v: v is None or (isinstance(v, str) and v.isidentifier() and v.isascii()),
    ),
    "notify_desktop": ("true or false", lambda v: isinstance(v, bool)),
    "notify_on": (
        f"a list of what to notify, of {', '.join(NOTIFY_KINDS)}",
        lambda v: isinstance(v, list) and all(k in NOTIFY_KINDS for k in v),
    ),
    "notify_limit": ("a whole number of at least 1", lambda v: isinstance(v, int) and v >= 1),
    "notify_window": ("seconds above 0 and at most 30 days", lambda v: _seconds(v)),
    "notify_timeout": ("seconds above 0 and at most 1 hour", lambda v: _number(v) and 0 < v <= 3600),
    "sandbox": (f"one of {', '.join(SANDBOX_MODES)}", lambda v: v in SANDBOX_MODES),
    "network": ("true or false", lambda v: isinstance(v, bool)),
    "resume_after_limit": ("true or false", lambda v: isinstance(v, bool)),
    "retries": ("a whole number from 0 to 100", lambda v: isinstance(v, int) and 0 <= v <= 100),
    "retry_base": ("seconds above 0 and at most 30 days", lambda v: _seconds(v)),
    "retry_cap": ("seconds above 0 and at most 30 days", lambda v: _seconds(v)),
    "merge_mode": ("merge or rebase", lambda v: v in MERGE_MODES),
    "merge_checks": ("a list of shell lines, like [\"pytest -q\"]", lambda v: _names(v)),
    "merge_check_timeout": ("seconds above 0 and at most 30 days", lambda v: _seconds(v)),
    "delete_merged_branches": ("true or false", lambda v: isinstance(v, bool)),
    "check_timeout": ("seconds above 0 and at most 30 days", lambda v: _seconds(v)),
    "check_rounds": ("a whole number from 1 to 20", lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 20),
    "role_budgets": (
        f"a table of role name to dollars a day, above 0 and at most {MAX_BUDGET_USD:,.0f}",
        lambda v: isinstance(v, dict) and all(_number(n) and 0 < n <= MAX_BUDGET_USD for n in v.values()),
    ),
    "silent_after": ("seconds of at least 1 and at most 30 days", lambda v: _number(v) and 1 <= v <= MAX_SECONDS),
    "agent_paths": (
        'a table of agent kind ({kinds}) to a program name or path, like {{ codex = "/opt/codex/bin/codex" }}',
        lambda v: isinstance(v, dict) and all(k in _kinds() and isinstance(x, str) and x.strip() for k, x in v.items()),
    ),
    "worktree_quota": ("a whole number of bytes of at least 0, or none", lambda v: v is None or (isinstance(v, int) and v >= 0)),
    "executor": (f"one of {', '.join(EXECUTORS)}", lambda v: v in EXECUTORS),
    "ray_address": ("the HOST:PORT of a Ray cluster's head, like 10.0.0.5:6379, or \"\" for none", lambda v: isinstance(v, str) and (v == "" or _host_port(v))),
}


def _host_port(v: str) -> bool:
    host, _, port = v.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536 and not any(c.isspace() or c == "/" for c in host)


def _kinds() -> list[str]:
    from orchestrad.agents import kinds  # the agent kinds import this module: asked for when checking

    return kinds()


def _names(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)


def _url(v: object) -> bool:
    """An http:// or https:// URL with a host (and a port that is a number, if any)."""
    if not isinstance(v, str):
        return False
    try:
        url = urlsplit(v)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return url.scheme in ("http", "https") and bool(url.hostname)


def _url_secret(v: str) -> str | None:
    """What in a URL looks like a credential, if anything."""
    url = urlsplit(v)
    if url.username is not None or url.password is not None:
        return "it holds a user or password"
    if any(_secret_param(name) for name, _ in parse_qsl(url.query, keep_blank_values=True)):
        return "its query holds what looks like a secret"
    return None


# Query parameters that carry a credential: a URL is recorded in the log and shown by
# `config get`, to agents too, so a secret goes in notify_webhook_token_env instead.
_SECRET_WORDS = ("token", "key", "secret", "auth", "password", "passwd", "pwd", "sig", "signature", "code", "credential")


def _secret_param(name: str) -> bool:
    """`token`, `api_key`, `X-Auth`, `accessToken`: a query parameter named for a credential."""
    parts = re.split(r"[^a-z0-9]+", name.lower())
    return any(part in _SECRET_WORDS or part.endswith(("token", "key", "secret", "password")) for part in parts)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _seconds(v: object) -> bool:
    """A finite number of seconds above 0, at most 30 days (inf, nan and 1e308 are not)."""
    return _number(v) and 0 < v <= MAX_SECONDS  # type: ignore[operator]


def check(key: str, value: ConfigValue) -> str | None:
    """None when `value` may be stored under `key`, else a sentence saying what is expected."""
    if key not in _CHECKS:
        return f"unknown setting {key!r}; known settings: {', '.join(KEYS)}"
    what, ok = _CHECKS[key]
    what = what.format(kinds=", ".join(_kinds())) if "{kinds}" in what else what
    if isinstance(value, bool) and not isinstance(getattr(DEFAULT, key), bool):
        return f"{key} must be {what}, not {value!r}"
    if key == "policy" and policy.check_rules(value) is not None:
        return f"policy: {policy.check_rules(value)}"
    if not ok(value):
        return f"{key} must be {what}, not {value!r}"
    if key == "notify_webhook" and isinstance(value, str) and (secret := _url_secret(value)):
        return (
            f"notify_webhook must hold no secret, but {secret}: the URL is recorded in the log and shown by "
            "`config get`, to agents too. Put the token in a variable of the daemon's environment and name it "
            "in notify_webhook_token_env: it is sent as `Authorization: Bearer <value>`"
        )
    return None


def file_changes(config_file: dict[str, ConfigValue], values: dict[str, ConfigValue]) -> dict[str, ConfigValue]:
    """What a new config.toml changes, compared with what it said when last applied: only
    keys whose value in the file changed (so `config set` holds until the file says
    otherwise); a key taken out of the file goes back to its default."""
    changes = {k: v for k, v in values.items() if config_file.get(k, _MISSING) != v}
    for key in config_file.keys() - values.keys():
        changes[key] = getattr(DEFAULT, key)
    return {k: float(v) if isinstance(v, int) and not isinstance(v, bool) and isinstance(getattr(DEFAULT, k), float) else v for k, v in changes.items()}


_MISSING = object()


def apply(config: Config, changes: dict[str, ConfigValue]) -> Config:
    """The config with `changes` applied. Changes were checked when they were decided."""
    return msgspec.structs.replace(config, **changes)
