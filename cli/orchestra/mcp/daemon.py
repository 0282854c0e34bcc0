"""The daemon as `orchestra mcp` reaches it: asyncio calls through `orchestra.aclient`, one
short connection each (so a slow daemon never blocks the server's loop), starting a daemon
when none answers unless autostart is off."""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Any

import anyio

from orchestra import aclient
from orchestra.shared import protocol as p
from orchestra.client import connect_or_start
from orchestra.shared.paths import Paths
from orchestra.wire import DaemonUnreachable


ACTING_FOR: ContextVar[list[tuple[int, int]]] = ContextVar("acting_for", default=[])
"""The processes the request being served acts for (an HTTP request's peer, `orchestra.peer`):
every connection made meanwhile says so in its Hello, and the daemon narrows its rights."""


class Daemon:
    """Calls to the daemon, each on its own short connection; starts one if none answers."""

    def __init__(self, paths: Paths, autostart: bool) -> None:
        self.paths = paths
        self.autostart = autostart and not os.environ.get("ORCHESTRA_NO_AUTOSTART")
        self._starting = anyio.Lock()
        self.started = anyio.Event()  # set when a call started the daemon: the watcher reconnects

    async def connect(self, *, start: bool = True) -> aclient.AsyncConnection:
        try:
            return await aclient.connect(self.paths, client="orchestra-mcp", for_pids=ACTING_FOR.get())
        except DaemonUnreachable:
            if not (start and self.autostart):
                raise
        async with self._starting:  # two calls at once start one daemon
            await anyio.to_thread.run_sync(self._start_blocking)
        self.started.set()
        return await aclient.connect(self.paths, client="orchestra-mcp", for_pids=ACTING_FOR.get())

    def _start_blocking(self) -> None:
        connect_or_start(self.paths, autostart=True, timeout=10).close()

    async def call(self, request: p.Request, result_type: Any = None) -> Any:
        conn = await self.connect()
        try:
            return await conn.call(request, result_type)
        finally:
            await conn.aclose()

    async def log_tail(self, task_id: int, lines: int) -> str:
        if lines <= 0:
            return ""
        conn = await self.connect()
        try:
            chunks = [c.data async for c in conn.stream(p.Logs(task=task_id, tail=lines), p.LogChunk)]
        finally:
            await conn.aclose()
        return b"".join(chunks).decode(errors="replace")


def unreachable_message(exc: Exception, autostart: bool) -> str:
    """What to tell the person when no daemon answers: the error, and what to do about it."""
    hint = "start it with `orchestra daemon start`" if not autostart else "see `orchestra daemon status` and the daemon's log"
    return f"{exc}; {hint}"
