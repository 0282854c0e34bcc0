"""The daemon's lifecycle: start-up, serve, graceful shutdown.

start-up  take the home's lock (one daemon per home), open the store (replay, reconcile),
          replace a stale socket, listen;
serve     until SIGTERM or SIGINT (the handlers only set a flag) or a Shutdown request;
shutdown  stop accepting, stop running agents with a grace period (recorded as
          interrupted), flush the log, write a snapshot, remove the socket.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import socket
from pathlib import Path

from orchestra.shared.paths import Paths, check_socket_path, make_private_dir
from orchestrad import configwatch, descriptors, retention, systemd
from orchestrad.engine import Engine
from orchestrad.server import Server
from orchestrad.store import Store, StoreError

log = logging.getLogger("orchestrad")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DAMAGED = 2
EXIT_ALREADY_RUNNING = 3

CLEANUP_EVERY = 6 * 3600.0  # seconds between automatic retention runs


class StartupError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def run_loop(coro) -> int:
    """Run on uvloop where it is installed, plain asyncio otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on supported platforms
        return asyncio.run(coro)
    return uvloop.run(coro)


class Daemon:
    def __init__(self, paths: Paths, *, shutdown_grace: float | None = None, segment_bytes: int = 64 << 20) -> None:
        self.paths = paths
        self.segment_bytes = segment_bytes
        self.shutdown_grace = shutdown_grace
        self._stop = asyncio.Event()
        self._lock_fd: int | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def main(self) -> int:
        fd_limit = self._raise_fd_limit()
        try:
            store = self._start_up()
        except StartupError as exc:
            log.error("%s", exc)
            return exc.code
        engine = Engine(store, paths=self.paths)
        store.attach()
        await engine.start()
        if store.crowded():
            store.snapshot_soon()  # old finished tasks out of memory now, not after snapshot_every events
        watching = configwatch.watch(self.paths, engine.reload_files)
        tidying = asyncio.ensure_future(self._tidy(engine))
        server = Server(engine, socket_path=str(self.paths.socket), home=str(self.paths.home or ""), on_shutdown=self.request_stop,
                        fd_limit=fd_limit)
        self._check_fd_room(server)
        activated = systemd.listen_socket()
        sock = activated if activated is not None else self._listen()
        listener = await asyncio.start_unix_server(server.serve_connection, sock=sock)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        how = "a socket from systemd" if activated is not None else self.paths.socket
        log.info("orchestrad %s listening on %s (home %s, %d tasks)", os.getpid(), how, self.paths.home or "default", len(store.state.tasks))
        systemd.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {len(store.state.tasks)} tasks")
        try:
            await self._stop.wait()
        finally:
            log.info("shutting down")
            systemd.notify("STOPPING=1")
            listener.close()
            grace = self.shutdown_grace if self.shutdown_grace is not None else store.state.config.kill_grace
            await engine.shutdown(grace)
            await server.close_connections()
            watching.set()
            tidying.cancel()
            await asyncio.wait([tidying], timeout=2)
            await store.close()
            store.snapshot_now()
            store.history.close()
            if activated is None:  # a socket systemd owns stays for the next activation
                self._remove_socket()
            self._release_lock()
            log.info("stopped")
        return EXIT_OK

    async def _tidy(self, engine: Engine) -> None:
        """Retention, now and then: purge old finished tasks and compact the log behind them."""
        while True:
            try:
                await asyncio.wait_for(self._stop.wait(), CLEANUP_EVERY)
                return
            except asyncio.TimeoutError:
                pass
            try:
                result = await retention.cleanup(engine)
                if result.purged:
                    log.info("retention: purged %d finished tasks, freed %d bytes", len(result.purged), result.bytes_freed)
            except Exception:
                log.exception("retention cleanup failed; it will be tried again")

    # -- start-up -----------------------------------------------------------------------

    @staticmethod
    def _raise_fd_limit() -> int:
        """Every connection and every agent pipe is a descriptor: take all the system allows."""
        before, after = descriptors.raise_limit()
        if after != before:
            log.info("open-files limit raised from %d to %d", before, after)
        return after

    @staticmethod
    def _check_fd_room(server: Server) -> None:
        cap, limit = server.connection_cap(), server.fd_limit
        if cap + descriptors.reserve(server.engine.state.config.max_concurrent) > limit:
            log.warning(
                "the open-files limit of %d is low for max_concurrent %d: clients get at most %d connections, and agents "
                "may fail to start; raise it (ulimit -Hn, or LimitNOFILE= in the systemd unit)",
                limit, server.engine.state.config.max_concurrent, cap)
        else:
            log.info("serving up to %d connections (open-files limit %d)", cap, limit)

    def _start_up(self) -> Store:
        paths = self.paths
        self._make_directories()
        problem = check_socket_path(paths.socket)
        if problem:
            raise StartupError(problem)
        self._take_lock()
        from orchestrad.log import LogCorrupt, UnsupportedLogFormat

        try:
            store = Store.open(paths.log_dir, paths.snapshot_dir, segment_bytes=self.segment_bytes)
        except (LogCorrupt, UnsupportedLogFormat, StoreError) as exc:
            raise StartupError(f"{exc}", EXIT_DAMAGED) from None
        for note in store.notes:
            log.warning("%s", note)
        return store

    def _make_directories(self) -> None:
        """State, runtime and config directories, each made 0700 whatever the umask.

        State and runtime are the daemon's own: one that another user owns is refused (they
        could read and change the log, or stand in for the socket), and a loose one is
        tightened to 0700, since nothing in it is meant for anyone else. The config
        directory is the person's: its mode is theirs to choose, so a loose one is left as
        it is and the files in it are refused instead, with the fix (`configfiles`)."""
        paths = self.paths
        for directory in (paths.state, paths.runtime, paths.config):
            make_private_dir(directory)
        for directory in (paths.state, paths.runtime):
            st = directory.stat()
            if st.st_uid != os.getuid():
                raise StartupError(
                    f"{directory} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}), so its owner "
                    "could read and change what the daemon keeps there; move it aside, or use --home "
                    "with a directory of your own"
                )
            if st.st_mode & 0o077:
                log.warning("%s was mode %03o; tightened to 700 so that only you can reach it", directory, st.st_mode & 0o777)
                os.chmod(directory, 0o700)

    def _take_lock(self) -> None:
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StartupError(
                f"another orchestrad (pid {pid}) is already running for {self.paths.state}; "
                "use `orchestra daemon stop` first, or --home for a separate instance",
                EXIT_ALREADY_RUNNING,
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _listen(self) -> socket.socket:
        """Bind the socket. We hold the lock, so a socket file already there is stale."""
        path = self.paths.socket
        if path.exists() or path.is_symlink():
            log.warning("replacing the stale socket %s left by a daemon that is gone", path)
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(512)
        sock.setblocking(False)
        return sock

    def _remove_socket(self) -> None:
        try:
            Path(self.paths.socket).unlink()
        except FileNotFoundError:
            pass
