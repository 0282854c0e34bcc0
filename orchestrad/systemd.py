"""The two systemd protocols the daemon speaks, with no extra dependency.

* Readiness (`Type=notify`): when NOTIFY_SOCKET is set, one datagram `READY=1` once the
  socket accepts connections, and `STOPPING=1` when shutdown begins.
* Socket activation (`orchestrad.socket`): when LISTEN_PID is our pid and LISTEN_FDS is 1,
  fd 3 is a listening Unix socket to serve instead of creating one.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def notify(message: str) -> bool:
    """Send `message` to the service manager; False when there is none to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())
    return True


def listen_socket() -> socket.socket | None:
    """The listening socket systemd passed us, if it passed one (and only one)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    count = int(os.environ.get("LISTEN_FDS", "0") or 0)
    if count < 1:
        return None
    if count > 1:
        raise RuntimeError(f"systemd passed {count} sockets; orchestrad.socket should pass exactly one")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise RuntimeError("the socket systemd passed is not a Unix stream socket")
    sock.setblocking(False)
    return sock
