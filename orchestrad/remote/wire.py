"""Frames between the daemon and the Ray bridge: a 4-byte big-endian length, then a
MessagePack array whose first item names the message (see `rayexec` and `bridge`)."""

from __future__ import annotations

import asyncio
import struct

import msgspec

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode
_LEN = struct.Struct(">I")
MAX_FRAME = 64 << 20


def frame(*message: object) -> bytes:
    body = _encode(list(message))
    return _LEN.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> list | None:
    """The next message, or None at end of stream."""
    try:
        head = await reader.readexactly(_LEN.size)
        (size,) = _LEN.unpack(head)
        if size > MAX_FRAME:
            raise ValueError(f"a frame of {size} bytes is past the limit")
        return _decode(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
