"""Frames on the socket: a 4-byte big-endian length, then that many bytes of MessagePack.

Both sides refuse frames longer than `protocol.MAX_FRAME` before reading them, so a bogus
length never makes anyone allocate gigabytes. The daemon reads with asyncio streams; the CLI
uses a plain blocking socket (`Connection`) so that a short command imports no asyncio.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, Iterator, TypeVar

import msgspec

from orchestra import protocol as p

HEADER = struct.Struct(">I")
T = TypeVar("T")

encoder = msgspec.msgpack.Encoder()
reply_decoder = msgspec.msgpack.Decoder(p.AnyReply)


class FrameTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"frame of {size} bytes is larger than the limit of {p.MAX_FRAME}")
        self.size = size


def frame(message: Any) -> bytes:
    body = encoder.encode(message)
    if len(body) > p.MAX_FRAME:
        raise FrameTooLarge(len(body))
    return HEADER.pack(len(body)) + body


class DaemonUnreachable(Exception):
    """No daemon answers on the socket (not running, or the socket is not ours)."""


class Connection:
    """A blocking client connection: one request at a time, or one stream."""

    def __init__(self, path: str, *, timeout: float | None = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self._connect(path, timeout)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            self.sock.close()
            raise DaemonUnreachable(f"no daemon is listening on {path}") from exc
        except PermissionError as exc:
            self.sock.close()
            raise DaemonUnreachable(f"not allowed to connect to {path}: {exc.strerror}") from exc
        except BaseException:
            self.sock.close()
            raise
        self._buffer = bytearray()

    def _connect(self, path: str, timeout: float | None) -> None:
        """Connect; while the daemon's listen queue is full (EAGAIN on a Unix socket), wait
        for a turn rather than fail, up to the timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                self.sock.connect(path)
                return
            except BlockingIOError:
                if deadline is not None and time.monotonic() + delay > deadline:
                    raise DaemonUnreachable(f"the daemon at {path} is too busy to accept a connection") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: Any) -> None:
        self.sock.sendall(frame(message))

    def receive(self) -> p.Ok | p.Error | p.End:
        header = self._read_exactly(HEADER.size)
        (size,) = HEADER.unpack(header)
        if size > p.MAX_FRAME:
            raise FrameTooLarge(size)
        return reply_decoder.decode(self._read_exactly(size))

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buffer)))
            if not chunk:
                raise DaemonUnreachable("the daemon closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def call(self, request: p.Request, result_type: type[T] | Any = Any) -> T:
        """Send `request`, return its result converted to `result_type`, or raise its error."""
        self.send(request)
        return result(self.receive(), result_type)

    def call_many(self, requests: list[p.Request], result_type: type[T] | Any = Any, *, window: int = 64) -> list[T | p.OrchestraError]:
        """Pipeline `requests`: keep up to `window` of them in flight, reading replies in
        order as they come, so the daemon can make a burst durable with few fsyncs (and
        neither side ever blocks on a full socket buffer). Each item is a result, or the
        OrchestraError that request got."""
        results: list[Any] = []
        sent = 0
        while len(results) < len(requests):
            upto = min(len(requests), len(results) + window)
            if sent < upto:
                self.sock.sendall(b"".join(frame(r) for r in requests[sent:upto]))
                sent = upto
            try:
                results.append(result(self.receive(), result_type))
            except p.OrchestraError as exc:
                results.append(exc)
        return results

    def stream(self, request: p.Request, item_type: type[T] | Any = Any) -> Iterator[T]:
        """Send `request` and yield each item the daemon streams back until it ends."""
        self.send(request)
        while True:
            reply = self.receive()
            if isinstance(reply, p.End):
                if reply.error is not None:
                    raise p.OrchestraError(reply.error.code, reply.error.message)
                return
            yield result(reply, item_type)



def result(reply: p.Ok | p.Error | p.End, result_type: Any = Any) -> Any:
    """A reply's result as `result_type`; its error raised as an OrchestraError."""
    if isinstance(reply, p.Error):
        raise p.OrchestraError(reply.code, reply.message)
    if isinstance(reply, p.End):
        raise p.OrchestraError(p.ErrorCode.PROTOCOL, "the daemon ended a reply that was not a stream")
    if result_type is Any:
        return reply.result
    return msgspec.convert(reply.result, result_type)
