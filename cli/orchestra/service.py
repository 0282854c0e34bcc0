"""Unit files for the service managers: a systemd user service (and socket) on Linux, a
launchd LaunchAgent on macOS, written for the current user with the real path of the
installed `orchestrad`.

The files checked in under systemd/ and launchd/ are these same templates rendered with
placeholder paths (tests/test_service.py keeps them in step).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

LABEL = "orchestra.orchestrad"

SERVICE = """\
[Unit]
Description=orchestra daemon: runs a team of coding agents

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
Restart=on-failure
RestartSec=2
# The daemon stops its agents itself (SIGTERM, then SIGKILL after a grace period) and
# records them as interrupted; give it the time to do so.
KillMode=mixed
TimeoutStopSec=60
# A cgroup subtree of its own, so that each agent runs in a cgroup of its own that nothing
# it starts can leave, and that ending the task kills whole.
Delegate=yes
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=default.target
"""

SOCKET = """\
[Unit]
Description=orchestra daemon socket

[Socket]
ListenStream=%t/orchestra/orchestrad.sock
SocketMode=0600
DirectoryMode=0700

[Install]
WantedBy=sockets.target
"""

PLIST = """\
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>{label}</string>
    <key>ProgramArguments</key>
    <array>
{arguments}
    </array>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>ProcessType</key>
    <string>Background</string>
    <key>StandardOutPath</key>
    <string>{log}</string>
    <key>StandardErrorPath</key>
    <string>{log}</string>
</dict>
</plist>
"""


@dataclass(frozen=True)
class UnitFile:
    path: Path
    text: str


def orchestrad_path() -> str:
    """The installed `orchestrad`: beside this Python, else on PATH."""
    beside = Path(sys.executable).parent / "orchestrad"
    if beside.exists():
        return str(beside)
    found = shutil.which("orchestrad")
    if found is None:
        raise FileNotFoundError("orchestrad is not installed beside this Python nor on PATH")
    return found


def argv(home: Path | None, daemon: str | None = None) -> list[str]:
    args = [daemon or orchestrad_path()]
    if home is not None:
        args += ["--home", str(home)]
    return args


def systemd_units(home: Path | None, *, socket: bool = False, daemon: str | None = None, unit_dir: Path | None = None) -> list[UnitFile]:
    unit_dir = unit_dir or Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config")) / "systemd" / "user"
    exec_start = " ".join(_systemd_quote(a) for a in argv(home, daemon))
    units = [UnitFile(unit_dir / "orchestrad.service", SERVICE.format(exec_start=exec_start))]
    if socket:
        units.append(UnitFile(unit_dir / "orchestrad.socket", SOCKET))
    return units


def launchd_plist(home: Path | None, *, daemon: str | None = None, agents_dir: Path | None = None, log: Path | None = None) -> UnitFile:
    agents_dir = agents_dir or Path.home() / "Library" / "LaunchAgents"
    log = log or Path.home() / "Library" / "Logs" / "orchestrad.log"
    arguments = "\n".join(f"        <string>{escape(a)}</string>" for a in argv(home, daemon))
    return UnitFile(agents_dir / f"{LABEL}.plist", PLIST.format(label=LABEL, arguments=arguments, log=escape(str(log))))


def _systemd_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "/._-+:=%" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def enable_commands(platform: str, socket: bool = False) -> list[str]:
    if platform == "darwin":
        return [f"launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/{LABEL}.plist"]
    unit = "orchestrad.socket" if socket else "orchestrad.service"
    return ["systemctl --user daemon-reload", f"systemctl --user enable --now {unit}"]


def disable_commands(platform: str) -> list[str]:
    if platform == "darwin":
        return [f"launchctl bootout gui/$(id -u)/{LABEL}"]
    return ["systemctl --user disable --now orchestrad.socket orchestrad.service", "systemctl --user daemon-reload"]
