"""Who is at the other end of a loopback TCP connection: its user and its process (Linux).

The web console and `orchestra mcp --http` serve on 127.0.0.1, where any process of the
machine can connect. The daemon's own socket knows its peer (SO_PEERCRED); a TCP socket
does not, but on Linux /proc does: the connection's row in /proc/net/tcp (or tcp6) names
the peer socket's owner and inode, and the process holding that inode among its
descriptors is the peer. The console passes those processes to the daemon
(`Hello.for_pids`), which then gives the request the narrowest of their rights, so an agent that got hold of the
console's token still cannot answer for the person. Elsewhere (macOS) nothing is known and
None is returned.
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple

__all__ = ["Peer", "peer_of", "supported", "refusal"]


class Peer(NamedTuple):
    uid: int
    processes: list[tuple[int, int]]  # (pid, start time) of each process holding its socket; [] if none was looked for or found


def _hex_address(host: str, port: int) -> str:
    """An address as /proc/net/tcp{,6} writes it: the address's 32-bit words in host order."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    words = "".join(packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4))
    return f"{words}:{port:04X}"


def _row(client: tuple[str, int], server: tuple[str, int]) -> tuple[int, int] | None:
    """(uid, inode) of the peer's socket: the one whose local end is `client` and remote
    end `server`."""
    local, remote = _hex_address(*client), _hex_address(*server)
    for table in ("/proc/net/tcp6", "/proc/net/tcp") if ":" in client[0] else ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1] == local and fields[2] == remote:
                        return int(fields[7]), int(fields[9])
        except OSError:
            continue
    if ":" not in client[0]:  # an IPv4 peer of a dual-stack socket is written as ::ffff:a.b.c.d
        return _row((f"::ffff:{client[0]}", client[1]), (f"::ffff:{server[0]}", server[1])) if "." in client[0] else None
    return None


def _holds(pid: int, target: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


def start_of(pid: int) -> int | None:
    """When `pid` started, in clock ticks after boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rfind(b")") + 2:].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _holders(inode: int) -> list[tuple[int, int]]:
    """Every process with socket `inode` among its descriptors (a socket can be shared,
    across a fork or passed on), each as (pid, start time)."""
    target = f"socket:[{inode}]"
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _holds(int(name), target):
            start = start_of(int(name))
            if start is not None:
                found.append((int(name), start))
    return sorted(found)


def supported() -> bool:
    return os.path.exists("/proc/net/tcp")


def peer_of(client: tuple[str, int] | None, server: tuple[str, int] | None, *, pid: bool = True) -> Peer | None:
    """The user and (with `pid`) the process at the other end of the connection from
    `client` to `server`; None where /proc cannot say."""
    if not client or not server or not supported():
        return None
    try:
        row = _row((client[0], int(client[1])), (server[0], int(server[1])))
    except (OSError, ValueError):
        return None
    if row is None:
        return None
    uid, inode = row
    return Peer(uid, _holders(inode) if inode and pid else [])


def refusal(scope: dict, *, changes: bool) -> tuple[str, list[tuple[int, int]]]:
    """For an ASGI request on loopback: (why it is refused, "" if it is not; the processes
    it acts for). A peer of another user is refused; a change (`changes`) must come from a
    process that can be found, which the daemon then weighs (`Hello.for_pids`)."""
    if not supported():
        return "", []
    found = peer_of(scope.get("client"), scope.get("server"), pid=changes)
    if found is None:
        return "could not tell which process sent this request", []
    if found.uid != os.getuid():
        return "this serves only the user who started it", []
    if changes and not found.processes:
        return "could not tell which process sent this change", []
    return "", found.processes
