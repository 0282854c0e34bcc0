"""Segment pairs: what the log remembers of one, and finding and creating them on disk.

A `Segment` is the log's memory of one .seg/.dat pair (how many records, where they end,
the offset of every 128th record): enough to find any record without scanning. `scan`
fills it in when the log is opened, `segmentlog` as it appends.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path

from orchestrad.files import fsync_dir
from orchestrad.log.fileio import sync_file, write_all
from orchestrad.log.format import (
    CURRENT,
    INDEX_STRIDE,
    SEGMENT_HEADER_SIZE,
    SEGMENT_NAME,
    Layout,
    data_path,
    segment_header,
    segment_name,
)


@dataclass
class Segment:
    """What the log remembers of one segment: enough to find any record without scanning."""

    first: int
    path: Path  # the .seg file
    count: int = 0  # records
    end: int = SEGMENT_HEADER_SIZE  # offset just after the last record in the .seg
    dat_end: int = 0  # offset just after the last record's data in the .dat
    index: array = field(default_factory=lambda: array("Q"))  # offset of every STRIDE-th record
    scanned: bool = True  # False: a sealed segment opened lazily; count and ends are derived
    layout: Layout = CURRENT  # of its format version, from its header
    dat_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.dat_path = data_path(self.path)

    def note_record(self, offset: int, size: int) -> None:
        if self.count % INDEX_STRIDE == 0:
            self.index.append(offset)
        self.count += 1
        self.end = offset + size


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Segment (.seg) files in the directory, oldest first. Anything else there is ignored."""
    found = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        m = SEGMENT_NAME.match(name)
        if m:
            found.append((int(m.group(1)), directory / name))
    found.sort()
    return found


def open_data_file(path: Path) -> int:
    """Open the active segment's .dat for appending; create it if a crash left none."""
    try:
        return os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        sync_file(fd)
        fsync_dir(path.parent)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_segment(directory: Path, first_seq: int) -> tuple[int, int]:
    """Create a segment pair, durably: the .seg with its header, then an empty .dat.

    Returns fds open for appending to each."""
    path = directory / segment_name(first_seq)
    dat_path = data_path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    dfd = None
    try:
        write_all(fd, [segment_header(first_seq)])
        sync_file(fd)
        dfd = os.open(dat_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        sync_file(dfd)
        fsync_dir(directory)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        if dfd is not None:
            os.close(dfd)
            dat_path.unlink(missing_ok=True)
        raise
    return fd, dfd
