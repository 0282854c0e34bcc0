"""Opening the files people edit (config.toml, roles/, workflows/) only if nobody else could
have written them, and reading no more of them than a limit.

The rule is ssh's StrictModes: a file is refused if it, or a directory it is read through
(from the config directory down), belongs to another user (root excepted) or can be
written by its group or by everyone. As in Debian's and Ubuntu's ssh, where a user's umask
is often 002, a group whose only member is the owner (a user private group) is not
"other users".

Each check is made on what was opened: the config directory is opened, each directory
below it is opened relative to the one above, the file is opened relative to its
directory, and each is checked with fstat. A file swapped between a check and the read is
therefore never read unchecked. Symlinks are followed, and what they lead to is checked.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

TRUSTED_OWNERS = frozenset({0})  # besides the user: root, who can write anything anyway


class Refused(Exception):
    """A file or directory that was not read: why, and what to do, in one sentence."""


def open_dir(path: Path, parent: int | None = None) -> int:
    """A descriptor of the directory `path` (opened by its name in the directory `parent`,
    if given), checked. FileNotFoundError if it is not there; Refused if someone else could
    have written it; OSError for anything else. The caller closes it."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open(path if parent is None else path.name, flags, dir_fd=parent)
    try:
        _check(os.fstat(fd), path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_text(directory: int, path: Path, limit: int) -> str | None:
    """The text of the file `path`, opened by its name in the open `directory`: checked,
    and refused unread when it holds more than `limit` bytes. None if `path` is a directory
    (not a file to load). Refused, OSError or UnicodeDecodeError otherwise."""
    # O_NONBLOCK: a FIFO put in the file's place must not hang the daemon in open().
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path.name, flags, dir_fd=directory)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"refusing {path}: it is not a regular file; remove it")
        _check(st, path)
        if st.st_size > limit:
            raise _too_big(path, st.st_size, limit)
        data = _read_at_most(fd, limit + 1)  # the size can change after fstat
        if len(data) > limit:
            raise _too_big(path, len(data), limit)
    finally:
        os.close(fd)
    return data.decode()


def _read_at_most(fd: int, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        part = os.read(fd, min(n, 1 << 16))
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _too_big(path: Path, size: int, limit: int) -> Refused:
    return Refused(f"refusing {path}: it holds {size:,} bytes or more, over the limit of {limit:,}; make it smaller")


def _check(st: os.stat_result, path: Path) -> None:
    """Refused if anyone but the user (or root) owns `st` or could write to it."""
    if st.st_uid != os.getuid() and st.st_uid not in TRUSTED_OWNERS:
        kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
        raise Refused(
            f"refusing {path}: it belongs to {_user(st.st_uid)}, not to you, so they could have "
            f"written what it says; check it, then replace it with a {kind} of your own, or remove it"
        )
    mode = stat.S_IMODE(st.st_mode)
    what = "what is in it" if stat.S_ISDIR(st.st_mode) else "what it says"
    if mode & 0o002:
        writers = "every user"
    elif mode & 0o020 and not _private_group(st.st_gid, st.st_uid):
        writers = f"the members of the group {_group(st.st_gid)}"
    else:
        return
    raise Refused(
        f"refusing {path}: {writers} can write to it (mode {mode:03o}); "
        f"check {what}, then run `chmod go-w {path}`"
    )


def _private_group(gid: int, owner: int) -> bool:
    """Whether the group's only member is `owner` (counting both the users whose primary
    group it is and its listed members): then group-writable means owner-writable."""
    try:
        group = grp.getgrgid(gid)
        name = pwd.getpwuid(owner).pw_name
    except KeyError:
        return False
    primary = {user.pw_uid for user in pwd.getpwall() if user.pw_gid == gid}
    listed = set(group.gr_mem)
    return primary <= {owner} and listed <= {name} and bool(primary or listed)


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} (gid {gid})"
    except KeyError:
        return f"gid {gid}"
