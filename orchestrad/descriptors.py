"""Open-file descriptors: the daemon's limit, and how many client connections fit in it.

Every client connection is a descriptor, and so is every pipe to an agent; the process may
hold at most its soft RLIMIT_NOFILE of them (1,024 is the usual default). When they run
out, nothing that needs one works: `accept` fails and waiting clients are reset, a task
cannot start (its pipes), the log cannot open a segment. So:

- at start the daemon raises its soft limit to the hard limit (any process may);
- a reserve is kept out of the connections' reach: a fixed part for the daemon itself
  (its log, lock, socket, event loop, worker threads, the git commands that make
  worktrees, clients being refused) and a part for each agent that may run at once
  (its three pipes and its pidfd, and as many again while it is being started);
- the rest is the connection cap, which the server keeps (see `Server.serve_connection`).

The limit is read once; the reserve follows `max_concurrent` as it changes.
"""

from __future__ import annotations

import resource

FIXED_RESERVE = 64  # descriptors kept for the daemon's own use
PER_AGENT = 8  # kept for each agent that may run at once
MIN_CONNECTIONS = 16  # however low the limit: clients must be able to reach the daemon to fix it


def raise_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one, as far as the system lets us.
    Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY:
        return soft, soft  # nothing sensible to raise to (not the case on Linux)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # macOS caps the soft limit below an unlimited hard one
            pass
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def reserve(max_concurrent: int) -> int:
    """Descriptors kept out of the connections' reach, for the daemon and its agents."""
    return FIXED_RESERVE + PER_AGENT * max_concurrent


def connection_cap(limit: int, max_concurrent: int) -> int:
    """How many client connections the daemon holds at most, under `limit` descriptors."""
    return max(MIN_CONNECTIONS, limit - reserve(max_concurrent))
