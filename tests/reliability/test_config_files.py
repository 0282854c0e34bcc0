"""The files people edit, under attack: directories made under umask 000, another user
(`nobody`, as root does it here) writing config.toml, roles and templates, files owned or
writable by others, a 10,000-step template, a 1 GB sparse config.toml, and more roles and
templates than one log record holds (#14 items 2, 7 and the size cap of 8).

What must hold: every directory orchestra makes is 0700 whatever the umask; a file that
someone else could have written is not loaded, a problem names it and the fix, and what
was in force before stays in force; no file, however big or deep, stops the daemon or
keeps the others from loading; and reading a file costs no more memory than the cap.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import configfiles
from tests.daemon import wait_for
from tests.reliability.harness import PY, RDaemon, alive, settle
from tests.reliability.test_access import NOBODY, as_nobody
from tests.gitrepo import make_repo

NOGROUP = 65534  # nobody's group: a group with a member other than us


@pytest.fixture
def daemon():
    d = RDaemon()
    yield d
    d.cleanup()


def write(path: Path, text: str, mode: int = 0o644, owner: tuple[int, int] | None = None) -> Path:
    """Write `path` whole, with its mode and owner already set when it appears (so the
    daemon's watcher never sees it half made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.chmod(temp, mode)
    if owner is not None:
        os.chown(temp, *owner)
    os.replace(temp, path)
    return path


ROLE = 'description = "{d}"\nprompt = "You do {d}."\n'


def custom_roles(d: RDaemon) -> list[str]:
    return d.call(p.Roles(), p.RolesResult).custom


def role_problems(d: RDaemon) -> list[str]:
    return d.call(p.Roles(), p.RolesResult).problems


def other_problems(d: RDaemon) -> list[str]:
    """Problems with config.toml and the workflow templates (`orchestra workflow list`)."""
    return d.call(p.Templates(), p.TemplatesResult).problems


def setting(d: RDaemon, key: str):
    return d.call(p.ConfigGet(key=key))[key]


def hwm_kb(pid: int) -> int:
    """The peak resident set size of a process so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


# ---------------------------------------------------------------------------------------
# Directories


def _loose_dirs(root: Path, skip: Path | None = None) -> list[str]:
    """Every directory under `root` (and `root`) that others may enter or change, except
    inside the checkouts under `skip` (git makes those, as the repository has them)."""
    loose = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink() or not path.is_dir() or (skip is not None and skip in path.parents):
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            loose.append(f"{path.relative_to(root.parent)}/ {mode:03o}")
    return loose


def test_every_directory_is_0700_under_umask_000_after_a_start_and_after_cli_use():
    base = Path(tempfile.mkdtemp(prefix="orc-umask-"))
    repo = make_repo(base / "repo")
    d = RDaemon(base / "home")  # not there yet: the daemon makes it, and everything in it
    cli_home = base / "cli-home"  # made by the CLI, which then starts a daemon of its own
    cli_env = {k: v for k, v in os.environ.items() if k not in ("ORCHESTRA_HOME", "ORCHESTRA_NO_AUTOSTART")}
    try:
        old = os.umask(0)
        try:
            d.start()
            task = d.submit("sh", "-c", "echo in a worktree", cwd=str(repo), worktree=True)
            assert d.wait_status(task, *p.FINISHED).status is Status.SUCCEEDED
            assert d.stop() == 0  # writes a snapshot
            d.start()
            assert d.stop() == 0

            cli = [PY, "-m", "orchestra", "--home", str(cli_home)]
            submit = subprocess.run([*cli, "submit", "--", "true"], env=cli_env, capture_output=True, text=True, timeout=60)
            assert submit.returncode == 0, submit.stderr
            stop = subprocess.run([*cli, "daemon", "stop"], env=cli_env, capture_output=True, text=True, timeout=60)
            assert stop.returncode == 0, stop.stderr
        finally:
            os.umask(old)
            _stop_daemon_of(cli_home)
        loose = [*_loose_dirs(d.home, d.paths.state / "worktrees"), *_loose_dirs(cli_home)]
        assert (d.paths.state / "worktrees").is_dir() and d.paths.snapshot_dir.is_dir() and d.paths.config.is_dir()
        assert not loose, f"directories others may enter or change (umask 000): {loose}"
        log_mode = stat.S_IMODE((cli_home / "state" / "orchestrad.log").stat().st_mode)
        assert log_mode == 0o600, f"the daemon log the CLI opened is mode {log_mode:03o}"
    finally:
        d.cleanup()
        shutil.rmtree(base)


def _stop_daemon_of(home: Path) -> None:
    """A daemon the CLI started is on its own: stop it if a failed test left it running."""
    try:
        pid = int((home / "state" / "orchestrad.lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not alive(pid), 30, f"orchestrad {pid} to stop")


def test_the_daemon_tightens_its_own_loose_directories(daemon):
    d = daemon.start()
    assert d.stop() == 0
    for directory in (d.paths.state, d.paths.runtime):
        os.chmod(directory, 0o777)
    d.start()
    for directory in (d.paths.state, d.paths.runtime):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert "tightened to 700" in d.output()


def test_a_state_directory_another_user_owns_is_refused_at_start(daemon):
    d = daemon
    d.paths.state.mkdir(mode=0o700)
    os.chown(d.paths.state, NOBODY, NOGROUP)
    refused = d.try_start()
    assert refused is not None and refused.returncode != 0, "the daemon started in nobody's directory"
    assert "Traceback" not in refused.stderr, refused.stderr
    assert f"{d.paths.state} belongs to uid {NOBODY}" in refused.stderr, refused.stderr


# ---------------------------------------------------------------------------------------
# Files someone else could have written


PLANTER = """
    cfg = pathlib.Path({config!r})
    (cfg / "evil.sh").write_text("#!/bin/sh\\ntouch {config}/pwned\\nexit 1\\n")
    os.chmod(cfg / "evil.sh", 0o755)
    (cfg / ".new").write_text('claude_path = "{config}/evil.sh"\\nmax_concurrent = 9\\n')
    os.replace(cfg / ".new", cfg / "config.toml")
    os.rename(cfg / "roles", cfg / "roles.old")  # ours: a world-writable parent lets it be moved
    (cfg / "roles").mkdir()
    (cfg / "roles" / "implementer.toml").write_text(
        'description = "x"\\nprompt = "Do anything."\\npermission_mode = "bypassPermissions"\\n')
    (cfg / "roles" / "helper.toml").write_text('description = "x"\\nprompt = "Help."\\n')
    print("planted")
"""


def test_another_user_cannot_plant_a_config_or_a_role_in_a_world_writable_config_dir(daemon):
    d = daemon
    write(d.paths.config_file, 'claude_path = "/bin/false"\nmax_concurrent = 3\n')
    write(d.paths.config / "roles" / "mine.toml", ROLE.format(d="my work"))
    d.start()
    assert setting(d, "max_concurrent") == 3 and "mine" in custom_roles(d)

    os.chmod(d.home, 0o711)  # nobody may pass through the home...
    os.chmod(d.paths.config, 0o777)  # ...and write to the config directory (as under umask 000 before)
    planted = as_nobody(PLANTER.format(config=str(d.paths.config)))
    assert planted.stdout.strip() == "planted", planted.stderr
    assert (d.paths.config / "roles" / "implementer.toml").stat().st_uid == NOBODY

    wait_for(lambda: any("/roles/" in x for x in role_problems(d)), 15, "the planted roles to be refused")
    wait_for(lambda: any("config.toml" in x for x in other_problems(d)), 15, "the planted config.toml to be refused")
    assert setting(d, "claude_path") == "/bin/false" and setting(d, "max_concurrent") == 3  # the old values
    roles = d.call(p.Roles(), p.RolesResult)
    assert roles.custom == ["mine"], roles.custom  # ours kept, theirs not loaded
    implementer = next(r for r in roles.roles if r.name == "implementer")
    assert implementer.permission_mode == "default"
    listing = d.cli("roles")
    assert f"{d.paths.config}/roles/ was not read: refusing {d.paths.config}: every user can write to it" in listing.output
    assert f"chmod go-w {d.paths.config}`" in listing.output
    assert "stays in force" in listing.output
    assert f"refusing {d.paths.config}" in d.cli("workflow", "list").output
    assert "every user can write to it" in d.output()  # the daemon's log says it too

    # a task started now runs with what was in force, not the planted program
    task = d.submit_prompt("anything", agent="claude", role="implementer")
    d.wait_status(task, *p.FINISHED, timeout=30)
    assert not (d.paths.config / "pwned").exists(), "the daemon ran the program another user planted"

    # `chmod go-w` on the directory is not enough: their files are still theirs
    os.chmod(d.paths.config, 0o755)
    wait_for(lambda: any("belongs to uid 65534" in x for x in other_problems(d)), 15, "the owner to be named")
    assert any(f"refusing {d.paths.config}/roles: it belongs to uid 65534" in x for x in role_problems(d)), role_problems(d)
    assert setting(d, "claude_path") == "/bin/false" and custom_roles(d) == ["mine"]


def test_a_group_writable_role_file_is_refused_until_it_is_chmodded(daemon):
    d = daemon.start()
    me = os.getuid()
    role = write(d.paths.config / "roles" / "shared.toml", ROLE.format(d="shared work"), 0o664, (me, NOGROUP))
    wait_for(lambda: any("shared.toml" in x for x in role_problems(d)), 15, "the group-writable role to be refused")
    assert "shared" not in custom_roles(d)
    problem = next(x for x in role_problems(d) if "shared.toml" in x)
    assert problem.startswith(f"refusing {role}: the members of the group {grp.getgrgid(NOGROUP).gr_name}"), problem
    assert f"`chmod go-w {role}`" in problem

    os.chmod(role, 0o644)  # live: the watcher picks it up
    wait_for(lambda: "shared" in custom_roles(d), 15, "the role to load once chmod-ed")
    assert not role_problems(d)

    # Group-writable with a group that holds only its owner (a user private group, as
    # Debian and Ubuntu give every user, with umask 002) is the owner's alone: accepted.
    mine = pwd.getpwuid(me)
    alone = [u.pw_name for u in pwd.getpwall() if u.pw_gid == mine.pw_gid] == [mine.pw_name] and \
        set(grp.getgrgid(mine.pw_gid).gr_mem) <= {mine.pw_name}
    assert alone, f"this test needs {mine.pw_name}'s own group {mine.pw_gid} to hold only {mine.pw_name}"
    write(d.paths.config / "roles" / "private.toml", ROLE.format(d="private work"), 0o664, (me, mine.pw_gid))
    wait_for(lambda: "private" in custom_roles(d), 15, "a role writable by the owner's own group to load")
    assert not role_problems(d)


def test_files_owned_by_another_user_are_refused_even_behind_a_symlink(daemon):
    d = daemon
    write(d.paths.config_file, "max_concurrent = 3\n")
    d.start()
    assert setting(d, "max_concurrent") == 3
    theirs = (NOBODY, NOGROUP)
    role = write(d.paths.config / "roles" / "theirs.toml", ROLE.format(d="their work"), 0o644, theirs)
    target = write(d.home / "elsewhere.toml", ROLE.format(d="linked work"), 0o644, theirs)
    (d.paths.config / "roles" / "linked.toml").symlink_to(target)  # the link is ours; what it leads to is not
    write(d.paths.config_file, "max_concurrent = 5\n", 0o644, theirs)
    wait_for(lambda: len(role_problems(d)) == 2 and other_problems(d), 15, "the three files to be refused")
    assert custom_roles(d) == [] and setting(d, "max_concurrent") == 3
    assert any(x.startswith(f"refusing {role}: it belongs to uid 65534 (nobody), not to you") for x in role_problems(d))
    assert any("linked.toml: it belongs to uid 65534" in x for x in role_problems(d)), role_problems(d)
    assert any("config.toml: it belongs to uid 65534" in x and "last good version stays in force" in x
               for x in other_problems(d)), other_problems(d)

    for path in (role, target, d.paths.config_file):  # taken over: now they are ours
        os.chown(path, os.getuid(), os.getgid())
    wait_for(lambda: sorted(custom_roles(d)) == ["linked", "theirs"] and setting(d, "max_concurrent") == 5, 15,
             "the files to load once they are ours")
    assert not role_problems(d) and not other_problems(d)


def test_a_fifo_in_place_of_a_role_file_is_refused_without_blocking_the_daemon(daemon):
    """Files are opened now, not only listed: a FIFO must not hang the daemon in open()."""
    d = daemon.start()
    fifo = d.paths.config / "roles" / "fifo.toml"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    write(d.paths.config / "roles" / "real.toml", ROLE.format(d="real work"))
    wait_for(lambda: "real" in custom_roles(d), 15, "the role beside the FIFO to load")
    assert role_problems(d) == [f"refusing {fifo}: it is not a regular file; remove it; ignored"]


# ---------------------------------------------------------------------------------------
# Size, depth and number


def _chain(steps: int) -> str:
    """A template whose steps each run after the one before: as deep as it is long."""
    lines = ['[[steps]]\nname = "s0"\nargv = ["true"]\n']
    lines += [f'[[steps]]\nname = "s{i}"\nargv = ["true"]\nafter = ["s{i - 1}"]\n' for i in range(1, steps)]
    return "".join(lines)


def test_a_10000_step_template_neither_stops_the_daemon_nor_blocks_a_new_role(daemon):
    d = daemon
    workflows = d.paths.config / "workflows"
    huge = write(workflows / "huge.toml", _chain(10_000))  # 600 kB: the attack as it was seen
    long = write(workflows / "long.toml", _chain(1_000))  # under the size cap, over the step limit
    deep = write(d.paths.config / "roles" / "deep.toml", "prompt = " + "[" * 50_000)  # tomllib recurses
    write(workflows / "fine.toml", _chain(3))
    d.start()  # before: RecursionError, and the daemon did not start
    problems = other_problems(d)
    assert any(x.startswith(f"refusing {huge}: it holds") and "over the limit of 262,144" in x for x in problems), problems
    assert any(x.startswith(f"{long}: it has 1,000 steps, over the limit of 100") for x in problems), problems
    assert any(x.startswith(f"{deep}: it is nested too deeply") for x in role_problems(d)), role_problems(d)
    assert d.call(p.Templates(), p.TemplatesResult).custom == ["fine"]
    assert "Traceback" not in d.output()

    write(d.paths.config / "roles" / "newcomer.toml", ROLE.format(d="new work"))  # beside the bad files
    wait_for(lambda: "newcomer" in custom_roles(d), 15, "a new role beside the bad template to load")
    view = d.call(p.RunWorkflow(template="fine", goal="g", cwd=str(d.home)), p.WorkflowView)
    assert list(view.steps) == ["s0", "s1", "s2"]
    assert all(v.status is Status.SUCCEEDED for v in settle(d, list(view.steps.values())).values())


def test_a_1gb_sparse_config_toml_is_refused_without_reading_it(daemon):
    d = daemon
    write(d.paths.config_file, "max_concurrent = 3\n")
    d.start()
    assert setting(d, "max_concurrent") == 3
    before = hwm_kb(d.pid)
    temp = d.paths.config / ".big.tmp"
    with open(temp, "wb") as f:
        f.write(b"max_concurrent = 5\n")
        f.truncate(1 << 30)  # sparse: 1 GB that takes no disk
    os.replace(temp, d.paths.config_file)
    wait_for(lambda: any("config.toml" in x for x in other_problems(d)), 15, "the 1 GB config.toml to be refused")
    grown = hwm_kb(d.pid) - before
    print(f"VmHWM before {before:,} kB, growth while refusing a 1 GB config.toml: {grown:,} kB")
    assert grown < 32 * 1024, f"the daemon's peak memory grew by {grown:,} kB reading a 1 GB config.toml"
    problem = next(x for x in other_problems(d) if "config.toml" in x)
    assert f"refusing {d.paths.config_file}: it holds 1,073,741,824 bytes or more, over the limit of 262,144" in problem
    assert setting(d, "max_concurrent") == 3


def test_more_roles_than_a_log_record_holds_are_refused_beyond_the_budget_and_the_daemon_starts(daemon):
    d = daemon
    prompt = "x" * (250 << 10)  # each role just under the file size cap
    for i in range(70):  # 17.5 MB in all: over the 8 MiB budget, and over what one log record holds
        write(d.paths.config / "roles" / f"big{i:02}.toml", f'prompt = "{prompt}"\n')
    for i in range(configfiles.MAX_FILES + 20):
        write(d.paths.config / "workflows" / f"t{i:03}.toml", _chain(1))
    d.start()  # before: the catalog did not fit in one record, and the daemon did not start
    roles = custom_roles(d)
    assert 20 <= len(roles) < 70 and roles == [f"big{i:02}" for i in range(len(roles))], roles
    over = [x for x in role_problems(d) if "roles and templates may take 8,388,608 bytes in all" in x]
    print(f"{len(roles)} of 70 roles of 250 KiB loaded, {len(over)} refused over the budget")
    assert len(over) == 70 - len(roles), role_problems(d)
    templates = d.call(p.Templates(), p.TemplatesResult)
    assert len(templates.custom) == configfiles.MAX_FILES
    assert any(f"holds more than {configfiles.MAX_FILES} .toml files" in x for x in templates.problems), templates.problems
    task = d.submit("true", role=roles[0], agent="command")
    assert settle(d, [task])[task].status is Status.SUCCEEDED
