"""An asyncio client for the daemon, for clients that run an event loop (the MCP server).

The same frames as `orchestra.wire` (a 4-byte big-endian length, then MessagePack), the same
handshake as `orchestra.client.connect`, and the same errors: `DaemonUnreachable` when no
daemon answers, `OrchestraError` (code + message) when the daemon refuses a request. A
connection carries one request at a time, or one stream.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, TypeVar

from orchestra.shared import protocol as p
from orchestra.shared.paths import Paths
from orchestra.shared.framing import HEADER, body_size
from orchestra.wire import DaemonUnreachable, frame, reply_decoder, result

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0  # seconds for the socket connect and the handshake


class AsyncConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def aclose(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (OSError, ConnectionError):
            pass

    async def __aenter__(self) -> "AsyncConnection":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def send(self, message: Any) -> None:
        self._writer.write(frame(message))
        await self._writer.drain()

    async def receive(self) -> p.Ok | p.Error | p.End:
        try:
            head = await self._reader.readexactly(HEADER.size)
            body = await self._reader.readexactly(body_size(head))
        except asyncio.IncompleteReadError:
            raise DaemonUnreachable("the daemon closed the connection") from None
        return reply_decoder.decode(body)

    async def call(self, request: p.Request, result_type: type[T] | Any = None) -> T:
        """Send `request`, return its result as `result_type` (by default, the type the
        protocol says it is answered with), or raise its error."""
        await self.send(request)
        return result(await self.receive(), p.reply_type(request) if result_type is None else result_type)

    async def stream(self, request: p.Request, item_type: type[T] | Any = Any) -> AsyncIterator[T]:
        """Send `request` and yield each item the daemon streams back until it ends."""
        await self.send(request)
        while True:
            reply = await self.receive()
            if isinstance(reply, p.End):
                if reply.error is not None:
                    raise p.OrchestraError(reply.error.code, reply.error.message)
                return
            yield result(reply, item_type)


async def connect(paths: Paths, *, client: str = "orchestra-async", for_pids: list[tuple[int, int]] = ()) -> AsyncConnection:
    """A connection that has passed the version handshake; DaemonUnreachable otherwise.
    `for_pids`: the processes it acts for (`Hello.for_pids`)."""
    path = str(paths.socket)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=p.MAX_FRAME + HEADER.size), CONNECT_TIMEOUT
        )
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise DaemonUnreachable(f"no daemon is listening on {path}") from exc
    except PermissionError as exc:
        raise DaemonUnreachable(f"not allowed to connect to {path}: {exc.strerror}") from exc
    except asyncio.TimeoutError:
        raise DaemonUnreachable(f"the daemon on {path} did not accept the connection in time") from None
    conn = AsyncConnection(reader, writer)
    try:
        welcome = await asyncio.wait_for(
            conn.call(p.Hello(version=p.PROTOCOL_VERSION, client=client, for_pids=list(for_pids)), p.Welcome), CONNECT_TIMEOUT
        )
    except p.OrchestraError as exc:
        await conn.aclose()
        raise DaemonUnreachable(exc.message) from None
    except asyncio.TimeoutError:
        await conn.aclose()
        raise DaemonUnreachable(f"the daemon on {path} did not answer the handshake in time") from None
    except BaseException:
        await conn.aclose()
        raise
    if welcome.version != p.PROTOCOL_VERSION:  # pragma: no cover - the daemon refuses first
        await conn.aclose()
        raise DaemonUnreachable(f"daemon speaks protocol {welcome.version}, this client {p.PROTOCOL_VERSION}")
    return conn
