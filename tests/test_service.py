"""Service-manager set-up: unit files, readiness notification, socket activation, launchd."""

from __future__ import annotations

import configparser
import os
import plistlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from click.testing import CliRunner

from orchestra.shared import protocol as p
from orchestra import service as svc
from orchestra.main import cli
from tests.daemon import Daemon, wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_checked_in_units_are_what_install_writes():
    units = svc.systemd_units(None, socket=True, daemon="/usr/local/bin/orchestrad", unit_dir=ROOT / "systemd")
    for unit in units:
        assert unit.path.read_text() == unit.text, f"{unit.path} is out of step with orchestra/service.py"
    plist = svc.launchd_plist(None, daemon="/usr/local/bin/orchestrad", agents_dir=ROOT / "launchd", log=Path("/Users/you/Library/Logs/orchestrad.log"))
    assert plist.path.read_text() == plist.text


def test_systemd_units_verify(tmp_path):
    units = svc.systemd_units(Path("/home/me/orc home"), socket=True, unit_dir=tmp_path)
    for unit in units:
        unit.path.write_text(unit.text)
    service = configparser.ConfigParser(interpolation=None, strict=False)
    service.read_string(units[0].text)
    assert service["Service"]["Type"] == "notify"
    assert service["Service"]["Restart"] == "on-failure"
    assert service["Service"]["ExecStart"].endswith('--home "/home/me/orc home"')
    sock = configparser.ConfigParser(interpolation=None)
    sock.read_string(units[1].text)
    assert sock["Socket"]["ListenStream"] == "%t/orchestra/orchestrad.sock" and sock["Socket"]["SocketMode"] == "0600"
    if shutil.which("systemd-analyze"):
        result = subprocess.run(["systemd-analyze", "verify", *(str(u.path) for u in units)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_launchd_plist_loads():
    plist = plistlib.loads(svc.launchd_plist(Path("/Users/me/orc"), daemon="/opt/bin/orchestrad").text.encode())
    assert plist["Label"] == "orchestra.orchestrad"
    assert plist["ProgramArguments"] == ["/opt/bin/orchestrad", "--home", "/Users/me/orc"]
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardErrorPath"].endswith("orchestrad.log")


def test_service_install_dry_run_and_install(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    runner = CliRunner()
    dry = runner.invoke(cli, ["service", "install", "--dry-run", "--platform", "linux"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "Type=notify" in dry.output and "systemctl --user enable --now orchestrad.service" in dry.output
    assert str(Path(sys.executable).parent / "orchestrad") in dry.output
    assert not (tmp_path / "systemd").exists()
    real = runner.invoke(cli, ["service", "install", "--socket", "--platform", "linux"], env=env)
    assert real.exit_code == 0, real.output
    assert (tmp_path / "systemd" / "user" / "orchestrad.service").exists()
    assert (tmp_path / "systemd" / "user" / "orchestrad.socket").exists()
    assert "enable --now orchestrad.socket" in real.output
    status = runner.invoke(cli, ["--home", str(tmp_path / "h"), "service", "status", "--platform", "linux"], env=env)
    assert "orchestrad.service: installed" in status.output and "daemon: not answering" in status.output
    gone = runner.invoke(cli, ["service", "uninstall", "--platform", "linux"], env=env)
    assert "removed" in gone.output and not (tmp_path / "systemd" / "user" / "orchestrad.service").exists()
    mac = runner.invoke(cli, ["service", "install", "--dry-run", "--platform", "darwin"], env=env)
    assert "<key>RunAtLoad</key>" in mac.output and "launchctl bootstrap" in mac.output


def test_daemon_tells_systemd_when_ready_and_when_stopping():
    home = Path(tempfile.mkdtemp(prefix="orc-"))
    notify_path = str(home / "notify")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(20)
    d = Daemon(home)
    d.env["NOTIFY_SOCKET"] = notify_path
    try:
        d.start()
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready and f"MAINPID={d.proc.pid}" in ready
        d.proc.send_signal(signal.SIGTERM)
        assert listener.recv(4096).decode() == "STOPPING=1"
        assert d.proc.wait(30) == 0
    finally:
        listener.close()
        d.cleanup()


def test_socket_activation_serves_the_socket_it_was_given():
    home = Path(tempfile.mkdtemp(prefix="orc-"))
    path = home / "activated.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    fd = sock.fileno()

    def as_fd_3() -> None:  # what systemd does before exec
        os.dup2(fd, 3)

    env = {**os.environ, "LISTEN_FDS": "1", "ORCHESTRA_HOME": str(home)}
    with open(home / "daemon.out", "ab") as out:
        proc = subprocess.Popen(
            ["sh", "-c", f'LISTEN_PID=$$ exec "{sys.executable}" -m orchestrad --home "{home}"'],
            env=env, preexec_fn=as_fd_3, pass_fds=(3,), stdout=out, stderr=out,  # keep fd 3 open
        )
    sock.close()
    try:
        from orchestra.wire import Connection

        def answers() -> bool:
            try:
                with Connection(str(path), timeout=2) as conn:
                    return conn.call(p.Hello(version=p.PROTOCOL_VERSION), p.Welcome).pid == proc.pid
            except Exception:
                return False

        wait_for(answers, 15, "the activated daemon to answer on the socket it was given")
        assert not (home / "run" / "orchestrad.sock").exists()  # it made no socket of its own
        assert "a socket from systemd" in (home / "daemon.out").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(home, ignore_errors=True)
