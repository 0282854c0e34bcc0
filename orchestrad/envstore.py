"""Task environments, kept beside the state and never in the log.

A task's environment values may be anything: tokens, passwords, a database URL with a
password in it. No name tells which, so none of them is written to the log or to a
snapshot: the log records only the names (`TaskSpec.secret_env`), and the values live here,
one file per task (`<state>/env/<task>`, mode 0600 in a 0700 directory), written durably
before the task's submission is recorded. Retries, resumes and restarts read them again;
the file goes when the task is removed or purged. The log and the snapshots can therefore
be attached to a bug report as they are.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import msgspec

from orchestrad.files import fsync_dir, write_private

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.Decoder(dict[str, str]).decode


class EnvStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, task: int) -> Path:
        return self.directory / str(task)

    def put(self, task: int, env: dict[str, str]) -> None:
        """Keep `env` for `task`, durably (OSError if the disk cannot take it)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        write_private(self._path(task), _encode(env))

    def get(self, task: int) -> dict[str, str] | None:
        """The values kept for `task`; None if there is no file for it."""
        try:
            with open(self._path(task), "rb") as f:
                return _decode(f.read())
        except FileNotFoundError:
            return None

    def remove(self, tasks: list[int]) -> None:
        gone = False
        for task in tasks:
            try:
                self._path(task).unlink()
                gone = True
            except FileNotFoundError:
                pass
        if gone:
            fsync_dir(self.directory)

    def prune(self, keep: Callable[[int], bool]) -> list[int]:
        """Remove the files of tasks `keep` says no to (a crash between writing one and
        recording its task leaves one behind). Returns the tasks whose files went."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        stale = [int(n) for n in names if n.isdigit() and not keep(int(n))]
        for name in names:
            if name.startswith("."):  # a temporary file a crash left
                (self.directory / name).unlink(missing_ok=True)
        self.remove(stale)
        return stale
