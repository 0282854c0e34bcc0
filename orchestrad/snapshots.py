"""Snapshot files: the daemon's state at some seq, so a restart need not replay everything.

A snapshot is an optimisation, never a source of truth: the log can always rebuild the
state. So a damaged snapshot is skipped with a warning rather than stopping the daemon,
and the store keeps the newest two, so that one damaged file still leaves a recent one.

The payload is opaque bytes (the caller encodes the state). File format, little-endian,
named ``snap-<seq, 20 digits>.bin``::

    8s  magic     b"ORCHSNP\\x00"
    u16 version   2 (1 is still read)
    u16 reserved  0
    u64 seq       the last log record the state includes
    u64 length    of the payload
    u32 crc       zlib.crc32 of the 28 bytes above + the payload
    payload

The version also names the payload's encoding, which the caller decodes: versions 1 and 2
differ only there (`state.from_snapshot` reads both). A snapshot of a version this
orchestrad does not read is skipped with a warning, like a damaged one.

A snapshot is written to a temporary file, fsynced, renamed into place and the directory
fsynced, so a crash leaves either the whole new file or none of it. A leftover temporary
file is never read, and the next write removes it.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

from orchestrad.files import fsync_dir, unused_name, write_private

__all__ = ["Snapshot", "SnapshotStore"]

MAGIC = b"ORCHSNP\x00"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
KEEP = 2

_HEADER = struct.Struct("<8sHHQQI")
_NAME = re.compile(r"^snap-(\d{20})\.bin$")
_TEMP = re.compile(r"^\.snap-\d{20}\.bin\.tmp$")
DISCARDED_DIR = "discarded"


class Snapshot(NamedTuple):
    seq: int
    version: int  # of the file format, and so of the payload's encoding
    payload: memoryview  # of the file, memory-mapped: unmapped once nothing refers to it


class SnapshotStore:
    """The snapshots in one directory. One writer (the daemon)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.warnings: list[str] = []

    def write(self, seq: int, payload: bytes) -> Path:
        """Store `payload` as the state at `seq`, atomically; keep only the newest two."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self._path(seq)
        head = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, seq, len(payload), 0)[:-4]
        crc = zlib.crc32(payload, zlib.crc32(head))
        write_private(path, head, struct.pack("<I", crc), payload)
        self._prune()
        return path

    def all(self) -> list[int]:
        """The seqs of the snapshot files present, oldest first (not checked)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m)

    def latest(self) -> Snapshot | None:
        """The newest snapshot that checks out, or None.

        A damaged one is skipped and a warning saying so is added to `self.warnings`.
        """
        for seq in reversed(self.all()):
            path = self._path(seq)
            try:
                return _read(path, seq)
            except (OSError, _Damaged) as exc:
                self.warnings.append(
                    f"snapshot {path} is unusable ({exc}); ignoring it and using "
                    f"an older snapshot or none: the state is rebuilt from the log instead"
                )
        return None

    def discard_after(self, seq: int) -> list[Path]:
        """Move snapshots newer than `seq` into ``discarded/`` (after a repair cut the log).

        A snapshot past the end of the log describes records that no longer exist, so it
        must not be loaded; it is moved, not deleted, in case a person wants it.
        """
        moved = []
        target_dir = self.directory / DISCARDED_DIR
        for s in self.all():
            if s > seq:
                target_dir.mkdir(mode=0o700, exist_ok=True)
                target = unused_name(target_dir / self._path(s).name)
                os.replace(self._path(s), target)
                moved.append(target)
        if moved:
            fsync_dir(target_dir)
            fsync_dir(self.directory)
        return moved

    def _path(self, seq: int) -> Path:
        return self.directory / f"snap-{seq:020d}.bin"

    def _prune(self) -> None:
        """Delete all but the newest KEEP snapshots, and temporary files left by a crash."""
        doomed = [self._path(s) for s in self.all()[:-KEEP]]
        doomed += [self.directory / n for n in os.listdir(self.directory) if _TEMP.match(n)]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            fsync_dir(self.directory)


class _Damaged(Exception):
    pass


def _read(path: Path, seq: int) -> Snapshot:
    """The snapshot in `path`, checked. Mapped rather than read: a read would copy the
    whole file into fresh memory first, and first touches of memory are what loading a
    snapshot mostly costs."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _HEADER.size:
            raise _Damaged(f"only {size} bytes, shorter than its header")
        data = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    magic, version, _reserved, head_seq, length, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise _Damaged("not a snapshot file (bad magic bytes)")
    if version not in READABLE_VERSIONS:
        raise _Damaged(f"format version {version}, this orchestrad reads versions 1 to {FORMAT_VERSION}")
    if head_seq != seq:
        raise _Damaged(f"its header says seq {head_seq}, its name says {seq}")
    payload = data[_HEADER.size :]
    if len(payload) != length:
        raise _Damaged(f"payload is {len(payload):,} bytes, its header says {length:,}")
    if zlib.crc32(payload, zlib.crc32(data[: _HEADER.size - 4])) != crc:
        raise _Damaged("checksum mismatch")
    return Snapshot(seq, version, payload)
