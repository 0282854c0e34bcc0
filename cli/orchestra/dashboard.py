"""`orchestra dashboard`: a live view of the team, and the same picture as text.

`render(tasks, queue, workflows)` is a pure function: the daemon's views in, a plain-text
picture out (what waits for a person first, with the question, its numbered options and
the command that answers it; then what runs, the queue in run order, the workflows and
their steps, the latest finished tasks, and a hint line). The MCP tool `status-dashboard`
returns exactly this text. It is drawn from replies that stay small however long the
history (`picture_requests`): the daemon's counts, the active tasks, the newest finished
ones, the head of the queue and the newest workflows.

`run(app)` draws it full-screen and keeps it current. It is driven by the daemon's `Watch`
stream: a reader thread receives task changes and wakes the screen loop, which fetches the
queue and the workflows (they change only when tasks do) and redraws. Nothing polls. While
a task runs, the screen also redraws once a second so that its runtime column counts up
(and a silent task's silence);
with nothing running it sleeps until the next change or key. When the daemon goes away
(a restart), the screen says so and waits for it, connecting again now and then, and
carries on with the new daemon. Plain ANSI: the alternate screen, cursor home, clear to
end of line. `q` or Ctrl-C leaves and restores the terminal. When stdout is not a
terminal, the picture is printed once.
"""

from __future__ import annotations

import time
from typing import Sequence

from orchestra.shared.protocol import FINISHED, DaemonStatus, Status, TaskView, WorkflowView
from orchestra.render import MARK, cost, duration, held, liveness, run_steps
from orchestra.shared.vocab import usd, shorten

RECENT = 5  # finished tasks shown at the bottom
QUEUE_SHOWN = 25  # queued tasks listed; the headline counts them all
WORKFLOWS_SHOWN = 10  # the newest workflows
SCREEN_QUEUE = 200  # the head of the queue the live screen keeps (it shows what fits)
FINISHED_KEPT = 100  # finished tasks the live screen loads at start; the stream adds the rest

def label(task: TaskView) -> str:
    """A one-line name for a task: its title, else its prompt, else its command."""
    text = task.title or task.prompt or " ".join(task.argv)
    return " ".join(text.split())


def answer_hint(task: TaskView) -> str:
    """The commands that answer a waiting task."""
    w = task.waiting
    if w is None:
        return ""
    if w.kind == "permission":
        return f'orchestra respond {task.id} --allow   or   orchestra respond {task.id} --deny -m "why"'
    if w.kind == "review":
        return f'orchestra review {task.id}, then orchestra respond {task.id} --approve   or   --reject -m "what to change"'
    if w.options:
        return f'orchestra respond {task.id} 1   (an option number, or your own words in quotes)'
    return f'orchestra respond {task.id} "your answer"'


def render(
    tasks: Sequence[TaskView],
    queue: Sequence[TaskView],
    workflows: Sequence[WorkflowView] = (),
    *,
    width: int = 100,
    recent: int = RECENT,
    hint: bool = True,
    info: DaemonStatus | None = None,
    now: float | None = None,
    merges: Sequence = (),
) -> str:
    """The whole picture as text, every line at most `width` characters. With `info`, the
    counts and the cost are the daemon's, of every task: `tasks` and `queue` may then be
    only those shown (the active ones, the newest finished, the head of the queue). A
    running task says whether it is working or silent at `now` (the clock's time if not
    given)."""
    width = max(40, width)
    now = time.time() if now is None else now
    by_status: dict[Status, list[TaskView]] = {}
    for t in sorted(tasks, key=lambda t: t.id):
        by_status.setdefault(t.status, []).append(t)
    counts = {s: len(by_status.get(s, [])) for s in Status}
    counts[Status.QUEUED] = len(queue)  # the queue is the truth about what is queued
    if info is not None:
        counts = {s: info.counts.get(s.value, 0) for s in Status}
    total_cost = info.cost_usd if info is not None else sum(t.cost_usd for t in tasks)
    lines: list[str] = [_headline(counts, total_cost)]

    waiting = sorted([*by_status.get(Status.WAITING, []), *by_status.get(Status.REVIEW, [])], key=lambda t: t.id)
    if waiting:
        lines += ["", f"WAITING FOR YOU ({len(waiting)})"]
        for t in waiting:
            lines.append(_row(t))
            w = t.waiting
            if w is not None:
                what = {"permission": "asks permission", "review": "waits for review"}.get(w.kind, "asks")
                lines.append(f"      {what}: {w.prompt}")
                lines += [f"        {i}. {option}" for i, option in enumerate(w.options, 1)]
                lines.append(f"      answer: {answer_hint(t)}")

    running = sorted([*by_status.get(Status.RUNNING, []), *by_status.get(Status.CHECKING, [])], key=lambda t: t.id)
    if running:
        lines += ["", f"RUNNING ({len(running)})"]
        for t in running:
            lines.append(_row(t, liveness(t, now)) + (f"  · {t.activity}" if t.activity else ""))

    if queue:
        lines += ["", f"QUEUE IN RUN ORDER ({max(counts[Status.QUEUED], len(queue))})"]
        for place, t in enumerate(queue, 1):
            extra = []
            if t.priority:
                extra.append(f"priority {t.priority}")
            pending = [str(a) for a in t.after]
            if pending:
                extra.append("after " + ", ".join(f"#{a}" for a in pending))
            if held(t):
                extra.append(held(t))
            lines.append(f"  {place:>2}. #{t.id:<4} {t.role:<11} {t.agent:<7} {label(t)}" + (f"  ({'; '.join(extra)})" if extra else ""))
        if counts[Status.QUEUED] > len(queue):
            lines.append(f"      … and {counts[Status.QUEUED] - len(queue):,} more: orchestra queue")

    if merges:
        lines += ["", f"MERGE QUEUE ({len(merges)})"]
        for m in merges:
            by = f"resolver #{m.resolver}" if m.status == "resolving" and m.resolver else (f"#{m.task}" if m.task else f"workflow {m.workflow}")
            lines.append(f"  merge {m.id:<4} {m.status:<10} {m.branch} → {m.target}  ({by})")

    if workflows:
        lines += ["", f"WORKFLOWS ({len(workflows)})"]
        for wf in workflows:
            lines.append(f"  workflow {wf.id} · {wf.template} · {wf.status} · {cost(wf.cost_usd)} · {wf.goal}")
            lines.append("    " + run_steps(wf))

    finished = [t for t in tasks if t.status in FINISHED]
    if finished and recent > 0:
        latest = sorted(finished, key=lambda t: (t.finished_at or 0.0, t.id))[-recent:]
        ended = max(len(finished), sum(counts[s] for s in FINISHED))
        shown = f"latest {len(latest)} of {ended}" if ended > len(latest) else str(ended)
        lines += ["", f"FINISHED ({shown})"]
        for t in reversed(latest):
            why = f"  ({t.reason})" if t.reason else ""
            lines.append(f"  {MARK[t.status]} #{t.id:<4} {t.status.value:<11} {duration(t.runtime):>7} {cost(t.cost_usd):>7}  {label(t)}{why}")

    if not tasks and not any(counts.values()):
        lines += ["", "no tasks yet: orchestra submit --role tester \"write tests for the parser\""]
    if hint:
        lines += ["", _hints(waiting, running)]
    return "\n".join(_fit(line, width) for line in lines)


def _headline(counts: dict[Status, int], total_cost: float) -> str:
    order = [Status.WAITING, Status.REVIEW, Status.RUNNING, Status.CHECKING, Status.QUEUED, Status.SUCCEEDED, Status.FAILED,
             Status.TIMED_OUT, Status.CANCELLED, Status.INTERRUPTED]
    shown = [f"{counts[s]} {s.value.replace('_', ' ')}" for s in order if counts[s]]
    return "orchestra · " + (" · ".join(shown) if shown else "idle") + f" · cost {usd(total_cost)}"


def picture_requests() -> dict:
    """What the picture is drawn from, each reply bounded however long the history:
    the daemon's counts, the active tasks, the newest finished ones, the head of the
    queue and the newest workflows."""
    from orchestra.shared import protocol as p

    return {
        "info": p.Info(),
        "active": p.ListTasks(status=[Status.WAITING, Status.REVIEW, Status.RUNNING, Status.CHECKING]),
        "finished": p.ListTasks(status=sorted(FINISHED, key=lambda s: s.value), limit=RECENT),
        "queue": p.Queue(limit=QUEUE_SHOWN),
        "workflows": p.ListWorkflows(limit=WORKFLOWS_SHOWN),
        "merges": p.MergeStatus(limit=0),  # the ones not finished
    }


def picture(replies: dict, *, width: int = 100, hint: bool = True) -> str:
    """`render` of the replies to `picture_requests` (as their result types)."""
    tasks = [*replies["active"].tasks, *replies["finished"].tasks]
    merges = replies["merges"].merges if "merges" in replies else []
    return render(tasks, replies["queue"], replies["workflows"], width=width, hint=hint, info=replies["info"], merges=merges)


def picture_types() -> dict:
    from orchestra.shared import protocol as p

    return {"info": p.DaemonStatus, "active": p.TaskPage, "finished": p.TaskPage, "queue": list[p.TaskView], "workflows": list[p.WorkflowView],
            "merges": p.MergeQueue}


def _row(t: TaskView, state: str = "") -> str:
    """A task's line; `state` (how a running one is: "working", "silent 12 min") before its name."""
    now = f"{state:<13} " if state else ""
    return f"  #{t.id:<4} {t.role:<11} {t.agent:<7} {duration(t.runtime):>7} {cost(t.cost_usd):>7}  {now}{label(t)}"


def _hints(waiting: list[TaskView], running: list[TaskView]) -> str:
    if waiting:
        first = waiting[0]
        kind = first.waiting.kind if first.waiting is not None else ""
        how = {"permission": "--allow|--deny", "budget": "--budget N"}.get(kind, '1|"words"')
        return f"q quit · answer: orchestra respond {first.id} {how} · stop: orchestra stop ID · output: orchestra logs -f ID"
    if running:
        return f"q quit · stop: orchestra stop {running[0].id} · output: orchestra logs -f {running[0].id} · queue: orchestra queue"
    return "q quit · orchestra submit ... · orchestra workflow run NAME GOAL · orchestra ps"


def _fit(line: str, width: int) -> str:
    return shorten(line, width)


# ---------------------------------------------------------------------------------------
# the live screen


def run(app) -> None:
    """Draw the dashboard full-screen and keep it current until q or Ctrl-C."""
    import sys

    app.connection(timeout=None)  # starts the daemon if needed, or exits with a message
    if not sys.stdout.isatty():
        types = picture_types()
        replies = {name: app.call(request, types[name]) for name, request in picture_requests().items()}
        print(picture(replies, width=_size()[0]))
        return
    app.close()  # the screen makes connections of its own, and makes them again after a restart
    Screen(app.paths).loop()


def _size() -> tuple[int, int]:
    import shutil

    size = shutil.get_terminal_size((100, 30))
    return size.columns, size.lines


RECONNECT_FIRST = 0.25  # seconds before the first attempt to reach a daemon that went away ...
RECONNECT_MOST = 5.0  # ... doubling up to this between attempts


class Screen:
    """The terminal side: cbreak input, the alternate screen, and a redraw per change.

    A reader thread follows the daemon's Watch stream. When the daemon goes away (a
    restart, a crash), the picture stays, says so, and the reader connects again (after
    RECONNECT_FIRST seconds, doubling up to RECONNECT_MOST), as `orchestra mcp` does; on
    the new stream the picture is drawn afresh. Only q or Ctrl-C ends the screen."""

    CONNECTED = object()  # on the frame queue: a new Watch stream begins after it

    def __init__(self, paths) -> None:
        import os
        import queue
        import threading

        self.paths = paths
        self.frames: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)  # a full pipe already means "wake up"
        self.closing = threading.Event()
        self.watch_conn = None  # the reader's current connection
        self.tasks: dict[int, tuple[TaskView, float]] = {}  # id -> (view, monotonic time received)
        self.queue: list[TaskView] = []
        self.workflows: list[WorkflowView] = []
        self.info: DaemonStatus | None = None
        self.connected = False  # whether a Watch stream has begun: there is a picture to draw
        self.gone: str | None = None  # why the picture is not current, when it is not

    # -- the reader thread ----------------------------------------------------------------

    def _read_watch(self) -> None:
        """Follow the Watch stream onto the queue, with a wake-up per frame; when it ends,
        say why on the queue and connect again, until the screen closes."""
        from orchestra.shared import protocol as p
        from orchestra.client import connect
        from orchestra.wire import DaemonUnreachable

        delay = RECONNECT_FIRST
        while not self.closing.is_set():
            try:
                self.watch_conn = connect(self.paths, timeout=30)
                self.watch_conn.sock.settimeout(None)
                delay = RECONNECT_FIRST
                self.frames.put(self.CONNECTED)
                self._wake(b"c")
                for view in self.watch_conn.stream(p.Watch(), p.TaskView):
                    self.frames.put(view)
                    self._wake(b"w")
                reason = "the daemon ended the stream (it is shutting down)"
            except p.OrchestraError as exc:
                reason = exc.message
            except (OSError, DaemonUnreachable) as exc:
                reason = f"lost the connection to the daemon: {exc}" if self.watch_conn is not None else str(exc)
            except Exception as exc:  # the screen loop must still learn that the stream is over
                reason = f"the dashboard's reader failed: {exc!r}"
            if self.watch_conn is not None:
                self.watch_conn.close()
                self.watch_conn = None
            if self.closing.is_set():
                return
            self.frames.put(reason)
            self._wake(b"x")
            self.closing.wait(delay)
            delay = min(RECONNECT_MOST, delay * 2)

    def _wake(self, byte: bytes) -> None:
        import os

        try:
            os.write(self.wake_w, byte)
        except BlockingIOError:
            pass

    # -- the screen loop ------------------------------------------------------------------

    def loop(self) -> None:
        import os
        import select
        import signal
        import sys
        import termios
        import threading
        import tty

        out = sys.stdout
        fd = sys.stdin.fileno() if sys.stdin.isatty() else None
        saved = termios.tcgetattr(fd) if fd is not None else None
        reader = threading.Thread(target=self._read_watch, name="orchestra-watch", daemon=True)
        self.queries = None
        previous_winch = signal.signal(signal.SIGWINCH, lambda *_: self._wake(b"r"))
        try:
            reader.start()
            if fd is not None:
                tty.setcbreak(fd)
            out.write("\x1b[?1049h\x1b[?25l")
            while True:
                self._draw(out)
                ticking = self.gone is None and any(v.status.active for v, _ in self.tasks.values())
                watched = [self.wake_r] + ([fd] if fd is not None else [])
                ready, _, _ = select.select(watched, [], [], 1.0 if ticking else None)
                if fd is not None and fd in ready:
                    key = os.read(fd, 64)
                    if b"q" in key or b"Q" in key or b"\x03" in key:
                        break
                if self.wake_r in ready:
                    os.read(self.wake_r, 4096)
                    self._take_frames()
        except KeyboardInterrupt:
            pass
        finally:
            out.write("\x1b[?25h\x1b[?1049l")
            out.flush()
            if saved is not None:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            signal.signal(signal.SIGWINCH, previous_winch)
            self._close(reader)

    def _close(self, reader) -> None:
        import os
        import socket

        self.closing.set()
        if self.queries is not None:
            self.queries.close()
        conn = self.watch_conn
        if conn is not None:
            try:  # wakes the reader thread blocked in recv(); close() alone would not
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        reader.join(5)
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _take_frames(self) -> None:
        """Every frame that has arrived; the queue and the workflows again if tasks changed."""
        from orchestra.shared import protocol as p
        from orchestra.wire import DaemonUnreachable

        try:
            if self._drain():
                self._refresh()
        except (p.OrchestraError, OSError, DaemonUnreachable) as exc:
            self.gone = getattr(exc, "message", None) or f"lost the connection to the daemon: {exc}"
            if self.queries is not None:
                self.queries.close()
                self.queries = None  # the reader connects again, and says when

    def _drain(self) -> bool:
        """Take every frame that has arrived; True if the picture changed."""
        import queue

        changed = False
        while True:
            try:
                item = self.frames.get_nowait()
            except queue.Empty:
                return changed
            if item is self.CONNECTED:
                self._start_over()
                changed = True
            elif isinstance(item, str):
                self.gone = item
            else:
                self.tasks[item.id] = (item, time.monotonic())
                changed = True

    def _start_over(self) -> None:
        """A new Watch stream: forget what the old one said, and load the finished tasks.
        The stream was asked for before them, so that a task which finishes in between
        shows up in one or the other."""
        from orchestra.shared import protocol as p
        from orchestra.client import connect

        if self.queries is not None:
            self.queries.close()
        self.queries = connect(self.paths, timeout=30)
        self.tasks.clear()
        finished = p.ListTasks(status=sorted(FINISHED, key=lambda s: s.value), limit=FINISHED_KEPT)
        for t in self.queries.call(finished, p.TaskPage).tasks:
            self.tasks.setdefault(t.id, (t, time.monotonic()))
        self.connected, self.gone = True, None

    def _refresh(self) -> None:
        """The queue and the workflows: they change only when tasks do."""
        from orchestra.shared import protocol as p

        if self.queries is None:
            return
        self.info = self.queries.call(p.Info(), p.DaemonStatus)
        self.queue = self.queries.call(p.Queue(limit=SCREEN_QUEUE), list[p.TaskView])
        self.workflows = self.queries.call(p.ListWorkflows(limit=WORKFLOWS_SHOWN), list[p.WorkflowView])
        queued = {t.id for t in self.queue}
        for task_id, (view, _) in list(self.tasks.items()):
            if view.status is Status.QUEUED and task_id not in queued:  # removed from the queue
                del self.tasks[task_id]

    def _draw(self, out) -> None:
        import msgspec

        if not self.connected and self.gone is None:
            return  # the first stream has not begun: nothing to show yet
        now = time.monotonic()
        views = []
        for view, received in self.tasks.values():
            if view.status.active and view.runtime is not None and self.gone is None:
                view = msgspec.structs.replace(view, runtime=view.runtime + (now - received))
            views.append(view)
        width, height = _size()
        lines = render(views, self.queue, self.workflows, width=width - 1, info=self.info, now=time.time()).split("\n")
        if self.gone is not None:
            lines.insert(1, _fit(f"  the daemon is not answering ({self.gone}); reconnecting… (q to quit)", width - 1))
        if len(lines) > height - 1:
            lines = lines[: max(1, height - 2)] + [lines[-1]]  # keep the hint line
        body = "\x1b[K\r\n".join(_emphasize(line) for line in lines) + "\x1b[K"
        out.write("\x1b[H" + body + "\x1b[J")
        out.flush()


def _emphasize(line: str) -> str:
    """The first line in reverse video, section headings in bold."""
    if line.startswith("orchestra · "):
        return f"\x1b[7m{line}\x1b[0m"
    first = line.split(" ", 1)[0]
    if first.isupper() and first.isalpha():
        return f"\x1b[1m{line}\x1b[0m"
    return line
