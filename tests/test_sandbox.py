"""The sandbox per agent (orchestrad.sandbox): the bwrap argv it builds, the settings that ask
for it, the errors where it cannot be had, and, with a real daemon and real bubblewrap,
agents that try to get out of it: a command that tries every way out it can think of, and
the real Claude Code CLI whose Bash tool writes inside and outside its directory.

Everything an agent might reach lives outside /tmp here (the daemon's home, the agent's
HOME, the task's repository and its parent), since the sandbox's /tmp is private anyway
and a test of it there would prove nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Role, Status
from orchestrad import config as config_mod
from orchestrad import events as ev
from orchestrad import roles, sandbox
from orchestrad.agents import agent_for
from orchestrad.config import Config
from tests.daemon import Daemon, wait_for
from tests.reliability.harness import events_of, read_log
from tests.scripted_api import ScriptedAPI, reply

FINISHED = tuple(p.FINISHED)


# ---------------------------------------------------------------------------------------
# The argv (pure)


def mounts(argv: list[str]) -> list[tuple[str, str]]:
    """The mount options of a bwrap argv, in order, as (option, destination)."""
    found = []
    i = argv.index("--ro-bind")
    while argv[i] != "--":
        option = argv[i]
        if option in ("--bind", "--ro-bind"):
            found.append((option, argv[i + 2]))
            i += 3
        elif option in ("--tmpfs", "--remount-ro", "--dev", "--proc", "--chdir"):
            found.append((option, argv[i + 1]))
            i += 2
        else:
            i += 1
    return found


def test_the_argv_puts_everything_read_only_with_a_private_tmp_and_the_task_dir_writable():
    argv = sandbox.command(sandbox.Layout(workdir="/work/repo"), bwrap="/usr/bin/bwrap", env="/usr/bin/env")
    assert argv[:3] == ["/usr/bin/env", "--ignore-signal=TERM", "/usr/bin/bwrap"]
    assert argv[-3:] == ["--", "/usr/bin/env", "--default-signal=TERM"]
    assert mounts(argv) == [
        ("--ro-bind", "/"), ("--dev", "/dev"), ("--proc", "/proc"),
        ("--tmpfs", "/tmp"), ("--bind", "/work/repo"), ("--chdir", "/work/repo"),
    ]
    for flag in ("--unshare-pid", "--unshare-ipc", "--die-with-parent"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert "--unshare-net" not in argv and "--new-session" not in argv


def test_the_network_off_is_a_network_namespace_of_its_own():
    assert "--unshare-net" in sandbox.command(sandbox.Layout(workdir="/w", network=False))


def test_mounts_go_outermost_first_so_each_lands_on_top_of_the_ones_around_it():
    layout = sandbox.Layout(
        workdir="/home/me/orc/state/worktrees/3-fix",  # a worktree: inside a hidden directory
        writable=("/home/me/.claude", "/home/me/repo/.git"),
        read_only=("/home/me/repo/.git/hooks", "/home/me/repo/.git/config", "/home/me/.claude/settings.json"),
        hidden=("/home/me/orc/state", "/home/me/orc/config", "/run/user/1000"),
        exposed=("/run/user/1000/orchestra/orchestrad.sock",),
    )
    order = [m for m in mounts(sandbox.command(layout)) if m[0] != "--chdir"]
    position = {m: i for i, m in enumerate(order)}
    assert position[("--tmpfs", "/home/me/orc/state")] < position[("--bind", "/home/me/orc/state/worktrees/3-fix")]
    assert position[("--bind", "/home/me/repo/.git")] < position[("--ro-bind", "/home/me/repo/.git/hooks")]
    assert position[("--bind", "/home/me/.claude")] < position[("--ro-bind", "/home/me/.claude/settings.json")]
    assert position[("--tmpfs", "/run/user/1000")] < position[("--bind", "/run/user/1000/orchestra/orchestrad.sock")]
    # Hidden directories are made read-only last, once what is mounted inside them is there.
    tail = order[-3:]
    assert tail == [("--remount-ro", "/home/me/orc/state"), ("--remount-ro", "/home/me/orc/config"), ("--remount-ro", "/run/user/1000")]


def test_hidden_directories_inside_the_task_dir_stay_hidden_and_win_over_it_at_the_same_path():
    layout = sandbox.Layout(workdir="/srv/orc", hidden=("/srv/orc/state", "/srv/orc"))
    order = mounts(sandbox.command(layout))
    assert order.index(("--bind", "/srv/orc")) < order.index(("--tmpfs", "/srv/orc")) < order.index(("--tmpfs", "/srv/orc/state"))


def test_the_description_names_what_the_agent_could_write_and_its_network():
    layout = sandbox.Layout(workdir="/w", writable=("/h/.claude",), network=False)
    assert sandbox.describe(layout) == "bubblewrap: writes /w, /h/.claude and a private /tmp; network off"


# ---------------------------------------------------------------------------------------
# Settings


def test_the_role_decides_and_none_inherits_the_config():
    role = roles.get("implementer")
    assert role.sandbox is None and role.network is None
    assert sandbox.chosen(role, Config()) == (False, True)
    assert sandbox.chosen(role, Config(sandbox="on", network=False)) == (True, False)
    own = msgspec.structs.replace(role, sandbox="off", network=True)
    assert sandbox.chosen(own, Config(sandbox="on", network=False)) == (False, True)
    assert sandbox.chosen(None, Config(sandbox="on")) == (True, True)


def test_settings_are_checked_with_sentences():
    assert config_mod.check("sandbox", "on") is None and config_mod.check("sandbox", "off") is None
    assert config_mod.check("sandbox", "yes") == "sandbox must be one of off, on, not 'yes'"
    assert config_mod.check("network", False) is None
    assert config_mod.check("network", "no") == "network must be true or false, not 'no'"
    assert Config().sandbox == "off" and Config().network is True


def test_a_role_file_with_a_sandbox_it_cannot_have_is_refused():
    role = roles.parse("boxed", 'prompt = "x"\nsandbox = "on"\nnetwork = false\n')
    assert role.sandbox == "on" and role.network is False
    with pytest.raises(ValueError, match=r"sandbox must be one of off, on \(or left out: as the config says\), not 'always'"):
        roles.parse("boxed", 'prompt = "x"\nsandbox = "always"\n')
    with pytest.raises(ValueError, match=r"Expected `bool \| null`, got `str` - at `\$.network`"):
        roles.parse("boxed", 'prompt = "x"\nnetwork = "off"\n')


def test_claude_code_keeps_its_config_dir_writable_but_what_would_run_later_read_only():
    agent = agent_for("claude")
    state = agent.sandbox_state({"HOME": "/home/me"})
    assert state.writable == ("/home/me/.claude",)
    assert {"/home/me/.claude/settings.json", "/home/me/.claude/hooks", "/home/me/.claude/.claude.json"} <= set(state.read_only)
    assert ("/home/me/.claude/settings.json", "{}\n") in state.seed and ("/home/me/.claude/hooks", None) in state.seed
    assert agent.sandbox_state({"HOME": "/home/me", "CLAUDE_CONFIG_DIR": "/cfg"}).writable == ("/cfg",)
    assert agent.traits.needs_network and not agent_for("command").traits.needs_network
    assert agent_for("command").sandbox_state({"HOME": "/home/me"}).writable == ()


# ---------------------------------------------------------------------------------------
# Is bubblewrap there and working: the sentences that say how to fix it


def fake_bwrap(tmp_path: Path, stderr: str, code: int = 1) -> str:
    path = tmp_path / "bwrap"
    path.write_text(f"#!/bin/sh\necho {json.dumps(stderr)} >&2\nexit {code}\n")
    path.chmod(0o755)
    return str(path)


def test_the_probe_passes_where_bubblewrap_works():
    assert sandbox.probe(shutil.which("bwrap"), shutil.which("env")) is None


def test_the_probe_says_to_install_bubblewrap_when_it_is_missing():
    problem = sandbox.probe(None, "/usr/bin/env")
    assert "the sandbox needs bubblewrap, and bwrap is not on the daemon's PATH: install bubblewrap (Debian, Ubuntu: apt install bubblewrap" in problem
    assert "or turn the sandbox off (orchestra config set sandbox off" in problem


def test_the_probe_says_how_to_enable_user_namespaces_when_they_are_off(tmp_path):
    # What bwrap 0.8 says where unprivileged user namespaces are disabled.
    said = ("bwrap: No permissions to creating new namespace, likely because the kernel does not allow "
            "non-privileged user namespaces. On e.g. debian this can be enabled with 'sysctl kernel.unprivileged_userns_clone=1'.")
    problem = sandbox.probe(fake_bwrap(tmp_path, said), "/usr/bin/env")
    assert problem.startswith("bubblewrap cannot create its namespaces here (bwrap said: bwrap: No permissions to creating new namespace")
    assert "sysctl kernel.unprivileged_userns_clone=1" in problem and "sysctl user.max_user_namespaces=15000" in problem


def test_the_probe_reports_any_other_failure_with_what_bwrap_said(tmp_path):
    problem = sandbox.probe(fake_bwrap(tmp_path, "bwrap: something odd", 3), "/usr/bin/env")
    assert problem.startswith("bubblewrap does not work here (bwrap said: bwrap: something odd); or turn the sandbox off")


def test_the_probe_says_macos_is_not_supported_yet():
    problem = sandbox.probe("/usr/bin/bwrap", "/usr/bin/env", platform="darwin")
    assert problem.startswith("the sandbox needs Linux and bubblewrap; macOS's sandbox-exec is not supported yet")


# ---------------------------------------------------------------------------------------
# The git directory of the task's repository


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def test_a_repository_s_git_dir_is_writable_but_its_hooks_and_config_are_not(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    git("init", "-q", cwd=repo)
    shutil.rmtree(repo / ".git" / "hooks")
    writable, read_only = sandbox.git_dirs(str(repo / "src"))
    assert writable == [str(repo / ".git")]
    assert read_only == [str(repo / ".git" / "config"), str(repo / ".git" / "hooks")]
    assert (repo / ".git" / "hooks").is_dir()  # made, so that the agent cannot make it
    assert sandbox.git_dirs(str(tmp_path)) == ([], [])


def test_a_worktree_s_pointers_to_its_repository_are_read_only(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", cwd=repo)
    git("commit", "-q", "--allow-empty", "-m", "one", cwd=repo)
    git("worktree", "add", "-q", str(tmp_path / "a"), cwd=repo)
    git("worktree", "add", "-q", str(tmp_path / "b"), cwd=repo)
    writable, read_only = sandbox.git_dirs(str(tmp_path / "a"))
    common = repo / ".git"
    assert writable == [str(common)]
    for path in (tmp_path / "a" / ".git", common / "config", common / "hooks",
                 common / "worktrees" / "a" / "commondir", common / "worktrees" / "a" / "gitdir",
                 common / "worktrees" / "b" / "commondir", common / "worktrees" / "b" / "gitdir"):
        assert str(path) in read_only, path


# ---------------------------------------------------------------------------------------
# With a real daemon: a command agent that tries to get out


ESCAPE = r'''
import errno, json, os, socket, sys
targets = json.loads(sys.argv[1])
out = {}

def attempt(name, fn):
    try:
        value = fn()
        out[name] = "ok" if value is None else value
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc))

def write(path):
    with open(path, "w") as f:
        f.write("escaped\n")

def connect_unix(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect(path)
    s.close()

def connect_tcp(port):
    socket.create_connection(("127.0.0.1", port), timeout=3).close()

for name, path in targets["writes"].items():
    attempt("write " + name, lambda path=path: write(path))
for name, path in targets["lists"].items():
    attempt("list " + name, lambda path=path: sorted(os.listdir(path)))
task = os.environ.get("ORCHESTRA_AGENT", "").split(":")[1]
attempt("read env store", lambda: open(os.path.join(targets["env_dir"], task)).read())
attempt("connect socket", lambda: connect_unix(targets["socket"]))
attempt("connect tcp", lambda: connect_tcp(targets["port"]))
attempt("list /tmp", lambda: sorted(os.listdir("/tmp")))
attempt("write /tmp", lambda: write("/tmp/" + targets["nonce"]))
attempt("signal daemon", lambda: os.kill(targets["daemon"], 0))
attempt("daemon's root", lambda: sorted(os.listdir("/proc/%d/root" % targets["daemon"])))
out["mark"] = os.environ.get("ORCHESTRA_AGENT", "")
print(json.dumps(out))
'''


@pytest.fixture
def place():
    """A directory outside /tmp for everything an agent might reach: the daemon's home
    (`d`), the agent's HOME (`home`), a git repository to work in (`work/repo`)."""
    base = Path(tempfile.mkdtemp(prefix="orc-sbx-", dir="/var/tmp"))
    (base / "home").mkdir()
    repo = base / "work" / "repo"
    repo.mkdir(parents=True)
    git("init", "-q", cwd=repo)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def boxed(place):
    """A daemon with the sandbox on, its home and its agents' HOME outside /tmp."""
    d = Daemon(home=place / "d")
    d.home.mkdir()
    d.env["HOME"] = str(place / "home")
    d.start()
    d.call(p.ConfigSet(key="sandbox", value="on"))
    yield d
    d.cleanup()


class Listener:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def escape(d: Daemon, place: Path, cwd: Path, *, network: bool) -> tuple[p.TaskView, dict]:
    """Run the escaping agent in `cwd`; its view and what each attempt gave."""
    listener = Listener()
    nonce = f"orc-escape-{os.getpid()}-{listener.port}"
    canary = Path("/tmp") / f"{nonce}-host"
    canary.write_text("the host's /tmp\n")
    try:
        d.call(p.ConfigSet(key="network", value=network))
        targets = {
            "writes": {
                "home": str(place / "home" / "escaped.txt"),
                "/etc": "/etc/orchestra-escaped.txt",
                "the repo's parent": str(place / "work" / "escaped.txt"),
                "the daemon's home": str(place / "d" / "escaped.txt") if cwd != d.home else "/usr/escaped.txt",
                "the task dir": str(cwd / "inside.txt"),
                "git hooks": str(place / "work" / "repo" / ".git" / "hooks" / "pre-commit"),
                "git config": str(place / "work" / "repo" / ".git" / "config"),
            },
            "lists": {"state": str(d.paths.state), "config": str(d.paths.config), "runtime": str(d.paths.runtime)},
            "env_dir": str(d.paths.state / "env"),
            "socket": str(d.paths.socket),
            "port": listener.port,
            "nonce": nonce,
            "daemon": d.proc.pid,
        }
        task_id = d.call(p.Submit(argv=[sys.executable, "-c", ESCAPE, json.dumps(targets)], cwd=str(cwd),
                                  env={"SECRET_TOKEN": "s3cret"}), p.TaskView).id
        view = d.wait_status(task_id, *FINISHED, timeout=30)
        assert view.status is Status.SUCCEEDED, (view.reason, d.output_of(task_id))
        tried = json.loads(view.result)
        assert not (Path("/tmp") / nonce).exists(), "the agent's /tmp is the host's"
        tried["accepted"] = listener.accepted
        tried["env store on the host"] = (d.paths.state / "env" / str(task_id)).exists()
        return view, tried
    finally:
        canary.unlink()
        listener.close()


def test_a_command_agent_cannot_get_out_of_its_sandbox(boxed, place):
    d = boxed
    repo = place / "work" / "repo"
    view, tried = escape(d, place, repo, network=False)
    home_mark = tried["mark"].split(":")[0]
    assert tried["mark"] == f"{home_mark}:{view.id}:1"  # the mark still reaches the agent
    for where in ("home", "/etc", "the repo's parent", "the daemon's home", "git hooks", "git config"):
        assert tried[f"write {where}"] == "EROFS", (where, tried)
    assert not (place / "home" / "escaped.txt").exists() and not (place / "work" / "escaped.txt").exists()
    assert tried["write the task dir"] == "ok" and (repo / "inside.txt").read_text() == "escaped\n"
    assert tried["list state"] == tried["list runtime"] == [] and tried["list config"] in ([], "ENOENT")
    assert tried["read env store"] == "ENOENT" and tried["env store on the host"]
    assert tried["connect socket"] == "ENOENT"
    assert tried["connect tcp"] in ("ECONNREFUSED", "ENETUNREACH") and tried["accepted"] == 0
    assert tried["write /tmp"] == "ok" and not any(name.endswith("-host") for name in tried["list /tmp"])
    assert tried["signal daemon"] == "ESRCH" and tried["daemon's root"] == "ENOENT"
    assert view.sandbox == f"bubblewrap: writes {repo}, {repo / '.git'} and a private /tmp; network off"
    assert f"  sandbox    {view.sandbox}" in d.cli("show", str(view.id)).output
    [spawned] = [e for e in events_of(read_log(d.paths.log_dir), ev.ProcessSpawned) if e.task == view.id]
    assert spawned.sandbox == view.sandbox and "--unshare-net" in spawned.argv


def test_with_the_network_on_the_agent_reaches_it_and_a_task_dir_that_holds_the_daemon_s_files_hides_them(boxed, place):
    d = boxed
    view, tried = escape(d, place, d.home, network=True)
    assert tried["connect tcp"] == "ok" and tried["accepted"] == 1
    assert tried["list state"] == tried["list runtime"] == [] and tried["list config"] in ([], "ENOENT")  # inside the task dir, still hidden
    assert tried["read env store"] == "ENOENT" and tried["connect socket"] == "ENOENT"
    assert tried["write the task dir"] == "ok" and (d.home / "inside.txt").exists()
    assert tried["write home"] == "EROFS"
    assert view.sandbox.endswith("; network on")


def test_git_works_inside_a_worktree_but_its_hooks_and_config_cannot_be_changed(boxed, place):
    d = boxed
    repo = place / "work" / "repo"
    git("commit", "-q", "--allow-empty", "-m", "start", cwd=repo)
    tree = place / "work" / "tree"
    git("worktree", "add", "-q", "-b", "agent", str(tree), cwd=repo)
    script = (
        "echo hi > a.txt && git add a.txt && git -c user.name=a -c user.email=a@a commit -q -m by-the-agent && echo committed; "
        "echo 'echo pwned' > $(git rev-parse --git-common-dir)/hooks/post-checkout || echo no-hook; "
        "git config core.fsmonitor 'echo pwned' || echo no-config; "
        "echo 'gitdir: /elsewhere' > .git || echo no-pointer"
    )
    task = d.call(p.Submit(argv=["sh", "-c", script], cwd=str(tree)), p.TaskView).id
    view = d.wait_status(task, *FINISHED, timeout=30)
    out = d.output_of(task).decode()
    assert view.status is Status.SUCCEEDED, out
    assert "committed" in out and "no-hook" in out and "no-config" in out and "no-pointer" in out, out
    assert git("log", "-1", "--format=%s", "agent", cwd=repo).strip() == "by-the-agent"
    assert not (repo / ".git" / "hooks" / "post-checkout").exists()
    assert "fsmonitor" not in (repo / ".git" / "config").read_text()
    assert (tree / ".git").read_text().startswith("gitdir: ")


# ---------------------------------------------------------------------------------------
# Containment with bwrap in between: stop, kill, timeouts, cgroups, what is left behind


def test_a_stop_gives_the_sandboxed_agent_its_sigterm_and_its_grace_period(boxed):
    d = boxed
    script = "trap 'echo got TERM; exit 3' TERM; echo ready; sleep 1000 & wait"
    task = d.call(p.Submit(argv=["sh", "-c", script], cwd=str(d.home)), p.TaskView).id
    wait_for(lambda: b"ready" in d.output_of(task), 15, "the agent to be ready")
    d.call(p.Stop(task=task))
    view = d.wait_status(task, *FINISHED, timeout=15)
    assert view.status is Status.CANCELLED
    assert b"got TERM" in d.output_of(task)  # its trap ran: the SIGTERM reached it through bwrap
    assert view.exit_code == 3


def test_an_agent_that_ignores_sigterm_is_killed_after_the_grace_period(boxed):
    d = boxed
    d.call(p.ConfigSet(key="kill_grace", value=0.5))
    task = d.call(p.Submit(argv=["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done"], cwd=str(d.home)), p.TaskView).id
    wait_for(lambda: b"ready" in d.output_of(task), 15, "the agent to be ready")
    d.call(p.Stop(task=task))
    view = d.wait_status(task, *FINISHED, timeout=15)
    assert view.status is Status.CANCELLED and view.signal == signal.SIGKILL


def test_a_timeout_ends_a_sandboxed_agent(boxed):
    d = boxed
    task = d.call(p.Submit(argv=["sleep", "1000"], cwd=str(d.home), timeout=1), p.TaskView).id
    assert d.wait_status(task, *FINISHED, timeout=20).status is Status.TIMED_OUT


def test_nothing_a_sandboxed_agent_detaches_outlives_its_task(boxed):
    d = boxed
    marker = f"orc-sbx-left-{os.getpid()}"
    script = f"env -i setsid sh -c 'exec -a {marker} sleep 1000' </dev/null >/dev/null 2>&1 & echo started"
    task = d.call(p.Submit(argv=["sh", "-c", script], cwd=str(d.home)), p.TaskView).id
    assert d.wait_status(task, *FINISHED, timeout=15).status is Status.SUCCEEDED
    wait_for(lambda: not _processes_named(marker), 10, "what the agent detached to be gone")


def _processes_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().split(b"\0")[0] == name.encode():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_the_sandboxed_agent_is_born_in_its_task_s_cgroup(boxed):
    d = boxed
    task = d.call(p.Submit(argv=["cat", "/proc/self/cgroup"], cwd=str(d.home)), p.TaskView).id
    view = d.wait_status(task, *FINISHED, timeout=15)
    [spawned] = [e for e in events_of(read_log(d.paths.log_dir), ev.ProcessSpawned) if e.task == task]
    assert spawned.cgroup  # this machine has cgroup v2 and the tests run as root (see test_containment)
    assert view.result.strip().endswith(f"-{spawned.cgroup}"), view.result


# ---------------------------------------------------------------------------------------
# Where the sandbox cannot be had, the task fails at start, saying how to fix it


def test_without_bubblewrap_a_sandboxed_task_fails_at_start_saying_to_install_it(boxed, tmp_path):
    d = boxed
    d.stop()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("sh", "env", "git"):
        (bin_dir / program).symlink_to(shutil.which(program))
    d.env["PATH"] = str(bin_dir)
    d.start()
    task = d.call(p.Submit(argv=["sh", "-c", "echo ran > ran.txt"], cwd=str(d.home)), p.TaskView).id
    view = d.wait_status(task, *FINISHED, timeout=15)
    assert view.status is Status.FAILED
    assert "the sandbox needs bubblewrap, and bwrap is not on the daemon's PATH: install bubblewrap" in view.reason
    assert not (d.home / "ran.txt").exists()  # never run without the sandbox it asked for


def test_where_user_namespaces_are_off_a_sandboxed_task_fails_at_start_saying_how_to_enable_them(boxed, tmp_path):
    d = boxed
    d.stop()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("sh", "env", "git"):
        (bin_dir / program).symlink_to(shutil.which(program))
    fake_bwrap(bin_dir, "bwrap: setting up uid map: Permission denied")
    d.env["PATH"] = str(bin_dir)
    d.start()
    task = d.call(p.Submit(argv=["sh", "-c", "echo ran > ran.txt"], cwd=str(d.home)), p.TaskView).id
    view = d.wait_status(task, *FINISHED, timeout=15)
    assert view.status is Status.FAILED
    assert "bubblewrap cannot create its namespaces here (bwrap said: bwrap: setting up uid map: Permission denied)" in view.reason
    assert "sysctl kernel.unprivileged_userns_clone=1" in view.reason
    assert not (d.home / "ran.txt").exists()


def test_the_network_off_without_the_sandbox_or_for_claude_is_refused_at_start(boxed):
    d = boxed
    d.call(p.ConfigSet(key="sandbox", value="off"))
    d.call(p.ConfigSet(key="network", value=False))
    task = d.call(p.Submit(argv=["sh", "-c", "echo ran > ran.txt"], cwd=str(d.home)), p.TaskView).id
    view = d.wait_status(task, *FINISHED, timeout=15)
    assert view.status is Status.FAILED and not (d.home / "ran.txt").exists()
    assert "the config turns the network off, which only the sandbox can do" in view.reason
    d.call(p.ConfigSet(key="sandbox", value="on"))
    task = d.call(p.Submit(prompt="hello", agent="claude", cwd=str(d.home)), p.TaskView).id
    view = d.wait_status(task, *FINISHED, timeout=15)
    assert view.status is Status.FAILED
    assert "a claude agent needs the network to reach its API: turn it on for this role (network = true)" in view.reason


def test_a_role_turns_the_sandbox_on_for_its_tasks_alone(boxed):
    d = boxed
    d.call(p.ConfigSet(key="sandbox", value="off"))
    (d.paths.config / "roles").mkdir(parents=True, exist_ok=True)
    (d.paths.config / "roles" / "boxed.toml").write_text('prompt = "x"\nsandbox = "on"\nnetwork = false\n')
    wait_for(lambda: "boxed" in d.cli("roles").output, 15, "the role to be loaded")
    assert "sandbox           on, network off" in d.cli("roles", "boxed").output
    plain = d.call(p.Submit(argv=["sh", "-c", "echo x > $HOME/plain.txt"], cwd=str(d.home)), p.TaskView).id
    boxed_task = d.call(p.Submit(argv=["sh", "-c", "echo x > $HOME/boxed.txt"], cwd=str(d.home), role="boxed"), p.TaskView).id
    assert d.wait_status(plain, *FINISHED, timeout=15).status is Status.SUCCEEDED
    view = d.wait_status(boxed_task, *FINISHED, timeout=15)
    assert view.status is Status.FAILED and view.sandbox.endswith("network off")
    assert (Path(d.env["HOME"]) / "plain.txt").exists() and not (Path(d.env["HOME"]) / "boxed.txt").exists()


# ---------------------------------------------------------------------------------------
# The real Claude Code CLI in the sandbox


def test_claude_in_the_sandbox_writes_inside_its_dir_not_outside_even_with_bash_allowed(claude, place):
    repo = place / "work" / "repo"
    outside = place / "work" / "outside.txt"
    home = place / "home"
    api = ScriptedAPI(home=home).start()
    d = Daemon(home=place / "d")
    d.home.mkdir()
    try:
        d.env.update(api.env(d.env))
        d.env["ORCHESTRA_HOME"] = str(d.home)
        d.start()
        d.call(p.ConfigSet(key="claude_path", value=claude))
        (d.paths.config / "roles").mkdir(parents=True, exist_ok=True)
        (d.paths.config / "roles" / "boxed.toml").write_text(
            'prompt = "You work in a sandbox."\nallowed_tools = ["Bash"]\nsandbox = "on"\n'
        )
        wait_for(lambda: "boxed" in d.cli("roles").output, 15, "the role to be loaded")
        command = f"echo in > inside.txt; echo out > {outside}; echo status=$?"
        api.add(reply.tool_use("Bash", {"command": command, "description": "write two files"}), reply.text("tried both"))
        task = d.call(p.Submit(prompt="write the files", cwd=str(repo), role="boxed"), p.TaskView).id
        view = d.wait_status(task, *FINISHED, timeout=90)
        assert view.status is Status.SUCCEEDED, (view.reason, d.cli("logs", str(task)).output)
        assert (repo / "inside.txt").read_text() == "in\n"
        assert not outside.exists()
        [result] = api.turn_requests[1].tool_results()
        assert "Read-only file system" in json.dumps(result) and "status=1" in json.dumps(result)
        assert view.sandbox.startswith(f"bubblewrap: writes {repo}, {home / '.claude'}")
        # Its own state was written: the session is there, and a follow-up continues it.
        sessions = list((home / ".claude" / "projects").glob(f"*/{view.session_id}.jsonl"))
        assert sessions, list((home / ".claude").rglob("*"))
        api.add(reply.text("again"))
        d.call(p.Respond(task=task, text="once more"))
        again = wait_for(lambda: (t := d.task(task)).status in FINISHED and t.attempts == 2 and t, 90, "the follow-up")
        assert again.status is Status.SUCCEEDED and again.session_id == view.session_id and again.result == "again"
        assert "tried both" in json.dumps(api.turn_requests[-1].body["messages"])  # the session's earlier turns came along
    finally:
        d.cleanup()
        api.close()


def test_a_role_that_delegates_gets_the_daemon_s_socket_alone_and_is_still_known_as_its_agent(boxed, place):
    d = boxed
    d.stop()
    root = str(Path(__file__).resolve().parents[1])
    d.env["PYTHONPATH"] = os.pathsep.join([root, os.path.join(root, "cli")])
    d.start()
    (d.paths.config / "roles").mkdir(parents=True, exist_ok=True)
    (d.paths.config / "roles" / "lead.toml").write_text('prompt = "lead"\ndelegate = ["tester"]\nsandbox = "on"\n')
    wait_for(lambda: "lead" in d.call(p.Roles(), p.RolesResult).custom, 15, "the role to be loaded")
    work = place / "work" / "repo"
    script = (
        f"ls {d.paths.runtime}; ls {d.paths.state} | wc -l; "
        f"{sys.executable} -m orchestra submit --role tester -- true; echo rc=$?; "
        f"{sys.executable} -m orchestra config set max_concurrent 5; echo rc=$?"
    )
    lead = d.call(p.Submit(argv=["sh", "-c", script], cwd=str(work), role="lead"), p.TaskView).id
    view = d.wait_status(lead, *FINISHED, timeout=60)
    said = d.output_of(lead).decode()
    assert view.status is Status.SUCCEEDED, said
    lines = said.splitlines()
    assert lines[:2] == ["orchestrad.sock", "0"], said  # the socket alone; the state dir still hidden
    assert [line for line in lines if line.startswith("rc=")] == ["rc=0", "rc=7"], said
    [child] = [t for t in d.tasks() if t.id != lead]
    assert child.parent == lead and child.role == "tester"  # its requests are still known as its agent's


def test_a_worktree_under_the_hidden_state_dir_is_writable_and_commits_while_the_rest_stays_hidden(boxed, place):
    d = boxed
    repo = place / "work" / "repo"
    git("commit", "-q", "--allow-empty", "-m", "start", cwd=repo)
    script = (
        f"ls -A {d.paths.state}; ls -A {d.paths.state / 'worktrees'} | wc -l; "
        "echo hi > a.txt && git add a.txt && git -c user.name=a -c user.email=a@a commit -q -m in-the-worktree && echo committed"
    )
    task = d.call(p.Submit(argv=["sh", "-c", script], cwd=str(repo), worktree=True), p.TaskView).id
    view = d.wait_status(task, *FINISHED, timeout=30)
    said = d.output_of(task).decode().splitlines()
    assert view.status is Status.SUCCEEDED, said
    assert view.worktree.startswith(str(d.paths.state / "worktrees")) and view.sandbox.startswith(f"bubblewrap: writes {view.worktree}")
    # Of the state directory, the agent sees only the way down to its own worktree.
    assert said == ["worktrees", "1", "committed"], said
    assert sorted(os.listdir(d.paths.state)) != ["worktrees"]  # on the host there is more: the log, the env store
    branch = git("for-each-ref", "--format=%(refname:short)", "refs/heads/orchestra/", cwd=repo).split()
    assert [git("log", "-1", "--format=%s", b, cwd=repo).strip() for b in branch] == ["in-the-worktree"]


def test_a_tasks_checks_run_in_its_sandbox(boxed, place):
    """An acceptance check (orchestrad.checks) runs in the same sandbox as its agent: what it
    writes to /tmp stays in the sandbox's private /tmp."""
    nonce = f"orc-check-{os.getpid()}-{time.monotonic_ns()}"
    repo = place / "work" / "repo"
    task = boxed.submit("true", cwd=str(repo), checks=[f"touch /tmp/{nonce} && test -f /tmp/{nonce} && echo boxed-ok"])
    view = boxed.wait_status(task, *p.FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert view.sandbox and view.check_results[0].tail == "boxed-ok"
    assert not (Path("/tmp") / nonce).exists()  # the host's /tmp never saw it
