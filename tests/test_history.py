"""History off the heap: finished tasks move out of memory into the history database at
snapshots, and come back when a fact concerns them. The property: whatever moved out,
when, and however often the store restarted, memory and the history together are what a
replay of the whole log gives. A real log, real snapshots and a real SQLite file."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestra.shared import protocol as p
from orchestra.shared.protocol import OrchestraError, Status
from orchestrad import decide as d
from orchestrad import events as ev
from orchestrad import scheduler
from orchestrad.engine import named
from orchestrad.log import Log
from orchestrad.state import State, Task, history_counts, in_history, status_of, whole
from orchestrad.store import Store, replay_log


class Disk:
    """A store on disk driven as the engine drives it: commands take back what they name,
    facts are appended and folded, snapshots move old finished tasks out."""

    def __init__(self, root) -> None:
        self.root = root
        self.now = 1_000_000.0
        self.store: Store | None = None
        self.pending: list = []

    def open(self) -> None:
        self.store = Store.open(self.root / "log", self.root / "snapshots", segment_bytes=2048)
        self.store.attach()

    async def close(self) -> None:
        await self.settle()
        await self.store.snapshot_settled()
        await self.store.close()
        self.store.history.close()

    @property
    def state(self) -> State:
        return self.store.state

    def append(self, events: list[ev.Event]) -> None:
        if events:
            items = [(e, b"x" * e.size) if isinstance(e, ev.OutputAppended) else e for e in events]
            self.pending.append(self.store.append(self.now, items))

    async def settle(self) -> None:
        for durable in self.pending:
            await durable
        self.pending = []

    def do(self, command: p.Request) -> None:
        self.store.take_back(named(self.state, command))
        self.append(d.decide(self.state, command, self.now))

    def tick(self) -> None:
        plan = scheduler.plan(self.state, self.now)
        self.append(plan.events)
        for task in plan.start:
            attempt = self.state.tasks[task].attempts + 1
            self.append([ev.TaskStarting(task=task, attempt=attempt), ev.ProcessSpawned(task=task, attempt=attempt, pid=10_000 + task, argv=[])])

    def everything(self) -> State:
        """Memory and the history together, as one state."""
        store = self.store
        moving = set(store._moving)
        rows = [*store._moving.values(), *store.history.all_current(lambda t: in_history(self.state, t) and t not in moving)]
        return whole(self.state, iter(rows))

    def listed(self, **filters) -> tuple[list, int]:
        """What a listing of every task gives (newest first), and the total it counts."""
        kw = {"status": [], "role": None, "since": None, "grep": "", "before": None, "active_only": False, **filters}
        tasks, total = self.store.listing(**kw)
        return list(tasks), total

    def replayed(self) -> State:
        with Log.open(self.root / "log", readonly=True) as log:
            return whole(replay_log(log, State()), iter(()))


action = st.one_of(
    st.tuples(st.just("work"), st.integers(1, 4), st.sampled_from([0, 1])),  # submit, start, end: history to move
    st.tuples(st.just("submit"), st.integers(-3, 3), st.lists(st.integers(0, 40), max_size=2)),
    st.tuples(st.just("tick")),
    st.tuples(st.just("output"), st.integers(0, 40), st.integers(0, 300)),
    st.tuples(st.just("usage"), st.integers(0, 40)),
    st.tuples(st.just("exit"), st.integers(0, 40), st.sampled_from([0, 1])),
    st.tuples(st.just("again"), st.integers(0, 40)),  # a finished task continues (a follow-up)
    st.tuples(st.just("remove"), st.integers(0, 40)),
    st.tuples(st.just("purge"), st.integers(0, 40)),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("keep"), st.integers(0, 3)),  # history_in_memory
)
action = st.one_of(
    action, st.tuples(st.just("work"), st.integers(1, 4), st.sampled_from([0, 1])), st.just(("snapshot",)),
    st.just(("soon",)),  # a snapshot written in the background while facts go on
    st.just(("yield",)),  # the loop runs: a snapshot written meanwhile is done with
    st.just(("crash",)),  # a snapshot written, then a crash before the rows it no longer needs were let go
)


async def drive(disk: Disk, actions) -> None:
    disk.open()
    disk.do(p.ConfigSet(key="max_concurrent", value=3))
    disk.do(p.ConfigSet(key="history_in_memory", value=1))
    for a in actions:
        kind = a[0]
        ids = list(range(1, disk.state.next_task))
        active = sorted(disk.state.active)
        finished = [t for t in ids if (status_of(disk.state, t) or Status.QUEUED).finished]
        try:
            if kind == "work":
                for _ in range(a[1]):
                    disk.do(p.Submit(cwd="/tmp", argv=["true"], title=f"work {disk.state.next_task}"))
                disk.tick()
                for task in sorted(disk.state.active):
                    disk.append([ev.OutputAppended(task=task, stream="stdout", size=task % 50)])
                    disk.append(d.process_exited(disk.state, task, 10_000 + task, a[2], None, now=disk.now))
            elif kind == "submit":
                after = sorted({ids[i % len(ids)] for i in a[2]}) if ids else []
                disk.do(p.Submit(cwd="/tmp", argv=["true"], title=f"job {len(ids)}", priority=a[1], after=after))
            elif kind == "tick":
                disk.tick()
            elif kind in ("output", "usage", "exit") and active:
                task = active[a[1] % len(active)]
                if kind == "output":
                    disk.append([ev.OutputAppended(task=task, stream="stdout", size=a[2])])
                elif kind == "usage":
                    disk.append([ev.UsageRecorded(task=task, cost_usd=0.25, input_tokens=1, output_tokens=2)])
                else:
                    disk.append(d.process_exited(disk.state, task, 10_000 + task, a[2], None, now=disk.now))
            elif kind == "again" and finished:
                task = finished[a[1] % len(finished)]
                disk.store.take_back([task])
                disk.append([ev.TaskContinued(task=task, message="once more", reason="follow-up")])
            elif kind == "remove" and ids:
                disk.do(p.Remove(task=ids[a[1] % len(ids)]))
            elif kind == "purge" and finished:
                disk.append([ev.TasksPurged(tasks=finished[a[1] % len(finished):][:2])])
            elif kind == "soon":
                disk.store.snapshot_soon()
            elif kind == "yield":
                await asyncio.sleep(0.01)
            elif kind == "snapshot":
                await disk.settle()
                await disk.store.snapshot_settled()
                disk.store.snapshot_now()
            elif kind == "restart":
                await disk.settle()
                before = disk.everything()
                await disk.close()
                disk.open()
                assert disk.everything() == before
            elif kind == "crash":
                await disk.settle()
                await disk.store.snapshot_settled()
                before = disk.everything()
                release, disk.store.history.release = disk.store.history.release, lambda *args: None
                disk.store.snapshot_now()
                disk.store.history.release = release
                await disk.close()
                disk.open()  # start-up lets them go
                assert disk.everything() == before
            elif kind == "keep":
                disk.do(p.ConfigSet(key="history_in_memory", value=a[1]))
        except OrchestraError:
            pass
        check_listing(disk)  # at every step: while a snapshot is written too
        disk.now += 1
    await disk.settle()


@settings(max_examples=60, deadline=None)
@given(st.lists(action, min_size=10, max_size=90))
def test_memory_and_the_history_together_are_a_replay_of_the_whole_log(tmp_path_factory, actions):
    disk = Disk(tmp_path_factory.mktemp("home"))

    async def main() -> None:
        await drive(disk, actions)
        assert disk.everything() == disk.replayed()
        check_listing(disk)
        await disk.close()
        disk.open()  # and a restart starts from the same
        assert disk.everything() == disk.replayed()
        check_listing(disk)
        assert not disk.store.verify()[-1].startswith("MISMATCH")
        await disk.close()

    asyncio.run(main())


def check_listing(disk: Disk) -> None:
    """Listings, from memory and the history, show each task once, as it is, and count the
    same; filters by status, by text, and pages by id."""
    every = disk.everything().tasks
    newest = sorted(every.values(), key=lambda t: -t.id)
    listed, total = disk.listed()
    assert listed == newest and total == len(newest)
    assert disk.store.history_counts() == history_counts(disk.state)  # kept as tasks come and go: what a count says
    failed = [t for t in newest if t.status is Status.FAILED]
    listed, total = disk.listed(status=[Status.FAILED])
    assert listed == failed and total == len(failed)
    if newest:
        middle = newest[len(newest) // 2].id
        listed, total = disk.listed(before=middle, grep="work")  # the total counts those before the page too
        expected = [t for t in newest if "work" in t.spec.title]
        assert listed == [t for t in expected if t.id < middle] and total == len(expected)
        listed, total = disk.listed(before=middle, status=[Status.SUCCEEDED, Status.QUEUED])
        expected = [t for t in newest if t.status in (Status.SUCCEEDED, Status.QUEUED)]
        assert listed == [t for t in expected if t.id < middle] and total == len(expected)


def history_rows(home) -> list[tuple[int, str]]:
    """(task, status) of every row of a home's history database, read with sqlite3."""
    import sqlite3

    from orchestra.shared.paths import resolve

    with sqlite3.connect(resolve(home).snapshot_dir / "history.db") as db:
        return db.execute("SELECT id, status FROM tasks ORDER BY id").fetchall()


def test_old_tasks_leave_memory_yet_are_listed_shown_logged_and_run_again_across_restarts(daemon):
    import json

    daemon.call(p.ConfigSet(key="history_in_memory", value=1))
    ids = [daemon.submit("sh", "-c", f"echo out-{n}; exit {3 if n == 2 else 0}", title=f"job {n}") for n in range(1, 5)]
    for task in ids:
        daemon.wait_status(task, *p.FINISHED)
    assert daemon.cli("cleanup").exit_code == 0  # writes a snapshot: the three oldest move out
    assert history_rows(daemon.home) == [(ids[0], "succeeded"), (ids[1], "failed"), (ids[2], "succeeded")]

    def listed(*args: str) -> list[tuple[int, str]]:
        result = daemon.cli("ps", "--all", "--json", *args)
        assert result.exit_code == 0, result.output
        return [(t["id"], t["status"]) for t in json.loads(result.output)]

    for _ in range(2):  # and again from a restarted daemon
        assert listed() == [(ids[0], "succeeded"), (ids[1], "failed"), (ids[2], "succeeded"), (ids[3], "succeeded")]
        assert listed("--status", "failed") == [(ids[1], "failed")]
        assert listed("--grep", "JOB 1") == [(ids[0], "succeeded")]
        page = daemon.call(p.ListTasks(limit=2), p.TaskPage)
        assert [t.id for t in page.tasks] == [ids[3], ids[2]] and page.total == 4 and page.more
        old = daemon.task(ids[0])
        assert old.status is Status.SUCCEEDED and old.title == "job 1" and old.exit_code == 0
        assert daemon.output_of(ids[0]) == b"out-1\n"
        status = daemon.call(p.Info(), p.DaemonStatus)
        assert status.counts == {"succeeded": 3, "failed": 1}
        daemon.stop()
        daemon.start()

    again = daemon.call(p.Resume(task=ids[1]), p.TaskView)  # a task of the history runs again
    assert again.id == ids[1]
    done = daemon.wait_status(ids[1], *p.FINISHED)
    assert done.status is Status.FAILED and done.attempts == 2
    assert daemon.output_of(ids[1]) == b"out-2\nout-2\n"  # both attempts' output
    daemon.stop()  # its shutdown snapshot moves it out again; its older row goes
    assert history_rows(daemon.home) == [(ids[0], "succeeded"), (ids[1], "failed"), (ids[2], "succeeded")]
    daemon.start()
    assert daemon.task(ids[1]).attempts == 2 and daemon.output_of(ids[1]) == b"out-2\nout-2\n"
    verified = subprocess_verify(daemon)
    assert "ok: replaying" in verified and "MISMATCH" not in verified, verified


def subprocess_verify(daemon) -> str:
    """`orchestrad --verify` on the home, as a person runs it."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "orchestrad", "--home", str(daemon.home), "--verify"],
                          env=daemon.env, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_ps_all_with_a_limit_shows_the_newest_that_match_in_the_whole_history(daemon):
    import json

    daemon.call(p.ConfigSet(key="history_in_memory", value=0))
    ids = [daemon.submit("sh", "-c", f"exit {n % 2}", title=f"t{n}") for n in range(6)]  # odd ones fail
    for task in ids:
        daemon.wait_status(task, *p.FINISHED)
    assert daemon.cli("cleanup").exit_code == 0
    result = daemon.run_cli("ps", "--all", "--limit", "2", "--status", "failed", "--json")  # the quick path gives way to the CLI for --json
    assert result.returncode == 0, result.stderr
    assert [t["id"] for t in json.loads(result.stdout)] == [ids[3], ids[5]]
    shown = daemon.run_cli("ps", "--all", "--limit", "2", "--status", "failed")
    assert shown.returncode == 0 and "the newest 2 of 3 finished tasks are shown" in shown.stderr
    assert [line.split()[0] for line in shown.stdout.splitlines()[1:]] == [str(ids[3]), str(ids[5])]


def test_the_diff_of_a_worktree_task_in_the_history(daemon, tmp_path):
    from tests.gitrepo import make_repo

    repo = make_repo(tmp_path / "repo")
    daemon.call(p.ConfigSet(key="history_in_memory", value=0))
    task = daemon.submit("sh", "-c", "echo changed >> README; git commit -qam change", cwd=str(repo), worktree=True)
    assert daemon.wait_status(task, *p.FINISHED).status is Status.SUCCEEDED
    assert daemon.cli("cleanup").exit_code == 0
    assert history_rows(daemon.home) == [(task, "succeeded")]
    diff = daemon.call(p.Diff(task=task), p.DiffResult)
    assert diff.files == 1 and "+changed" in diff.diff


def test_a_task_with_an_older_row_is_listed_and_counted_by_its_newest(tmp_path):
    """Between a snapshot that moves a task out again and the release of its older row,
    the history holds two rows of it; only the newest says how it stands now."""
    from orchestrad.history import Filter, History, frozen
    from orchestrad.state import Task

    history = History(tmp_path / "history.db")
    spec = ev.TaskSpec(prompt="", argv=["true"], role="generalist", agent="command", priority=0, after=[], cwd="/tmp",
                       env={}, secret_env=[], timeout=None, idle_timeout=None, budget_usd=None, model=None, title="t")
    failed = Task(id=7, spec=spec, status=Status.FAILED, finished_at=1.0, cost_usd=1.0)
    succeeded = Task(id=7, spec=spec, status=Status.SUCCEEDED, finished_at=2.0, cost_usd=3.0, attempts=2)
    history.put(5, [(frozen(failed, b""), None)])
    history.put(9, [(frozen(succeeded, b""), None)])

    def listed(*statuses: Status) -> list[Task]:
        return list(history.page(Filter(status=statuses), [7], lambda t: True, 10))

    assert listed() == [succeeded] and listed(Status.SUCCEEDED, Status.FAILED) == [succeeded]
    assert listed(Status.FAILED) == [] and listed(Status.SUCCEEDED) == [succeeded]
    assert history.count(Filter(status=[Status.FAILED]), [7], lambda t: True) == 0
    assert history.count(Filter(), [7], lambda t: True) == 1
    assert history.cost([7], lambda t: True) == 3.0
    assert listed() == [succeeded] and history.get(7).task == succeeded and history.get(7, at_most=8).task == failed
    history.release(9, [7], still=[7])
    assert history.rows() == 1
    history.close()


def test_text_is_found_through_the_search_index_as_written(tmp_path):
    from orchestrad.history import Filter, History, frozen, searchable
    from orchestrad.state import Task

    history = History(tmp_path / "history.db")

    def task(task_id: int, title: str, result: str = "") -> Task:
        spec = ev.TaskSpec(prompt="", argv=["true"], role="generalist", agent="command", priority=0, after=[], cwd="/tmp",
                           env={}, secret_env=[], timeout=None, idle_timeout=None, budget_usd=None, model=None, title=title)
        return Task(id=task_id, spec=spec, status=Status.SUCCEEDED, finished_at=1.0, result=result)

    tasks = [task(1, "Fix the Parser"), task(2, "100% done_now", "ok"), task(3, "tidy", "the PARSER is fine"), task(4, "ab")]
    history.put(5, [(frozen(t, b""), None) for t in tasks])

    def found(text: str) -> list[int]:
        want = Filter(grep=text.casefold())
        ids = [t.id for t in history.page(want, [1], lambda t: True, 10)]  # task 1 comes to have two rows
        assert history.count(want, [1], lambda t: True) == len(ids)
        return ids

    assert found("parser") == [3, 1] and found("PARSER") == [3, 1]  # title or result, any case
    assert found("0% d") == [2] and found("e_n") == [2] and found("%") == [2] and found("_") == [2]  # as written, not patterns
    assert found("ab") == [4] and found("zzz") == []  # two characters: no trigram, found all the same
    history.put(9, [(frozen(task(1, "Fix the lexer"), b""), None)])  # its newest row is what is searched
    assert found("parser") == [3] and found("lexer") == [1]
    history.release(9, [3], still=[])
    assert found("parser") == []
    assert history.discard_after(8) == 1 and found("parser") == [1] and found("lexer") == []
    history.close()
    reopened = History(tmp_path / "history.db")
    assert [t.id for t in reopened.page(Filter(grep="parser"), [], lambda t: True, 10)] == [1]
    assert searchable(tasks[2]) == "tidy\nthe parser is fine"
    reopened.close()


def test_what_the_history_cost_is_kept_as_rows_come_and_go(tmp_path):
    from orchestrad.history import Filter, History, frozen

    history = History(tmp_path / "history.db")
    spec = ev.TaskSpec(prompt="", argv=["true"], role="generalist", agent="command", priority=0, after=[], cwd="/tmp",
                       env={}, secret_env=[], timeout=None, idle_timeout=None, budget_usd=None, model=None, title="t")
    rows = [frozen(Task(id=i, spec=spec, status=Status.SUCCEEDED, finished_at=1.0, cost_usd=float(i)), b"") for i in range(1, 5)]
    history.put(5, [(row, None) for row in rows])
    history.put(5, [(rows[0], None)])  # the same row again (a snapshot tried again at the same record)
    assert history.cost([], lambda t: True) == 10.0
    history.release(6, [2], still=[])
    assert history.cost([], lambda t: True) == 8.0 and history.count(Filter(), [], lambda t: True) == 3
    assert history.discard_after(4) == 3 and history.cost([], lambda t: True) == 0.0
    history.close()


def test_a_history_database_removed_is_made_again_from_the_log(daemon):
    from orchestra.shared.paths import resolve

    daemon.call(p.ConfigSet(key="history_in_memory", value=0))
    ids = [daemon.submit("sh", "-c", f"echo {n}", title=f"job {n}") for n in range(3)]
    for task in ids:
        daemon.wait_status(task, *p.FINISHED)
    daemon.stop()  # its shutdown snapshot moves them out
    assert [row[0] for row in history_rows(daemon.home)] == ids
    for path in resolve(daemon.home).snapshot_dir.glob("history.db*"):
        path.unlink()
    daemon.start()
    assert [t.id for t in daemon.tasks()] == ids and daemon.output_of(ids[0]) == b"0\n"
    assert "replaying the whole log instead" in daemon.output()
