"""Hostile clients, as reusable pieces: hypothesis strategies for frames no real client
sends, and the attacks themselves (each checks what the daemon must answer). Used by
test_hostile_clients.py and, at length, by bench/reliability.py."""

from __future__ import annotations

import os
import socket
import struct
import time

import msgspec
from hypothesis import strategies as st

from orchestra.shared import protocol as p
from tests.reliability.harness import PY, RDaemon, Raw

HARD = 5.0  # seconds: a probe call not answered within this is a liveness failure
MAX = p.MAX_FRAME

# Known methods a hostile frame may name. Not "shutdown" (a legitimate request that ends
# the daemon) and not the ones that legitimately keep the connection busy (streams, wait).
METHODS = sorted(
    m.__struct_config__.tag for m in p.AnyRequest.__args__  # type: ignore[attr-defined]
    if m.__struct_config__.tag not in ("shutdown", "logs", "watch", "wait")
)
FIELDS = ["task", "tasks", "key", "value", "cwd", "argv", "prompt", "status", "version", "priority", "text",
          "env", "after", "role", "template", "goal", "workflow", "follow", "allow", "deny", "timeout"]

leaves = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
          | st.text(max_size=40) | st.binary(max_size=40))
values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
                      max_leaves=16)
request_like = st.builds(
    lambda method, fields: msgspec.msgpack.encode({"method": method, **fields}),
    st.sampled_from(METHODS) | st.text(max_size=20),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), values, max_size=4),
)
complete_bodies = st.one_of(
    st.binary(max_size=300),  # random bytes in a well-formed frame
    values.map(msgspec.msgpack.encode),  # valid MessagePack of the wrong shape
    request_like,  # unknown methods, known methods with random fields
)


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@st.composite
def attacks(draw) -> tuple[str, bool, bytes]:
    """(kind, say Hello first, bytes to send)."""
    kind = draw(st.sampled_from(["complete", "complete", "complete", "raw", "truncated", "oversized", "tiny-header"]))
    greet = draw(st.booleans())
    if kind == "complete":
        return kind, greet, framed(draw(complete_bodies))
    if kind == "raw":
        return kind, greet, draw(st.binary(min_size=1, max_size=300))
    if kind == "truncated":
        size = draw(st.integers(1, MAX))
        body = draw(st.binary(max_size=min(size - 1, 300)))
        return kind, greet, struct.pack(">I", size) + body
    if kind == "oversized":
        return kind, greet, struct.pack(">I", draw(st.integers(MAX + 1, 2**32 - 1)))
    return kind, greet, draw(st.binary(min_size=1, max_size=3))  # less than a header


def send_attack(d: RDaemon, case: tuple[str, bool, bytes]) -> None:
    """One hostile connection: say Hello or not, send the bytes, check the answer.

    A complete frame gets exactly one reply (and, after Hello, the connection carries on);
    an oversized length gets an error and the connection is closed; anything else (raw
    bytes, truncated frames, less than a header) leaves the daemon waiting for the rest,
    and we hang up on it.
    """
    kind, greet, data = case
    with Raw(d.paths.socket, timeout=HARD) as raw:
        if greet:
            raw.hello()
        raw.send(data)
        if kind == "complete":
            reply = raw.reply()
            assert reply is not None, f"no reply to a complete frame {data[:80]!r} (greeted: {greet})"
            assert reply.get("reply") in ("ok", "error"), reply
            if greet:  # the connection carries on
                raw.frame(msgspec.msgpack.encode(p.Info()))
                after = raw.reply()
                assert after is not None and after["reply"] == "ok", (data[:80], after)
        elif kind == "oversized":
            reply = raw.reply()
            assert reply is not None and reply["code"] == "protocol" and "over the limit" in reply["message"], reply
            assert raw.reply() is None  # and closed


def hold_connections(d: RDaemon, n: int) -> dict:
    """Open `n` connections at once; half say nothing, half say Hello and ask Info; a few
    of the silent ones speak up late. Returns figures; asserts every answer."""
    conns: list[Raw] = []
    t0 = time.perf_counter()
    try:
        for _ in range(n):
            conns.append(Raw(d.paths.socket, timeout=HARD * 4))
        opened = time.perf_counter() - t0
        silent, talkers = conns[: n // 2], conns[n // 2:]
        hello = framed(msgspec.msgpack.encode(p.Hello(version=p.PROTOCOL_VERSION)))
        for c in talkers:
            c.send(hello)
        for c in talkers:
            assert c.reply()["reply"] == "ok"
        info = framed(msgspec.msgpack.encode(p.Info()))
        t1 = time.perf_counter()
        for c in talkers:
            c.send(info)
        for c in talkers:
            assert c.reply()["result"]["pid"] == d.pid
        answered = time.perf_counter() - t1
        for c in silent[:10]:  # a silent client that speaks up later is served too
            c.send(hello)
            assert c.reply()["reply"] == "ok"
        return {"connections": n, "opened_s": opened, "answered_s": answered, "rss_kb": d.rss_kb(),
                "daemon_fds": len(os.listdir(f"/proc/{d.pid}/fd"))}
    finally:
        for c in conns:
            c.close()


def stall_readers(d: RDaemon, n: int, task: int) -> list[Raw]:
    """`n` stream readers (Logs follow of `task`, and Watch) that never read a byte."""
    stalled = []
    try:
        for i in range(n):
            raw = Raw(d.paths.socket, timeout=HARD)
            stalled.append(raw)
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.hello()
            raw.frame(msgspec.msgpack.encode(p.Logs(task=task, follow=True) if i % 2 else p.Watch()))
    except BaseException:
        for raw in stalled:
            raw.close()
        raise
    return stalled


CHATTY = [PY, "-c", "import sys, time\nfor i in range(200):\n    sys.stdout.write(('%d ' % i) * 5000 + '\\n'); sys.stdout.flush(); time.sleep(0.01)"]
