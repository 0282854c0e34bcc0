"""Where a log record's data lies: a plain value, shared by the log and the pure core.

`orchestrad.log` hands these out and reads them back; `orchestrad.state` folds them into
each task's output places. Kept apart from the log so that the state need not import it.
"""

from __future__ import annotations

import msgspec


class DataRef(msgspec.Struct, frozen=True, array_like=True):
    """Where a record's data bytes lie, and their checksum, so they can be read back alone."""

    segment: int
    offset: int  # of the data bytes in the segment's .dat file
    length: int
    crc: int
