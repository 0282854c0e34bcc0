"""Where orchestra keeps its files: config, state (the log and snapshots) and the socket.

`ORCHESTRA_HOME` (or `--home` on either command) puts all three under one directory, for
tests and for running several independent instances. Otherwise the platform's own places are
used (platformdirs): on Linux `~/.config/orchestra`, `~/.local/state/orchestra` and
`$XDG_RUNTIME_DIR/orchestra`; where there is no runtime directory, the socket lives in
`<state>/run` instead of a world-readable temporary directory.
"""

from __future__ import annotations

import os
from collections import namedtuple

TYPE_CHECKING = False  # neither typing nor pathlib is imported here: see `orchestra.quick`
if TYPE_CHECKING:
    from pathlib import Path

APP = "orchestra"
SOCKET_NAME = "orchestrad.sock"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, including the terminating NUL


class Paths(namedtuple("Paths", "home config state runtime")):
    """One instance's directories, as `Path`s: `home` (None unless one was given), `config`,
    `state` and `runtime` (the socket's)."""

    __slots__ = ()

    @property
    def socket(self) -> Path:
        return self.runtime / SOCKET_NAME

    @property
    def log_dir(self) -> Path:
        return self.state / "log"

    @property
    def snapshot_dir(self) -> Path:
        return self.state / "snapshots"

    @property
    def lock(self) -> Path:
        return self.state / "orchestrad.lock"

    @property
    def daemon_log(self) -> Path:
        return self.state / "orchestrad.log"

    @property
    def config_file(self) -> Path:
        return self.config / "config.toml"


def home_dir(home: str | os.PathLike | None = None) -> str | None:
    """`home`, or $ORCHESTRA_HOME, as an absolute path; None when neither is given."""
    home = home or os.environ.get("ORCHESTRA_HOME") or None
    return None if home is None else os.path.abspath(os.path.expanduser(home))


def _xdg_runtime_dir() -> str | None:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return xdg if xdg and os.path.isdir(xdg) else None


def quick_socket(home: str | None = None) -> str | None:
    """The socket's path when finding it needs neither pathlib nor platformdirs (a home is
    given, or there is a runtime directory); None otherwise. Agrees with `resolve`."""
    root = home_dir(home)
    if root is not None:
        return os.path.join(root, "run", SOCKET_NAME)
    xdg = _xdg_runtime_dir()
    return None if xdg is None else os.path.join(xdg, APP, SOCKET_NAME)


def resolve(home: str | os.PathLike | None = None) -> Paths:
    """The paths for `home`, or for $ORCHESTRA_HOME, or the platform's defaults."""
    from pathlib import Path

    root = home_dir(home)
    if root is not None:
        base = Path(root)
        return Paths(home=base, config=base / "config", state=base / "state", runtime=base / "run")
    import platformdirs

    config = Path(platformdirs.user_config_dir(APP))
    state = Path(platformdirs.user_state_dir(APP))
    xdg = _xdg_runtime_dir()
    if xdg is not None:
        runtime = Path(xdg) / APP
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            candidate = Path(platformdirs.user_runtime_dir(APP))
        # platformdirs falls back to a directory under /tmp, which others can pre-create:
        # use it only if it is ours already, else keep the socket beside the state.
        runtime = candidate if _owned_by_us(candidate.parent) else state / "run"
    return Paths(home=None, config=config, state=state, runtime=runtime)


def make_private_dir(path: str | os.PathLike) -> None:
    """Create `path` and every missing directory above it, each 0700 whatever the umask
    (mkdir's mode is masked by the umask, so each is chmod-ed after it is made). A directory
    that is already there is left as it is: what to do about a loose one is the caller's
    choice."""
    path = os.path.abspath(os.fspath(path))
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:  # made meanwhile by someone else (another client): theirs to keep
            if not os.path.isdir(directory):
                raise
            continue
        os.chmod(directory, 0o700)


def _owned_by_us(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and (st.st_mode & 0o077) == 0


def check_socket_path(path: Path) -> str | None:
    """A message if `path` is too long to bind a Unix socket to, else None."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        return (
            f"the socket path {path} is longer than {MAX_SOCKET_PATH} bytes, which Unix sockets "
            "cannot use; set ORCHESTRA_HOME (or --home) to a shorter directory"
        )
    return None
