"""Who may connect, and what leaks: file modes (even under umask 000), other users, TCP,
secrets in task environments, and the permission mode agents are started with.

tests/test_daemon.py checks the socket and runtime directory modes, one refused `nobody`
connection (with the modes opened up), and one API_TOKEN kept out of the log and `show`;
tests/test_claude.py checks that no role starts Claude with bypassPermissions unless it is
configured. This builds on them: every file the daemon writes, the real CLI run as
`nobody`, a `nobody` client that talks before it listens, every TCP/UDP socket of the
daemon, secrets in snapshots, streams, `ps` and the daemon's own output and across
restarts and retries, and the argv of every way an agent gets started (follow-up, resume,
auto-resume, workflow), as the agent saw it and as the log recorded it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import textwrap
import uuid
from pathlib import Path

import msgspec
from typing import Any
import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import events as ev
from tests.daemon import wait_for
from tests.reliability.harness import PY, RDaemon, Raw, events_of, read_log, settle, tasks

NOBODY = 65534


@pytest.fixture
def daemon():
    d = RDaemon()
    yield d
    d.cleanup()


def as_nobody(code: str, *, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `code` in a Python that drops to nobody first. Python itself lives under /root
    (0700), so modules are imported while still root; `code` runs as nobody."""
    prelude = textwrap.dedent("""
        import os, pathlib, socket, struct, sys, json
        import msgspec, click
        from orchestra.shared import protocol, paths
        from orchestra import wire, client, render
        from orchestra.main import cli
        os.setgroups([]); os.setgid(65534); os.setuid(65534)
        assert os.getuid() == 65534
    """)
    return subprocess.run([PY, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------------------
# Modes


def test_every_file_the_daemon_writes_is_private_even_under_umask_000(daemon):
    d = daemon
    old = os.umask(0)
    try:
        d.start("--segment-bytes", "4096")
        settle(d, [d.submit("sh", "-c", "echo some output; echo more >&2") for _ in range(10)])
        d.call(p.ConfigSet(key="snapshot_every", value=100))
        d.kill9()
        d.start()  # replaces the stale socket
        assert d.stop() == 0  # writes a snapshot
        d.start()
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.paths.state.stat().st_mode) == 0o700
    assert stat.S_IMODE(d.paths.runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE(d.paths.socket.stat().st_mode) == 0o600
    loose = []
    for path in [*d.paths.state.rglob("*"), d.paths.socket]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077 and not path.is_dir():
            loose.append(f"{path.relative_to(d.home)} {mode:o}")
        elif path.is_dir() and mode & 0o077:
            loose.append(f"{path.relative_to(d.home)}/ {mode:o}")
    segments = list(d.paths.log_dir.glob("*.seg"))
    snapshots = list(d.paths.snapshot_dir.glob("snap-*"))
    assert len(segments) > 1 and snapshots
    assert not loose, f"readable by others (umask 000): {loose}"


# ---------------------------------------------------------------------------------------
# Other users


def test_nobody_cannot_reach_the_socket_and_the_real_cli_says_so(daemon):
    d = daemon.start()
    os.chmod(d.home, 0o755)  # the home is ours to open; the daemon's own directories stay 0700
    result = as_nobody(f"""
        try:
            cli(["--home", {str(d.home)!r}, "--no-autostart", "ps"], standalone_mode=True)
        except SystemExit as exc:
            sys.exit(exc.code)
    """)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert "not allowed" in result.stderr or "permission" in result.stderr.lower(), result.stderr
    assert d.call(p.Info(), p.DaemonStatus).pid == d.pid


def test_a_nobody_client_that_talks_before_listening_gets_only_the_refusal(daemon):
    d = daemon.start()
    for path in (d.home, d.paths.runtime):
        os.chmod(path, 0o755)
    os.chmod(d.paths.socket, 0o666)  # modes opened up: the uid check is all that is left
    before = len(tasks(d))
    result = as_nobody(f"""
        s = socket.socket(socket.AF_UNIX)
        s.connect({str(d.paths.socket)!r})
        def frame(m):
            body = msgspec.msgpack.encode(m)
            return struct.pack(">I", len(body)) + body
        burst = frame(protocol.Hello(version=protocol.PROTOCOL_VERSION))
        burst += frame(protocol.Submit(argv=["touch", "/tmp/pwned-{uuid.uuid4().hex}"], cwd="/tmp"))
        burst += frame(protocol.Shutdown())
        try:
            s.sendall(burst)
        except OSError:
            pass
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        replies = []
        while data:
            n = struct.unpack(">I", data[:4])[0]
            replies.append(msgspec.msgpack.decode(data[4:4 + n]))
            data = data[4 + n:]
        print(json.dumps(replies))
    """)
    assert result.returncode == 0, result.stderr
    replies = json.loads(result.stdout)
    assert replies == [{"reply": "error", "code": "protocol", "message": "this daemon serves only its own user"}], replies
    assert len(tasks(d)) == before
    assert d.proc.poll() is None and d.call(p.Info(), p.DaemonStatus).pid == d.pid


# ---------------------------------------------------------------------------------------
# No network


def _inet_inodes() -> dict[int, str]:
    """inode -> "proto local-address state" for every TCP and UDP socket on the host."""
    found = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            found[int(fields[9])] = f"{proto} {fields[1]} state {fields[3]}"
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def test_the_daemon_has_no_tcp_or_udp_socket_at_all(daemon):
    d = daemon.start()
    task = d.submit("sh", "-c", "echo hi; sleep 30")
    d.wait_status(task, Status.RUNNING)
    with d.connect(), d.connect():
        mine = _socket_inodes(d.pid)
        inet = _inet_inodes()
    assert len(mine) >= 3  # the listener and our two connections, at least
    assert not mine & set(inet), [inet[i] for i in mine & set(inet)]
    listening = [v for v in inet.values() if v.startswith("tcp") and v.endswith("state 0A")]
    print(f"daemon sockets: {len(mine)}, all Unix; TCP listeners on the host (none of them the daemon's): {listening}")


# ---------------------------------------------------------------------------------------
# Secrets


# Names a heuristic would take for secrets, and names it would not: no value of either kind
# may reach the log (the attack suite found these in segments and a snapshot).
SECRET_NAMES = ["OPENAI_API_KEY", "gh_token", "DB_Password", "MY_SECRET", "aws_secret_access_key", "SessionToken",
                "GITHUB_PAT", "AWS_SESSION", "DATABASE_URL", "PGPASS", "DSN", "SSH_PRIVATE", "STRIPE_SK", "BEARER",
                "PLAIN", "CONN"]


def test_secrets_reach_the_agent_and_nothing_else(daemon):
    d = daemon.start()
    d.call(p.ConfigSet(key="snapshot_every", value=100))
    secrets = {name: f"s3cr3t-{uuid.uuid4().hex}" for name in SECRET_NAMES}
    # the agent proves it got every value by their digest (a value in its argv would be logged)
    digest = hashlib.sha256("".join(secrets.values()).encode()).hexdigest()
    check = 'printf "%s" ' + '"' + "".join(f"${{{name}}}" for name in secrets) + '" | sha256sum | cut -c1-64'

    watch = Raw(d.paths.socket)
    watch.hello()
    watch.frame(msgspec.msgpack.encode(p.Watch()))
    try:
        ids = [d.submit("sh", "-c", check, env=secrets) for _ in range(3)]
        for _ in range(40):  # enough events for a snapshot or two
            d.submit("true")
        views = settle(d, ids)
        assert all(v.status is Status.SUCCEEDED for v in views.values()), {i: v.reason for i, v in views.items()}
        assert d.output_of(ids[0]).decode().strip() == digest, "the agent did not get every secret"
        shown = [
            d.run_cli("show", "--json", str(ids[0])).stdout,
            d.run_cli("ps", "--json").stdout,
            d.run_cli("show", str(ids[0])).stdout,
            json.dumps(d.call(p.ConfigGet())),
            json.dumps(d.call(p.Info(), Any)),
        ]
        assert set(SECRET_NAMES) <= set(json.loads(shown[0])["env_keys"])
        streamed = b""
        watch.sock.settimeout(0.5)
        try:
            while True:
                chunk = watch.sock.recv(1 << 20)
                if not chunk:
                    break
                streamed += chunk
        except TimeoutError:
            pass
    finally:
        watch.close()
    assert streamed, "the watch stream said nothing"
    assert d.stop() == 0
    assert list(d.paths.snapshot_dir.glob("snap-*.bin"))
    store = d.paths.state / "env"
    kept = sorted(store.iterdir())
    assert {str(t) for t in ids} <= {f.name for f in kept}, "the values live in the env store, a file a task"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in kept)
    leaks = []
    for value in secrets.values():
        for path in [*d.paths.state.rglob("*"), *d.paths.config.rglob("*")]:
            if store in path.parents:
                continue
            if path.is_file() and value.encode() in path.read_bytes():
                leaks.append(f"{path.relative_to(d.home)}")
        if value.encode() in streamed:
            leaks.append("the Watch stream")
        if value in d.output():
            leaks.append("the daemon's own output")
        leaks += [f"shown output {i}" for i, text in enumerate(shown) if value in text]
    assert not leaks, f"a secret value was found in: {sorted(set(leaks))}"
    # Cleanup that forgets the tasks takes their values with them.
    d.start()
    d.call(p.ConfigSet(key="retention_days", value=0))
    purged = d.call(p.Cleanup(), p.CleanupResult).purged
    assert set(ids) <= set(purged)
    left = {f.name for f in store.iterdir()}
    assert not left & {str(t) for t in purged}, "cleanup left environment values of purged tasks"


def test_a_retried_task_gets_its_secret_again(daemon, tmp_path):
    """A task run again (resume/retry of a finished one) gets its environment again."""
    d = daemon.start()
    flag = tmp_path / "fail-once"
    flag.touch()
    task = d.submit("sh", "-c", f'test -n "$API_TOKEN" || {{ echo "no API_TOKEN" >&2; exit 7; }}; '
                                f'if [ -e {flag} ]; then rm {flag}; exit 1; fi; echo ok',
                    env={"API_TOKEN": "s3cr3t-retry"})
    assert d.wait_status(task, *p.FINISHED).status is Status.FAILED  # the first attempt fails on purpose
    d.call(p.Resume(task=task), p.TaskView)
    view = wait_for(lambda: (v := d.task(task)).attempts == 2 and v.status.finished and v, 15, "the retry")
    assert view.status is Status.SUCCEEDED, f"the retry ran without its secret: {view.reason}"


def test_a_queued_task_gets_its_secret_after_a_crash(daemon):
    """The values are in the env store, durable before the submit was acknowledged: after
    kill -9 a queued task still runs with them."""
    d = daemon.start()
    d.call(p.ConfigSet(key="max_concurrent", value=1))
    gate = d.submit("sleep", "60")
    d.wait_status(gate, Status.RUNNING)
    task = d.submit("sh", "-c", 'test -n "$API_TOKEN" || { echo "ran without API_TOKEN" >&2; exit 7; }; echo ok',
                    env={"API_TOKEN": "s3cr3t-crash"})
    d.kill9()
    d.start()
    view = d.wait_status(task, *p.FINISHED, timeout=20)
    print(f"after the crash: {view.status.value}: {view.reason!r}, output {d.output_of(task)!r}")
    ran_without = b"ran without API_TOKEN" in d.output_of(task)
    assert not ran_without, (f"the task ran without its secret after the restart and ended "
                             f"{view.status.value}: {view.reason!r}")
    assert view.status is Status.SUCCEEDED, view.reason


def test_agents_inherit_no_credentials_of_the_daemon_unless_passed(tmp_path):
    """The daemon's own ANTHROPIC_API_KEY, GH_TOKEN... do not reach a command agent; the
    pass_env setting hands on the ones named; ordinary variables are inherited."""
    d = RDaemon()
    d.env.update({"ANTHROPIC_API_KEY": "sk-ant-daemon", "GH_TOKEN": "ghp-daemon", "AWS_SECRET_ACCESS_KEY": "aws-daemon",
                  "DATABASE_URL": "postgres://u:pw@db/x", "ORDINARY_SETTING": "inherited"})
    try:
        d.start()
        show = 'for n in ANTHROPIC_API_KEY GH_TOKEN AWS_SECRET_ACCESS_KEY DATABASE_URL ORDINARY_SETTING; do eval "echo $n=\\${$n:-unset}"; done'
        first = d.submit("sh", "-c", show)
        d.wait_status(first, Status.SUCCEEDED)
        seen = d.output_of(first).decode()
        assert "ORDINARY_SETTING=inherited" in seen, seen
        for name in ("ANTHROPIC_API_KEY", "GH_TOKEN", "AWS_SECRET_ACCESS_KEY", "DATABASE_URL"):
            assert f"{name}=unset" in seen, seen
        d.call(p.ConfigSet(key="pass_env", value=["GH_TOKEN", "AWS_*"]))
        second = d.submit("sh", "-c", show)
        d.wait_status(second, Status.SUCCEEDED)
        seen = d.output_of(second).decode()
        assert "GH_TOKEN=ghp-daemon" in seen and "AWS_SECRET_ACCESS_KEY=aws-daemon" in seen, seen
        assert "ANTHROPIC_API_KEY=unset" in seen, seen
    finally:
        d.cleanup()


# ---------------------------------------------------------------------------------------
# The permission mode agents are started with


FAKE_CLAUDE = """#!{py}
import json, os, sys, time
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv) + "\\n")
session = "fake-" + str(os.getpid())
print(json.dumps({{"type": "system", "subtype": "init", "session_id": session, "model": "fake"}}), flush=True)
for line in sys.stdin:
    if '"type":"user"' in line.replace(" ", ""):
        break
while os.path.exists({hold!r}):
    time.sleep(0.05)
print(json.dumps({{"type": "result", "subtype": "success", "result": "done", "is_error": False,
                   "num_turns": 1, "total_cost_usd": 0.0, "usage": {{}}}}), flush=True)
"""


def test_no_way_of_starting_an_agent_adds_bypass_permissions_unless_configured(daemon, tmp_path):
    d = daemon
    argv_log = tmp_path / "argv.jsonl"
    hold = tmp_path / "hold"
    fake = tmp_path / "claude"
    fake.write_text(FAKE_CLAUDE.format(py=PY, log=str(argv_log), hold=str(hold)))
    fake.chmod(0o755)
    d.start()
    d.call(p.ConfigSet(key="claude_path", value=str(fake)))
    d.call(p.ConfigSet(key="max_concurrent", value=4))

    plain = d.submit_prompt("plain", agent="claude")
    d.wait_status(plain, Status.SUCCEEDED, timeout=30)
    d.call(p.Respond(task=plain, text="a follow-up"))  # continues the conversation
    wait_for(lambda: (v := d.task(plain)).attempts == 2 and v.status.finished, 30, "the follow-up")
    workflow = d.call(p.RunWorkflow(template="code-review", goal="look at it", cwd=str(d.home), agent="claude"),
                      p.WorkflowView)
    settle(d, list(workflow.steps.values()), timeout=60)
    hold.touch()  # the next attempts run until we let them go
    held = d.submit_prompt("interrupted, resumed, auto-resumed", agent="claude")
    started = lambda n: (v := d.task(held)).status is Status.RUNNING and v.attempts == n and v.session_id  # noqa: E731
    wait_for(lambda: started(1), 30, "the held agent to start its session")
    d.kill9()
    d.start()
    assert d.task(held).status is Status.INTERRUPTED
    d.call(p.Resume(task=held))  # by hand
    wait_for(lambda: started(2), 30, "the resumed attempt")
    d.call(p.ConfigSet(key="auto_resume", value=True))
    d.kill9()
    d.start()  # auto-resumes it
    wait_for(lambda: started(3), 30, "the auto-resumed attempt")
    hold.unlink()
    settle(d, [plain, held], timeout=60)
    assert d.stop() == 0

    seen = [json.loads(line) for line in argv_log.read_text().splitlines()]
    spawned = [e.argv for e in events_of(read_log(d.paths.log_dir), ev.ProcessSpawned)]
    assert len(seen) == len(spawned) >= 7, (len(seen), len(spawned))
    def same(recorded: list[str], actual: list[str]) -> bool:  # the log shortens long arguments
        return len(recorded) == len(actual) and all(
            r == a or (r.endswith("…") and a.startswith(r[:-1])) for r, a in zip(recorded, actual))

    unmatched = list(seen)  # concurrent workflow steps start in either order
    for recorded in spawned:
        match = next((a for a in unmatched if same(recorded, a)), None)
        assert match is not None, f"the log recorded {recorded}; no agent was started with that: {unmatched}"
        unmatched.remove(match)
    modes = [argv[argv.index("--permission-mode") + 1] for argv in seen]
    assert all(m != "bypassPermissions" for m in modes) and not any(
        "--dangerously-skip-permissions" in argv for argv in seen), seen
    assert sum("--resume" in argv for argv in seen) >= 3  # follow-up, resume, auto-resume

    d.start()
    d.call(p.ConfigSet(key="permission_mode", value="bypassPermissions"))  # configured: now it may
    d.wait_status(d.submit_prompt("configured", agent="claude"), Status.SUCCEEDED, timeout=30)
    last = json.loads(argv_log.read_text().splitlines()[-1])
    assert last[last.index("--permission-mode") + 1] == "bypassPermissions"
