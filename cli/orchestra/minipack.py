"""MessagePack in plain Python, for the commands that must start fast.

Importing msgspec costs about 60 ms on a small machine (it pulls in typing, inspect,
datetime, decimal and uuid), which is more than twice an interpreter's whole start-up.
`orchestra.quick` answers `orchestra ps` without it: the requests it sends and the replies
it reads are plain maps, so this module covers exactly the MessagePack a daemon writes for
them (nil, booleans, integers, floats, strings, binary, arrays and maps; no extension
types) and decodes to dicts and lists, the same shapes `msgspec.msgpack.decode` gives
without a type. Everything else speaks msgspec.
"""

from __future__ import annotations

import struct

_B = struct.Struct(">B").unpack_from
_H = struct.Struct(">H").unpack_from
_I = struct.Struct(">I").unpack_from
_Q = struct.Struct(">Q").unpack_from
_b = struct.Struct(">b").unpack_from
_h = struct.Struct(">h").unpack_from
_i = struct.Struct(">i").unpack_from
_q = struct.Struct(">q").unpack_from
_f = struct.Struct(">f").unpack_from
_d = struct.Struct(">d").unpack_from


class FormatError(ValueError):
    """The bytes are not MessagePack this module reads."""


def pack(value: object) -> bytes:
    out = bytearray()
    _pack(value, out)
    return bytes(out)


def _pack(value: object, out: bytearray) -> None:
    if value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif isinstance(value, int):
        _pack_int(value, out)
    elif isinstance(value, float):
        out += b"\xcb" + struct.pack(">d", value)
    elif isinstance(value, str):
        data = value.encode()
        _head(len(data), out, 0xA0, 31, 0xD9, 0xDA, 0xDB)
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        _head(len(data), out, None, 0, 0xC4, 0xC5, 0xC6)
        out += data
    elif isinstance(value, (list, tuple)):
        _head(len(value), out, 0x90, 15, None, 0xDC, 0xDD)
        for item in value:
            _pack(item, out)
    elif isinstance(value, dict):
        _head(len(value), out, 0x80, 15, None, 0xDE, 0xDF)
        for key, item in value.items():
            _pack(key, out)
            _pack(item, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as MessagePack")


def _head(n: int, out: bytearray, fix: int | None, fix_max: int, b8: int | None, b16: int, b32: int) -> None:
    if fix is not None and n <= fix_max:
        out.append(fix | n)
    elif b8 is not None and n <= 0xFF:
        out += bytes((b8, n))
    elif n <= 0xFFFF:
        out += bytes((b16,)) + struct.pack(">H", n)
    elif n <= 0xFFFFFFFF:
        out += bytes((b32,)) + struct.pack(">I", n)
    else:
        raise ValueError(f"{n} items or bytes are more than MessagePack can frame")


def _pack_int(n: int, out: bytearray) -> None:
    if 0 <= n <= 0x7F or -32 <= n < 0:
        out += struct.pack(">b" if n < 0 else ">B", n)
    elif n > 0:
        for code, fmt, top in ((0xCC, ">B", 0xFF), (0xCD, ">H", 0xFFFF), (0xCE, ">I", 0xFFFFFFFF), (0xCF, ">Q", 2**64 - 1)):
            if n <= top:
                out += bytes((code,)) + struct.pack(fmt, n)
                return
        raise OverflowError(f"{n} is too large for MessagePack")
    else:
        for code, fmt, low in ((0xD0, ">b", -(2**7)), (0xD1, ">h", -(2**15)), (0xD2, ">i", -(2**31)), (0xD3, ">q", -(2**63))):
            if n >= low:
                out += bytes((code,)) + struct.pack(fmt, n)
                return
        raise OverflowError(f"{n} is too small for MessagePack")


def unpack(data: bytes) -> object:
    """The one value `data` holds; FormatError if it holds anything else."""
    try:
        value, end = _unpack(data, 0)
    except (IndexError, struct.error, UnicodeDecodeError, RecursionError) as exc:
        raise FormatError(f"malformed MessagePack: {exc}") from None
    if end != len(data):
        raise FormatError(f"{len(data) - end} bytes after the value")
    return value


def _unpack(data: bytes, pos: int) -> tuple[object, int]:
    code = data[pos]
    pos += 1
    if code <= 0x7F:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if 0xA0 <= code <= 0xBF:
        end = pos + (code & 0x1F)
        return _text(data, pos, end), end
    if 0x90 <= code <= 0x9F:
        return _array(data, pos, code & 0x0F)
    if 0x80 <= code <= 0x8F:
        return _map(data, pos, code & 0x0F)
    if code == 0xC0:
        return None, pos
    if code == 0xC2:
        return False, pos
    if code == 0xC3:
        return True, pos
    if code == 0xCB:
        return _d(data, pos)[0], pos + 8
    if code == 0xCA:
        return _f(data, pos)[0], pos + 4
    if code in _FIXED:
        unpack_from, size = _FIXED[code]
        return unpack_from(data, pos)[0], pos + size
    if code in _SIZED:
        kind, unpack_from, size = _SIZED[code]
        n = unpack_from(data, pos)[0]
        pos += size
        if kind == "str":
            return _text(data, pos, pos + n), pos + n
        if kind == "bin":
            if pos + n > len(data):
                raise FormatError("binary runs past the end")
            return bytes(data[pos : pos + n]), pos + n
        if kind == "array":
            return _array(data, pos, n)
        return _map(data, pos, n)
    raise FormatError(f"type byte 0x{code:02x} at offset {pos - 1} is not supported")


def _text(data: bytes, start: int, end: int) -> str:
    if end > len(data):
        raise FormatError("string runs past the end")
    return bytes(data[start:end]).decode()


def _array(data: bytes, pos: int, n: int) -> tuple[list, int]:
    items = []
    for _ in range(n):
        item, pos = _unpack(data, pos)
        items.append(item)
    return items, pos


def _map(data: bytes, pos: int, n: int) -> tuple[dict, int]:
    result = {}
    for _ in range(n):
        key, pos = _unpack(data, pos)
        value, pos = _unpack(data, pos)
        try:
            result[key] = value
        except TypeError:
            raise FormatError(f"a map key of type {type(key).__name__}") from None
    return result, pos


_FIXED = {
    0xCC: (_B, 1), 0xCD: (_H, 2), 0xCE: (_I, 4), 0xCF: (_Q, 8),
    0xD0: (_b, 1), 0xD1: (_h, 2), 0xD2: (_i, 4), 0xD3: (_q, 8),
}
_SIZED = {
    0xD9: ("str", _B, 1), 0xDA: ("str", _H, 2), 0xDB: ("str", _I, 4),
    0xC4: ("bin", _B, 1), 0xC5: ("bin", _H, 2), 0xC6: ("bin", _I, 4),
    0xDC: ("array", _H, 2), 0xDD: ("array", _I, 4),
    0xDE: ("map", _H, 2), 0xDF: ("map", _I, 4),
}
