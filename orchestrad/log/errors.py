"""What the log refuses to hand back, said for the person who has to act on it.

`LogCorrupt` is damage that a crash cannot explain (see `scan` for what a crash can);
`UnsupportedLogFormat` is a segment from a newer orchestrad. Each message says what went
wrong, where, and what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrad.log.format import FORMAT_VERSION

DAMAGED_DIR = "damaged"  # where `repair` moves what it cuts, inside the log directory


class LogCorrupt(Exception):
    """The log holds damage that a crash cannot explain; nothing after it is trusted.

    Attributes: `path` (the damaged file: a segment's .seg, or its .dat for damaged or
    missing data), `offset` (byte offset of the damage in that file), `detail` (what is
    wrong), `seq` (the sequence number the damaged record would have had, when known), and
    `cut`: where `repair` cuts the segment pair, as (offset in the .seg, offset in the .dat),
    when the damage was found by checking the log rather than by reading it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        offset: int,
        detail: str,
        seq: int | None = None,
        *,
        cut: tuple[int, int] | None = None,
    ):
        super().__init__(str(path), offset, detail, seq)
        self.path = Path(path)
        self.offset = offset
        self.detail = detail
        self.seq = seq
        self.cut = cut

    def __str__(self) -> str:
        where = f"{self.path}, byte offset {self.offset:,}"
        if self.seq is not None:
            where += f" (record {self.seq})"
        return (
            f"the event log is damaged at {where}: {self.detail}. "
            f"The daemon does not skip damaged records, so it stops here. "
            f"Run `orchestrad --repair` to keep every record before this point and move "
            f"the damaged part aside into {self.path.parent / DAMAGED_DIR}/."
        )


class UnsupportedLogFormat(Exception):
    """A segment was written in a format version this code does not read."""

    def __init__(self, path: str | os.PathLike[str], version: int):
        super().__init__(str(path), version)
        self.path = Path(path)
        self.version = version

    def __str__(self) -> str:
        return (
            f"{self.path} uses event log format version {self.version}, but this orchestrad "
            f"reads versions 1 to {FORMAT_VERSION}. It was probably written by a newer orchestrad: "
            f"run that version. Do not run --repair: it would move those records aside."
        )
