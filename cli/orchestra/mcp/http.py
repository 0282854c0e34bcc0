"""`orchestra mcp --http HOST:PORT`: the same MCP server over the streamable HTTP transport.

The tools, resources and both protocol eras are those of stdio (`server.build_server`); the
SDK's session manager keeps one session per client, and `notify` tells each of them. The
listener is on loopback only, and every request must carry the bearer token
(`Authorization: Bearer TOKEN`): the one in $ORCHESTRA_MCP_TOKEN or the file given, else
a random one printed when the server starts. The Host and Origin headers are checked too
(the SDK's DNS-rebinding protection), so a web page in a browser cannot reach it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import secrets
import socket
import sys

from orchestra import peer
from orchestra.shared.paths import Paths

log = logging.getLogger("orchestra.mcp")

PATH = "/mcp"
PEER_KEY = "orchestra.peer"  # in an HTTP request's scope: the processes that sent it
TOKEN_VARIABLE = "ORCHESTRA_MCP_TOKEN"
LOOPBACK_NAMES = ("localhost",)
REPLAY = 200  # events of a stream kept for a client that reconnects
STREAMS = 1000  # streams kept so, the least recently used let go first
RETRY_MS = 1000  # what a client is told to wait before it reconnects
MAX_OWNERS = 10_000  # sessions whose opening process is remembered (the SDK's own cap on sessions)


class AddressError(ValueError):
    """An address to listen on that is not a loopback HOST:PORT; the message says why."""


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [::1]:PORT) on loopback; PORT 0 picks a free one."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise AddressError(f"{text!r} is not HOST:PORT: give it as 127.0.0.1:8765")
    if host not in LOOPBACK_NAMES:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise AddressError(
                f"{host} is not a loopback address: orchestra serves MCP over HTTP on this machine only "
                "(127.0.0.1, ::1 or localhost)"
            )
    return host, int(port)


def token_from(file: str | None) -> tuple[str, str]:
    """The bearer token and where it came from: the file, $ORCHESTRA_MCP_TOKEN, or made now."""
    if file:
        with open(file, encoding="utf-8") as f:
            token = f.read().strip()
        if len(token) < 16:
            raise ValueError(f"the token in {file} is shorter than 16 characters: use a long random one")
        return token, file
    if os.environ.get(TOKEN_VARIABLE):
        token = os.environ[TOKEN_VARIABLE].strip()
        if len(token) < 16:
            raise ValueError(f"${TOKEN_VARIABLE} is shorter than 16 characters: use a long random one")
        return token, f"${TOKEN_VARIABLE}"
    return secrets.token_urlsafe(32), ""


class BearerAuth:
    """An ASGI wrapper: HTTP requests without `Authorization: Bearer <token>` get a 401, and
    a session is kept to the process that opened it (where /proc tells): a request for it
    from another process, say one that answers a question the session was asked, gets a 403."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.owners: dict[bytes, set[tuple[int, int]]] = {}  # session id -> the processes that opened it

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            await _refuse(send, 401, "a bearer token is required: send Authorization: Bearer TOKEN "
                                     "(the token orchestra mcp --http printed, or the one you gave it)")
            return
        why, processes = await asyncio.to_thread(peer.refusal, scope, changes=True)
        if why:
            await _refuse(send, 403, why)
            return
        scope[PEER_KEY] = processes  # the tool call behind it reads them here (tools._peer)
        session = headers.get(b"mcp-session-id")
        if session is not None and session in self.owners and not self.owners[session] & set(processes):
            await _refuse(send, 403, "this session belongs to another process: open one of your own")
            return
        if session is not None or not peer.supported():
            return await self.app(scope, receive, send)

        async def noting(message) -> None:  # the session this request opens is its process's
            if message["type"] == "http.response.start":
                opened = dict(message.get("headers") or []).get(b"mcp-session-id")
                if opened is not None:
                    if len(self.owners) >= MAX_OWNERS:
                        self.owners.pop(next(iter(self.owners)))
                    self.owners[opened] = set(processes)
            await send(message)

        await self.app(scope, receive, noting)


async def _refuse(send, status: int, message: str) -> None:
    import json

    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": message}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"www-authenticate", b'Bearer realm="orchestra"'),
    ]})
    await send({"type": "http.response.body", "body": body})


def replay_store():
    """An event store for resumability: each stream's last `REPLAY` events, so a client whose
    connection broke mid-response resumes with Last-Event-ID instead of losing the reply."""
    from collections import OrderedDict, deque

    from mcp.server.streamable_http import EventMessage, EventStore

    class Replay(EventStore):
        def __init__(self) -> None:
            self.streams: OrderedDict[str, deque] = OrderedDict()  # stream id -> (event id, message), oldest stream first
            self.counter = 0

        async def store_event(self, stream_id, message):
            self.counter += 1
            event_id = f"{stream_id}/{self.counter}"
            events = self.streams.setdefault(stream_id, deque(maxlen=REPLAY))
            self.streams.move_to_end(stream_id)
            events.append((event_id, message))
            while len(self.streams) > STREAMS:
                self.streams.popitem(last=False)
            return event_id

        async def replay_events_after(self, last_event_id, send_callback):
            stream_id = last_event_id.rpartition("/")[0]
            events = self.streams.get(stream_id)
            if events is None or not any(e == last_event_id for e, _ in events):
                return None
            after = False
            for event_id, message in list(events):
                if after and message is not None:
                    await send_callback(EventMessage(message, event_id))
                after = after or event_id == last_event_id
            return stream_id

    return Replay()


def app(paths: Paths, autostart: bool, host: str, token: str):
    """The ASGI application: the MCP endpoint at /mcp behind the bearer token."""
    from orchestra.mcp.server import build_server

    server = build_server(paths, autostart)
    http = server.streamable_http_app(streamable_http_path=PATH, host=host, event_store=replay_store(), retry_interval=RETRY_MS)
    return BearerAuth(http, token)


def serve_http(paths: Paths, autostart: bool, address: str, token_file: str | None = None) -> None:
    """Serve MCP over streamable HTTP on `address` until interrupted."""
    import uvicorn

    from orchestra.client import connect_or_start
    from orchestra.mcp.daemon import unreachable_message
    from orchestra.shared.protocol import OrchestraError
    from orchestra.wire import DaemonUnreachable

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="orchestra mcp: %(message)s")
    host, port = parse_address(address)
    token, source = token_from(token_file)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise AddressError(f"cannot listen on {address}: {exc.strerror or exc}") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"orchestra mcp: MCP over streamable HTTP at http://{shown}:{bound}{PATH}", file=sys.stderr)
    if source:
        print(f"orchestra mcp: bearer token from {source}", file=sys.stderr)
    else:
        print(f"orchestra mcp: Authorization: Bearer {token}", file=sys.stderr)
    sys.stderr.flush()
    try:  # after the address is shown: a slow daemon does not hide it
        connect_or_start(paths, autostart=autostart, timeout=10).close()
    except (DaemonUnreachable, OrchestraError) as exc:
        log.warning("%s; tools will report this until a daemon answers", unreachable_message(exc, autostart))
    config = uvicorn.Config(app(paths, autostart, host, token), log_level="warning", lifespan="on", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
