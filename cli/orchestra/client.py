"""Connecting to the daemon: the handshake, and starting a daemon when none answers."""

from __future__ import annotations

import os
import sys
import time

from orchestra.shared import protocol as p
from orchestra.shared.paths import Paths, make_private_dir
from orchestra.wire import Connection, DaemonUnreachable

AUTOSTART_ENV = "ORCHESTRA_NO_AUTOSTART"
START_TIMEOUT = 10.0


def connect(paths: Paths, *, timeout: float | None = 30.0) -> Connection:
    """A connection that has passed the version handshake; DaemonUnreachable otherwise."""
    conn = Connection(str(paths.socket), timeout=timeout)
    try:
        welcome = conn.call(p.Hello(version=p.PROTOCOL_VERSION, client="orchestra"), p.Welcome)
    except BaseException:
        conn.close()
        raise
    if welcome.version != p.PROTOCOL_VERSION:  # pragma: no cover - the daemon refuses first
        conn.close()
        raise DaemonUnreachable(f"daemon speaks protocol {welcome.version}, this client {p.PROTOCOL_VERSION}")
    return conn


def connect_or_start(paths: Paths, *, autostart: bool = True, timeout: float | None = 30.0, quiet: bool = False) -> Connection:
    """Connect; if no daemon answers and autostart is on, start one in the background."""
    try:
        return connect(paths, timeout=timeout)
    except DaemonUnreachable:
        if not autostart or os.environ.get(AUTOSTART_ENV):
            raise
    if not quiet:
        print(f"orchestra: no daemon was running; starting one (log: {paths.daemon_log})", file=sys.stderr)
    start_daemon(paths)
    return connect(paths, timeout=timeout)


def start_daemon(paths: Paths) -> int:
    """Start `orchestrad` detached from this terminal; wait until it answers. Its pid."""
    import subprocess  # only here: most commands never start a daemon

    make_private_dir(paths.state)
    argv = [sys.executable, "-m", "orchestrad"]
    if paths.home is not None:
        argv += ["--home", str(paths.home)]
    fd = os.open(paths.daemon_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    written_before = os.fstat(fd).st_size
    with open(fd, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            connect(paths, timeout=2.0).close()
            return proc.pid
        except DaemonUnreachable:
            code = proc.poll()
            if code is not None and code != 0:
                why = _why_it_stopped(paths, written_before)
                said = f": {why}; more in {paths.daemon_log}" if why else f"; see {paths.daemon_log}"
                raise DaemonUnreachable(f"the daemon exited at start-up with code {code}{said}") from None
            time.sleep(0.02)
    raise DaemonUnreachable(f"the daemon did not answer within {START_TIMEOUT:g} s; see {paths.daemon_log}")


def _why_it_stopped(paths: Paths, offset: int) -> str:
    """What a daemon that exited at start-up wrote to its log from `offset` on: its last
    error (a line logged as ERROR, or a traceback's last line), without the time stamp."""
    try:
        with open(paths.daemon_log, "rb") as log:
            log.seek(offset)
            lines = [line.strip() for line in log.read(1 << 16).decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if " ERROR " in line or " CRITICAL " in line]
    last = (errors or lines or [""])[-1]
    stamp, sep, message = last.partition(": ")  # "2026-01-02 10:11:12,345 ERROR orchestrad.daemon: ..."
    return message if sep and (" ERROR " in stamp or " CRITICAL " in stamp) else last
