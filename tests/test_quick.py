"""`orchestra ps` on the quick path prints what the full CLI prints, without click or msgspec;
everything else it hands to the full CLI."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading

import msgspec
import pytest

from orchestra.shared import protocol as p
from orchestra import listing, quick, render
from orchestra.main import Exit
from tests.daemon import wait_for

PY = sys.executable
TWO_STEPS = """
[[steps]]
name = "one"
argv = ["echo", "one"]

[[steps]]
name = "two"
after = ["one"]
argv = ["sh", "-c", "exit 4"]
"""


def entry(daemon, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`orchestra ARGS` the way a person runs it: the package's entry point, in a fresh process."""
    return subprocess.run([PY, "-m", "orchestra", *args], env={**daemon.env, "COLUMNS": "100", **env},
                          capture_output=True, text=True, timeout=30)


def full(daemon, *args: str) -> str:
    result = subprocess.run([PY, "-c", "from orchestra.main import main; main()", *args],
                            env={**daemon.env, "COLUMNS": "100"}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def full_stderr(daemon, *args: str) -> str:
    result = subprocess.run([PY, "-c", "from orchestra.main import main; main()", *args],
                            env={**daemon.env, "COLUMNS": "100"}, capture_output=True, text=True, timeout=30)
    return result.stderr


def steady(table: str) -> str:
    """Runtimes of running tasks move between two calls; everything else must not."""
    return re.sub(r"\b\d+(\.\d)?s\b|\b\d+m\d\ds\b", "<t>", table)


@pytest.fixture
def busy(daemon):
    """A daemon with tasks in several states and a finished workflow."""
    daemon.cli("config", "set", "max_concurrent", "2")
    gate = daemon.submit(PY, "-c", "input()", title="gate", role="tester")
    daemon.submit("true", title="fine", priority=10)
    daemon.submit("false", title="broken")
    daemon.submit("echo", "late", after=[gate], title="waits for the gate")
    path = daemon.paths.config / "workflows" / "pair.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TWO_STEPS)
    wait_for(lambda: "pair" in [t.name for t in daemon.call(p.Templates(), p.TemplatesResult).templates], what="template")
    workflow = daemon.call(p.RunWorkflow(template="pair", goal="two steps", cwd=str(daemon.home)), p.WorkflowView)
    wait_for(lambda: daemon.call(p.ShowWorkflow(workflow=workflow.id), p.WorkflowView).status == "failed", what="workflow")
    daemon.wait_status(gate, p.Status.RUNNING)
    return daemon


def test_ps_prints_what_the_full_command_prints(busy):
    for args in [(), ("--active",), ("-s", "failed", "--status", "succeeded"), ("--role", "tester"), ("--role=generalist",),
                 ("--all",), ("--limit", "1"), ("-n", "0", "-s", "failed")]:
        result = entry(busy, "ps", *args)
        assert result.returncode == 0, result.stderr
        assert steady(result.stdout) == steady(full(busy, "ps", *args)), args
        assert result.stderr == full_stderr(busy, "ps", *args), args
    table = entry(busy, "ps").stdout
    assert "workflow 1 · pair · failed" in table and "gate" in table and "exited with code 4" in table


def test_ps_takes_the_home_as_an_option_too(busy):
    env = {k: v for k, v in busy.env.items() if k != "ORCHESTRA_HOME"}
    result = subprocess.run([PY, "-m", "orchestra", "--home", str(busy.home), "ps", "-s", "failed"],
                            env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "broken" in result.stdout and "gate" not in result.stdout


def test_the_quick_path_imports_neither_click_nor_msgspec(busy):
    probe = ("import sys; sys.argv = ['orchestra', 'ps']; from orchestra.quick import main; main(); "
             "print(sorted(m for m in ('click', 'msgspec', 'typing', 'pathlib', 'asyncio') if m in sys.modules))")
    result = subprocess.run([PY, "-c", probe], env=busy.env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "gate" in result.stdout and result.stdout.rstrip().endswith("[]")


def test_an_empty_daemon_says_no_tasks(daemon):
    result = entry(daemon, "ps")
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "no tasks\n"


def test_a_large_reply_is_decoded_all_the_same(daemon):
    gate = daemon.submit(PY, "-c", "input()", title="gate")
    long_title = "x" * 190
    with daemon.connect() as conn:
        conn.call_many([p.Submit(cwd=str(daemon.home), argv=["true"], after=[gate], title=f"{i} {long_title}") for i in range(700)])
    with daemon.connect() as conn:
        size = len(msgspec.msgpack.encode(conn.call(p.ListTasks())))
    assert size > quick.LARGE_REPLY
    result = entry(daemon, "ps", "--all", "--role", "generalist")
    assert result.returncode == 0
    assert steady(result.stdout) == steady(full(daemon, "ps", "--all", "--role", "generalist"))
    assert result.stdout.count("queued") == 700
    head = entry(daemon, "ps")  # a long queue: its newest tasks, and a note saying where the rest are
    assert head.stdout.count("queued") == 20 and steady(head.stdout) == steady(full(daemon, "ps"))
    assert "the newest 20 of 700 queued tasks are shown; `orchestra queue` lists them in the order they start" in head.stderr


@pytest.mark.parametrize("args", [("ps", "--json"), ("ps", "--help"), ("ps", "-s", "bogus"), ("ps", "--wat"), ("--version",)])
def test_everything_else_goes_to_the_full_cli(daemon, args):
    daemon.submit("true")
    result = entry(daemon, *args)
    expected = subprocess.run([PY, "-c", "from orchestra.main import main; main()", *args],
                              env={**daemon.env, "COLUMNS": "100"}, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (expected.returncode, expected.stdout, expected.stderr)


def test_no_daemon_is_reported_by_the_full_cli(tmp_path):
    result = subprocess.run([PY, "-m", "orchestra", "--home", str(tmp_path), "--no-autostart", "ps"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == Exit.UNREACHABLE and "no daemon is listening" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["ps"], ["--home", "/h", "--no-autostart", "ps", "--active"], ["ps", "-s", "queued", "-r", "x"], ["--home=/h", "ps", "--status=failed"],
     ["ps", "--all"], ["ps", "--limit", "5", "-s", "succeeded"], ["ps", "--limit=0"], ["ps", "--all", "--limit", "100", "--status", "failed"]],
)
def test_the_arguments_the_quick_path_takes(args):
    home, options = quick.parse_ps(args)
    assert home == ("/h" if "/h" in " ".join(args) else None)
    for part in listing.parts(**options):
        msgspec.convert(listing._fields(part, None, 0), p.ListTasks)  # the fields it sends are a valid request


@pytest.mark.parametrize("args", [[], ["submit"], ["ps", "--json"], ["ps", "-s"], ["ps", "-s", "nope"], ["ps", "--role", "--active"], ["--home"], ["-h", "ps"],
                                  ["ps", "--limit", "x"], ["ps", "--limit", "-1"]])
def test_arguments_it_leaves_to_the_full_cli(args):
    with pytest.raises(quick._Fallback):
        quick.parse_ps(args)


def test_views_render_like_the_task_views_they_came_from():
    base = dict(role="tester", agent="claude", priority=10, after=[1], title="t", prompt="write tests",
                argv=[], cwd="/w", submitted_at=1.0, started_at=2.0, runtime=75.0, cost_usd=0.5, workflow=None)
    views = [
        p.TaskView(id=3, status=p.Status.WAITING, waiting=p.Question(request_id="r", kind="question", prompt="which?", options=["a", "b"]), **base),
        p.TaskView(id=4, status=p.Status.RUNNING, activity="editing parser.py", **base),
        p.TaskView(id=5, status=p.Status.FAILED, reason="exited with code 1", **base),
    ]
    decoded = [quick._task(msgspec.to_builtins(v)) for v in views]
    assert render.table(decoded, width=80) == render.table(views, width=80)


def test_replies_it_does_not_understand_go_to_the_full_cli(tmp_path):
    """A daemon of another version may send views the quick path cannot render: it gives way."""
    (tmp_path / "run").mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "run" / "orchestrad.sock"))
    server.listen(1)
    odd = {"id": 1, "status": "exploded", "workflow": None}

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            for reply in (p.Ok(result=p.Welcome(version=p.PROTOCOL_VERSION, daemon="x", pid=1)), p.Ok(result={"tasks": [odd], "more": False})):
                size = int.from_bytes(conn.recv(4, socket.MSG_WAITALL), "big")
                conn.recv(size, socket.MSG_WAITALL)
                body = msgspec.msgpack.encode(reply)
                conn.sendall(len(body).to_bytes(4, "big") + body)

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        with pytest.raises(quick._Fallback):
            quick.run_ps(str(tmp_path), {"statuses": [], "role": None, "active_only": True, "limit": None, "everything": False})
    finally:
        thread.join(10)
        server.close()
