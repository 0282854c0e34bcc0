"""Notifications with a real daemon: a command that reads the notice on stdin, a webhook
receiver on 127.0.0.1, fake desktop programs on PATH (they are the programs the daemon
calls), and the real Claude CLI asking permission against the scripted API."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import Daemon, wait_for
from tests.scripted_api import ScriptedAPI, reply

PY = sys.executable
FINISHED = tuple(p.FINISHED)


def recorder(path: Path) -> list[str]:
    """A notify_command that appends the JSON it reads on stdin to `path`, one a line."""
    return [PY, "-c", f"import sys; open({str(path)!r}, 'ab').write(sys.stdin.buffer.read() + b'\\n')"]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def arrived(path: Path, count: int, timeout: float = 20) -> list[dict]:
    return wait_for(lambda: len(found := read(path)) >= count and found, timeout, f"{count} notices in {path.name}")


def fail(d: Daemon, code: int = 3, **kw) -> int:
    task = d.submit(PY, "-c", f"raise SystemExit({code})", **kw)
    d.wait_status(task, Status.FAILED)
    return task


@pytest.fixture
def home():
    d = Daemon()
    yield d
    d.cleanup()


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST. The first requests get the
    statuses in `answers`, the rest 200; requests that come while `holding` is set hang
    until `released` is (at the latest when it closes)."""

    def __init__(self, answers: tuple[int, ...] = (), tls: tuple[Path, Path] | None = None) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.holding = threading.Event()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((dict(self.headers), body))
                if receiver.holding.is_set():
                    receiver.released.wait(60)
                status = receiver.answers.pop(0) if receiver.answers else 200
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the daemon gave up on this one already
                    pass

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hooks/orchestra") -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(answers: tuple[int, ...] = (), tls: tuple[Path, Path] | None = None) -> Receiver:
        made.append(Receiver(answers, tls))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_a_failed_task_reaches_the_command_as_json_on_stdin_without_its_secrets(home):
    d = home.start()
    out = d.home / "notices.jsonl"
    d.call(p.ConfigSet(key="notify_command", value=recorder(out)))
    task = fail(d, title="run the tests", role="tester", env={"API_TOKEN": "s3cret-value"})
    [notice] = arrived(out, 1)
    assert (notice["kind"], notice["task"], notice["title"], notice["role"], notice["status"]) == ("failed", task, "run the tests", "tester", "failed")
    assert notice["reason"] == "exited with code 3" and notice["agent"] == "command" and notice["cwd"] == str(d.home)
    assert notice["message"] == f"Task {task} (tester: run the tests) failed: exited with code 3"
    assert notice["time"].endswith("Z") and notice["workflow"] is None and notice["question"] is None
    assert "s3cret-value" not in out.read_text() and "API_TOKEN" not in out.read_text()
    # A shell line works too, and sees the kind and message in its environment.
    seen = d.home / "seen.txt"
    d.call(p.ConfigSet(key="notify_command", value=f'cat > /dev/null; echo "$ORCHESTRA_NOTICE_KIND: $ORCHESTRA_NOTICE_MESSAGE" >> {seen}'))
    second = fail(d, 4)
    wait_for(lambda: seen.exists() and seen.read_text(), 10, "the shell line to run")
    assert seen.read_text() == f"failed: Task {second} (generalist: {PY} -c raise SystemExit(4)) failed: exited with code 4\n"


def test_a_command_that_fails_is_logged_once_with_what_it_said_and_again_once_it_works(home):
    d = home.start()
    flag, runs = d.home / "works", d.home / "runs"
    command = f"cat > /dev/null; test -e {flag} && exit 0; echo failed >> {runs}; echo 'no route to pager' >&2; exit 5"
    d.call(p.ConfigSet(key="notify_command", value=command))
    fail(d)
    fail(d)
    wait_for(lambda: runs.exists() and runs.read_text() == "failed\nfailed\n", 10, "two failed runs")
    flag.touch()
    fail(d)
    wait_for(lambda: "takes notices again" in d.output(), 10, "the command to work again")
    log = d.output()
    assert log.count("not delivered") == 1
    assert "notify_command (cat …) exited with code 5: no route to pager" in log
    assert "notify_command (cat …) takes notices again" in log


def test_notify_on_picks_the_kinds(home):
    d = home.start()
    out = d.home / "notices.jsonl"
    d.call(p.ConfigSet(key="notify_command", value=recorder(out)))
    d.call(p.ConfigSet(key="notify_on", value=["workflow_ended"]))
    fail(d)
    d.call(p.ConfigSet(key="notify_on", value=["failed"]))
    task = fail(d)
    [notice] = arrived(out, 1)
    assert notice["task"] == task  # the first failure was not to be told


def test_a_webhook_that_fails_twice_gets_the_notice_on_the_third_attempt_with_its_token(home, receiver):
    hook = receiver((500, 500))
    home.env["ORCHESTRA_HOOK_TOKEN"] = "tok-123-secret"
    d = home.start()
    d.call(p.ConfigSet(key="notify_webhook", value=hook.url("/hooks/T0-private-path")))
    d.call(p.ConfigSet(key="notify_webhook_token_env", value="ORCHESTRA_HOOK_TOKEN"))
    task = fail(d)
    wait_for(lambda: len(hook.requests) >= 3, 20, "three attempts")
    bodies = hook.bodies()
    assert len({json.dumps(b, sort_keys=True) for b in bodies}) == 1 and bodies[0]["kind"] == "failed" and bodies[0]["task"] == task
    headers = hook.requests[2][0]
    assert headers["Authorization"] == "Bearer tok-123-secret" and headers["Content-Type"] == "application/json"
    d.stop()
    log = d.output()
    assert "not delivered" not in log  # it worked in the end
    assert "tok-123-secret" not in log and "private-path" not in log


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


def test_an_https_webhook_is_checked_against_the_trusted_certificates(home, receiver):
    trusted, untrusted = certificate(home.home, "trusted"), certificate(home.home, "untrusted")
    home.env["SSL_CERT_FILE"] = str(trusted[0])  # the daemon trusts this one alone
    good, bad = receiver(tls=trusted), receiver(tls=untrusted)
    d = home.start()
    d.call(p.ConfigSet(key="notify_webhook", value=good.url()))
    task = fail(d)
    wait_for(lambda: good.requests, 20, "the notice over https")
    assert good.bodies()[0]["task"] == task
    d.call(p.ConfigSet(key="notify_webhook", value=bad.url()))
    fail(d)
    wait_for(lambda: "not delivered" in d.output(), 20, "the refused certificate to be logged")
    assert "has a certificate the daemon does not trust (self-signed certificate)" in d.output() and "SSL_CERT_FILE" in d.output()
    assert bad.requests == []


def test_a_webhook_with_a_secret_in_its_url_is_refused_with_the_way_to_pass_it(home):
    d = home.start()
    result = d.run_cli("config", "set", "notify_webhook", "https://hooks.example.com/x?token=abc")
    assert result.returncode == 2
    assert "notify_webhook_token_env" in result.stderr and "Bearer" in result.stderr
    assert d.call(p.ConfigGet(key="notify_webhook")) == {"notify_webhook": None}


def test_a_hanging_webhook_never_holds_up_the_daemon(home, receiver):
    hook = receiver()
    hook.holding.set()
    d = home.start()
    d.call(p.ConfigSet(key="notify_timeout", value=3600))  # the daemon waits an hour for it
    d.call(p.ConfigSet(key="notify_webhook", value=hook.url()))
    first = fail(d)
    wait_for(lambda: hook.requests, 20, "the webhook to be called")
    # The receiver holds the request open: the daemon answers, and works, all the same.
    page = d.call(p.ListTasks(), p.TaskPage)
    assert [t.id for t in page.tasks] == [first]
    second = d.submit("echo", "still working")
    assert d.wait_status(second, Status.SUCCEEDED).status is Status.SUCCEEDED
    assert d.stop() == 0  # and it stops, giving up on the notice


def test_a_webhook_that_does_not_answer_times_out_and_its_failure_is_logged_once(home, receiver):
    hook = receiver()
    hook.holding.set()
    d = home.start()
    d.call(p.ConfigSet(key="notify_timeout", value=0.5))
    d.call(p.ConfigSet(key="notify_webhook", value=hook.url()))
    first = fail(d)
    wait_for(lambda: "did not take the notice in 4 attempts; the last: no answer within 0.5 s" in d.output(), 30, "the failure to be logged")
    second = fail(d)
    wait_for(lambda: [b["task"] for b in hook.bodies()].count(second) == 4, 30, "the second notice's four attempts")
    hook.holding.clear()  # new requests are answered; the ones held stay held
    third = fail(d)
    wait_for(lambda: "takes notices again" in d.output(), 30, "the webhook to work again")
    assert [b["task"] for b in hook.bodies()] == [first] * 4 + [second] * 4 + [third]
    assert d.output().count("not delivered") == 1  # the second failure was not logged again
    assert "http://127.0.0.1:" in d.output() and "/hooks/orchestra" not in d.output()


def test_a_storm_of_200_failures_is_held_to_the_limit_and_summed_up(home):
    d = home.start()
    out = d.home / "notices.jsonl"
    d.call(p.ConfigSet(key="max_concurrent", value=20))
    d.call(p.ConfigSet(key="notify_limit", value=10))
    d.call(p.ConfigSet(key="notify_window", value=3600))
    d.call(p.ConfigSet(key="notify_command", value=recorder(out)))
    with d.connect() as conn:
        tasks = [conn.call(p.Submit(argv=["/nonexistent/program"], cwd=str(d.home)), p.TaskView).id for _ in range(200)]
    wait_for(lambda: all(t.status is Status.FAILED for t in d.tasks()), 60, "200 failures")
    arrived(out, 10)
    d.stop()  # what is held back is sent at shutdown, as one summary
    notices = read(out)
    assert len(notices) == 11
    singles, summary = notices[:10], notices[10]
    assert all(n["kind"] == "failed" for n in singles) and len({n["task"] for n in singles}) == 10
    assert {n["task"] for n in singles} <= set(tasks)
    assert (summary["kind"], summary["count"], summary["counts"]) == ("more", 190, {"failed": 190})
    assert summary["message"].startswith("…and 190 more notices (190 failed)")


def test_a_workflow_ending_notifies_once_with_its_steps(home):
    d = home.start()
    out = d.home / "notices.jsonl"
    d.call(p.ConfigSet(key="notify_command", value=recorder(out)))
    workflows = d.paths.config / "workflows"
    workflows.mkdir(parents=True, exist_ok=True)
    (workflows / "ship.toml").write_text(
        '[[steps]]\nname = "build"\nargv = ["sh", "-c", "exit 3"]\n\n'
        '[[steps]]\nname = "deploy"\nafter = ["build"]\nargv = ["echo", "deployed"]\n\n'
        '[[steps]]\nname = "report"\nif_failed = "build"\nargv = ["echo", "build failed"]\n'
    )
    wait_for(lambda: "ship" in [t.name for t in d.call(p.Templates(), p.TemplatesResult).templates], 15, "the template")
    workflow = d.call(p.RunWorkflow(template="ship", goal="ship it", cwd=str(d.home)), p.WorkflowView)
    notices = wait_for(lambda: [n for n in read(out) if n["kind"] == "workflow_ended"] and read(out), 30, "the workflow's end")
    failed = [n for n in notices if n["kind"] == "failed"]
    assert [(n["task"], n["workflow"], n["step"]) for n in failed] == [(workflow.steps["build"], workflow.id, "build")]
    [end] = [n for n in notices if n["kind"] == "workflow_ended"]
    assert (end["workflow"], end["template"], end["goal"], end["status"]) == (workflow.id, "ship", "ship it", "failed")
    assert end["steps"] == {"build": "failed", "deploy": "cancelled", "report": "succeeded"}
    assert end["message"] == f"Workflow {workflow.id} (ship: ship it) ended: failed; step build failed: exited with code 3"


FAKE = """#!{python}
import json, os, sys
with open({record!r}, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
"""


@pytest.mark.parametrize("program", ["notify-send", "osascript"])
def test_the_desktop_is_told_through_the_program_on_path(home, program):
    bin_dir = home.home / "bin"
    bin_dir.mkdir()
    record = home.home / "desktop.jsonl"
    fake = bin_dir / program
    fake.write_text(FAKE.format(python=PY, record=str(record)))
    fake.chmod(0o755)
    home.env["PATH"] = str(bin_dir)  # nothing else: the failing task runs python by its path
    d = home.start()
    d.call(p.ConfigSet(key="notify_desktop", value=True))
    task = fail(d)
    [argv] = arrived(record, 1)
    message = f"Task {task} (generalist: {PY} -c raise SystemExit(3)) failed: exited with code 3"
    if program == "notify-send":
        assert argv == ["notify-send", "--app-name=orchestra", "--", f"orchestra: task {task} failed", message]
    else:
        assert argv[0] == "osascript" and argv[-2:] == [f"orchestra: task {task} failed", message]
        assert "display notification (item 2 of argv) with title (item 1 of argv)" in argv


def test_a_desktop_with_neither_program_says_what_to_install_once(home):
    home.env["PATH"] = str(home.home)  # neither notify-send nor osascript
    d = home.start()
    d.call(p.ConfigSet(key="notify_desktop", value=True))
    out = d.home / "notices.jsonl"
    d.call(p.ConfigSet(key="notify_command", value=recorder(out)))
    fail(d)
    fail(d)
    arrived(out, 2)  # the other sink went on regardless
    wait_for(lambda: "neither notify-send nor osascript" in d.output(), 10, "the desktop's failure to be logged")
    d.stop()
    assert d.output().count("neither notify-send nor osascript") == 1 and "libnotify-bin" in d.output()


@pytest.fixture
def team(claude):
    api = ScriptedAPI().start()
    d = Daemon()
    d.env.update(api.env(d.env))
    d.start()
    d.call(p.ConfigSet(key="claude_path", value=claude))
    yield d, api
    d.cleanup()
    api.close()


def test_a_claude_task_asking_permission_notifies_with_the_question(team):
    d, api = team
    out = d.home / "notices.jsonl"
    d.call(p.ConfigSet(key="notify_command", value=recorder(out)))
    api.add(reply.tool_use("Bash", {"command": "/bin/echo ran > asked.txt", "description": "write a file"}), reply.text("done"))
    task = d.call(p.Submit(prompt="run it", title="run it", cwd=str(d.home)), p.TaskView).id
    waiting = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert waiting.status is Status.WAITING, waiting.reason
    [notice] = arrived(out, 1)
    assert (notice["kind"], notice["task"], notice["status"]) == ("waiting", task, "waiting")
    assert notice["question"]["kind"] == "permission" and notice["question"]["tool"] == "Bash"
    assert notice["question"]["prompt"] == waiting.waiting.prompt and notice["question"]["prompt"].startswith("Bash: /bin/echo ran > asked.txt")
    assert notice["message"].startswith(f"Task {task} (generalist: run it) is waiting for permission: Bash: /bin/echo ran > asked.txt")
    assert notice["message"].endswith(f"Answer: orchestra respond {task} --allow (or --deny)")
    d.call(p.Respond(task=task, allow=True))
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    assert [n["kind"] for n in read(out)] == ["waiting"]  # success is not told
