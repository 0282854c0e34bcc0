"""The event log on disk: segmented, append-only, checksummed records of opaque bytes.

This package knows nothing about events. It stores records, numbers them, finds them again,
and refuses to hand back anything that is not exactly what was written. Everything above
it (event encoding, replay, snapshots) trusts that contract.

One job per module, each building only on those listed before it:

    format      the on-disk format, documented: segment header, record layouts, names, limits
    errors      LogCorrupt and UnsupportedLogFormat, written for the person who must act
    fileio      the system calls: durable writes and truncations, exact reads, memory maps
    segment     what the log remembers of one segment pair; listing and creating pairs
    index       the .idx file that saves a sealed segment's offsets, so replay need not scan
    scan        what opening checks, which torn tails it cuts by itself, and `verify`
    replay      replay's inner loops: checked runs of records, decoded 128 per msgspec call
    segmentlog  `Log`: open, append, sync, seal and start segments, replay, read data back
    repair      `repair`: keep the records before the damage, move the rest aside

Nothing here imports asyncio (a test holds it to that): durable appends for the daemon's
event loop are `orchestrad.commit.GroupCommit`, which runs `Log.sync` in a worker thread.
Readers that only tests and benchmarks need (record by record, by position) live in
tests/logreaders.py.
"""

from orchestrad.log.errors import LogCorrupt, UnsupportedLogFormat
from orchestrad.log.repair import repair
from orchestrad.log.scan import verify
from orchestrad.log.segmentlog import Log
from orchestrad.refs import DataRef

__all__ = ["DataRef", "Log", "LogCorrupt", "UnsupportedLogFormat", "repair", "verify"]
