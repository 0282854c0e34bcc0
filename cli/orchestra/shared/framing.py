"""Frames on the socket: a 4-byte big-endian length, then that many bytes of MessagePack.

The daemon and every client read frames through `read_frame` (blocking sockets) or with
`body_size` between two awaits (asyncio): the header's format and the size limit live here
and nowhere else, and a frame longer than `MAX_FRAME` is refused before its body is read, so a bogus
length never makes anyone allocate gigabytes. Each reader brings its own `exactly(n)`,
which returns `n` bytes or raises what a short stream means where it is used. Pure Python,
no msgspec: the quick `ps` path (`orchestra.quick`) reads frames with it too.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False  # typing is not imported at run time: see `orchestra.quick`
if TYPE_CHECKING:
    from typing import Callable

PROTOCOL_VERSION = 2  # 2: `ListTasks` answers a `TaskPage`
MAX_FRAME = 16 << 20  # bytes; larger frames are refused without being read
PAGE_MAX = 1000  # tasks in one page of a list reply (see protocol.ListTasks)
HEADER = struct.Struct(">I")


class FrameTooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"frame of {size:,} bytes is over the limit of {MAX_FRAME:,}")
        self.size = size


def header(size: int) -> bytes:
    """The header of a frame whose body is `size` bytes (FrameTooLarge past the limit)."""
    if size > MAX_FRAME:
        raise FrameTooLarge(size)
    return HEADER.pack(size)


def body_size(head: bytes) -> int:
    """The body size a header announces; FrameTooLarge past the limit, before any of it
    is read."""
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise FrameTooLarge(size)
    return size


def read_frame(exactly: "Callable[[int], bytes]") -> bytes:
    """The body of the next frame, read with `exactly` (asyncio readers do the same in
    two awaits: `exactly(body_size(exactly(HEADER.size)))`)."""
    return exactly(body_size(exactly(HEADER.size)))
