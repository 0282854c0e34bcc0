"""Group commit: durable appends from many asyncio tasks, one fsync covering many of them."""

from __future__ import annotations

import asyncio
import errno
import time
from pathlib import Path

import pytest

import orchestrad.log.segmentlog as segmentlog_mod
from orchestrad.commit import GroupCommit
from orchestrad.log import Log, verify
from tests import logreaders




def records(directory: Path) -> list[tuple[int, bytes]]:
    """Every record of the log in `directory` as (seq, body), its checksums checked."""
    with Log.open(directory) as log:
        return [(seq, bytes(body)) for seq, body, _ in logreaders.replay(log)]


def test_concurrent_appenders_get_contiguous_unique_seqs_and_share_fsyncs(tmp_path, fsyncs):
    async def main():
        with Log.open(tmp_path) as log:
            fsyncs.clear()
            commit = GroupCommit(log)

            async def writer(i):
                await asyncio.sleep(i % 7 * 0.002)
                [(seq, _, _)] = await commit.append([(b"w%d" % i, b"")])
                return seq

            seqs = await asyncio.gather(*(writer(i) for i in range(200)))
            await commit.close()
            return seqs, commit.fsyncs

    seqs, reported = asyncio.run(main())
    assert sorted(seqs) == list(range(1, 201))
    assert 1 <= len(fsyncs) < 50, "one fsync must cover many appends"
    assert reported == len(fsyncs)
    bodies = dict(records(tmp_path))
    assert all(bodies[seq] == b"w%d" % i for i, seq in enumerate(seqs))


def test_append_nowait_orders_by_call_and_resolves_when_durable(tmp_path, fsyncs):
    async def main():
        with Log.open(tmp_path) as log:
            commit = GroupCommit(log)
            first, durable1 = commit.append_nowait([(b"a", b""), (b"b", b"")])
            second, durable2 = commit.append_nowait([(b"c", b"")])
            assert [r[0] for r in first + second] == [1, 2, 3]
            assert not durable1.done() and not durable2.done()
            calls_before = len(fsyncs)
            await asyncio.gather(durable1, durable2)
            assert len(fsyncs) == calls_before + 1
            _, barrier = commit.append_nowait([])
            await barrier
            await commit.close()
            with pytest.raises(RuntimeError, match="closed"):
                commit.append_nowait([(b"late", b"")])

    asyncio.run(main())


def test_the_event_loop_keeps_running_during_an_fsync(tmp_path, monkeypatch):
    monkeypatch.setattr(segmentlog_mod, "sync_file", lambda fd: time.sleep(0.2))

    async def main():
        with Log.open(tmp_path) as log:
            commit = GroupCommit(log)
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            task = asyncio.create_task(ticker())
            await commit.append([(b"x", b"")])
            task.cancel()
            return ticks

    assert asyncio.run(main()) >= 5


def test_a_failed_fsync_fails_every_append_it_covered_and_the_log_stays_usable(tmp_path, monkeypatch):
    real = segmentlog_mod.sync_file

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    async def main():
        with Log.open(tmp_path) as log:
            commit = GroupCommit(log)
            await commit.append([(b"before", b"")])
            monkeypatch.setattr(segmentlog_mod, "sync_file", no_space)
            outcomes = await asyncio.gather(
                *(commit.append([(b"x%d" % i, b"")]) for i in range(5)), return_exceptions=True
            )
            monkeypatch.setattr(segmentlog_mod, "sync_file", real)
            [(seq, _, _)] = await commit.append([(b"after", b"")])
            await commit.close()
            return outcomes, seq

    outcomes, seq = asyncio.run(main())
    assert all(isinstance(o, OSError) and o.errno == errno.ENOSPC for o in outcomes)
    assert seq == 7
    # The records were written (the daemon may have applied them); only durability failed.
    assert [body for _, body in records(tmp_path)] == [b"before", *(b"x%d" % i for i in range(5)), b"after"]


def test_group_commit_across_segment_rolls(tmp_path, fsyncs):
    """Rolls seal segments while an fsync of the active one may be running in a thread."""

    async def main():
        with Log.open(tmp_path, segment_bytes=2048) as log:
            commit = GroupCommit(log)

            async def writer(i):
                for j in range(10):
                    await commit.append([(b"writer %d append %d" % (i, j), b"x" * (j * 7))])

            await asyncio.gather(*(writer(i) for i in range(20)))
            await commit.close()
            return log.segments()

    segments = asyncio.run(main())
    assert len(segments) > 5
    with Log.open(tmp_path, segment_bytes=2048) as log:
        assert log.report.truncated == []
        assert [e.seq for e in logreaders.read(log)] == list(range(1, 201))
        assert [seq for seq, _, _ in logreaders.replay(log)] == list(range(1, 201))
    verify(tmp_path, deep=True)


def test_a_lazy_append_waits_for_company_and_an_awaited_one_brings_it_along(tmp_path, fsyncs, monkeypatch):
    """Output no one waits on is fsynced once per LAZY_SYNC, not once per append; an
    append that is waited on is fsynced at once, and covers the lazy ones before it."""
    import orchestrad.commit as commit_mod

    async def main():
        with Log.open(tmp_path) as log:
            fsyncs.clear()
            commit = GroupCommit(log)
            lazy = [commit.append_nowait([(b"out%d" % i, b"")], lazy=True)[1] for i in range(50)]
            await asyncio.sleep(0)
            assert not any(f.done() for f in lazy) and len(fsyncs) == 0  # written, not yet fsynced
            await asyncio.gather(*lazy)
            assert len(fsyncs) == 1  # one fsync for all fifty, once their wait was up
            monkeypatch.setattr(commit_mod, "LAZY_SYNC", 3600.0)  # from here, only an awaited append can sync them
            more = [commit.append_nowait([(b"more%d" % i, b"")], lazy=True)[1] for i in range(5)]
            _, urgent = commit.append_nowait([(b"reply", b"")])
            await asyncio.wait_for(urgent, 30)
            assert all(f.done() for f in more) and len(fsyncs) == 2  # brought along
            tail = commit.append_nowait([(b"last", b"")], lazy=True)[1]
            await asyncio.wait_for(commit.close(), 30)  # close does not wait out the delay, and leaves nothing unsynced
            assert tail.done() and len(fsyncs) == 3

    asyncio.run(main())
    assert [body for _, body in records(tmp_path)][-1] == b"last"
