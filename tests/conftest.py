from __future__ import annotations

import time

import pytest

from tests.daemon import Daemon
from tests.scripted_api import INSTALL_HINT, find_claude


@pytest.fixture
def daemon():
    d = Daemon().start()
    yield d
    d.cleanup()


@pytest.fixture
def claude() -> str:
    """The real Claude Code CLI (installed by .ci/run); a test that needs it fails without it."""
    path = find_claude()
    if path is None:
        pytest.fail(INSTALL_HINT)
    return path


@pytest.fixture(params=["old", "current"])
def claude_version(request) -> tuple[str, str]:
    """Each tested Claude Code in turn, as (which, path): "old" is the oldest supported
    (2.1.197, .local/npm), "current" the current release (2.1.332, .local/npm-claude-current).
    For the tests where the versions differ (cost, resume, questions); the rest run on one
    ($ORCHESTRA_TEST_CLAUDE, default old)."""
    path = find_claude(request.param)
    if path is None:
        pytest.fail(INSTALL_HINT)
    return request.param, path


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster on this machine, shared by the tests that need one: a head with
    2 agent slots, a worker with 3 labelled "big" and one with 1 labelled "gpu". A test
    that kills a node adds one of its own for it."""
    from tests.raycluster import RayCluster

    cluster = RayCluster()
    try:
        cluster.start_head(slots=2)
        cluster.add_worker(slots=3, labels=("big",))
        cluster.add_worker(slots=1, labels=("gpu",))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def work(tmp_path):
    """An empty directory for a test's tasks to work in."""
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def fsyncs(monkeypatch):
    """Count the log's fsyncs; each takes 5 ms, like a real disk, so appends pile up."""
    calls = []
    import orchestrad.log.segmentlog as segmentlog_mod

    real = segmentlog_mod.sync_file

    def counted(fd):
        calls.append(fd)
        time.sleep(0.005)  # the latency of a real disk's fsync
        real(fd)

    monkeypatch.setattr(segmentlog_mod, "sync_file", counted)
    return calls
