"""Small file-system helpers that the log and the snapshots share."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make creations, renames and deletions in a directory durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unused_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`… : the first that does not exist yet (nothing is ever
    overwritten when damaged files are moved aside)."""
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}.{n}")
        n += 1
    return candidate


def write_private(path: Path, *parts: bytes) -> None:
    """Write `parts` as the file `path` (mode 0600), atomically and durably: a temporary
    file, fsync, rename, fsync of the directory. A crash leaves the old file or the new
    one, never a mix."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
