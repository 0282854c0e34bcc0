"""Agents that misbehave, under a real daemon: each must end in a terminal state with a
reason a person understands, leave no process running, and leave the daemon's memory
where it was.

tests/test_supervisor.py covers the mechanics one process at a time, inside the test
process; tests/test_daemon.py covers stopping a process that ignores SIGTERM. Here they all
run at once under the daemon, through the log, with the output read back.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestra.wire import FrameTooLarge
from tests.daemon import wait_for
from tests.reliability.agents import cases, fake_claude_paths
from tests.reliability.harness import PY, Probe, RDaemon, RssSampler, baseline, kill_marked, marked, settle, strays

HARD = 5.0
RSS_GROWTH_KB = 100 * 1024


@pytest.fixture(scope="module")
def daemon():
    d = RDaemon()
    try:
        d.start()
        d.call(p.ConfigSet(key="max_concurrent", value=20))
        d.call(p.ConfigSet(key="kill_grace", value=0.5))
        yield d
    finally:
        d.cleanup()


def test_every_misbehaving_agent_ends_with_a_reason_and_leaves_nothing_running(daemon, tmp_path):
    d = daemon
    base = baseline(d, 50)
    rss = d.rss_kb()
    todo = cases(tmp_path)
    sampler = RssSampler(d.pid)
    sampler.start()
    t0 = time.monotonic()
    with Probe(d, hard=HARD) as probe:
        ids = {d.submit(*c.argv, title=c.name, **c.kw): c for c in todo}
        views = settle(d, list(ids), timeout=120)
    sampler.halt.set()
    sampler.join()
    took = time.monotonic() - t0
    wrong = {c.name: f"expected {c.how}; got {views[i].status.value}: {views[i].reason!r} "
                     f"(exit {views[i].exit_code}, signal {views[i].signal}, {views[i].output_bytes} bytes)"
             for i, c in ids.items() if not c.expect(views[i])}
    for i, c in ids.items():
        print(f"  {c.name:40} {views[i].status.value:10} {views[i].reason}")
    print(f"{len(todo)} misbehaving agents ended in {took:.1f} s; daemon VmRSS {rss} kB before, peak {sampler.peak} kB, "
          f"{d.rss_kb()} kB after; probe {probe.latency.summary()}")
    assert not wrong, wrong
    binary = next(i for i, c in ids.items() if c.name == "invalid UTF-8 and binary")
    assert d.output_of(binary) == bytes(range(256)) * 64 + b"\xff\xfe\xc3\x28\n"
    cli = subprocess.run([PY, "-m", "orchestra", "logs", str(binary)], env=d.env, capture_output=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    wait_for(lambda: not strays(d.marker, set()), 10, "every process of these agents to be gone")
    assert not probe.latency.failures, probe.latency.failures[:3]
    assert probe.latency.worst < max(1.0, 20 * base.p50), probe.latency.summary()
    assert sampler.peak - rss < RSS_GROWTH_KB, f"VmRSS peaked {sampler.peak - rss} kB above where it started"


def test_a_grandchild_that_calls_setsid_is_killed_when_the_task_ends(daemon):
    """A grandchild that leaves the process group with setsid() cannot be signalled through
    it. The task must still end (after EOF_GRACE when the escapee holds the pipes), and the
    escapee must not outlive it: the daemon finds it by the mark in its environment."""
    d = daemon
    escape = "import subprocess; subprocess.Popen(['setsid', 'sleep', '300']{}); print('parent done', flush=True)"
    holding = d.submit(PY, "-c", escape.format(""), title="setsid, holding the pipes")
    quiet = d.submit(PY, "-c", escape.format(", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"),
                     title="setsid, pipes closed")
    t0 = time.monotonic()
    views = settle(d, [holding, quiet], timeout=15)
    took = time.monotonic() - t0
    try:
        for v in views.values():
            assert v.status is Status.SUCCEEDED and v.exit_code == 0, (v.status, v.reason)
        assert d.output_of(holding) == b"parent done\n"
        def escaped() -> list:
            return [s for s in marked(d.marker) if s.session not in (views[holding].pid, views[quiet].pid)]

        print(f"setsid grandchildren: both tasks ended within {took:.1f} s; escaped and still running: "
              f"{[(s.pid, s.session) for s in escaped()]}")
        # The process group cannot reach them, but the mark in their environment does: the
        # daemon kills what a task left running when the task ends.
        wait_for(lambda: not escaped(), 5, "the escaped grandchildren to be killed")
    finally:
        kill_marked(d.marker)


def test_tail_of_a_huge_output_without_newlines_answers_and_does_not_stall_the_daemon(daemon):
    """`orchestra logs --tail N` looks backwards for N newlines. In output that has none, it
    must still answer promptly, and other clients must not wait on it."""
    d = daemon
    size = 30_000_000
    task = d.submit(PY, "-c", f"import sys; sys.stdout.buffer.write(b'y' * {size})", title="no newline, tailed")
    assert d.wait_status(task, *p.FINISHED, timeout=60).status is Status.SUCCEEDED
    base = baseline(d, 50)
    problem = None
    with Probe(d, hard=HARD) as probe:
        t0 = time.monotonic()
        with d.connect() as conn:
            conn.sock.settimeout(120)
            try:
                received = sum(len(c.data) for c in conn.stream(p.Logs(task=task, tail=3), p.LogChunk))
            except FrameTooLarge as exc:
                received, problem = 0, f"the reply does not fit in a frame the client accepts: {exc}"
        took = time.monotonic() - t0
    print(f"logs --tail 3 of {size:,} bytes without a newline: {took:.2f} s, {received:,} bytes received; "
          f"probe {probe.latency.summary()}")
    assert not probe.latency.failures, (f"other clients were not answered for {HARD} s while the tail was "
                                        f"worked out ({took:.1f} s): {probe.latency.failures[:2]}")
    assert probe.latency.worst < max(1.0, 20 * base.p50), probe.latency.summary()
    assert problem is None, problem
    assert received == size  # the last three "lines" are the one line


def test_an_agent_that_never_reads_its_input_is_told_so_instead_of_silently_dropping_answers(daemon):
    """A command agent that never reads stdin, responded to again and again. The daemon
    keeps at most STDIN_LIMIT bytes for it (memory stays bounded); once that is full, a
    response it cannot deliver must not be acknowledged as if it had been (the person
    would believe the agent got it)."""
    d = daemon
    task = d.submit("sleep", "300", title="never reads stdin")
    d.wait_status(task, Status.RUNNING)
    rss = d.rss_kb()
    line = "z" * 1000
    ok = refused = 0
    messages = set()
    with d.connect() as conn:
        for _ in range(3000):  # 3 MB of answers, three times the limit
            try:
                conn.call(p.Respond(task=task, text=line))
                ok += 1
            except p.OrchestraError as exc:
                refused += 1
                messages.add(exc.message[:200])
    grown = d.rss_kb() - rss
    print(f"3000 responses of 1 kB to an agent that never reads: {ok} acknowledged, {refused} refused "
          f"{sorted(messages)[:2]}; VmRSS {grown:+} kB")
    d.call(p.Stop(task=task))
    assert d.wait_status(task, *p.FINISHED, timeout=15).status is Status.CANCELLED
    assert grown < RSS_GROWTH_KB
    assert refused > 0, (f"all {ok} responses were acknowledged, though the agent never read and at most "
                         "1 MiB can wait for it: the rest were dropped with only a warning in the daemon's log")


@pytest.fixture
def fake_claudes(tmp_path):
    return fake_claude_paths(tmp_path)


def test_a_claude_path_that_is_not_claude_ends_the_task_with_a_reason(daemon, fake_claudes):
    """tests/test_claude.py covers claude_path pointing at nothing; here it points at the
    wrong things. None of them ever produces a result, so none of them succeeds."""
    d = daemon
    rss = d.rss_kb()
    outcomes = {}
    try:
        for name, (path, words) in fake_claudes.items():
            d.call(p.ConfigSet(key="claude_path", value=path))
            task = d.submit_prompt(f"pretend ({name})", agent="claude", title=name)
            view = d.wait_status(task, *p.FINISHED, timeout=60)
            outcomes[name] = (view.status.value, view.reason)
            print(f"  claude_path -> {name:40} {view.status.value:10} {view.reason}")
    finally:
        d.call(p.ConfigSet(key="claude_path", value="claude"))
    assert d.rss_kb() - rss < RSS_GROWTH_KB
    for name, (path, words) in fake_claudes.items():
        status, reason = outcomes[name]
        assert status == "failed", f"claude_path -> {name}: {status} ({reason!r}); it never produced a result"
        assert reason and words in reason, f"claude_path -> {name}: reason {reason!r}"
    assert not strays(d.marker, set())
