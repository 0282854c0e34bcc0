"""`daemon` (run it in the foreground, start, stop, status) and `service` (have systemd or
launchd run it)."""

from __future__ import annotations

import sys

import click
import msgspec

from orchestra.shared import protocol as p
from orchestra.commands.base import App, Exit, emit, fail, json_option, refused


@click.group(invoke_without_command=True)
@click.pass_context
def daemon(ctx):
    """Run the daemon in the foreground, or start, stop or check it."""
    if ctx.invoked_subcommand is None:  # the daemon is a program of its own: this process becomes it
        import os

        app: App = ctx.obj
        argv = [sys.executable, "-m", "orchestrad", *(["--home", str(app.paths.home)] if app.paths.home else [])]
        sys.stdout.flush()
        os.execv(sys.executable, argv)


@daemon.command("start")
@click.pass_obj
def daemon_start(app: App):
    """Start the daemon in the background if it is not running."""
    from orchestra.client import connect, start_daemon
    from orchestra.wire import DaemonUnreachable

    try:
        connect(app.paths, timeout=5).close()
        click.echo("the daemon is already running")
        return
    except DaemonUnreachable:
        pass
    try:
        pid = start_daemon(app.paths)
    except DaemonUnreachable as exc:
        fail(str(exc), Exit.UNREACHABLE)
    click.echo(f"started orchestrad (pid {pid}); socket {app.paths.socket}")


@daemon.command("stop")
@click.pass_obj
def daemon_stop(app: App):
    """Stop the daemon; running tasks are stopped and recorded as interrupted."""
    from orchestra.client import connect
    from orchestra.wire import DaemonUnreachable

    try:
        conn = connect(app.paths, timeout=5)
    except DaemonUnreachable:
        click.echo("the daemon is not running")
        return
    try:
        result = conn.call(p.Shutdown())
    except p.OrchestraError as exc:
        refused(exc)
    pid = result.stopping
    if not _wait_gone(conn, pid, STOP_TIMEOUT):
        fail(f"orchestrad (pid {pid}) is still running {STOP_TIMEOUT:g} s after it was asked to stop, perhaps still "
             f"stopping its tasks; see {app.paths.daemon_log}, or end it with `kill {pid}`", Exit.UNAVAILABLE)
    click.echo(f"stopped orchestrad (pid {pid})")


STOP_TIMEOUT = 60.0  # seconds `daemon stop` waits for the daemon to be gone


def _wait_gone(conn, pid: int, timeout: float) -> bool:
    """Whether the daemon's process ended within `timeout`. It closes every connection
    near the end of its shutdown, and holds its lock until it exits: a `daemon start`
    right after this returns finds the lock free."""
    import time

    deadline = time.monotonic() + timeout
    conn.sock.settimeout(timeout)
    try:
        while conn.sock.recv(65536):
            pass
    except OSError:
        pass
    conn.close()
    delay = 0.001
    while not _ended(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def _ended(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie, not yet reaped by its parent, has)."""
    import os

    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc here (macOS): ask the kernel
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@daemon.command("status")
@json_option
@click.pass_obj
def daemon_status(app: App, as_json):
    """Whether the daemon runs, where, and what it holds."""
    from orchestra.client import connect
    from orchestra.wire import DaemonUnreachable

    try:
        conn = connect(app.paths, timeout=5)
    except DaemonUnreachable as exc:
        why = str(exc)
        emit({"running": False, "socket": str(app.paths.socket)}, as_json, lambda _: f"not running ({why})")
        sys.exit(int(Exit.UNREACHABLE))
    info = conn.call(p.Info(), p.DaemonStatus)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(info.counts.items())) or "no tasks"
    emit({"running": True, **msgspec.structs.asdict(info)}, as_json,
         lambda _: f"running: pid {info.pid}, version {info.version}, socket {info.socket}\n{counts}")


# ---------------------------------------------------------------------------------------
# the service manager


@click.group()
def service():
    """Have the service manager run the daemon: a systemd user unit, or a launchd agent."""


def _platform(value: str | None) -> str:
    return value or ("darwin" if sys.platform == "darwin" else "linux")


def _installed_paths(platform: str) -> list:
    from orchestra import service as svc

    if platform == "darwin":
        return [svc.launchd_plist(None, daemon="orchestrad").path]
    return [u.path for u in svc.systemd_units(None, socket=True, daemon="orchestrad")]


platform_option = click.option("--platform", "platform_", type=click.Choice(["linux", "darwin"]), help="Which service manager (default: this machine's).")


@service.command("install")
@click.option("--dry-run", is_flag=True, help="Print what would be written; write nothing.")
@click.option("--socket", is_flag=True, help="systemd: also install orchestrad.socket (socket activation).")
@platform_option
@click.pass_obj
def service_install(app: App, dry_run, socket, platform_):
    """Write the unit (or plist) for this user with the real path of orchestrad, and say
    how to enable it."""
    from orchestra import service as svc
    from orchestra.shared.paths import make_private_dir

    platform = _platform(platform_)
    try:
        files = [svc.launchd_plist(app.paths.home)] if platform == "darwin" else svc.systemd_units(app.paths.home, socket=socket)
    except FileNotFoundError as exc:
        fail(f"{exc}; install orchestra first (pip install .)", Exit.BAD_INPUT)
    for unit in files:
        if dry_run:
            click.echo(f"# would write {unit.path}\n{unit.text}")
        else:
            make_private_dir(unit.path.parent)
            unit.path.write_text(unit.text)
            unit.path.chmod(0o644)  # the service manager runs what it says: nobody else may change it
            click.echo(f"wrote {unit.path}")
    click.echo("to enable it, run:")
    for command in svc.enable_commands(platform, socket):
        click.echo(f"  {command}")


@service.command("uninstall")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@platform_option
@click.pass_obj
def service_uninstall(app: App, dry_run, platform_):
    """Remove the unit files (run the printed commands first to stop the service)."""
    from orchestra import service as svc

    platform = _platform(platform_)
    click.echo("first stop it:")
    for command in svc.disable_commands(platform):
        click.echo(f"  {command}")
    for path in _installed_paths(platform):
        if path.exists():
            if not dry_run:
                path.unlink()
            click.echo(f"{'would remove' if dry_run else 'removed'} {path}")


@service.command("status")
@platform_option
@click.pass_obj
def service_status(app: App, platform_):
    """Whether the unit is installed, and whether the daemon answers."""
    from orchestra.client import connect
    from orchestra.wire import DaemonUnreachable

    for path in _installed_paths(_platform(platform_)):
        click.echo(f"{path}: {'installed' if path.exists() else 'not installed'}")
    try:
        connect(app.paths, timeout=5).close()
        click.echo(f"daemon: answering on {app.paths.socket}")
    except DaemonUnreachable:
        click.echo(f"daemon: not answering on {app.paths.socket}")
