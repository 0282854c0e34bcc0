"""Readers that stop reading, and clients that hold descriptors (issue 14, items 1 and 9).

Stalled followers. `orchestra logs -f 4 | less`, left open, is a follower that stops
reading. Many of them, while the task writes tens of MB fast, must cost the daemon no
output (the fold used to fail with BufferError and drop the places of the chunks: `logs`
then served 1 MiB of 50 MB, and `--verify` found a mismatch) and little memory (each used
to pin three copies of a 1 MiB chunk). The followers here are raw sockets that send the
request and never read, with a small receive buffer.

Descriptors. The daemon raises its soft open-files limit to the hard one, keeps a reserve
for agents' pipes, closes connections that say no Hello within a few seconds, and past its
connection cap makes room (closing the oldest connection that has said nothing, or has
been idle longest) or refuses with an error that says what to do. Started under a hard
limit of 1,024, with 1,100 idle connections open, `orchestra submit` must still work.

Memory is read from /proc (VmHWM is the kernel's own peak: no sampling gaps); the bounds
are far from both the figures before the fixes and after them (printed).
"""

from __future__ import annotations

import fcntl
import hashlib
import socket
import subprocess
import termios
import threading

import msgspec

from orchestra import protocol as p
from tests.daemon import wait_for
from tests.reliability.harness import PY, RDaemon, Raw, vm_hwm_kb

MIB = 1 << 20
# Waits for a line on stdin (so the followers are there first), then writes `n` MiB as
# fast as it can, each MiB different.
WRITER = ("import hashlib, sys\nsys.stdin.readline()\nout = sys.stdout.buffer\n"
          "for i in range({n}):\n    out.write(hashlib.sha256(b'%d' % i).digest() * 32768)\n")


def written(n: int) -> bytes:
    return b"".join(hashlib.sha256(b"%d" % i).digest() * 32768 for i in range(n))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def stall(d: RDaemon, request: p.Logs) -> Raw:
    """A client that asks for `request` and then never reads."""
    raw = Raw(d.paths.socket, timeout=30)
    try:
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.hello()
        raw.frame(msgspec.msgpack.encode(request))
    except BaseException:
        raw.close()
        raise
    return raw


def queued(raw: Raw) -> int:
    """Bytes the daemon has sent this client that it has not read."""
    return int.from_bytes(fcntl.ioctl(raw.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"), "little")


def read_stream(raw: Raw) -> bytes:
    """Read a Logs stream to its End; every byte of output it carried."""
    out = bytearray()
    while True:
        reply = raw.reply()
        assert reply is not None, "the daemon closed the stream before its End"
        if reply["reply"] == "end":
            assert reply.get("error") is None, reply
            return bytes(out)
        assert reply["reply"] == "ok", reply
        out += reply["result"]["data"]


class Reader(threading.Thread):
    """`logs -f --raw` that keeps up: reads every frame as it comes, through the client."""

    def __init__(self, d: RDaemon, task: int) -> None:
        super().__init__(daemon=True)
        self.conn = d.connect()
        self.task = task
        self.data = bytearray()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.conn:
                for chunk in self.conn.stream(p.Logs(task=self.task, follow=True, raw=True), p.LogChunk):
                    self.data += chunk.data
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def cli_bytes(d: RDaemon, *args: str) -> bytes:
    """The real CLI as a subprocess; its stdout as bytes (output is not text)."""
    done = subprocess.run([PY, "-m", "orchestra", *args], env=d.env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


# ---------------------------------------------------------------------------------------
# Item 1: stalled followers


def test_followers_that_stop_reading_lose_no_output_and_cost_the_daemon_little():
    n, followers = 48, 20  # MiB written; stalled readers
    expected = written(n)
    d = RDaemon()
    stalled: list[Raw] = []
    try:
        d.start()
        task = d.submit(PY, "-c", WRITER.format(n=n), title="writer")
        d.wait_status(task, p.Status.RUNNING)
        before = d.rss_kb()
        for i in range(followers):  # `logs -f` as people run it, some --raw, some `logs | less`
            kind = [p.Logs(task=task, follow=True), p.Logs(task=task, follow=True, raw=True), p.Logs(task=task)][i % 3]
            stalled.append(stall(d, kind))
        keeper = Reader(d, task)
        keeper.start()
        d.call(p.Respond(task=task, text="go"))
        view = d.wait_status(task, p.Status.SUCCEEDED, p.Status.FAILED, timeout=180)
        keeper.join(60)
        peak = vm_hwm_kb(d.pid)
        print(f"\n{followers} stalled followers of {n} MiB: daemon VmRSS {before} kB before, peak {peak} kB "
              f"({peak - before:+} kB); a reader that kept up got {len(keeper.data):,} bytes")

        problems = [line for line in d.output().splitlines() if "BufferError" in line or "Traceback" in line]
        assert not problems, f"the daemon failed while followers stalled: {problems[:5]}"
        assert view.status is p.Status.SUCCEEDED and view.output_bytes == len(expected), view
        assert keeper.error is None, keeper.error
        assert digest(bytes(keeper.data)) == digest(expected), f"the reader that kept up got {len(keeper.data):,} bytes"
        served = cli_bytes(d, "logs", "--raw", str(task))
        assert (len(served), digest(served)) == (len(expected), digest(expected)), \
            f"`logs --raw` serves {len(served):,} of {len(expected):,} bytes"
        back = stalled.pop(0)  # a follower that comes back after the task ended gets all of it
        with back:
            again = read_stream(back)
        assert (len(again), digest(again)) == (len(expected), digest(expected))
        assert peak - before < 30 * 1024, (
            f"{followers} followers that never read took the daemon from {before} kB to a peak of {peak} kB")
    finally:
        for raw in stalled:
            raw.close()
    try:
        d.stop()
        verify = d.orchestrad("--verify")
        assert verify.returncode == 0 and "ok:" in verify.stdout, verify.stdout + verify.stderr
        d.start()  # the shutdown snapshot holds the right state
        view = d.task(task)
        assert view.output_bytes == len(expected)
        served = cli_bytes(d, "logs", "--raw", str(task))
        assert (len(served), digest(served)) == (len(expected), digest(expected))
    finally:
        d.cleanup()


def test_a_reader_that_never_reads_holds_a_frame_of_output_in_the_daemon_not_a_chunk():
    """Followers of a finished task's output (8 chunks of 1 MiB): each sends its request,
    the daemon writes until the socket is full, and then holds what it could not send.
    That must be a frame or two, not the 1 MiB chunk it is in (and copies of it)."""
    n, followers = 8, 100
    d = RDaemon()
    stalled: list[Raw] = []
    try:
        d.start()
        task = d.submit(PY, "-c", WRITER.format(n=n))
        d.wait_status(task, p.Status.RUNNING)
        d.call(p.Respond(task=task, text="go"))
        d.wait_status(task, p.Status.SUCCEEDED)
        before = d.rss_kb()
        for i in range(followers):
            stalled.append(stall(d, p.Logs(task=task, follow=True, raw=bool(i % 2))))
        # every one has had as much as its socket takes: the daemon waits on each now
        wait_for(lambda: all(queued(raw) >= 64 << 10 for raw in stalled), 30, "the daemon to fill every socket")
        held = d.rss_kb() - before
        print(f"\n{followers} readers that never read: daemon VmRSS {before} kB before, {held:+} kB with them "
              f"({held / followers:.0f} kB each)")
        assert held < 20 * 1024, f"{followers} readers that never read hold {held} kB of the daemon's memory"
        assert d.proc.poll() is None
    finally:
        for raw in stalled:
            raw.close()
        d.cleanup()
