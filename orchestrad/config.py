"""Settings that shape scheduling and supervision, and their validation.

The settings in force are part of the state: they change only through `ConfigChanged`
events, so a replay schedules exactly as the live daemon did. Pure: no I/O here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchestra.shared.protocol import AGENTS, MAX_SECONDS, ConfigValue  # noqa: F401 - ConfigValue is re-exported

PERMISSION_MODES = ("default", "acceptEdits", "plan", "bypassPermissions")


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
    claude_path: str = "claude"  # the Claude Code CLI: a name on PATH or a path
    permission_mode: str = "default"  # default | acceptEdits | plan | bypassPermissions
    allowed_tools: list[str] = []  # tools agents may use without asking (added to the role's)
    disallowed_tools: list[str] = []  # tools agents may never use (added to the role's)
    auto_resume: bool = False  # after a restart, resume interrupted Claude tasks
    auto_deny_after: float | None = None  # seconds a question may wait before it is denied
    pass_env: list[str] = []  # daemon variables (globs) agents inherit though they look like credentials
    max_output_bytes: int = 1 << 30  # output a task may write in all; past it, it is stopped
    resume_after_limit: bool = True  # a task stopped by its account's usage limit resumes at the reset
    retries: int = 4  # retries of an attempt that failed on a transient API error (overloaded, 5xx, connection)
    retry_base: float = 2.0  # seconds before the first retry; each next one waits twice as long ...
    retry_cap: float = 300.0  # ... but never longer than this


DEFAULT = Config()
KEYS = tuple(Config.__struct_fields__)

_CHECKS: dict[str, tuple[str, Any]] = {
    "max_concurrent": ("a whole number of at least 1", lambda v: isinstance(v, int) and v >= 1),
    "role_limits": (
        "a table of role name to a whole number of at least 0",
        lambda v: isinstance(v, dict) and all(isinstance(n, int) and n >= 0 for n in v.values()),
    ),
    "default_agent": (f"one of {', '.join(AGENTS)}", lambda v: v in AGENTS),
    "default_role": ("a role name", lambda v: isinstance(v, str) and v != ""),
    "default_timeout": ("seconds above 0 and at most 30 days, or none", lambda v: v is None or _seconds(v)),
    "default_idle_timeout": ("seconds above 0 and at most 30 days, or none", lambda v: v is None or _seconds(v)),
    "kill_grace": ("seconds of at least 0 and at most 30 days", lambda v: _number(v) and 0 <= v <= MAX_SECONDS),
    "retention_days": ("days of at least 0", lambda v: _number(v) and v >= 0),
    "snapshot_every": ("a whole number of at least 100", lambda v: isinstance(v, int) and v >= 100),
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
    "resume_after_limit": ("true or false", lambda v: isinstance(v, bool)),
    "retries": ("a whole number from 0 to 100", lambda v: isinstance(v, int) and 0 <= v <= 100),
    "retry_base": ("seconds above 0 and at most 30 days", lambda v: _seconds(v)),
    "retry_cap": ("seconds above 0 and at most 30 days", lambda v: _seconds(v)),
}

_BOOLEAN = frozenset({"auto_resume", "resume_after_limit"})


def _names(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) and x.strip() for x in v)


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
    if isinstance(value, bool) and key not in _BOOLEAN:
        return f"{key} must be {what}, not {value!r}"
    if not ok(value):
        return f"{key} must be {what}, not {value!r}"
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
