"""Frames on the socket: a 4-byte big-endian length, then that many bytes of MessagePack.

The framing itself is `orchestra.shared.framing`, which the daemon reads with too. Here:
encoding a message into a frame (with a sentence for what MessagePack cannot carry), and
`Connection`, the CLI's plain blocking socket, so that a short command imports no asyncio.
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any, Iterator, TypeVar

import msgspec

from orchestra.shared import protocol as p
from orchestra.shared.framing import FrameTooLarge as FrameTooLarge, header, read_frame  # FrameTooLarge re-exported

T = TypeVar("T")

encoder = msgspec.msgpack.Encoder()
reply_decoder = msgspec.msgpack.Decoder(p.AnyReply)


def frame(message: Any) -> bytes:
    """The frame for `message`; a bad_request OrchestraError naming the field that
    MessagePack cannot carry (text that is not UTF-8, a number past 64 bits)."""
    try:
        body = encoder.encode(message)
    except (UnicodeEncodeError, OverflowError) as exc:
        raise p.bad_request(_unencodable(message) or str(exc)) from None
    return header(len(body)) + body


def _unencodable(message: Any) -> str | None:
    """A sentence about the first value in `message` that cannot be encoded, or None."""
    for where, value in _values(message, ""):
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                shown = value.encode(errors="surrogateescape") if _escaped(value) else value.encode(errors="backslashreplace")
                shown_text = repr(shown if len(shown) <= 60 else shown[:59] + b"...")
                return f"{where} is not UTF-8 text ({shown_text}); orchestra carries text as UTF-8: convert it (e.g. with iconv) and try again"
        elif isinstance(value, int) and not -(2**63) <= value < 2**64:
            return f"{where} {str(value)[:40]} is too large a number"
    return None


def _escaped(value: str) -> bool:
    """Surrogates that stand for bytes (how Python reads non-UTF-8 arguments), only."""
    try:
        value.encode(errors="surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


_NAMES = {"argv": "the command", "cwd": "the working directory", "env": "the environment"}


def _values(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every leaf of a message, with words for where it is: "the title", "word 2 of the
    command", "the value of HOME in the environment"."""
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            yield from _values(getattr(value, name), _NAMES.get(name, "the " + name.replace("_", " ")))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value, 1):
            yield from _values(item, f"word {i} of {where}" if where == "the command" else f"item {i} of {where}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _values(key, f"a name in {where}")
            yield from _values(item, f"the value of {key!r} in {where}")
    else:
        yield where, value


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
        return reply_decoder.decode(read_frame(self._read_exactly))

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = self.sock.recv(max(65536, n - len(self._buffer)))
            if not chunk:
                raise DaemonUnreachable("the daemon closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def call(self, request: p.Request, result_type: type[T] | Any = None) -> T:
        """Send `request`, return its result as `result_type` (by default, the type the
        protocol says it is answered with), or raise its error."""
        self.send(request)
        return result(self.receive(), p.reply_type(request) if result_type is None else result_type)

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
