"""The crash loop: submitters and running agents, a kill -9 at a random moment, a restart,
and a check of everything the daemon promised. Run short by the test suite and long by
bench/reliability.py.

Promises checked after every round:

* every submit that got an Ok reply is listed exactly once, with its id and its (unique)
  title; a submit cut off by the kill is listed at most once;
* a task that had finished before the kill still shows the same start, end and attempt
  count: nothing finished runs again (at the end, the log's ProcessSpawned records say how
  often each task was started, which must match its attempts);
* a task that was running when the daemon died is now finished, `interrupted` with the
  reason a person reads (or it finished on its own just before the kill);
* an interrupted Claude task can be resumed (Resume is accepted and the attempt runs);
* the log verifies (`orchestrad --verify` exits 0 while the daemon is down);
* no agent process is left behind: every process carrying the run's marker belongs to the
  session of a task the restarted daemon says is running.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from orchestra.shared import protocol as p
from orchestra.client import connect
from orchestra.shared.protocol import Status
from orchestra.wire import DaemonUnreachable, FrameTooLarge
from orchestrad import events as ev
from tests.daemon import wait_for
from tests.reliability.harness import MARK_VAR, RDaemon, alive, events_of, has_marker, marked, read_log, strays

INTERRUPTED_REASON = "the daemon stopped while it ran"

TITLE_VAR = "ORCHESTRA_RELIABILITY_TITLE"
RUNS_VAR = "ORCHESTRA_RELIABILITY_RUNS"
_RUN = f'echo "${TITLE_VAR}" >> "${RUNS_VAR}"; '  # every command notes each time it really runs

# (weight, argv, timeout): what the command agents run.
COMMANDS: list[tuple[int, list[str], float | None]] = [
    (3, ["sh", "-c", _RUN + "true"], None),
    (3, ["sh", "-c", _RUN + "sleep 0.2"], None),
    (3, ["sh", "-c", _RUN + "echo x; sleep 1"], None),
    # a child and a grandchild in the agent's process group; ends by timeout if no kill comes first
    (1, ["sh", "-c", _RUN + "echo started; sleep 30 & wait"], 3.0),
]


@dataclass
class Figures:
    rounds: int = 0
    submits_acked: int = 0
    submits_cut_off: int = 0  # sent, but the daemon died before replying
    submits_cut_off_present: int = 0  # of those, how many the daemon had recorded
    acked_lost: int = 0
    listed_twice: int = 0
    finished_reran: int = 0
    running_at_kill: int = 0
    interrupted: int = 0
    claude_submitted: int = 0
    claude_outcomes: Counter = field(default_factory=Counter)  # how every Claude task ended up
    claude_interrupted: int = 0
    resumes_accepted: int = 0
    resumed_succeeded: int = 0
    resumed_other: Counter = field(default_factory=Counter)
    processes_seen: int = 0
    ran_twice: int = 0  # command tasks whose program really ran more than once
    processes_left_behind: int = 0
    verify_failures: int = 0
    restart_seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        restart = sorted(self.restart_seconds)
        worst = f"{restart[-1]:.2f}" if restart else "-"
        median = f"{restart[len(restart) // 2]:.2f}" if restart else "-"
        return [
            f"rounds survived:                  {self.rounds}",
            f"submits acknowledged:             {self.submits_acked}",
            f"acknowledged submits lost:        {self.acked_lost}",
            f"tasks listed twice:               {self.listed_twice}",
            f"submits cut off by a kill:        {self.submits_cut_off} (recorded anyway: {self.submits_cut_off_present})",
            f"finished tasks that ran again:    {self.finished_reran}",
            f"tasks running at a kill:          {self.running_at_kill} (interrupted: {self.interrupted})",
            f"claude tasks:                     {self.claude_submitted} (interrupted: {self.claude_interrupted}, "
            f"resumes accepted: {self.resumes_accepted}, resumed and succeeded: {self.resumed_succeeded}, "
            f"resumed, other outcome: {dict(self.resumed_other) or 0}; at the end: {dict(self.claude_outcomes)})",
            f"agent processes seen:             {self.processes_seen}",
            f"command tasks that ran twice:     {self.ran_twice}",
            f"agent processes left behind:      {self.processes_left_behind}",
            f"verify failures:                  {self.verify_failures}",
            f"restart to serving (s):           median {median}, worst {worst}",
            f"problems:                         {len(self.problems)}",
        ]


class Submitter(threading.Thread):
    """One client on its own connection, submitting until told to stop, through kills."""

    def __init__(self, daemon: RDaemon, name: str, seed: int, stop: threading.Event, *,
                 make: Callable[[random.Random, str], p.Submit], pause: tuple[float, float]) -> None:
        super().__init__(daemon=True, name=name)
        self.paths = daemon.paths
        self.prefix = name
        self.rng = random.Random(seed)
        self.stop_event = stop
        self.make = make
        self.pause = pause
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # title -> task id, for every Ok reply
        self.cut_off: set[str] = set()  # titles sent whose reply never came
        self.refused: list[str] = []  # Error replies (none are expected)

    def run(self) -> None:
        conn = None
        n = 0
        while not self.stop_event.is_set():
            if conn is None:
                try:
                    conn = connect(self.paths, timeout=10)
                except (DaemonUnreachable, OSError, p.OrchestraError):
                    self.stop_event.wait(0.02)
                    continue
            title = f"{self.prefix}-{n}"
            n += 1
            request = self.make(self.rng, title)
            try:
                view = conn.call(request, p.TaskView)
            except p.OrchestraError as exc:
                with self.lock:
                    self.refused.append(f"{title}: {exc.code.value}: {exc.message}")
                continue
            except (DaemonUnreachable, OSError, FrameTooLarge):
                with self.lock:
                    self.cut_off.add(title)
                conn.close()
                conn = None
                continue
            with self.lock:
                self.acked[title] = view.id
            self.stop_event.wait(self.rng.uniform(*self.pause))
        if conn is not None:
            conn.close()

    def snapshot(self) -> tuple[dict[str, int], set[str]]:
        with self.lock:
            return dict(self.acked), set(self.cut_off)


def command_submit(marker: str, cwd: str) -> Callable[[random.Random, str], p.Submit]:
    weights = [w for w, _, _ in COMMANDS]
    runs = str(runs_file(cwd))

    def make(rng: random.Random, title: str) -> p.Submit:
        _, argv, timeout = rng.choices(COMMANDS, weights)[0]
        env = {MARK_VAR: marker, TITLE_VAR: title, RUNS_VAR: runs}
        return p.Submit(argv=argv, cwd=cwd, title=title, timeout=timeout, env=env)

    return make


def claude_submit(marker: str, cwd: str) -> Callable[[random.Random, str], p.Submit]:
    def make(rng: random.Random, title: str) -> p.Submit:
        return p.Submit(prompt=f"say ok ({title})", agent="claude", role="implementer", priority=10,
                        cwd=cwd, title=title, env={MARK_VAR: marker, TITLE_VAR: title})

    return make


def runs_file(home: str) -> Path:
    """Where every command task notes each real run of its program (one title a line)."""
    return Path(home) / "runs.txt"


def run(daemon: RDaemon, *, rounds: int, seed: int, live: tuple[float, float] = (0.4, 1.2),
        submitters: int = 3, claude: str | None = None, report: Callable[[str], None] = lambda s: None,
        stop_on_problem: bool = False) -> Figures:
    """Run the crash loop on `daemon` (not started yet); return its figures.

    `claude`: the path of the real Claude Code CLI; when given, a fourth client submits a
    Claude task every few seconds (the daemon's environment must already point it at a
    scripted API), and interrupted Claude tasks are resumed.
    """
    rng = random.Random(seed)
    fig = Figures()
    stop = threading.Event()
    cwd = str(daemon.home)
    daemon.start("--segment-bytes", str(64 << 10))
    configure(daemon, claude)

    threads = [
        Submitter(daemon, f"s{i}", seed * 100 + i, stop, make=command_submit(daemon.marker, cwd), pause=(0.05, 0.4))
        for i in range(submitters)
    ]
    if claude:
        threads.append(Submitter(daemon, "claude", seed * 100 + 99, stop, make=claude_submit(daemon.marker, cwd),
                                 pause=(2.0, 4.0)))
    finished: dict[int, tuple] = {}  # task -> (status, started_at, finished_at, attempts), once finished
    resumed: dict[int, int] = {}  # claude task -> attempts when we resumed it
    seen_pids: set[int] = set()
    for t in threads:
        t.start()
    try:
        for round_ in range(1, rounds + 1):
            time.sleep(rng.uniform(*live))  # the random moment of the kill, not a wait for anything
            before = daemon.tasks()
            check_finished(fig, finished, before, resumed, f"round {round_}, before the kill")
            remember(finished, before, resumed, fig, seen_pids)
            active_before = {t.id: t for t in before if t.status.active}
            kill_time = time.time()
            daemon.kill9()

            verified = daemon.orchestrad("--verify")
            if verified.returncode != 0:
                fig.verify_failures += 1
                fig.problems.append(f"round {round_}: orchestrad --verify exited {verified.returncode}: "
                                    f"{verified.stdout[-500:]} {verified.stderr[-1500:]}")
            t0 = time.monotonic()
            daemon.start()
            fig.restart_seconds.append(time.monotonic() - t0)

            acked, cut_off = merged(threads)
            after = daemon.tasks()
            check_acked(fig, acked, cut_off, after, f"round {round_}")
            check_finished(fig, finished, after, resumed, f"round {round_}, after the restart")
            check_interrupted(fig, active_before, after, kill_time, f"round {round_}")
            if claude:
                resume_claude(fig, daemon, after, resumed, f"round {round_}")
            remember(finished, after, resumed, fig, seen_pids)
            check_processes(fig, daemon, f"round {round_}")
            fig.rounds = round_
            report(f"round {round_}: {len(after)} tasks, {len(active_before)} running at the kill, "
                   f"{len(acked)} acknowledged so far, problems {len(fig.problems)}")
            if stop_on_problem and fig.problems:
                break
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    acked, cut_off = merged(threads)
    refused = [r for t in threads for r in t.refused]
    if refused:
        fig.problems.append(f"{len(refused)} submits were refused, e.g. {refused[:3]}")
    fig.submits_acked = len(acked)
    fig.submits_cut_off = len(cut_off)
    if claude:
        settle_resumed(fig, daemon, resumed)
    final = daemon.tasks()
    check_acked(fig, acked, cut_off, final, "at the end")
    check_finished(fig, finished, final, resumed, "at the end")
    fig.claude_submitted = sum(1 for t in final if t.agent == "claude")
    fig.claude_outcomes = Counter(t.status.value for t in final if t.agent == "claude")
    titles = {t.title for t in final}
    fig.submits_cut_off_present = len(cut_off & titles)
    code = daemon.stop()
    if code != 0:
        fig.problems.append(f"the daemon exited {code} on a graceful stop")
    verified = daemon.orchestrad("--verify")
    if verified.returncode != 0:
        fig.verify_failures += 1
        fig.problems.append(f"at the end: orchestrad --verify exited {verified.returncode}: {verified.stderr[-1500:]}")
    check_spawns(fig, daemon, final, seen_pids)
    return fig


def configure(daemon: RDaemon, claude: str | None) -> None:
    daemon.call(p.ConfigSet(key="max_concurrent", value=6))
    daemon.call(p.ConfigSet(key="kill_grace", value=0.5))
    daemon.call(p.ConfigSet(key="snapshot_every", value=100))  # crash while snapshotting too
    if claude:
        daemon.call(p.ConfigSet(key="claude_path", value=claude))
        daemon.call(p.ConfigSet(key="role_limits", value={"implementer": 2}))


def merged(threads: list[Submitter]) -> tuple[dict[str, int], set[str]]:
    acked: dict[str, int] = {}
    cut_off: set[str] = set()
    for t in threads:
        a, c = t.snapshot()
        acked.update(a)
        cut_off |= c
    return acked, cut_off


def remember(finished: dict[int, tuple], views: list[p.TaskView], resumed: dict[int, int], fig: Figures,
             seen_pids: set[int]) -> None:
    for t in views:
        if t.pid:
            seen_pids.add(t.pid)
        if t.status.finished and t.id not in finished and t.id not in resumed:
            finished[t.id] = (t.status, t.started_at, t.finished_at, t.attempts)


def check_acked(fig: Figures, acked: dict[str, int], cut_off: set[str], views: list[p.TaskView], when: str) -> None:
    by_title: dict[str, list[int]] = {}
    for t in views:
        by_title.setdefault(t.title, []).append(t.id)
    ids = Counter(t.id for t in views)
    twice = [i for i, n in ids.items() if n > 1] + [ti for ti, i in by_title.items() if len(i) > 1]
    if twice:
        fig.listed_twice += len(twice)
        fig.problems.append(f"{when}: listed more than once: {twice[:10]}")
    lost = [(title, task) for title, task in acked.items() if by_title.get(title) != [task]]
    if lost:
        fig.acked_lost = max(fig.acked_lost, len(lost))
        fig.problems.append(f"{when}: {len(lost)} acknowledged submits missing or changed, e.g. "
                            f"{[(ti, i, by_title.get(ti)) for ti, i in lost[:5]]}")


def check_finished(fig: Figures, finished: dict[int, tuple], views: list[p.TaskView], resumed: dict[int, int],
                   when: str) -> None:
    now = {t.id: t for t in views}
    for task_id, was in finished.items():
        if task_id in resumed:
            continue
        t = now.get(task_id)
        if t is None:
            fig.problems.append(f"{when}: finished task {task_id} is gone")
            continue
        if (t.status, t.started_at, t.finished_at, t.attempts) != was:
            fig.finished_reran += 1
            fig.problems.append(f"{when}: finished task {task_id} changed: was {was}, now "
                                f"{(t.status, t.started_at, t.finished_at, t.attempts)}")


def check_interrupted(fig: Figures, active_before: dict[int, p.TaskView], after: list[p.TaskView],
                      kill_time: float, when: str) -> None:
    now = {t.id: t for t in after}
    fig.running_at_kill += len(active_before)
    for task_id, was in active_before.items():
        t = now.get(task_id)
        if t is None:
            fig.problems.append(f"{when}: task {task_id}, running at the kill, is gone")
            continue
        if not t.status.finished:
            fig.problems.append(f"{when}: task {task_id}, running at the kill, is {t.status.value} after the restart")
            continue
        if t.attempts != was.attempts:
            fig.problems.append(f"{when}: task {task_id} was started again ({was.attempts} -> {t.attempts} attempts)")
        if t.status is Status.INTERRUPTED:
            fig.interrupted += 1
            if t.agent == "claude":
                fig.claude_interrupted += 1
            if t.reason != INTERRUPTED_REASON:
                fig.problems.append(f"{when}: task {task_id} interrupted with reason {t.reason!r}")
        elif t.finished_at is None or t.finished_at > kill_time:
            fig.problems.append(f"{when}: task {task_id}, running at the kill, ended {t.status.value} "
                                f"at {t.finished_at}, after the kill at {kill_time}")


def resume_claude(fig: Figures, daemon: RDaemon, after: list[p.TaskView], resumed: dict[int, int], when: str) -> None:
    for t in after:
        if t.agent != "claude" or t.status is not Status.INTERRUPTED:
            continue
        try:
            view = daemon.call(p.Resume(task=t.id), p.TaskView)
        except p.OrchestraError as exc:
            fig.problems.append(f"{when}: resuming interrupted claude task {t.id} was refused: {exc.message}")
            continue
        fig.resumes_accepted += 1
        resumed[t.id] = t.attempts
        if view.status not in (Status.QUEUED, Status.RUNNING, Status.WAITING):
            fig.problems.append(f"{when}: resumed claude task {t.id} is {view.status.value}")


def settle_resumed(fig: Figures, daemon: RDaemon, resumed: dict[int, int], timeout: float = 180) -> None:
    """Let resumed Claude tasks run to the end (no more kills), and count how they ended."""
    if not resumed:
        return
    views: dict[int, p.TaskView] = {}

    def done() -> bool:
        for t in daemon.tasks():
            views[t.id] = t
        return all(views[i].status.finished for i in resumed)

    try:
        wait_for(done, timeout, "resumed claude tasks to finish")
    except AssertionError as exc:
        fig.problems.append(str(exc))
    for task_id in resumed:
        t = views[task_id]
        if t.status is Status.SUCCEEDED and t.attempts > resumed[task_id]:
            fig.resumed_succeeded += 1
        else:
            fig.resumed_other[f"{t.status.value}: {t.reason[:80]}"] += 1


def check_processes(fig: Figures, daemon: RDaemon, when: str) -> None:
    """Every marked process belongs to a task the daemon runs (it may take a moment for
    the processes of a task that just ended to be gone)."""
    left: list = []

    def clean() -> bool:
        active = {t.pid for t in daemon.tasks() if t.status.active and t.pid}
        left[:] = strays(daemon.marker, active)
        if not left:
            return True
        # look again: a task may have started between the scan and the list
        active = {t.pid for t in daemon.tasks() if t.status.active and t.pid}
        left[:] = [s for s in left if s.session not in active and alive(s.pid)]
        return not left

    try:
        wait_for(clean, 10, "agent processes of no running task to be gone")
    except AssertionError:
        fig.processes_left_behind += len(left)
        views = {t.title: t for t in daemon.tasks()}
        described = []
        for s in left:
            title = _env(s.pid, TITLE_VAR)
            t = views.get(title)
            task = f"task {t.id} {t.status.value}, attempts {t.attempts}, pid {t.pid}" if t else "no such task"
            described.append(f"pid {s.pid} (session {s.session}) `{_cmd(s.pid)}` of {title!r}: {task}")
        fig.problems.append(f"{when}: processes of no running task left behind: {described}")


def _attempts_cut_off_before_spawning(fig: Figures, recs: list) -> Counter:
    """Per task, the attempts that were recorded as starting but ended before a process
    existed. Each must have ended interrupted (the kill came between the start's record
    and the spawn) or failed (it could not be started); any other end is a problem."""
    open_attempt: dict[int, bool] = {}  # task -> whether its latest attempt has a process
    cut: Counter = Counter()
    for r in recs:
        e = r.event
        if isinstance(e, ev.TaskStarting):
            open_attempt[e.task] = False
        elif isinstance(e, ev.ProcessSpawned):
            open_attempt[e.task] = True
        elif isinstance(e, ev.TaskFinished) and open_attempt.get(e.task) is False:
            del open_attempt[e.task]
            if e.outcome in (Status.INTERRUPTED, Status.FAILED):
                cut[e.task] += 1
            else:
                fig.problems.append(f"task {e.task} ended {e.outcome.value} in an attempt that never had a process")
        elif isinstance(e, ev.TaskFinished):
            open_attempt.pop(e.task, None)
    return cut


def check_spawns(fig: Figures, daemon: RDaemon, final: list[p.TaskView], seen_pids: set[int]) -> None:
    """With the daemon stopped: the log's ProcessSpawned records agree with the attempts,
    no command task was started twice, and no process of any attempt is still alive."""
    recs = read_log(daemon.paths.log_dir)
    spawned = events_of(recs, ev.ProcessSpawned)
    fig.processes_seen = len(spawned)
    starts = Counter(e.task for e in spawned)
    unspawned = _attempts_cut_off_before_spawning(fig, recs)
    views = {t.id: t for t in final}
    for task_id, n in starts.items():
        t = views.get(task_id)
        if t is None:
            continue
        # a task still queued or running in `final` may have started once more before the stop;
        # an attempt whose start was recorded when a kill came, before its process existed,
        # ended interrupted without one (durable before any process: never run twice)
        if t.status.finished and n != t.attempts - unspawned[task_id]:
            fig.problems.append(f"task {task_id} ({t.status.value}) has {t.attempts} attempts but was spawned {n} times")
        if t.agent == "command" and n > 1:
            fig.finished_reran += 1
            fig.problems.append(f"command task {task_id} was spawned {n} times")
    runs = Counter(runs_file(str(daemon.home)).read_text().split()) if runs_file(str(daemon.home)).exists() else Counter()
    twice = {title: n for title, n in runs.items() if n > 1}
    if twice:
        fig.ran_twice = len(twice)
        by_title = {t.title: t for t in final}
        fig.problems.append("command tasks whose program ran more than once: " + "; ".join(
            f"{title} ({n} runs; task {by_title[title].id if title in by_title else '?'}: "
            f"{by_title[title].status.value if title in by_title else '?'}, "
            f"{starts.get(by_title[title].id, 0) if title in by_title else '?'} spawn(s) recorded)"
            for title, n in sorted(twice.items())[:10]))
    pids = {e.pid for e in spawned} | seen_pids
    left: list[int] = []

    def gone() -> bool:
        left[:] = [pid for pid in pids if alive(pid) and has_marker(pid, daemon.marker)]
        left.extend(s.pid for s in marked(daemon.marker) if s.pid not in left)
        return not left

    try:
        wait_for(gone, 10, "every agent process to be gone after the daemon stopped")
    except AssertionError:
        fig.processes_left_behind += len(left)
        fig.problems.append(f"after the daemon stopped, processes alive: {[(pid, _cmd(pid)) for pid in left]}")


def _env(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(name.encode() + b"="):
                    return item.split(b"=", 1)[1].decode(errors="replace")
    except OSError:
        pass
    return "?"


def _cmd(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:100]
    except OSError:
        return "?"
