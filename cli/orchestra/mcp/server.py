"""`orchestra mcp`: the Model Context Protocol server on stdio.

A thin shim over the daemon, built on the MCP SDK's low-level `Server` (mcp 2.x), so that
every schema comes from the same msgspec types as the rest of orchestra. This module wires
the parts of the package `orchestra.mcp` into one `Server` and runs it:

* `tools`: the ten tools, each a daemon request or a few (their argument and result
  types and schemas are in `tool_types`);
* `resources`: the four resources, status, a task's logs, roles and workflows, and the
  completion of a task id in the logs' URI template;
* `notify`: a background `Watch` stream on the daemon, turned into resource updates and
  a log message when a task starts waiting for a person;
* `elicit`: `respond-to-process` with only a task id asks the person with a form;
* `daemon`: the calls to the daemon (`orchestra.aclient`, one short connection each).

The SDK serves two protocol eras on the same stdio pipe and the client's first request picks
one. Handshake clients (2025-11-25 and before: Claude Code, Claude Desktop, the MCP
Inspector) subscribe with `resources/subscribe`, get log messages, and are asked by an
`elicitation/create` request during the tool call. 2026-07-28 clients subscribe with
`subscriptions/listen` (the SDK's subscription bus), get no connection-wide log messages
(that era has none), and are asked through an `InputRequiredResult` that they answer by
retrying the call.

Nothing is written to stdout except the protocol: the daemon's autostart notice and all
logging go to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import AsyncIterator

import anyio
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import ListenHandler
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CompleteResult,
    EmptyResult,
    ListResourcesResult,
    ListResourceTemplatesResult,
    ListToolsResult,
    NotificationParams,
    ReadResourceResult,
    SetLevelRequestParams,
)

from orchestra.mcp import resources as mcp_resources
from orchestra.client import connect_or_start
from orchestra.mcp.daemon import Daemon, unreachable_message
from orchestra.mcp.notify import Notifier
from orchestra.mcp.tools import Tools
from orchestra.shared.paths import Paths
from orchestra.shared.protocol import OrchestraError
from orchestra.wire import DaemonUnreachable

log = logging.getLogger("orchestra.mcp")

SERVER_NAME = "orchestra"

INSTRUCTIONS = """\
orchestra runs a team of coding agents (Claude Code processes, or plain commands) on this
machine. submit-task queues work for a role (architect, implementer, tester, reviewer,
devops, documenter, generalist, or the user's own); create-workflow turns a goal into a
small team of dependent tasks. Task ids are small integers. A task with status "waiting"
is blocked until someone answers it: list-processes and status-dashboard show what it asks;
respond-to-process answers (decision allow/deny for a permission, answer for a question).
When unsure whether to allow something, call respond-to-process with only task_id: the user
is asked directly if this client supports it."""


def build_server(paths: Paths, autostart: bool) -> Server:
    """The SDK server: the tools, the resources and their subscriptions, logging levels, and
    the watcher running for as long as the server does."""
    daemon = Daemon(paths, autostart)
    tools = Tools(daemon, cwd=os.path.abspath(os.getcwd()))
    notifier = Notifier(daemon)

    async def on_list_tools(ctx, params) -> ListToolsResult:
        return ListToolsResult(tools=await tools.list_tools())

    async def on_list_resources(ctx, params) -> ListResourcesResult:
        return ListResourcesResult(resources=mcp_resources.resources())

    async def on_list_templates(ctx, params) -> ListResourceTemplatesResult:
        return ListResourceTemplatesResult(resource_templates=mcp_resources.templates())

    async def on_read_resource(ctx, params) -> ReadResourceResult:
        return await mcp_resources.read_resource(daemon, str(params.uri))

    async def on_subscribe(ctx, params) -> EmptyResult:
        uri = str(params.uri)
        if not mcp_resources.is_resource(uri):
            raise MCPError(INVALID_PARAMS, f"no resource {uri} to subscribe to", {"uri": uri})
        notifier.client(ctx.session).subscribed.add(uri)
        return EmptyResult()

    async def on_unsubscribe(ctx, params) -> EmptyResult:
        notifier.client(ctx.session).subscribed.discard(str(params.uri))
        return EmptyResult()

    async def on_set_level(ctx, params) -> EmptyResult:
        notifier.client(ctx.session).log_level = params.level
        return EmptyResult()

    async def on_completion(ctx, params) -> CompleteResult:
        return CompleteResult(completion=await mcp_resources.complete(daemon, params))

    async def on_initialized(ctx, params) -> None:
        await notifier.announce_pending(notifier.client(ctx.session))  # the session's channel for notifications

    @asynccontextmanager
    async def lifespan(_server) -> AsyncIterator[dict]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(notifier.watch_forever)
            try:
                yield {}
            finally:
                tg.cancel_scope.cancel()

    server = Server(
        SERVER_NAME,
        version=_version(),
        title="orchestra",
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        on_list_tools=on_list_tools,
        on_call_tool=tools.call_tool,
        on_list_resources=on_list_resources,
        on_list_resource_templates=on_list_templates,
        on_read_resource=on_read_resource,
        on_subscribe_resource=on_subscribe,
        on_unsubscribe_resource=on_unsubscribe,
        on_subscriptions_listen=ListenHandler(notifier.bus),
        on_completion=on_completion,
    )
    # Added after construction: passing it to the constructor warns that logging is
    # deprecated in 2026-07-28, but handshake-era clients still use it.
    server.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)
    server.add_notification_handler("notifications/initialized", NotificationParams, on_initialized)
    return server


def _version() -> str:
    try:
        return version("orchestra")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0"


def serve(paths: Paths, autostart: bool) -> None:
    """Serve MCP on stdin/stdout until the client closes stdin."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="orchestra mcp: %(message)s")
    try:  # start the daemon now rather than on the first tool call (its notice goes to stderr)
        connect_or_start(paths, autostart=autostart, timeout=10).close()
    except (DaemonUnreachable, OrchestraError) as exc:  # no daemon, or one of another version
        log.warning("%s; tools will report this until a daemon answers", unreachable_message(exc, autostart))
    server = build_server(paths, autostart)

    async def run_stdio() -> None:
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())

    anyio.run(run_stdio)
