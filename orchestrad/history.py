"""The history: finished tasks that left the daemon's memory, kept in SQLite.

The log is the only source of truth. This is a read model of it, like a snapshot: each row
is a finished task exactly as the fold left it (the `Task`, and the places of its output in
the log), written when the task moved out of memory, so that memory, start-up and listing
do not grow with history. It can always be rebuilt by replaying the log.

A row is keyed by (task, seq), seq being the last record of the state it was taken from
(the snapshot it was moved out for). The state keeps, per task id, whether its task is in
the history, and how it ended (`State.cold`); it never holds the row. Which row is the
task's is the newest one no later than the state's snapshot, so:

* rows are written, and committed, before the snapshot that says their tasks left memory;
  rows newer than the snapshot a daemon starts from were written for a snapshot that never
  became durable, and are deleted at start-up (`discard_after`);
* a task taken back into memory (a follow-up of an old task) keeps its rows until a
  snapshot without them is durable: the state lists it in `released`, and the rows a
  later snapshot no longer needs are deleted once it is written (`release`), and again
  at start-up, should a crash have come in between.

The rows follow the newest snapshot: a daemon that starts from an older one (the newest
was damaged) may find a task's row gone, and says so; the log still holds every fact.

Columns besides the task itself serve listing (status, role, submission time, workflow,
and casefolded title and result for `--grep`), and compaction (the log segment of a task's
first output chunk). Standard library only; one connection, owned by the store's thread
of the moment (the event loop's, or the snapshot writer's, never both at once: see
`orchestrad.store`).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import msgspec

from orchestra.shared.protocol import Status
from orchestra.shared.vocab import FINISHED
from orchestrad.state import Task

__all__ = ["History", "HistoryError", "Row"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    role TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    finished_at REAL,
    workflow INTEGER,
    cost REAL NOT NULL,
    text TEXT NOT NULL,
    first_segment INTEGER,
    task BLOB NOT NULL,
    outputs BLOB,
    PRIMARY KEY (id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, id);
CREATE INDEX IF NOT EXISTS tasks_by_role ON tasks (role, id);
CREATE INDEX IF NOT EXISTS tasks_by_seq ON tasks (seq);
CREATE INDEX IF NOT EXISTS tasks_by_finish ON tasks (finished_at);
CREATE INDEX IF NOT EXISTS tasks_by_submit ON tasks (submitted_at);
CREATE VIRTUAL TABLE IF NOT EXISTS search USING fts5(text, tokenize = 'trigram');
CREATE TABLE IF NOT EXISTS sums (cost REAL NOT NULL);
CREATE TRIGGER IF NOT EXISTS sums_on_insert AFTER INSERT ON tasks BEGIN UPDATE sums SET cost = cost + NEW.cost; END;
CREATE TRIGGER IF NOT EXISTS sums_on_delete AFTER DELETE ON tasks BEGIN UPDATE sums SET cost = cost - OLD.cost; END;
"""
# `search` holds, for each task (its rowid is the task's id), the text of its newest row,
# indexed by trigrams: a `--grep` of three characters or more finds its tasks through the
# index instead of reading every row. `sums` holds what the rows cost together, kept by
# triggers (a row a REPLACE removes counts too: recursive triggers are on).
_VERSION = 2  # PRAGMA user_version: 1 has `search`, 2 `sums`

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Task).decode


class HistoryError(Exception):
    """The history cannot be read or written; says what to do."""


class Row(NamedTuple):
    task: Task
    outputs: bytes  # packed output places (see state.output_refs), b"" for none
    blob: bytes = b""  # the task encoded as it was then, for a row still to be written


def frozen(task: Task, outputs: bytes) -> Row:
    """A row of `task` as it is now: what is written, or taken back, is this moment's task
    though the object changes later (the fold changes a task in memory in place)."""
    return Row(task, outputs, _encode(task))


def thawed(row: Row) -> Task:
    """The task of a frozen row, as a new object to change."""
    return _decode(row.blob)


class Filter(NamedTuple):
    """What a listing asks for: statuses (empty: any), a role, submitted at or after
    `since`, casefolded text in the title or the result, ids below `before`."""

    status: Sequence[Status] = ()
    role: str | None = None
    since: float | None = None
    grep: str = ""
    before: int | None = None


def searchable(task: Task) -> str:
    """What `--grep` looks in: the title and the result, casefolded."""
    return f"{task.spec.title.casefold()}\n{(task.result or '').casefold()}"


class History:
    """The history database of one home. `path` is created 0600 in a 0700 directory."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.upto: int | None = None  # read-only: rows past the snapshot read from (a live daemon's, not yet its own)
        self._lock = threading.Lock()  # the loop reads while the snapshot writer writes
        try:
            if readonly and self.path.exists():
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
                return
            if readonly:  # nothing moved out yet: an empty history
                self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            else:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA recursive_triggers = ON")
            if not readonly and self._db.execute("PRAGMA user_version").fetchone()[0] < _VERSION:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("DELETE FROM search")
                self._db.execute("INSERT INTO search (rowid, text) SELECT id, text FROM tasks AS t "
                                 "WHERE seq = (SELECT max(seq) FROM tasks WHERE id = t.id)")
                self._db.execute("DELETE FROM sums")
                self._db.execute("INSERT INTO sums SELECT total(cost) FROM tasks")
                self._db.execute(f"PRAGMA user_version = {_VERSION}")
                self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise HistoryError(
                f"{self.path} cannot be opened ({exc}); stop the daemon, move it and the snapshots aside, "
                "and start it again: both are rebuilt from the log"
            ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writing ------------------------------------------------------------------------

    def put(self, seq: int, rows: Iterable[tuple[Row, int | None]]) -> int:
        """Store finished tasks as of `seq` (frozen rows), each with the log segment of its
        first output chunk (None: no output). Committed when it returns."""
        values = [
            (t.id, seq, t.status.value, t.role, t.submitted_at, t.finished_at, t.spec.workflow, t.cost_usd, searchable(t),
             first, blob, outputs or None)
            for (t, outputs, blob), first in rows
        ]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", values)
                # The rows put are each task's newest: its text is what --grep searches now.
                self._db.executemany("DELETE FROM search WHERE rowid = ?", [(v[0],) for v in values])
                self._db.executemany("INSERT INTO search (rowid, text) VALUES (?, ?)", [(v[0], v[8]) for v in values])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(values)

    def release(self, seq: int, tasks: Iterable[int], still: Iterable[int]) -> None:
        """After the snapshot at `seq` is durable: of `tasks` (taken back into memory or
        purged since the last one), delete every row, but for those in `still` (in the
        history again at `seq`) their newest row up to `seq`."""
        keep = set(still)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for task in set(tasks):
                    if task in keep:
                        self._db.execute(
                            "DELETE FROM tasks WHERE id = ? AND seq < (SELECT max(seq) FROM tasks WHERE id = ? AND seq <= ?)",
                            (task, task, seq),
                        )
                    else:
                        self._db.execute("DELETE FROM tasks WHERE id = ? AND seq <= ?", (task, seq))
                    self._reindex(task)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def discard_after(self, seq: int) -> int:
        """Delete the rows newer than the snapshot the daemon starts from (see above)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [row[0] for row in self._db.execute("SELECT DISTINCT id FROM tasks WHERE seq > ?", (seq,))]
                dropped = self._db.execute("DELETE FROM tasks WHERE seq > ?", (seq,)).rowcount
                for task in ids:
                    self._reindex(task)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return dropped

    def _reindex(self, task: int) -> None:
        """Search the text of task `task`'s newest row (none if it has none left)."""
        self._db.execute("DELETE FROM search WHERE rowid = ?", (task,))
        self._db.execute("INSERT INTO search (rowid, text) SELECT id, text FROM tasks WHERE id = ? ORDER BY seq DESC LIMIT 1", (task,))

    # -- reading ------------------------------------------------------------------------

    def get(self, task_id: int, at_most: int | None = None) -> Row:
        """The task `task_id` as the history holds it: its newest row (up to `at_most`)."""
        at_most = self.upto if at_most is None else at_most
        sql = "SELECT task, outputs FROM tasks WHERE id = ?" + (" AND seq <= ?" if at_most is not None else "")
        args = (task_id,) if at_most is None else (task_id, at_most)
        with self._lock:
            found = self._db.execute(sql + " ORDER BY seq DESC LIMIT 1", args).fetchone()
        if found is None:
            raise HistoryError(
                f"task {task_id} should be in {self.path} and is not (was an older snapshot used?); "
                "stop the daemon, move the file and the snapshots aside, and start it again to rebuild them from the log"
            )
        return Row(_decode(found[0]), found[1] or b"")

    def page(self, want: Filter, candidates: Iterable[int], current: Callable[[int], bool], limit: int) -> Iterator[Task]:
        """Tasks matching `want`, newest first, each by its current row (see `count` for
        `candidates` and `current`): read `limit` at a time at first, then more at a time,
        for as long as the caller reads. Each status is read through its index, in id
        order, and the statuses merged here: one query for several would sort them all."""
        with self._lock, self._reading():
            stale = set(self._stale(candidates, current))
        statuses = [None] if not want.status or set(want.status) >= FINISHED else sorted(set(want.status), key=lambda s: s.value)
        rows = heapq.merge(*(self._rows(want._replace(status=() if s is None else (s,)), limit) for s in statuses),
                           key=lambda row: (-row[0], -row[1]))
        for task_id, seq, blob in rows:
            if (task_id, seq) not in stale and current(task_id):
                yield _decode(blob)

    def _rows(self, want: Filter, limit: int) -> Iterator[tuple[int, int, bytes]]:
        """(id, seq, task) of the rows matching `want`, newest first, in growing reads."""
        if want.grep:
            yield from self._found(want, limit)
            return
        before, chunk = want.before, max(limit, 1)
        while True:
            where, args = _where(want._replace(before=before))
            with self._lock:
                found = self._db.execute(f"SELECT id, seq, task FROM tasks {where} ORDER BY id DESC, seq DESC LIMIT ?",
                                         [*args, chunk]).fetchall()
            yield from found
            if len(found) < chunk:
                return
            # The next read starts below the last id: that id's other rows are older ones.
            before, chunk = found[-1][0], min(chunk * 4, 5000)

    def _found(self, want: Filter, limit: int) -> Iterator[tuple[int, int, bytes]]:
        """`_rows` for a text: the tasks whose text holds it, from the search index, newest
        first, then their rows that match the rest of `want`."""
        before, chunk, rest = want.before, max(limit, 1), want._replace(grep="", before=None)
        where, args = _where(rest)
        glue = "AND" if where else "WHERE"
        while True:
            with self._lock:
                match, text = _search(want.grep)
                ids = [row[0] for row in self._db.execute(
                    f"SELECT rowid FROM search WHERE {match}" + (" AND rowid < ?" if before is not None else "")
                    + " ORDER BY rowid DESC LIMIT ?", [text, *([before] if before is not None else []), chunk])]
                found = self._db.execute(
                    f"SELECT id, seq, task FROM tasks {where} {glue} id IN ({','.join('?' * len(ids))}) ORDER BY id DESC, seq DESC",
                    [*args, *ids]).fetchall() if ids else []
            yield from found
            if len(ids) < chunk:
                return
            before, chunk = ids[-1], min(chunk * 4, 5000)

    def count(self, want: Filter, candidates: Iterable[int], current: Callable[[int], bool]) -> int:
        """How many tasks match `want`: rows, but of the `candidates` (tasks that may have
        rows that are not their current one) only the newest, and only if `current(id)`."""
        if want.grep and not _where(want._replace(grep=""))[0]:
            return self._count_text(want.grep, candidates, current)
        where, args = _where(want)
        glue = "AND" if where else "WHERE"
        with self._lock, self._reading():
            total = self._db.execute(f"SELECT count(*) FROM tasks {where}", args).fetchone()[0]
            for part in _parts(self._stale(candidates, current)):
                flat = [x for pair in part for x in pair]
                total -= self._db.execute(
                    f"SELECT count(*) FROM tasks {where} {glue} (id, seq) IN (VALUES {','.join('(?,?)' for _ in part)})",
                    [*args, *flat]).fetchone()[0]
        return total

    def _count_text(self, grep: str, candidates: Iterable[int], current: Callable[[int], bool]) -> int:
        """`count` of a text alone, from the search index, which holds one row per task (its
        newest row's text), less the candidates whose rows are not current."""
        match, text = _search(grep)
        gone = sorted({t for t in candidates if not current(t)})
        with self._lock, self._reading():
            total = self._db.execute(f"SELECT count(*) FROM search WHERE {match}", [text]).fetchone()[0]
            for part in _parts(gone):
                total -= self._db.execute(f"SELECT count(*) FROM search WHERE {match} AND rowid IN ({','.join('?' * len(part))})",
                                          [text, *part]).fetchone()[0]
        return total

    def cost(self, candidates: Iterable[int], current: Callable[[int], bool]) -> float:
        """What the tasks in the history cost together (see `count`)."""
        with self._lock, self._reading():
            total = self._db.execute("SELECT total(cost) FROM sums").fetchone()[0]
            for part in _parts(self._stale(candidates, current)):
                flat = [x for pair in part for x in pair]
                total -= self._db.execute(
                    f"SELECT total(cost) FROM tasks WHERE (id, seq) IN (VALUES {','.join('(?,?)' for _ in part)})", flat,
                ).fetchone()[0]
        return total

    def _stale(self, candidates: Iterable[int], current: Callable[[int], bool]) -> list[tuple[int, int]]:
        """The rows of `candidates` that are not their task's current one: all but the
        newest, and that one too unless `current(id)`."""
        stale: list[tuple[int, int]] = []
        for part in _parts(sorted(set(candidates))):
            seen = None
            for task_id, seq in self._db.execute(
                f"SELECT id, seq FROM tasks WHERE id IN ({','.join('?' * len(part))}) ORDER BY id, seq DESC", part,
            ):
                if task_id == seen or not current(task_id):
                    stale.append((task_id, seq))
                seen = task_id
        return stale

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """One read transaction: what several statements read is one moment's rows, though
        the snapshot writer commits meanwhile."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def finished_before(self, horizon: float) -> list[int]:
        """Ids of the tasks that finished before `horizon` (for retention)."""
        with self._lock:
            return [row[0] for row in self._db.execute("SELECT DISTINCT id FROM tasks WHERE finished_at < ? ORDER BY id", (horizon,))]

    def first_segment(self) -> int | None:
        """The oldest log segment holding output of a task in the history."""
        with self._lock:
            return self._db.execute("SELECT min(first_segment) FROM tasks").fetchone()[0]

    def empty(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM tasks LIMIT 1").fetchone() is None

    def rows(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM tasks").fetchone()[0]

    def all_current(self, current: Callable[[int], bool]) -> Iterator[Row]:
        """Every task the history holds now (for `--verify`), by id."""
        with self._lock:
            found = self._db.execute("SELECT id, seq, task, outputs FROM tasks WHERE seq <= ? ORDER BY id, seq DESC",
                                     (self.upto if self.upto is not None else 1 << 62,)).fetchall()
        seen = None
        for task_id, _seq, blob, outputs in found:
            if task_id == seen:
                continue
            seen = task_id
            if current(task_id):
                yield Row(_decode(blob), outputs or b"")


def _search(text: str) -> tuple[str, str]:
    """The condition on `search` for rows holding `text`, and its parameter: a trigram
    phrase (the index's own lookup) for three characters or more; for fewer, which have
    no trigram, a LIKE, its own % and _ matched as themselves."""
    if len(text) >= 3:
        return "search MATCH ?", '"' + text.replace('"', '""') + '"'
    return "text LIKE ? ESCAPE '\\'", "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _parts(items: Sequence, size: int = 400) -> Iterator[Sequence]:
    """`items` in parts small enough for one statement's parameters."""
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _where(want: Filter) -> tuple[str, list]:
    parts: list[str] = []
    args: list = []
    if want.status and not set(want.status) >= FINISHED:  # every row is of a finished task
        parts.append(f"status IN ({','.join('?' * len(want.status))})")
        args += [s.value for s in want.status]
    if want.role is not None:
        parts.append("role = ?")
        args.append(want.role)
    if want.since is not None:
        parts.append("submitted_at >= ?")
        args.append(want.since)
    if want.grep:
        match, text = _search(want.grep)
        parts.append(f"id IN (SELECT rowid FROM search WHERE {match})")
        args.append(text)
    if want.before is not None:
        parts.append("id < ?")
        args.append(want.before)
    return ("WHERE " + " AND ".join(parts)) if parts else "", args
