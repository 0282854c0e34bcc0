"""The client connections the server holds, and room for one more under the cap.

Each connection costs the daemon a descriptor, and descriptors are limited (see
`orchestrad.descriptors`). Past the cap, a new connection is not simply refused: that
would let whoever holds idle connections keep everyone out, `orchestra submit` included.
Room is made first, by closing

1. the oldest connection that has not said Hello (every real client says it at once;
   one that has not is at best about to, and the newest is the likeliest), else
2. the connection idle longest, if it has been idle for at least IDLE_GRACE seconds
   (greeted, no request in flight, no stream open): a client between two calls is not
   idle, one that holds a connection it does not use can open another.

Connections with work in flight (a request being answered, a `logs -f` or `watch`
stream, a `wait`) are never closed for room. When every connection is busy, the new one
is refused, with an error that says why and what to do.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

IDLE_GRACE = 1.0  # seconds a greeted connection must have been idle to be closed for room


class Client:
    """One connection, as admission sees it."""

    __slots__ = ("writer", "opened", "greeted", "busy", "idle_since", "waiting")

    def __init__(self, writer: asyncio.StreamWriter, now: float) -> None:
        self.writer = writer
        self.opened = now
        self.greeted = False
        self.busy = 0  # requests read and not yet answered (a stream counts until its end)
        self.idle_since = now
        self.waiting: set[asyncio.Future] = set()  # what only waits for this client: streams, `wait`

    def hello(self, now: float) -> None:
        self.greeted = True
        self.idle_since = now

    def started(self) -> None:
        self.busy += 1

    def done(self, now: float) -> None:
        self.busy -= 1
        if not self.busy:
            self.idle_since = now

    def waits_for(self, future: asyncio.Future) -> None:
        """`future` only waits, for this client: end it if the client goes."""
        self.waiting.add(future)
        future.add_done_callback(self.waiting.discard)

    def left(self) -> None:
        """The client closed its side: a stream or a `wait` it asked for has nobody to tell.
        (What changes something is done all the same.)"""
        for future in list(self.waiting):
            future.cancel()


class Clients:
    """The connections being served, keyed by the task that serves each."""

    def __init__(self, cap: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        self.cap = cap  # asked each time: the reserve follows max_concurrent
        self.clock = clock
        self.by_task: dict[asyncio.Task, Client] = {}

    def __len__(self) -> int:
        return len(self.by_task)

    def add(self, task: asyncio.Task, writer: asyncio.StreamWriter) -> Client:
        client = self.by_task[task] = Client(writer, self.clock())
        return client

    def remove(self, task: asyncio.Task) -> None:
        self.by_task.pop(task, None)

    def make_room(self, farewell: Callable[[Client], None]) -> bool:
        """True if one more connection fits under the cap, closing one to make room if need
        be (`farewell` is called on it first, to tell it why); False if none can go."""
        if len(self.by_task) < self.cap():
            return True
        found = self._least_needed()
        if found is None:
            return False
        task, client = found
        del self.by_task[task]  # counted out now; its task ends once it sees the close
        farewell(client)
        client.writer.close()
        return True

    def _least_needed(self) -> tuple[asyncio.Task, Client] | None:
        """The oldest connection that has not said Hello, else the one idle longest."""
        silent = [task for task, c in self.by_task.items() if not c.greeted]
        if silent:
            task = min(silent, key=lambda t: self.by_task[t].opened)
            return task, self.by_task[task]
        now = self.clock()
        idle = [task for task, c in self.by_task.items() if not c.busy and now - c.idle_since >= IDLE_GRACE]
        if idle:
            task = min(idle, key=lambda t: self.by_task[t].idle_since)
            return task, self.by_task[task]
        return None
