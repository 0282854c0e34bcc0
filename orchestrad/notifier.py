"""Notifications, the shell: deliver the notices `orchestrad.notify` finds to the sinks the
settings name (a command, a webhook, the desktop), and never hold up the daemon.

The engine calls `Notifier.saw` with each batch of facts it appended; the notices are
worked out there and then (pure, and cheap when no sink is set), and each sink's worker
sends them once the facts are durable. Per sink:

* a bounded queue (`QUEUE`): a sink slower than the notices come loses the oldest, counted;
* a rate limit, at most `notify_limit` notices within `notify_window` seconds: the rest,
  and what the queue dropped, become one "…and N more" notice once the window allows;
* a command runs with the notice as JSON on stdin, and is killed after `notify_timeout`;
  a webhook is POSTed, each attempt within `notify_timeout`, retried with backoff on no
  answer or a 5xx (408 and 429 too); the desktop is notify-send, or osascript on macOS;
* a failure is logged once, and not again until the sink has worked again.

At shutdown (`close`) what a sink still holds is sent at once, as one notice: the notice
itself if it is the only one, else the "…and N more" summary of them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import signal
import ssl
import subprocess
import time
from typing import Awaitable, Callable, Sequence
from urllib.parse import urlsplit

from orchestrad import containment, httppost, notify
from orchestrad.config import Config
from orchestrad.events import Event
from orchestrad.notify import Notice
from orchestrad.state import State

log = logging.getLogger(__name__)

QUEUE = 100  # notices one sink holds while it is slow; past it the oldest are dropped
ATTEMPTS = 4  # a webhook's tries for one notice
BACKOFF = 0.5  # seconds before a webhook's first retry; doubled each time
BACKOFF_MAX = 8.0
SHUTDOWN_GRACE = 2.0  # seconds the last notices may take at shutdown
_RETRY_STATUSES = (408, 429)  # besides 5xx: the receiver may take it later


class DeliveryError(Exception):
    """Why a sink did not take a notice: a sentence for the daemon's log."""


class Notifier:
    def __init__(self, env: dict[str, str], clock: Callable[[], float] = time.time) -> None:
        self.env = env  # the daemon's environment: PATH, the webhook's token variable
        self.clock = clock
        self.config: Config | None = None  # the settings in force, as of the last batch
        self._channels: dict[str, Channel] = {}
        self._closed = False

    def saw(self, state: State, events: Sequence[Event], durable: asyncio.Future) -> None:
        """Facts just appended (durable once `durable` is done) and the state they made."""
        config = self.config = state.config
        if self._closed or not (config.notify_command or config.notify_webhook or config.notify_desktop):
            return
        try:
            found = [n for n in notify.notices(state, events, self.clock()) if n.kind in config.notify_on]
        except Exception:  # a bug here must never stop the engine
            log.exception("could not work out the notices for what was recorded")
            return
        if found:
            for name in self._sinks(config):
                self._channel(name).add(found, durable)

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop the workers (a notice being sent may finish), then send what each sink
        still holds; all within `grace` seconds."""
        self._closed = True
        deadline = asyncio.get_running_loop().time() + grace
        channels = list(self._channels.values())
        await asyncio.gather(*(channel.stop(grace) for channel in channels))
        last = [(channel, channel.last()) for channel in channels]
        jobs = [asyncio.ensure_future(channel.send(notice)) for channel, notice in last if notice is not None]
        if jobs:
            _, late = await asyncio.wait(jobs, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            for job in late:
                job.cancel()
            if late:
                await asyncio.wait(late)

    # -- sinks ----------------------------------------------------------------------------

    @staticmethod
    def _sinks(config: Config) -> list[str]:
        on = {"command": config.notify_command, "webhook": config.notify_webhook, "desktop": config.notify_desktop}
        return [name for name, setting in on.items() if setting]

    def _channel(self, name: str) -> Channel:
        channel = self._channels.get(name)
        if channel is None:
            deliver = {"command": self._command, "webhook": self._webhook, "desktop": self._desktop}[name]
            channel = self._channels[name] = Channel(name, deliver, self)
        return channel

    async def _command(self, notice: Notice, config: Config) -> str:
        command = config.notify_command
        if not command:
            return ""  # turned off since
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
        env = {**self.env, "ORCHESTRA_NOTICE_KIND": notice.kind, "ORCHESTRA_NOTICE_MESSAGE": notice.message}
        name = f"notify_command ({_first_word(command)})"
        await run(argv, notify.payload(notice), env, config.notify_timeout, name)
        return name

    async def _webhook(self, notice: Notice, config: Config) -> str:
        url = config.notify_webhook
        if not url:
            return ""
        headers = {}
        if config.notify_webhook_token_env:
            token = self.env.get(config.notify_webhook_token_env, "")
            if not token or "\r" in token or "\n" in token:
                raise DeliveryError(
                    f"notify_webhook_token_env names {config.notify_webhook_token_env}, which the daemon's environment "
                    f"{'does not hold' if not token else 'holds with a line break'}; set it where the daemon starts "
                    "(the shell that started it, or Environment= in its systemd unit) and restart the daemon"
                )
            headers["Authorization"] = f"Bearer {token}"
        body = notify.payload(notice)
        delay = BACKOFF
        for attempt in range(1, ATTEMPTS + 1):
            try:
                status = await httppost.post(url, body, headers, config.notify_timeout)
            except ssl.SSLCertVerificationError as exc:  # trying again will not help
                raise DeliveryError(
                    f"the webhook {_origin(url)} has a certificate the daemon does not trust ({exc.verify_message}); "
                    "give it one a known authority signed, or name its CA file in SSL_CERT_FILE in the daemon's environment"
                ) from None
            except TimeoutError:
                problem = f"no answer within {config.notify_timeout:g} s"
            except (OSError, httppost.BadAnswer) as exc:
                problem = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
            else:
                if 200 <= status < 300:
                    return f"the webhook {_origin(url)}"
                problem = f"it answered {status}"
                if 300 <= status < 400:
                    raise DeliveryError(f"the webhook {_origin(url)} answered {status}, a redirect, which is not followed; set notify_webhook to where it leads")
                if status < 500 and status not in _RETRY_STATUSES:
                    raise DeliveryError(f"the webhook {_origin(url)} refused the notice: {problem}")
            if attempt < ATTEMPTS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        raise DeliveryError(f"the webhook {_origin(url)} did not take the notice in {ATTEMPTS} attempts; the last: {problem}")

    async def _desktop(self, notice: Notice, config: Config) -> str:
        if not config.notify_desktop:
            return ""
        path = self.env.get("PATH", os.defpath)
        if program := shutil.which("notify-send", path=path):
            argv = [program, "--app-name=orchestra", "--", notice.headline, notice.message]
        elif program := shutil.which("osascript", path=path):
            script = ["on run argv", "display notification (item 2 of argv) with title (item 1 of argv)", "end run"]
            argv = [program, *(part for line in script for part in ("-e", line)), notice.headline, notice.message]
        else:
            raise DeliveryError(
                "notify_desktop is on, but neither notify-send nor osascript is on the daemon's PATH; install "
                "notify-send (Debian: libnotify-bin), or turn it off: orchestra config set notify_desktop false"
            )
        name = os.path.basename(program)
        await run(argv, b"", self.env, config.notify_timeout, name)
        return f"the desktop ({name})"


class Channel:
    """One sink's queue, rate window and worker."""

    def __init__(self, name: str, deliver: Callable[[Notice, Config], Awaitable[str]], notifier: Notifier) -> None:
        self.name = name
        self.deliver = deliver
        self.notifier = notifier
        self.pending: collections.deque[tuple[Notice, asyncio.Future]] = collections.deque()
        self.left_out: collections.Counter[str] = collections.Counter()  # kind -> notices not sent one by one
        self.window = notify.Window()
        self.current: Notice | None = None  # the notice being delivered
        self.failing = False
        self.closing = False
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None

    def add(self, notices: list[Notice], durable: asyncio.Future) -> None:
        for notice in notices:
            if len(self.pending) >= QUEUE:
                dropped, _ = self.pending.popleft()
                self.left_out[dropped.kind] += 1
            self.pending.append((notice, durable))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"notify-{self.name}")
        self._wake.set()

    async def _run(self) -> None:
        while not self.closing:
            if not self.pending and not self.left_out:
                self._wake.clear()
                await self._wake.wait()
                continue
            config = self.notifier.config
            assert config is not None
            now = self.notifier.clock()
            wait = self.window.wait(now, config.notify_limit, config.notify_window)
            if wait > 0:  # what came meanwhile is summed up once the window allows
                while self.pending:
                    self.left_out[self.pending.popleft()[0].kind] += 1
                await asyncio.sleep(wait)
                continue
            if self.left_out:
                self.current = self._summary(now)
            else:
                self.current, durable = self.pending.popleft()
                try:
                    await asyncio.shield(durable)
                except Exception:  # not durable: as far as a restart knows, it never happened
                    self.current = None
                    continue
            self.window.sent(now)
            await self.send(self.current)
            self.current = None

    def _summary(self, now: float) -> Notice:
        config = self.notifier.config
        assert config is not None
        counts, self.left_out = dict(self.left_out), collections.Counter()
        return notify.more(sum(counts.values()), counts, config.notify_limit, config.notify_window, now)

    async def send(self, notice: Notice) -> None:
        """Deliver one notice; log a failure once, until the sink works again."""
        config = self.notifier.config
        assert config is not None
        try:
            what = await self.deliver(notice, config)
        except DeliveryError as exc:
            if not self.failing:
                self.failing = True
                log.warning("a notice (%s) was not delivered: %s. Until the %s works again, its failures are not logged",
                            notice.kind, exc, self.name)
            return
        except Exception:
            if not self.failing:
                self.failing = True
                log.exception("a notice (%s) was not delivered to the %s", notice.kind, self.name)
            return
        if self.failing and what:
            self.failing = False
            log.info("%s takes notices again", what)

    async def stop(self, grace: float) -> None:
        """Stop the worker, letting a notice it is sending finish within `grace` seconds;
        one that does not counts as not sent."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self.closing = True
        if self.current is not None:
            await asyncio.wait([worker], timeout=grace)
        if not worker.done():
            worker.cancel()
            await asyncio.wait([worker])
        if self.current is not None:
            if self.current.kind == "more":
                self.left_out.update(self.current.counts)
            else:
                self.pending.appendleft((self.current, _done()))
            self.current = None

    def last(self) -> Notice | None:
        """What is left at shutdown, as one notice: itself if it is alone, else a summary."""
        if len(self.pending) == 1 and not self.left_out:
            return self.pending.popleft()[0]
        while self.pending:
            self.left_out[self.pending.popleft()[0].kind] += 1
        return self._summary(self.notifier.clock()) if self.left_out else None


def _done() -> asyncio.Future:
    future = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


async def run(argv: list[str], stdin: bytes, env: dict[str, str], timeout: float, name: str) -> None:
    """Run `argv` with `stdin`; DeliveryError (which calls it `name`) unless it exits 0
    within `timeout` seconds (past it, it and its process group are killed)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True
        )
    except OSError as exc:
        raise DeliveryError(f"{name} could not be started: {exc.strerror or exc}") from None
    containment.OWN.add(proc.pid)  # the loop reaps it, not the sweep for adopted processes
    try:
        async with asyncio.timeout(timeout):
            err = await _talk(proc, stdin)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        raise DeliveryError(f"{name} did not finish within {timeout:g} s, and was killed") from None
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        raise
    finally:
        containment.OWN.discard(proc.pid)
    if proc.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines()
        how = f"exited with code {proc.returncode}" if proc.returncode > 0 else f"was killed by signal {-proc.returncode}"
        raise DeliveryError(f"{name} {how}" + (f": {said[-1][:200]}" if said else ""))


async def _talk(proc: asyncio.subprocess.Process, stdin: bytes) -> bytes:
    """Write `stdin` (a command that does not read it all is no error), then wait for the
    end; returns the last of what it wrote to stderr (the rest is read and dropped)."""
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write(stdin)
        await proc.stdin.drain()
    except (BrokenPipeError, ConnectionResetError, RuntimeError):  # uvloop: RuntimeError once closed
        pass
    finally:
        try:
            proc.stdin.close()
        except (OSError, RuntimeError):
            pass
    tail = b""
    while chunk := await proc.stderr.read(65536):
        tail = (tail + chunk)[-4096:]
    await proc.wait()
    return tail


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _first_word(command: str | list[str]) -> str:
    """What a log line may name of a command: its program, never its arguments."""
    words = command.split() if isinstance(command, str) else command
    return (os.path.basename(words[0]) if words else "?") + (" …" if len(words) > 1 else "")


def _origin(url: str) -> str:
    """What a log line may name of a URL: scheme, host and port, never its path or query."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
