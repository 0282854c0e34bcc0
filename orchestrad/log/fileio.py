"""The log's system calls: durable writes and truncations, exact reads, memory maps.

Nothing here knows the format. Every write the log makes goes through `write_all` and
every fsync through `sync_file`, so that what "written" and "durable" mean is decided in
one place (and a test can count or fail them there).
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):  # pragma: no cover - not on Linux/macOS
    _IOV_MAX = 1024


def sync_file(fd: int) -> None:
    """Make a file's written bytes durable.

    fdatasync where there is one (it still flushes a size change, which is what appends
    need); on macOS, F_FULLFSYNC, because plain fsync there does not flush the drive cache.
    """
    if sys.platform == "darwin":  # pragma: no cover - exercised on macOS only
        import fcntl

        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover
        os.fsync(fd)


def truncate_durably(path: Path, length: int) -> None:
    """Cut a file at `length` and make the cut durable before going on."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.ftruncate(fd, length)
        sync_file(fd)
    finally:
        os.close(fd)


def file_size(path: Path) -> int | None:
    """The file's size, or None if there is no such file."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def write_all(fd: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write every buffer, in order, with as few writev calls as the kernel allows.

    Normally that is one call. A short write (the kernel may stop early, for example when
    the disk fills) is continued; an error is raised to the caller, who undoes the part
    that was written.
    """
    views = [memoryview(b) for b in buffers if len(b)]
    i = 0
    while i < len(views):
        n = os.writev(fd, views[i : i + _IOV_MAX])
        if n <= 0:
            raise OSError(errno.EIO, "write wrote nothing")
        while n:
            size = len(views[i])
            if n >= size:
                n -= size
                i += 1
            else:
                views[i] = views[i][n:]
                n = 0


def pread_exact(fd: int, length: int, offset: int) -> bytes:
    """`length` bytes from `offset`, or fewer only where the file ends."""
    buf = os.pread(fd, length, offset)
    while len(buf) < length:
        more = os.pread(fd, length - len(buf), offset + len(buf))
        if not more:
            break
        buf += more
    return buf


def map_file(path: Path, length: int = 0) -> mmap.mmap:
    """Map a file read-only: its first `length` bytes, or all of it when `length` is 0."""
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ)


def map_to_read(path: Path, length: int) -> mmap.mmap:
    """Map a .seg to read it from front to back: ask the kernel to read ahead, and far."""
    mm = map_file(path, length)
    for advice in ("MADV_SEQUENTIAL", "MADV_WILLNEED"):
        if hasattr(mmap, advice):
            try:
                mm.madvise(getattr(mmap, advice))
            except OSError:  # pragma: no cover - advice is only advice
                pass
    return mm


def read_ahead(path: Path) -> None:
    """Ask the kernel to start reading a file into the page cache, without waiting for it."""
    if hasattr(os, "posix_fadvise"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return  # reading it will say what is wrong
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:  # pragma: no cover - advice is only advice
            pass
        finally:
            os.close(fd)


def unmap(mm: mmap.mmap) -> None:
    """Close a map unless someone still holds a view into it; then the GC closes it later."""
    try:
        mm.close()
    except BufferError:
        pass


class FileFd:
    """A read fd for a file: the log's own open fd, or a fresh one closed after use."""

    def __init__(self, path: Path, fd: int | None):
        self._path = path
        self._fd = fd
        self._owned = fd is None

    def __enter__(self) -> int:
        if self._owned:
            self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        assert self._fd is not None
        return self._fd

    def __exit__(self, *exc_info: object) -> None:
        if self._owned and self._fd is not None:
            os.close(self._fd)
