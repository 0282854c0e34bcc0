"""A sandbox per agent: bubblewrap (Linux), started by the supervisor in front of the agent.

What an agent and everything it starts see in it:

* the whole filesystem, read-only (`--ro-bind / /`), a /dev and a /proc of its own, and an
  empty /tmp of its own that nobody else sees and that goes with it;
* writable: the task's directory; the agent kind's own state (Claude Code: its config
  directory, see `orchestrad.agents`); the git directory of the repository the task's
  directory is in, so that `git add` and `git commit` work — but not that repository's
  hooks and config, nor a worktree's pointers to it, which git would otherwise follow and
  run later, outside the sandbox;
* hidden, under an empty read-only tmpfs: the daemon's state, config and runtime
  directories (the log, the env store, the socket) and the user's runtime directory
  ($XDG_RUNTIME_DIR: the systemd user manager and the session bus, which would run
  commands outside the sandbox on the agent's behalf). A role that delegates gets the
  daemon's socket back, alone, so its agents can submit tasks;
* the network: the host's, or none at all (`--unshare-net`: a loopback of its own).

Choices, and why:

* A pid namespace (`--unshare-pid`). Without one, the agent's /proc would show every
  process of the user, and `/proc/<daemon>/root` is the daemon's view of the filesystem,
  writable and unhidden: a way straight out. With one, /proc shows only the sandbox, the
  agent cannot signal anything outside it, and when the agent's process ends, the kernel
  kills everything left in the namespace, however it detached (setsid, double fork).
* No new session (no `--new-session`): the agent already has a session of its own without
  a terminal (the supervisor starts it so), and staying in bwrap's process group keeps the
  supervisor's signals to the group reaching it.
* SIGTERM. bwrap does not forward signals: a SIGTERM to the group would kill bwrap at once,
  and with it (`--die-with-parent`) the agent, without the grace period a stop gives. So
  bwrap runs with SIGTERM ignored (`env --ignore-signal=TERM`), and the agent with it reset
  to the default (`env --default-signal=TERM`): the agent gets the SIGTERM, exits in its
  own time, and bwrap exits with its status. SIGKILL reaches everything as before. A
  status that bwrap passes on loses one thing: an agent killed by signal N is reported as
  exit 128+N, as a shell reports it.
* `--die-with-parent`: if the daemon dies, its sandboxed agents die with it (a restarted
  daemon would kill them anyway), so none runs on unsupervised.
* `--cap-drop ALL`: run as root, bwrap would keep the capabilities (and with them the
  power to unmount what hides the daemon's files); an unprivileged bwrap has none to drop.

`command` (pure) builds the bwrap argv from a `Layout`; `Sandboxes` (shell) finds out the
layout of a task (real paths, the git directories, the agent's state) and checks once that
bubblewrap works here, with a sentence that says how to fix it when it does not.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from orchestra.shared.protocol import Role
from orchestrad.agents import Agent
from orchestrad.config import Config
from orchestrad.executor import SpawnError

class SandboxError(SpawnError):
    """The task asked for a sandbox that cannot be had; the message says how to fix it."""


class Choice(NamedTuple):
    on: bool
    network: bool


def chosen(role: Role | None, config: Config) -> Choice:
    """The sandbox and network a task of `role` gets: the role's, else the config's."""
    mode = role.sandbox if role is not None and role.sandbox is not None else config.sandbox
    network = role.network if role is not None and role.network is not None else config.network
    return Choice(on=mode == "on", network=network)


class Layout(NamedTuple):
    """What an agent may see and write. Every path is absolute and real (no symlinks)."""

    workdir: str  # the task's directory: writable, and where the agent starts
    writable: tuple[str, ...] = ()  # more directories it may write: its state, its git dir
    read_only: tuple[str, ...] = ()  # within those, what stays read-only
    hidden: tuple[str, ...] = ()  # directories it must not see: an empty read-only tmpfs each
    exposed: tuple[str, ...] = ()  # within hidden ones, what it may use still (the socket)
    network: bool = True


# The order of mounts at the same depth: a hidden directory wins over a writable one of the
# same path, and a read-only path over both.
_WRITABLE, _HIDDEN, _READ_ONLY, _EXPOSED = range(4)


def command(layout: Layout, bwrap: str = "bwrap", env: str = "env") -> list[str]:
    """The argv prefix that runs a program in the sandbox `layout` describes: the
    program's own argv follows it. Pure.

    Mounts are applied outermost first (by the depth of their paths), so each lands on top
    of the ones around it: a worktree under the hidden state directory is still writable,
    the hidden directories inside a writable task directory are still hidden, and the
    read-only parts of a writable directory stay read-only."""
    mounts: list[tuple[int, int, str, list[str]]] = [(_depth("/tmp"), _WRITABLE, "/tmp", ["--tmpfs", "/tmp"])]
    for path in dict.fromkeys((layout.workdir, *layout.writable)):
        mounts.append((_depth(path), _WRITABLE, path, ["--bind", path, path]))
    for path in dict.fromkeys(layout.hidden):
        mounts.append((_depth(path), _HIDDEN, path, ["--tmpfs", path]))
    for path in dict.fromkeys(layout.read_only):
        mounts.append((_depth(path), _READ_ONLY, path, ["--ro-bind", path, path]))
    for path in dict.fromkeys(layout.exposed):
        mounts.append((_depth(path), _EXPOSED, path, ["--bind", path, path]))
    mounts.sort(key=lambda m: (m[0], m[1]))
    argv = [env, "--ignore-signal=TERM", bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    for *_, args in mounts:
        argv += args
    for path in dict.fromkeys(layout.hidden):  # once what they hold has been mounted in them
        argv += ["--remount-ro", path]
    argv += ["--unshare-pid", "--unshare-ipc"]
    if not layout.network:
        argv.append("--unshare-net")
    argv += ["--die-with-parent", "--cap-drop", "ALL", "--chdir", layout.workdir, "--", env, "--default-signal=TERM"]
    return argv


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


def describe(layout: Layout) -> str:
    """One line for `orchestra show`: what the agent could write and whether it had a network."""
    writes = ", ".join(dict.fromkeys((layout.workdir, *layout.writable)))
    return f"bubblewrap: writes {writes} and a private /tmp; network {'on' if layout.network else 'off'}"


# ---------------------------------------------------------------------------------------
# The shell side: is bubblewrap there and working, and what is a task's layout.

INSTALL = "install bubblewrap (Debian, Ubuntu: apt install bubblewrap; Fedora: dnf install bubblewrap)"
USERNS = (
    "enable unprivileged user namespaces (Debian: sysctl kernel.unprivileged_userns_clone=1; "
    "where user.max_user_namespaces is 0: sysctl user.max_user_namespaces=15000; Ubuntu 24.04 "
    "and later: allow bwrap in AppArmor, or sysctl kernel.apparmor_restrict_unprivileged_userns=0)"
)
_USERNS_WORDS = ("namespace", "uid map", "uid_map", "Operation not permitted", "Permission denied")


def probe(bwrap: str | None, env: str | None, platform: str = sys.platform) -> str | None:
    """None if a sandbox can be started here, else a sentence saying why not and what to
    do. Runs bwrap once (a few ms). Blocking: call it off the event loop."""
    off = "or turn the sandbox off (orchestra config set sandbox off, or sandbox = \"off\" in the role's file)"
    if not platform.startswith("linux"):
        return f"the sandbox needs Linux and bubblewrap; macOS's sandbox-exec is not supported yet: {off}"
    if bwrap is None:
        return f"the sandbox needs bubblewrap, and bwrap is not on the daemon's PATH: {INSTALL}, {off}"
    if env is None:
        return f"the sandbox needs env (GNU coreutils), which is not on the daemon's PATH: install coreutils, {off}"
    argv = [*command(Layout(workdir="/", network=False), bwrap, env), "true"]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap ({bwrap}) could not be run: {exc}; {INSTALL}, {off}"
    if done.returncode == 0:
        return None
    said = " ".join(done.stderr.decode(errors="replace").split())[:300] or f"exit status {done.returncode}"
    if "--ignore-signal" in said or "--default-signal" in said:
        return f"the sandbox needs GNU coreutils 8.31 or later for env --ignore-signal ({env} said: {said}): upgrade coreutils, {off}"
    if any(word in said for word in _USERNS_WORDS):
        return f"bubblewrap cannot create its namespaces here (bwrap said: {said}): {USERNS}, {off}"
    return f"bubblewrap does not work here (bwrap said: {said}); {off}"


class Probe:
    """`probe`, remembered once it succeeds. A failure is looked at again at the next
    sandboxed start, so installing bubblewrap or enabling namespaces needs no restart."""

    def __init__(self) -> None:
        self.works: tuple[str, str] | None = None  # (bwrap, env) once a probe succeeded

    async def check(self, search_path: str) -> tuple[str, str]:
        """(bwrap, env) to start sandboxes with; SandboxError saying what to do if none can be."""
        if self.works is not None:
            return self.works
        bwrap = shutil.which("bwrap", path=search_path)
        env = shutil.which("env", path=search_path)
        problem = await asyncio.get_running_loop().run_in_executor(None, probe, bwrap, env)
        if problem is not None:
            raise SandboxError(problem)
        assert bwrap is not None and env is not None
        self.works = (bwrap, env)
        return self.works


def git_dirs(workdir: str) -> tuple[list[str], list[str]]:
    """(writable, read-only) paths of the git repository `workdir` is in, if any: its git
    directory (a worktree's own and the common one) may be written, so `git add` and
    `git commit` work; its hooks and config, a worktree's `.git` file and the files that
    say where a worktree's repository is stay read-only, so that nothing the agent writes
    there runs later, outside the sandbox, through git. A missing hooks directory is made
    (empty), so that it cannot be made by the agent instead."""
    here = Path(workdir)
    for top in (here, *here.parents):
        dot = top / ".git"
        if dot.is_dir():
            git = _real(dot)
            _make_dir(git / "hooks")
            return [str(git)], [str(git / "config"), str(git / "hooks")]
        if dot.is_file():
            try:
                pointer = dot.read_text(errors="replace").strip()
            except OSError:
                return [], []
            if not pointer.startswith("gitdir:"):
                return [], []
            own = _real(top / pointer[len("gitdir:"):].strip())
            try:
                common = _real(own / (own / "commondir").read_text().strip())
            except OSError:
                common = own
            _make_dir(common / "hooks")
            writable = [str(common)] + ([] if own.is_relative_to(common) else [str(own)])
            read_only = [str(dot), str(common / "config"), str(common / "hooks")]
            others = common / "worktrees"
            worktrees = sorted(others.iterdir()) if others.is_dir() else []
            for tree in dict.fromkeys([own, *worktrees]):
                read_only += [str(tree / name) for name in ("commondir", "gitdir", "config.worktree") if (tree / name).exists()]
            return writable, read_only
    return [], []


class Sandboxes:
    """Wraps agents' commands in a sandbox when their role or the config asks for one."""

    def __init__(self, hidden: list[Path], socket: Path | None) -> None:
        self.hidden = hidden  # the daemon's own directories
        self.socket = socket
        self.probe = Probe()

    async def wrap(
        self, argv: list[str], *, cwd: str, env: dict[str, str], agent: Agent, role: Role | None, role_name: str, config: Config
    ) -> tuple[list[str], str]:
        """`argv` as it is to be started, and what its sandbox is ("" for none). A
        SandboxError, saying how to fix it, when the role asks for a sandbox (or for no
        network) that cannot be had: never a silent start without one."""
        choice = chosen(role, config)
        whose = f"role {role_name}" if role is not None and role.network is not None else "the config"  # network's
        if not choice.on:
            if not choice.network:
                raise SandboxError(
                    f"{whose} turns the network off, which only the sandbox can do: turn the sandbox on "
                    f"(sandbox = \"on\"), or the network back on (network = true)"
                )
            return argv, ""
        if not choice.network and agent.traits.needs_network:
            raise SandboxError(
                f"{whose} turns the network off, but a {agent.name} agent needs the network to reach its "
                f"API: turn it on for this role (network = true), or run the task as a command"
            )
        if not os.path.isdir(cwd):
            raise SpawnError(f"working directory {cwd} does not exist" if not os.path.exists(cwd) else f"working directory {cwd} is not a directory")
        bwrap, env_program = await self.probe.check(env.get("PATH", os.defpath))
        _check_program(argv[0], cwd, env)
        layout = self.layout(cwd, env, agent, choice.network, delegates=bool(role is not None and role.delegate), program=argv[0])
        return [*command(layout, bwrap, env_program), *argv], describe(layout)

    def layout(self, cwd: str, env: dict[str, str], agent: Agent, network: bool, *, delegates: bool, program: str = "") -> Layout:
        """The layout of a task working in `cwd`: real paths, its repository's git
        directories, its agent kind's state (made where missing, so that it can be mounted)."""
        workdir = str(_real(Path(cwd)))
        state = agent.sandbox_state(env)
        writable: list[str] = []
        read_only: list[str] = []
        for path in state.writable:
            _make_dir(Path(path))
            writable.append(str(_real(Path(path))))
        for path, content in state.seed:
            _seed(Path(path), content)
        read_only += [str(_real(Path(p))) for p in state.read_only]
        read_only += _under_tmp([program, sys.executable], env)
        git_writable, git_read_only = git_dirs(workdir)
        hidden = [Path(p) for p in self.hidden]
        runtime = env.get("XDG_RUNTIME_DIR")
        if runtime and os.path.isdir(runtime):
            hidden.append(Path(runtime))
        hidden_real = [str(_real(p)) for p in hidden if p.exists()]
        exposed = [str(_real(self.socket))] if delegates and self.socket is not None and self.socket.exists() else []
        return Layout(
            workdir=workdir,
            writable=tuple(writable + git_writable),
            read_only=tuple(p for p in read_only + git_read_only if os.path.lexists(p)),  # bwrap refuses a missing source
            hidden=tuple(hidden_real),
            exposed=tuple(exposed),
            network=network,
        )


def _under_tmp(programs: list[str], env: dict[str, str]) -> list[str]:
    """The trees of the agent's program and of orchestra's own Python (which agents run as
    `orchestra`) when they live in /tmp (a checkout or a virtual environment there), which
    the private /tmp would hide: each one's top directory in /tmp, read-only."""
    out = set()
    for program in programs:
        found = shutil.which(program, path=env.get("PATH")) if program and "/" not in program else program
        for path in {found, os.path.realpath(found)} if found else ():
            parts = Path(path).parts
            if len(parts) > 2 and parts[:2] == ("/", "tmp"):
                out.add(str(Path("/tmp", parts[2])))
    return sorted(out)


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SandboxError(f"the sandbox needs the directory {path} and could not make it: {exc.strerror or exc}") from None


def _seed(path: Path, content: str | None) -> None:
    """Make `path` (a directory when `content` is None, else a file holding it) if it is missing."""
    if os.path.lexists(path):
        return
    if content is None:
        _make_dir(path)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise SandboxError(f"the sandbox needs the file {path} and could not make it: {exc.strerror or exc}") from None
    with os.fdopen(fd, "w") as f:
        f.write(content)


def _check_program(program: str, cwd: str, env: dict[str, str]) -> None:
    """SpawnError, as the supervisor would say it, if `program` cannot be found: inside the
    sandbox bwrap would only say so on the task's stderr."""
    if "/" in program:
        path = os.path.join(cwd, program)
        if not os.path.exists(path):
            raise SpawnError(f"no such program: {os.path.normpath(path)} (no such file)")
        return
    if shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise SpawnError(f"no such program: {program!r} (not on PATH)")
