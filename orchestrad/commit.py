"""Group commit: durable appends to the log for the asyncio daemon, one fsync for many.

The log itself is synchronous and knows nothing of event loops; this is the one place
where its appends meet asyncio. The store is its only user in the daemon.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence

from orchestrad.log import DataRef, Log
from orchestrad.log.segmentlog import Position


LAZY_SYNC = 0.02
"""Seconds a lazy append's fsync may wait for company (see `GroupCommit`)."""


class GroupCommit:
    """Durable appends for an asyncio daemon: one fsync covers every append made meanwhile.

    Appends are written at once, in call order (so the order callers see is the log
    order); a caller then waits for the next fsync. While one fsync runs, in a worker
    thread so the event loop never blocks on the disk, new appends are written and wait
    for the next one, which covers all of them. Under load the fsync rate stays at what
    the disk allows while each fsync carries more records.

    Failures:

    - A failed write (ENOSPC, EIO) raises from `append` / `append_nowait` at once. The log
      truncates the partial write away, so the next append follows the last whole record.
      No seq is used up.
    - A failed fsync fails the future of every append it was meant to cover. Those records
      are written and stay in the log (the daemon may already have applied them), but they
      may not be durable: treat the outcome as unknown. After a failed fsync the kernel may
      have dropped the unwritten pages, so the daemon should stop and restart; opening the
      log then checks every record of the active segment. Later appends are fsynced again
      as usual (they do not inherit the error).

    Lazy appends: an append no one waits on (an agent's output, which nothing replies to)
    may say so (`lazy=True`). It is written at once like any other, but its fsync waits up
    to `LAZY_SYNC` seconds for company, unless an append that is waited on comes first and
    its fsync covers both. A chatty agent's lines then cost one fsync per `LAZY_SYNC`, not
    one each. The record is in the page cache from the start: only a crash of the machine
    itself within that time could lose it.

    `close()` waits for pending fsyncs; it does not close the Log, which its owner closes.
    """

    def __init__(self, log: Log, *, executor: concurrent.futures.Executor | None = None):
        self._log = log
        self._executor = executor
        self._waiting: list[asyncio.Future[None]] = []
        self._syncer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # a lazy append's fsync, due later
        self._urgent = False  # an append waited on came since the running fsync began
        self._closed = False
        self.fsyncs = 0  # how many fsyncs ran; appends / fsyncs is the batching factor

    @property
    def log(self) -> Log:
        return self._log

    async def append(self, records: Sequence[tuple[bytes, bytes]]) -> list[tuple[int, Position, DataRef | None]]:
        """Append and return once the records are durable. Raises what the write or fsync raised."""
        results, durable = self.append_nowait(records)
        await durable
        return results

    def append_nowait(
        self, records: Sequence[tuple[bytes, bytes]], *, lazy: bool = False,
    ) -> tuple[list[tuple[int, Position, DataRef | None]], asyncio.Future[None]]:
        """Write now; return the results and a future that is done once they are durable.

        The daemon applies the events at once but replies to clients only after the future
        is done. An empty batch is a barrier: its future is done when everything appended
        before it is durable.
        """
        if self._closed:
            raise RuntimeError("this GroupCommit is closed; appends are no longer accepted")
        loop = asyncio.get_running_loop()
        results = self._log.append(records)
        durable: asyncio.Future[None] = loop.create_future()
        self._waiting.append(durable)
        if not lazy:
            self._urgent = True
            self._sync_now()
        elif self._syncer is None and self._timer is None:
            self._timer = loop.call_later(LAZY_SYNC, self._sync_now)
        return results, durable

    def _sync_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._syncer is None and self._waiting:
            self._syncer = asyncio.get_running_loop().create_task(self._sync_until_idle())

    async def _sync_until_idle(self) -> None:
        loop = asyncio.get_running_loop()
        batch: list[asyncio.Future[None]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                self._urgent = False
                try:
                    await loop.run_in_executor(self._executor, self._log.sync)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    _settle(batch, exc)
                else:
                    self.fsyncs += 1
                    _settle(batch, None)
                batch = []
                if not self._urgent:
                    break  # only lazy appends came meanwhile: they wait for company
        except asyncio.CancelledError:
            _cancel(batch + self._waiting)
            self._waiting = []
            raise
        finally:
            self._syncer = None
            if self._waiting and not self._closed and self._timer is None:
                self._timer = loop.call_later(0 if self._urgent else LAZY_SYNC, self._sync_now)

    async def close(self) -> None:
        """Refuse new appends and wait until every pending one is fsynced (or has failed)."""
        self._closed = True
        self._urgent = True
        self._sync_now()
        while self._syncer is not None:
            await asyncio.shield(self._syncer)


def _settle(futures: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for future in futures:
        if future.done():  # its waiter was cancelled; the record is written all the same
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


def _cancel(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        future.cancel()
