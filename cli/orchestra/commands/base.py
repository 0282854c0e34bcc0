"""What every command shares: the `App` each command is handed (the paths, one connection
to the daemon, and calls that turn the daemon's errors into one line and an exit code),
the exit codes, the argument types, and `emit`, the one way a command prints its answer:
JSON for scripts with `--json`, else the text a person reads.

Imports stay light (click and msgspec, the protocol): a command module imports this and
what only it needs, so that `orchestra ps` pays for `ps` alone.
"""

from __future__ import annotations

from orchestra.shared.vocab import shorten

import enum
import sys
from typing import Any, Callable, NoReturn

import click
import msgspec

from orchestra.shared import protocol as p


class Exit(enum.IntEnum):
    OK = 0
    TASK_FAILED = 1  # `wait`: a task ended other than succeeded
    BAD_INPUT = 2  # also click's own usage errors
    UNREACHABLE = 3  # no daemon answers (and none could be started)
    NOT_FOUND = 4
    CONFLICT = 5  # valid, but not in the task's current state
    UNAVAILABLE = 6  # the daemon refuses work for now (shutting down, disk full)
    FORBIDDEN = 7  # asked from an agent's process, and only a person may ask it


_EXIT_FOR = {
    p.ErrorCode.BAD_REQUEST: Exit.BAD_INPUT,
    p.ErrorCode.NOT_FOUND: Exit.NOT_FOUND,
    p.ErrorCode.CONFLICT: Exit.CONFLICT,
    p.ErrorCode.PROTOCOL: Exit.UNREACHABLE,
    p.ErrorCode.UNAVAILABLE: Exit.UNAVAILABLE,
    p.ErrorCode.INTERNAL: Exit.UNAVAILABLE,
    p.ErrorCode.FORBIDDEN: Exit.FORBIDDEN,
}


def fail(message: str, code: Exit) -> NoReturn:
    click.echo(f"orchestra: {message}", err=True)
    sys.exit(int(code))


def refused(exc: p.OrchestraError) -> NoReturn:
    """The daemon said no: its sentence, and the exit code its error code means."""
    fail(exc.message, _EXIT_FOR.get(exc.code, Exit.UNAVAILABLE))


class App:
    """What a command works with: where this instance lives, and one connection to its
    daemon, made on first use (starting a daemon unless autostart is off)."""

    def __init__(self, home: str | None, autostart: bool) -> None:
        from orchestra.shared.paths import resolve

        self.paths = resolve(home)
        self.autostart = autostart
        self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def connection(self, *, timeout: float | None = 30.0):
        from orchestra.client import connect_or_start
        from orchestra.wire import DaemonUnreachable

        if self._conn is None:
            try:
                self._conn = connect_or_start(self.paths, autostart=self.autostart, timeout=timeout)
            except DaemonUnreachable as exc:
                hint = "start it with `orchestra daemon start`" if not self.autostart else "see `orchestra daemon status`"
                fail(f"{exc}; {hint}", Exit.UNREACHABLE)
        return self._conn

    def call(self, request: p.Request, result_type: Any = None, *, timeout: float | None = 30.0) -> Any:
        try:
            return self.connection(timeout=timeout).call(request, result_type)
        except p.OrchestraError as exc:
            refused(exc)
        except OSError as exc:
            fail(f"lost the connection to the daemon: {exc}", Exit.UNREACHABLE)

    def stream(self, request: p.Request, item_type: Any = Any):
        try:
            yield from self.connection(timeout=None).stream(request, item_type)
        except p.OrchestraError as exc:
            refused(exc)
        except OSError as exc:
            fail(f"lost the connection to the daemon: {exc}", Exit.UNREACHABLE)


# ---------------------------------------------------------------------------------------
# printing the answer


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def echo_json(value: Any) -> None:
    click.echo(msgspec.json.encode(value).decode())


def emit(value: Any, as_json: bool, human: Callable[[Any], str | None]) -> None:
    """Print a command's answer: `value` as JSON with `--json`, else `human(value)`, the
    text a person reads (nothing when it returns None or "": it said what it had to on
    stderr, such as "no tasks")."""
    if as_json:
        echo_json(value)
        return
    text = human(value)
    if text:
        click.echo(text)


# ---------------------------------------------------------------------------------------
# argument types


def task_id(value: str) -> int:
    try:
        number = int(value.lstrip("#"))
    except ValueError:
        number = 0
    if not 1 <= number <= p.MAX_TASK_ID:
        shown = shorten(value, 40)
        fail(f"{shown!r} is not a task id (a whole number from 1, as `orchestra ps` shows)", Exit.BAD_INPUT)
    return number


def priority(ctx, param, value):
    """A click callback: a number, or low/normal/high/urgent; 0 when not given."""
    if value is None:
        return 0
    try:
        return p.parse_priority(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


priority_option = click.option("--priority", "-p", callback=priority, help="A number, or low/normal/high/urgent.")
