"""Hostile clients against the live socket, while a well-behaved client keeps asking.

tests/test_daemon.py checks three bad frames, one oversized length and one stalled reader
of each kind. Here: hypothesis-generated frames (random bytes, truncated frames, lengths
up to 2**32 - 1, valid MessagePack of the wrong shape, unknown and known methods with
random fields), strings near MAX_FRAME, deep nesting, 1,000 connections at once, clients
that connect and say nothing, and hundreds of stream readers that never read.

Throughout, a probe (a normal client on its own connection) keeps calling the daemon.
Timings are figures, printed; the pass/fail bound is liveness: every probe call answered
within HARD seconds, and no call slower than max(1 s, 20 x the idle baseline). The daemon's
memory (VmRSS) must not grow by more than 100 MB over the whole attack.
"""

from __future__ import annotations

import gc
import os
import socket
import threading
import warnings

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestra.shared import protocol as p
from orchestra.client import connect
from orchestra.wire import FrameTooLarge
from tests.daemon import wait_for
from tests.reliability.harness import Probe, RDaemon, Raw, baseline, encode_map, raise_nofile
from tests.reliability.hostile import (CHATTY, HARD, MAX, attacks, complete_bodies, framed, hold_connections,
                                       send_attack, stall_readers)

RSS_GROWTH_KB = 100 * 1024


@pytest.fixture(scope="module")
def target():
    """One daemon for the whole attack, with a few tasks to talk about, its idle latency
    and its memory before anything hostile happened."""
    d = RDaemon()
    try:
        d.start()
        for i in range(3):
            d.submit("sh", "-c", f"echo task {i}")
        d.submit("sleep", "600", title="long")  # something running, to stop or respond to
        base = baseline(d, 200)
        base_list = baseline(d, 50, p.ListTasks())
        rss = d.rss_kb()
        print(f"\nidle baseline: Info {base.summary()}; ListTasks {base_list.summary()}; VmRSS {rss} kB")
        yield d, base, rss
        grown = d.rss_kb() - rss
        print(f"VmRSS after the attacks: {d.rss_kb()} kB ({grown:+} kB)")
    finally:
        d.cleanup()


def bound(base, floor: float = 1.0) -> float:
    return max(floor, 20 * base.p50)


def check_probe(probe: Probe, base, what: str, floor: float = 1.0) -> None:
    lat = probe.latency
    print(f"{what}: probe {lat.summary()}")
    assert not lat.failures, f"{what}: the well-behaved client was not answered within {HARD} s: {lat.failures[:3]}"
    assert lat.samples, what
    limit = bound(base, floor)
    assert lat.worst < limit, f"{what}: the slowest answer took {lat.worst:.3f} s (bound {limit:.3f} s)"


def test_hypothesis_frames_get_error_replies_and_never_stall_a_normal_client(target):
    d, base, _ = target
    sent = {"frames": 0, "bytes": 0}

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(attacks())
    def attack(case):
        send_attack(d, case)
        sent["frames"] += 1
        sent["bytes"] += len(case[2])

    with Probe(d, hard=HARD) as probe:
        attack()
    print(f"hostile frames sent: {sent['frames']} ({sent['bytes']:,} bytes)")
    check_probe(probe, base, "hypothesis frames")
    assert d.proc.poll() is None


def test_many_frames_on_one_connection_get_one_reply_each_in_order(target):
    d, base, _ = target

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(complete_bodies, min_size=1, max_size=25))
    def attack(bodies):
        with Raw(d.paths.socket, timeout=HARD) as raw:
            raw.hello()
            raw.send(b"".join(framed(b) for b in bodies) + framed(msgspec.msgpack.encode(p.Info())))
            for body in bodies:
                reply = raw.reply()
                assert reply is not None and reply.get("reply") in ("ok", "error"), (body[:80], reply)
            last = raw.reply()
            assert last is not None and last["reply"] == "ok" and last["result"]["pid"] == d.pid, last

    with Probe(d, hard=HARD) as probe:
        attack()
    check_probe(probe, base, "pipelined frames")


@pytest.mark.parametrize("depth", [100, 10_000, 1_000_000])
@pytest.mark.parametrize("where", ["unknown field", "typed field", "whole body"])
def test_deeply_nested_frames_get_an_error_reply(target, depth, where):
    d, _, _ = target
    nested = b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]
    head = {"unknown field": {"method": "info"}, "typed field": {"method": "show"}, "whole body": None}[where]
    if head is None:
        body = nested
    else:
        key = "x" if where == "unknown field" else "task"
        body = b"\x82" + msgspec.msgpack.encode("method") + msgspec.msgpack.encode(head["method"]) + msgspec.msgpack.encode(key) + nested
    with Raw(d.paths.socket, timeout=HARD) as raw:
        raw.hello()
        raw.frame(body)
        reply = raw.reply()
        assert reply is not None, f"{depth} levels of nesting in {where}: the daemon hung up without a reply"
        if where == "unknown field":  # Info with an extra field: fine, or refused
            assert reply["reply"] == "ok" or reply["code"] == "protocol", reply
        else:
            assert reply["reply"] == "error" and reply["code"] == "protocol", reply
        raw.frame(msgspec.msgpack.encode(p.Info()))
        assert raw.reply()["reply"] == "ok"


@pytest.mark.parametrize("case", ["unknown field", "wrong type", "hello client name", "unknown method"])
def test_strings_near_max_frame_are_answered_and_the_connection_carries_on(target, case):
    d, base, rss = target
    big = "x" * (MAX - 64)
    body = {
        "unknown field": encode_map(method="info", padding=big),
        "wrong type": encode_map(method="show", task=big),
        "hello client name": encode_map(method="hello", version=p.PROTOCOL_VERSION, client=big),
        "unknown method": encode_map(method=big),
    }[case]
    assert len(body) <= MAX
    with Probe(d, hard=HARD) as probe, Raw(d.paths.socket, timeout=30) as raw:
        raw.hello()
        raw.frame(body)
        reply = raw.reply()
        assert reply is not None and reply["reply"] in ("ok", "error"), reply
        # a real client refuses a frame over MAX_FRAME, so the answer must fit in one
        assert raw.last_size <= MAX, (
            f"the reply is a {raw.last_size:,}-byte frame, over the {MAX:,} limit clients accept: "
            f"{str(reply)[:120]}...")
        raw.frame(msgspec.msgpack.encode(p.Info()))
        assert raw.reply()["reply"] == "ok"
    check_probe(probe, base, f"a {len(body):,}-byte frame ({case})")


def test_huge_submissions_never_make_a_reply_too_big_for_the_clients():
    """Each of these submits fits in a frame. The replies to them, and to `ps` afterwards,
    must fit too: the client refuses frames over MAX_FRAME, so a reply the daemon builds
    bigger than that breaks every client that asks (`orchestra ps`, the MCP server) for
    as long as the task exists, restarts included. The daemon must refuse such a submit,
    or keep its replies within the limit."""
    d = RDaemon()
    try:
        d.start()
        d.call(p.ConfigSet(key="max_concurrent", value=1))
        d.submit("sleep", "600")  # holds the slot: the big ones stay queued, nothing runs them
        outcomes = []
        for size in (9 << 20, 9 << 20, MAX - 4096):
            try:
                with d.connect() as conn:
                    view = conn.call(p.Submit(prompt="p" * size, agent="claude", cwd=str(d.home)), p.TaskView)
                outcomes.append(f"{size:,}: accepted as task {view.id}")
            except p.OrchestraError as exc:
                outcomes.append(f"{size:,}: refused ({exc.code.value}): {exc.message[:100]}")
            except FrameTooLarge as exc:
                pytest.fail(f"submitting a {size:,}-byte prompt: the reply was too big for the client: {exc}; {outcomes}")
        print(outcomes)
        try:
            listed = d.tasks()
        except FrameTooLarge as exc:
            pytest.fail(f"after {outcomes}: ListTasks (orchestra ps) fails for every client: {exc}")
        assert len(listed) >= 1
        result = d.run_cli("ps")
        assert result.returncode == 0, result.stderr
    finally:
        d.cleanup()


def test_a_thousand_connections_at_once_and_clients_that_say_nothing(target):
    d, base, _ = target
    n = 1000
    assert raise_nofile(n + 200) >= n + 100
    with Probe(d, hard=HARD) as probe:
        fig = hold_connections(d, n)
    print(f"{n} connections: opened in {fig['opened_s']:.2f} s, {n // 2} Info calls answered in "
          f"{fig['answered_s']:.2f} s; daemon held {fig['daemon_fds']} fds, VmRSS {fig['rss_kb']} kB")
    # The daemon accepts a burst of a thousand connections in a few loop iterations; a call
    # that arrives behind them waits for them (about half a second on two cores).
    check_probe(probe, base, f"{n} connections at once", floor=2.0)
    wait_for(lambda: len(os.listdir(f"/proc/{d.pid}/fd")) < 100, 10,
             "the daemon to close the connections we hung up")


def test_a_client_connecting_during_a_connection_storm_waits_its_turn(target):
    """A burst of connects fills the daemon's listen backlog for a moment. A normal client
    connecting just then must wait its turn (it has a timeout for that) rather than fail at
    once: `orchestra ps` otherwise says "lost the connection to the daemon: [Errno 11]
    Resource temporarily unavailable" while the daemon is fine."""
    d, _, _ = target
    assert raise_nofile(12000) >= 10000
    held: list[socket.socket] = []
    halt = threading.Event()

    def storm() -> None:
        while not halt.is_set() and len(held) < 4000:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(d.paths.socket))
                held.append(s)
            except BlockingIOError:
                s.close()

    errors: dict[str, int] = {}
    storms = [threading.Thread(target=storm, daemon=True) for _ in range(2)]
    # A failed connect may leave its socket for the garbage collector: count those
    # ResourceWarnings here (and report them) rather than let them fail another test.
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always", ResourceWarning)
        for t in storms:
            t.start()
        try:
            for _ in range(100):
                try:
                    connect(d.paths, timeout=10).close()
                except Exception as exc:  # noqa: BLE001 - every kind is counted and reported
                    key = f"{type(exc).__name__}: {exc}"
                    errors[key] = errors.get(key, 0) + 1
                    del exc
        finally:
            halt.set()
            for t in storms:
                t.join(10)
            for s in held:
                s.close()
            gc.collect()
    unclosed = sum(1 for w in leaked if issubclass(w.category, ResourceWarning))
    print(f"100 normal connects during a storm of {len(held)} connections: {sum(errors.values())} failed {errors}; "
          f"{unclosed} client sockets left unclosed")
    assert not errors, f"{errors}, and {unclosed} of the failed attempts left their socket unclosed"


def test_stream_readers_that_never_read_cost_little_and_block_nobody(target):
    d, base, rss = target
    chatty = d.submit(*CHATTY)
    stalled: list[Raw] = []
    try:
        with Probe(d, hard=HARD) as probe:
            stalled = stall_readers(d, 200, chatty)
            # meanwhile, tasks come and go (each change is news to every watcher)
            churn = [d.submit("true") for _ in range(30)]
            wait_for(lambda: all(d.task(t).status.finished for t in [*churn, chatty]), 60, "the churn and the chatty task")
            held = d.rss_kb()
        print(f"200 stalled stream readers: VmRSS {held} kB ({held - rss:+} kB from the start)")
        check_probe(probe, base, "200 stalled stream readers")
        assert held - rss < RSS_GROWTH_KB, f"VmRSS grew by {held - rss} kB with stalled readers"
    finally:
        for raw in stalled:
            raw.close()


def test_memory_stays_bounded_over_the_whole_attack(target):
    """Last in this module: everything above has run against the same daemon."""
    d, _, rss = target
    now = d.rss_kb()
    print(f"VmRSS {rss} kB before the attacks, {now} kB after ({now - rss:+} kB)")
    assert now - rss < RSS_GROWTH_KB
    assert d.proc.poll() is None
