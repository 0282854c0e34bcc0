"""The `orchestra` command's entry point, with a quick path for `orchestra ps`.

`orchestra ps` is the command people (and scripts, and shell prompts) run most, so it must
answer in a few interpreter start-ups. Importing click and msgspec alone takes several times
longer than that, so the table form of `ps` is answered here with nothing but the standard
library's C modules: a socket, the pipelined `Hello` and `ListTasks` as plain MessagePack
(`orchestra.minipack`), the same queries (`orchestra.listing`) and the same rendering
(`orchestra.render`) as the full command.

Anything else, and anything unusual on the way (another option, no daemon to talk to, an
error reply), goes to the full click CLI in `orchestra.main`, which does the whole job
again and owns every message and exit code: this path only ever prints a table that the
full command would have printed too.
"""

from __future__ import annotations

import os
import sys

from orchestra.shared.vocab import Status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

from orchestra.shared.framing import PROTOCOL_VERSION, FrameTooLarge, header, read_frame  # noqa: E402 - pure Python
# Replies larger than this are decoded by msgspec: decoding in Python runs at about 8 MB/s
# here, and importing msgspec costs about 60 ms, so past this size the import pays for itself.
LARGE_REPLY = 256 << 10
_STATUSES = {s.value for s in Status}


class _Fallback(Exception):
    """Let the full CLI handle this invocation."""


def main() -> None:
    try:
        request = parse_ps(sys.argv[1:])
        text, note = run_ps(*request)
    except _Fallback:
        text = note = None
    if text is None:  # outside the handler, so that nothing the full CLI says is chained to it
        from orchestra.main import main as full

        full()
        return
    if text:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        sys.stderr.write("no tasks\n")
    if note:
        sys.stderr.write(note + "\n")


def parse_ps(args: list[str]) -> tuple[str | None, dict]:
    """(home, `listing.parts` arguments) for `[--home H] [--no-autostart] ps [--status S]...
    [--role R] [--active] [--all] [--limit N]`; _Fallback for anything else, --json and
    --help included."""
    home = None
    words = iter(_split_equals(args))
    for word in words:
        if word == "--home":
            home = _value(words)
        elif word == "--no-autostart":
            pass  # the quick path never starts a daemon; the full CLI decides when it must
        elif word == "ps":
            break
        else:
            raise _Fallback
    else:
        raise _Fallback
    options: dict = {"statuses": [], "role": None, "active_only": False, "limit": None, "everything": False}
    for word in words:
        if word in ("--status", "-s"):
            status = _value(words)
            if status not in _STATUSES:
                raise _Fallback
            options["statuses"].append(status)
        elif word in ("--role", "-r"):
            options["role"] = _value(words)
        elif word == "--active":
            options["active_only"] = True
        elif word == "--all":
            options["everything"] = True
        elif word in ("--limit", "-n"):
            limit = _value(words)
            if not (limit.isascii() and limit.isdigit()):
                raise _Fallback
            options["limit"] = int(limit)
        else:
            raise _Fallback
    return home, options


def _split_equals(args: list[str]) -> Iterator[str]:
    for arg in args:
        if arg.startswith("--") and "=" in arg:
            yield from arg.split("=", 1)
        else:
            yield arg


def _value(words: Iterator[str]) -> str:
    value = next(words, None)
    if value is None or value.startswith("-"):
        raise _Fallback
    return value


def run_ps(home: str | None, options: dict) -> tuple[str, str]:
    """The table `orchestra ps` prints (empty when there are no tasks), and its note for
    stderr (empty unless finished tasks were left out)."""
    from orchestra.listing import gather, note, parts
    from orchestra.shared.paths import quick_socket
    from orchestra.render import grouped, terminal_width

    path = quick_socket(home)
    if path is None:
        raise _Fallback
    with _Client(path) as client:
        greeted = False

        def pages(requests: list[dict]) -> list:
            nonlocal greeted
            frames = [{"method": "listtasks", **fields} for fields in requests]
            if greeted:
                return client.call(frames)
            hello = {"method": "hello", "version": PROTOCOL_VERSION, "client": "orchestra"}
            welcome, *found = client.call([hello, *frames])
            if not isinstance(welcome, dict) or welcome.get("version") != PROTOCOL_VERSION:
                raise _Fallback
            greeted = True
            return found

        try:
            listing = gather(pages, parts(**options))
            views = [_task(t) for t in listing.tasks]
            workflows = {}
            wanted = sorted({t.workflow for t in views if t.workflow is not None})
            if wanted:
                (found,) = client.call([{"method": "listworkflows", "workflows": wanted}])
                workflows = {w["id"]: _workflow(w) for w in found}
            table = grouped(views, workflows, width=terminal_width()) if views else ""
        except (KeyError, TypeError, ValueError, AttributeError):  # not the replies this version knows
            raise _Fallback from None
    return table, note(listing)


class _View:
    """A daemon's map read back as attributes, like the TaskView it was encoded from."""

    def __init__(self, fields: dict) -> None:
        self.__dict__.update(fields)


def _task(fields: dict) -> _View:
    view = _View(fields)
    view.status = Status(fields["status"])
    if fields.get("waiting") is not None:
        view.waiting = _View(fields["waiting"])
    return view


def _workflow(fields: dict) -> _View:
    view = _View(fields)
    view.tasks = [_task(t) for t in fields["tasks"]]
    return view


class _Client:
    """Requests pipelined on one blocking connection; every reply must be `ok`."""

    def __init__(self, path: str) -> None:
        import _socket

        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(30.0)
        try:
            self.sock.connect(path)
        except OSError:  # no daemon, or a busy one: the full CLI waits, starts or explains
            self.sock.close()
            raise _Fallback from None

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def call(self, requests: list[dict]) -> list:
        from orchestra import minipack

        frames = []
        for request in requests:
            body = minipack.pack(request)
            frames.append(len(body).to_bytes(4, "big") + body)
        try:
            self.sock.sendall(b"".join(frames))
            replies = [self._receive() for _ in requests]
        except OSError:
            raise _Fallback from None
        results = []
        for body in replies:
            try:
                reply = minipack.unpack(body) if len(body) <= LARGE_REPLY else _decode_large(body)
            except ValueError:
                raise _Fallback from None
            if not isinstance(reply, dict) or reply.get("reply") != "ok":
                raise _Fallback  # an error: the full CLI asks again and says what it means
            results.append(reply.get("result"))
        return results

    def _receive(self) -> bytes:
        try:
            return read_frame(self._exactly)
        except FrameTooLarge:
            raise _Fallback from None

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise _Fallback
            data += chunk
        return data


def _decode_large(body: bytes) -> object:
    import msgspec

    from orchestra.minipack import FormatError

    try:
        return msgspec.msgpack.decode(body)
    except msgspec.DecodeError as exc:
        raise FormatError(str(exc)) from None
