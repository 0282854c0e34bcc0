"""The daemon for real: a real process on a real socket, running real child processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import msgspec
import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestra.wire import Connection
from tests.daemon import Daemon, wait_for

PY = sys.executable


def set_config(daemon: Daemon, key: str, value) -> None:
    daemon.call(p.ConfigSet(key=key, value=value))


def test_submit_run_and_read_output(daemon):
    task = daemon.submit("sh", "-c", "echo out; echo err >&2; exit 3")
    view = daemon.wait_status(task, Status.FAILED)
    assert view.exit_code == 3 and view.reason == "exited with code 3"
    out = daemon.output_of(task)
    assert b"out\n" in out and b"err\n" in out


def test_start_order_follows_priority_then_age_within_the_limit(daemon):
    set_config(daemon, "max_concurrent", 1)
    gate = daemon.submit(PY, "-c", "import sys; sys.stdin.readline()")  # holds the only slot
    daemon.wait_status(gate, Status.RUNNING)
    low = daemon.submit("true", priority=-10)
    first = daemon.submit("true")
    urgent = daemon.submit("true", priority=20)
    second = daemon.submit("true")
    queued = daemon.call(p.Queue(), list[p.TaskView])
    assert [t.id for t in queued] == [urgent, first, second, low]
    daemon.call(p.Respond(task=gate, text="go"))
    views = [daemon.wait_status(t, Status.SUCCEEDED) for t in (low, first, urgent, second)]
    by_start = sorted(views, key=lambda v: v.started_at)
    assert [v.id for v in by_start] == [urgent, first, second, low]
    for earlier, later in zip(by_start, by_start[1:]):
        assert earlier.finished_at <= later.started_at  # never two at once


def test_concurrency_limit_holds(daemon):
    set_config(daemon, "max_concurrent", 2)
    tasks = [daemon.submit("sleep", "0.3") for _ in range(5)]
    views = [daemon.wait_status(t, Status.SUCCEEDED) for t in tasks]
    events = sorted([(v.started_at, 1) for v in views] + [(v.finished_at, -1) for v in views])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2


def test_dependencies_and_a_failing_dependency(daemon):
    a = daemon.submit("sh", "-c", "sleep 0.2; exit 1")
    b = daemon.submit("true", after=[a])
    c = daemon.submit("true", after=[b])
    ok = daemon.submit("true")
    after_ok = daemon.submit("true", after=[ok])
    assert daemon.wait_status(c, Status.CANCELLED).reason == f"not run: dependency {b} ended cancelled"
    assert daemon.task(b).reason == f"not run: dependency {a} ended failed"
    assert daemon.task(b).started_at is None
    assert daemon.wait_status(after_ok, Status.SUCCEEDED)


def test_timeout_and_idle_timeout(daemon):
    set_config(daemon, "kill_grace", 0.5)
    slow = daemon.submit("sleep", "30", timeout=0.5)
    quiet = daemon.submit(PY, "-c", "import time; print('hi', flush=True); time.sleep(30)", idle_timeout=0.5)
    chatty = daemon.submit(PY, "-c", "import time\nfor i in range(8): print(i, flush=True); time.sleep(0.1)", idle_timeout=0.5)
    view = daemon.wait_status(slow, Status.TIMED_OUT)
    assert view.reason == "timed out after 0.5 s" and view.signal == signal.SIGTERM
    assert 0.5 <= view.runtime < 5
    view = daemon.wait_status(quiet, Status.TIMED_OUT)
    assert "idle timeout" in view.reason
    assert daemon.wait_status(chatty, Status.SUCCEEDED)


def test_stop_a_process_that_ignores_sigterm(daemon):
    set_config(daemon, "kill_grace", 0.3)
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    task = daemon.submit(PY, "-c", script)
    wait_for(lambda: b"ready" in daemon.output_of(task), what="the script to ignore SIGTERM")
    pid = daemon.task(task).pid
    result = daemon.cli("stop", str(task))
    assert result.exit_code == 0, result.output
    view = daemon.wait_status(task, Status.CANCELLED)
    assert view.signal == signal.SIGKILL and view.reason == "stopped on request"
    assert not _alive(pid)


def test_respond_writes_a_line_to_stdin(daemon):
    task = daemon.submit(PY, "-c", "name = input(); print(f'hello {name}')")
    daemon.wait_status(task, Status.RUNNING)
    result = daemon.cli("respond", str(task), "world")
    assert result.exit_code == 0, result.output
    daemon.wait_status(task, Status.SUCCEEDED)
    assert daemon.output_of(task) == b"hello world\n"


def test_logs_follow_streams_until_the_task_ends(daemon):
    task = daemon.submit(PY, "-c", "import time\nfor i in range(5): print(i, flush=True); time.sleep(0.1)")
    result = daemon.run_cli("logs", "-f", str(task))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0\n1\n2\n3\n4\n"
    tail = daemon.cli("logs", "--tail", "2", str(task))
    assert tail.output == "3\n4\n"


def test_watch_and_logs_follow_readers_that_never_read_do_not_block_the_daemon(daemon):
    task = daemon.submit(PY, "-c", "import sys\nfor i in range(3000): sys.stdout.write('x' * 4000 + '\\n')")
    daemon.wait_status(task, Status.SUCCEEDED)
    stalled = []
    for request in (p.Logs(task=task, follow=True), p.Watch()):
        conn = daemon.connect()
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.send(request)
        stalled.append(conn)
    start = time.monotonic()
    fast = daemon.submit("echo", "still here")
    daemon.wait_status(fast, Status.SUCCEEDED)
    assert daemon.output_of(fast) == b"still here\n"
    assert time.monotonic() - start < 5
    for conn in stalled:
        conn.close()


def test_bad_frames_get_errors_while_another_client_keeps_working(daemon):
    good = daemon.connect()
    raw = socket.socket(socket.AF_UNIX)
    raw.connect(str(daemon.paths.socket))
    hello = msgspec.msgpack.encode(p.Hello(version=p.PROTOCOL_VERSION))
    raw.sendall(struct.pack(">I", len(hello)) + hello)
    _read_reply(raw)
    for body in (b"\xc1garbage", msgspec.msgpack.encode({"method": "nosuch"}), msgspec.msgpack.encode({"method": "show", "task": "one"})):
        raw.sendall(struct.pack(">I", len(body)) + body)
        reply = _read_reply(raw)
        assert reply["reply"] == "error" and reply["code"] == "protocol"
        assert good.call(p.Info(), p.DaemonStatus).pid > 0
    reply_for_show = _read_reply_after(raw, msgspec.msgpack.encode({"method": "show", "task": "one"}))
    assert "Expected `int`, got `str`" in reply_for_show["message"]
    raw.sendall(struct.pack(">I", 1 << 31))
    reply = _read_reply(raw)
    assert reply["code"] == "protocol" and "over the limit" in reply["message"]
    assert raw.recv(10) == b""  # closed after an oversized frame
    assert good.call(p.Info(), p.DaemonStatus).pid > 0
    raw.close()
    good.close()


def test_wrong_protocol_version_gets_a_clear_error(daemon):
    with Connection(str(daemon.paths.socket)) as conn:
        with pytest.raises(p.OrchestraError, match=f"protocol {p.PROTOCOL_VERSION} and the client 99"):
            conn.call(p.Hello(version=99))


def test_second_daemon_refused_and_stale_socket_replaced(daemon):
    second = subprocess.run([PY, "-m", "orchestrad", "--home", str(daemon.home)], capture_output=True, text=True, timeout=30)
    assert second.returncode == 3
    assert "already running" in second.stderr
    daemon.kill9()
    assert daemon.paths.socket.exists()  # left behind by the killed daemon
    daemon.start()
    assert daemon.call(p.Info(), p.DaemonStatus).pid == daemon.proc.pid


def test_kill9_with_tasks_running_and_queued_loses_nothing(daemon):
    set_config(daemon, "max_concurrent", 2)
    running = [daemon.submit("sleep", "60") for _ in range(2)]
    queued = [daemon.submit("true", title=f"q{i}") for i in range(3)]
    pids = [daemon.wait_status(t, Status.RUNNING).pid for t in running]
    daemon.kill9()
    daemon.start()
    for t in running:
        view = daemon.wait_status(t, Status.INTERRUPTED)
        assert view.reason == "the daemon stopped while it ran"
    for pid in pids:
        wait_for(lambda: not _alive(pid), what=f"orphan {pid} to be killed")
    for t in queued:
        assert daemon.wait_status(t, Status.SUCCEEDED)
    listed = daemon.tasks()
    assert sorted(v.id for v in listed) == sorted(running + queued)


def test_graceful_shutdown_interrupts_running_tasks(daemon):
    task = daemon.submit("sleep", "60")
    pid = daemon.wait_status(task, Status.RUNNING).pid
    assert daemon.stop() == 0
    assert not daemon.paths.socket.exists()
    assert not _alive(pid)
    daemon.start()
    view = daemon.task(task)
    assert view.status is Status.INTERRUPTED and "shut down" in view.reason


def test_secrets_never_reach_the_log_or_show(daemon):
    task = daemon.submit("sh", "-c", 'echo "$API_TOKEN" | wc -c', env={"API_TOKEN": "s3cr3t-value", "PLAIN": "ok"})
    daemon.wait_status(task, Status.SUCCEEDED)
    assert daemon.output_of(task).strip() == b"13"  # the process got the value
    shown = daemon.cli("show", "--json", str(task)).output
    assert "s3cr3t" not in shown and "API_TOKEN" in json.loads(shown)["env_keys"]
    daemon.stop()
    for path in daemon.paths.state.rglob("*"):
        if path.is_file() and path.parent.name != "env":  # the env store holds the values, 0600
            assert b"s3cr3t-value" not in path.read_bytes(), path


def test_other_users_are_refused(daemon):
    os.chmod(daemon.home, 0o755)
    os.chmod(daemon.paths.runtime, 0o755)
    os.chmod(daemon.paths.socket, 0o666)  # even with the file modes opened up, the uid check holds
    code = (
        "import os, socket, struct, msgspec\n"
        "os.setgid(65534); os.setuid(65534)\n"
        f"s = socket.socket(socket.AF_UNIX); s.connect({str(daemon.paths.socket)!r})\n"
        "n = struct.unpack('>I', s.recv(4))[0]; print(msgspec.msgpack.decode(s.recv(n))['message'])\n"
    )
    result = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.stdout.strip() == "this daemon serves only its own user", result.stderr


def test_socket_and_directory_modes(daemon):
    assert daemon.paths.socket.stat().st_mode & 0o777 == 0o600
    assert daemon.paths.runtime.stat().st_mode & 0o777 == 0o700


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _read_reply(sock: socket.socket) -> dict:
    header = _recv_exactly(sock, 4)
    (size,) = struct.unpack(">I", header)
    return msgspec.msgpack.decode(_recv_exactly(sock, size))


def _read_reply_after(sock: socket.socket, body: bytes) -> dict:
    sock.sendall(struct.pack(">I", len(body)) + body)
    return _read_reply(sock)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def test_pipelined_requests_are_answered_in_order(daemon):
    set_config(daemon, "max_concurrent", 1)
    gate = daemon.submit(PY, "-c", "input()")
    with daemon.connect() as conn:
        requests = [p.Submit(cwd=str(daemon.home), argv=["true"], title=f"t{i}") for i in range(300)]
        requests[150] = p.Show(task=99_999)  # an error in the middle keeps its place
        replies = conn.call_many(requests, p.TaskView)
    assert isinstance(replies[150], p.OrchestraError) and replies[150].code is p.ErrorCode.NOT_FOUND
    views = [r for r in replies if not isinstance(r, p.OrchestraError)]
    assert [v.title for v in views] == [f"t{i}" for i in range(300) if i != 150]
    assert [v.id for v in views] == list(range(gate + 1, gate + 300))
    daemon.call(p.Stop(task=gate))
