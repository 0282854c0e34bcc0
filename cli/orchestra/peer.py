"""Who is at the other end of a loopback TCP connection: its user and its process (Linux).

The web console and `orchestra mcp --http` serve on 127.0.0.1, where any process of the
machine can connect. The daemon's own socket knows its peer (SO_PEERCRED); a TCP socket
does not, but on Linux /proc does: the connection's row in /proc/net/tcp (or tcp6) names
the peer socket's owner and inode, and the process holding that inode among its
descriptors is the peer. The console passes that pid to the daemon (`Hello.for_pid`), which
then gives the request the rights of that process, so an agent that got hold of the
console's token still cannot answer for the person. Elsewhere (macOS) nothing is known and
None is returned.
"""

from __future__ import annotations

import os
import socket

__all__ = ["Peer", "peer_of", "supported", "refusal"]


class Peer(tuple):
    """(uid, pid); pid None when the process could not be found."""

    @property
    def uid(self) -> int:
        return self[0]

    @property
    def pid(self) -> int | None:
        return self[1]


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


_HOLDERS: dict[int, int] = {}  # socket inode -> the pid last found holding it


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


def _holder(inode: int) -> int | None:
    """The process with socket `inode` among its descriptors (the lowest pid of those that
    do), looked for among every process once per connection."""
    target = f"socket:[{inode}]"
    known = _HOLDERS.get(inode)
    if known is not None and _holds(known, target):
        return known
    for name in sorted((n for n in os.listdir("/proc") if n.isdigit()), key=int):
        if _holds(int(name), target):
            if len(_HOLDERS) > 1024:
                _HOLDERS.clear()
            _HOLDERS[inode] = int(name)
            return int(name)
    return None


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
    return Peer((uid, _holder(inode) if inode and pid else None))


def refusal(scope: dict, *, changes: bool) -> tuple[str, int | None]:
    """For an ASGI request on loopback: (why it is refused, "" if it is not; the pid it acts
    for). A peer of another user is refused; a change (`changes`) must come from a process
    that can be found, whose pid the daemon then weighs (`Hello.for_pid`)."""
    if not supported():
        return "", None
    found = peer_of(scope.get("client"), scope.get("server"), pid=changes)
    if found is None:
        return "could not tell which process sent this request", None
    if found.uid != os.getuid():
        return "this serves only the user who started it", None
    if changes and found.pid is None:
        return "could not tell which process sent this change", None
    return "", found.pid
