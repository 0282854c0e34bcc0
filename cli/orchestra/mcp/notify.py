"""Notifications, driven by a background `Watch` stream on the daemon.

When a task starts waiting for a person, subscribers of `orchestra://status` and of that
task's logs URI get `notifications/resources/updated`, and the client gets a log message
(`notifications/message`) saying what the task asks and how to answer. Any status change
updates `orchestra://status`; a task that finishes updates its logs URI.

Handshake-era clients (2025-11-25 and before) subscribe with `resources/subscribe` and get
log messages. 2026-07-28 clients subscribe with `subscriptions/listen` (the SDK's
subscription bus) and get no connection-wide log messages (that era has none).
"""

from __future__ import annotations

import logging

import anyio
from mcp.server.subscriptions import InMemorySubscriptionBus
from mcp.shared.subscriptions import ResourceUpdated
from mcp_types import LoggingMessageNotification, LoggingMessageNotificationParams

from orchestra.shared import protocol as p
from orchestra.mcp.daemon import Daemon
from orchestra.mcp.resources import STATUS_URI, logs_uri
from orchestra.wire import DaemonUnreachable

log = logging.getLogger("orchestra.mcp")

NOTICE_LEVEL = "warning"  # a task blocked on a person is something to act on
_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


class Client:
    """One handshake-era session: what it subscribed to, the log level it asked for, and
    the questions it was told of."""

    def __init__(self, session) -> None:
        self.session = session
        self.subscribed: set[str] = set()  # URIs it subscribed to
        self.log_level = "debug"  # the level it asked for (logging/setLevel)
        self.announced: set[tuple[int, str]] = set()  # (task, request id) told to it


class Notifier:
    """Follows the daemon's task changes and tells the clients: one on stdio, any number
    over HTTP (each session its own `Client`), and what the watcher last saw."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.bus = InMemorySubscriptionBus()  # 2026-07-28 listen streams
        self.clients: dict[int, Client] = {}  # id(session) -> its handshake-era client
        self.last: dict[int, p.TaskView] = {}  # what the watcher last saw of each task
        self.asked: set[tuple[int, str]] = set()  # (task, request id) seen waiting

    def client(self, session) -> Client:
        """The client of a handshake-era connection, known from its first request on. The
        SDK hands each request a session of its own over the one connection (whose
        notifications not tied to a request go on the connection's channel), so clients
        are told apart by their connection."""
        key = id(_connection(session))
        known = self.clients.get(key)
        if known is None or _connection(known.session) is not _connection(session):
            known = self.clients[key] = Client(session)
        return known

    def _gone(self, client: Client, what: str, exc: Exception) -> None:
        log.info("could not send %s: %s", what, exc)
        key = id(_connection(client.session))
        if self.clients.get(key) is client:  # the client went away: no more for it
            del self.clients[key]

    async def watch_forever(self) -> None:
        """Follow the daemon's Watch stream; reconnect (1 s, then up to 10 s apart) if it goes."""
        delay = 1.0
        while True:
            try:
                conn = await self.daemon.connect(start=False)
            except DaemonUnreachable:
                with anyio.move_on_after(delay):
                    await self.daemon.started.wait()  # or until a tool call starts one
                self.daemon.started = anyio.Event()
                delay = min(10.0, delay * 2)
                continue
            delay = 1.0
            try:
                async for view in conn.stream(p.Watch(), p.TaskView):
                    await self.on_view(view)
            except (DaemonUnreachable, p.OrchestraError, OSError) as exc:
                log.info("the daemon's watch stream ended: %s", exc)
            finally:
                await conn.aclose()
            await anyio.sleep(delay)

    async def on_view(self, view: p.TaskView) -> None:
        """One task change: what the subscribers and the client should hear about it."""
        before = self.last.get(view.id)
        if view.status.finished:
            self.last.pop(view.id, None)
        else:
            self.last[view.id] = view
        changed = before is None or before.status is not view.status
        key = (view.id, view.waiting.request_id) if view.waiting is not None else None
        newly_waiting = key is not None and key not in self.asked
        if changed or newly_waiting:
            await self.publish(STATUS_URI)
        if newly_waiting or (changed and view.status.finished):
            await self.publish(logs_uri(view.id))
        if newly_waiting:
            self.asked.add(key)
            await self.announce(view)
        if view.status.finished:
            self.asked = {k for k in self.asked if k[0] != view.id}
            for client in self.clients.values():
                client.announced = {k for k in client.announced if k[0] != view.id}

    async def publish(self, uri: str) -> None:
        await self.bus.publish(ResourceUpdated(uri=uri))  # 2026-07-28 listen streams
        for client in list(self.clients.values()):  # resources/subscribe
            if uri in client.subscribed:
                try:
                    await client.session.send_resource_updated(uri)
                except Exception as exc:
                    self._gone(client, f"resources/updated for {uri}", exc)

    async def announce(self, view: p.TaskView, to: list[Client] | None = None) -> None:
        """A log message for each client (or those `to`), once per question: what the task
        asks and how to answer. Handshake-era clients only; questions that were pending
        before a client was ready are announced when it is (`announce_pending`)."""
        if view.waiting is None:
            return
        key = (view.id, view.waiting.request_id)
        notification = LoggingMessageNotification(
            params=LoggingMessageNotificationParams(level=NOTICE_LEVEL, logger="orchestra", data=waiting_message(view))
        )
        for client in list(self.clients.values()) if to is None else to:
            if key in client.announced or _LEVELS.index(NOTICE_LEVEL) < _LEVELS.index(client.log_level):
                continue
            client.announced.add(key)
            try:
                await client.session.send_notification(notification)
            except Exception as exc:
                self._gone(client, f"the waiting notice for task {view.id}", exc)

    async def announce_pending(self, client: Client) -> None:
        for view in sorted(self.last.values(), key=lambda v: v.id):
            await self.announce(view, [client])


def _connection(session):
    return getattr(session, "_connection", session)


def question_line(q: p.Question) -> str:
    """A question and its numbered options, on one line."""
    text = q.prompt
    if q.options:
        text += " [" + " / ".join(f"{i}. {o}" for i, o in enumerate(q.options, 1)) + "]"
    return text


def waiting_message(view: p.TaskView) -> str:
    """The notice a client gets when a task starts waiting: what it asks, how to answer."""
    q = view.waiting
    assert q is not None
    who = f"Task {view.id} ({view.role}{': ' + view.title if view.title else ''})"
    if q.kind == "budget":
        return (f"{who} is paused: {q.prompt}. Only the user raises a budget: ask them, then call respond-to-process "
                f"(task_id {view.id}, budget_usd: the new budget; with only task_id the user is asked), "
                f"or in a terminal: orchestra respond {view.id} --budget N.")
    if q.kind == "permission":
        return (f"{who} is waiting for permission: {q.prompt}. Answer with respond-to-process "
                f"(task_id {view.id}, decision allow or deny; with only task_id the user is asked), "
                f"or in a terminal: orchestra respond {view.id} --allow (or --deny).")
    return (f"{who} is waiting for an answer: {question_line(q)}. Answer with respond-to-process "
            f"(task_id {view.id}, answer: an option number, the option or your own words; with only "
            f"task_id the user is asked), or in a terminal: orchestra respond {view.id} ANSWER.")
