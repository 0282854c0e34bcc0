"""How orchestra's costs grow with history and queue length, beside task-spooler (`tsp`).

    .venv/bin/python bench/bench_scale.py [--sizes 1000,10000,100000,1000000]
                                          [--only history,queue,agents,ingest] [--quick] [--json PATH]

Every figure is taken at each size (one curve per 10x), so that what grows shows. Each
benchmark starts its own daemons (bench_daemon.Daemon: a real `python -m orchestrad` on a
fresh home under bench/out/) and its own task-spooler servers, and removes them afterwards.

1. history  A daemon whose history holds N finished tasks: its RSS once start-up settled
            (VmRSS) and its peak (VmHWM), start-up time (process start until it answers on
            the socket, median of 3 starts), `orchestra ps`, `orchestra ps --all --limit 100
            --status failed` (without --all where the CLI refuses both) and `orchestra show
            <oldest>` as real subprocesses (medians,
            interleaved with `python -I -c pass` and `tsp -l`), the state directory on disk;
            beside it task-spooler holding N finished jobs (`tsp -l`). Targets: RSS <= 150 MB
            and start-up <= 0.3 s at 1M; ps <= 3x the bare interpreter; the two others
            <= 100 ms. tsp is filled with real jobs (about 700 a second here), as far as
            --tsp-fill-limit seconds allow; the sizes it did not reach are said to be unmeasured.

            The histories are not run through a daemon (1M tasks would take days): they are
            written offline with the daemon's own code, cached in bench/out/scale-cache/ by
            size, and copied before a daemon starts on them (it writes snapshots). See
            "Synthetic histories" below; before it measures anything the benchmark runs 200
            tasks of the same mix through a real daemon, builds the same 200 synthetically,
            and compares the two (`orchestra ps --all --json`, the events of every task, and
            `python -m orchestrad --verify` of the synthetic log).
2. queue    N queued `true` tasks (80% independent with random priorities, 20% in `--after`
            chains of 2-6), 2 slots, held behind two blocking tasks and then released:
            tasks/s from release to the last finish, and the daemon's CPU (utime + stime)
            per 1,000 starts, against a queue of 100 (5 rounds). tsp the same way: `tsp -S 2`,
            two blocking jobs, `tsp true`, chains with `tsp -d`. tsp holds at most about
            1,000 waiting jobs (each is a waiting client process); past that the rest is
            submitted while it drains, as fast as it takes them. Targets: drain time <= 1.5x
            tsp's; CPU per 1,000 starts <= 1.5x the queue of 100's.
3. agents   300 command agents (one `perl` each, a 77-byte line every 0.1 s, no fork per
            line) for about 30 s, on an empty history and on each cached history: the
            daemon's CPU per output line, over a steady window with all 300 running.
            Target <= 50 us. (2 cores: the writers and this script use CPU too.)
4. ingest   one task writing 1 GiB to stdout, MB/s from submit to finished (durable),
            beside `dd if=/dev/zero of=FILE bs=1M count=1024 conv=fdatasync` on the same
            disk, two rounds interleaved. Target >= 0.9x dd.

Synthetic histories. A task's events are the ones a real run records, made by the daemon's
own code wherever it has a function for it: `decide.decide(Submit)` for the TaskSubmitted
(so every default in the spec is the daemon's), the Claude adapter itself
(`ClaudeAgent.command`, `.greeting`, `.output` fed the agent's stream-json one line per
chunk) for the argv, the stdin record and what the agent's output means (SessionStarted,
ToolUsed, AgentResult, UsageRecorded), `launch.shown` for the recorded argv. The ends of a
task (ProcessExited, TaskFinished and their reasons, a command's result from its stdout)
follow engine.py and decide.process_exited, and the comparison with a real run checks
them. Records are written with `Log.append` in time order (tasks overlap, as with several
slots), then the home is opened with `Store.open` (a full replay) and a snapshot written
with `Store.snapshot_now`, as a daemon leaves it.

The mix: 60% Claude tasks (roles generalist, tester, reviewer, architect, documenter,
devops; prompts of 30-6,000 characters, median ~350; 1-6 tool calls of Read, Glob, Grep,
LS, the roles' allowed tools, so no permission requests, with results of ~200 characters;
answers of 20-4,000 characters, median ~400; ~9% end in an error result; about 6 KB of
stream-json each, one chunk a line), 40% commands (pytest, make, npm, cargo, ruff,
mypy, tox; a few lines to a few KB of output; ~12% exit non-zero); of all, 4% are cancelled
while queued and 2% while running: about 10% failed in all. Implementer tasks (which
expect a change in a git worktree) are left out. Tasks arrive every 20 s on average over
the history (1M tasks: about 230 days; the log sets retention_days 365 and max_concurrent
8, as someone keeping that much would).

`--quick` shrinks everything (sizes 200 and 2,000, 30 agents for 8 s, 256 MiB) to check the
script; only a full run gives figures to quote. A full run takes about 30-40 minutes once
the histories are cached (building the 1M history takes several minutes more, once).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import msgspec  # noqa: E402

import bench_daemon as bd  # noqa: E402
from bench_daemon import (  # noqa: E402
    GIB, OUT, ORCHESTRA, Daemon, Table, clean_env, code_version, fresh_dir, machine, machine_jiffies,
    ms, pct, proc_cpu_seconds, proc_status, timed_run, tsp_path, verdict, wait_for, wait_quiet,
)
from orchestra.shared import protocol as p  # noqa: E402
from orchestra.shared.paths import make_private_dir, resolve  # noqa: E402

CACHE = OUT / "scale-cache"
GEN_VERSION = 1  # bump when the synthetic mix or its events change: cached histories are rebuilt
CHECK_TASKS = 200
MEAN_GAP = 20.0  # seconds between submissions in a synthetic history
HISTORY_CONCURRENT = 8
LINE = 77  # bytes per line of the agents benchmark's writers
PERL_WRITER = '$|=1; my $n=shift; my $pad="x" x 64; for my $i (1..$n) { printf("line %06d %s\\n", $i, $pad); select(undef,undef,undef,0.1); }'
# `orchestra ps --all --limit 100 --status failed`; older CLIs refuse --all with --limit
# ("give --all or --limit, not both"), and then the 100 newest failed are asked for without --all.
FAILED_PS = ["ps", "--all", "--limit", "100", "--status", "failed"]
FAILED_PS_OLD = ["ps", "--limit", "100", "--status", "failed"]
WAIT_CHUNK = 5000
START_TIMEOUT = 900.0  # tasks per Wait request (the daemon takes at most p.MAX_WAIT)


# ---------------------------------------------------------------------------------------
# Small helpers


def fmt_n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk (st_blocks) under `path`."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def mb(kb_or_bytes: float, unit: str = "kB") -> str:
    value = kb_or_bytes / 1024 if unit == "kB" else kb_or_bytes / (1 << 20)
    return f"{value:,.0f} MB" if value >= 10 else f"{value:.1f} MB"


def copy_tree(source: Path, target: Path) -> float:
    t0 = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return time.perf_counter() - t0


def wait_all(daemon: Daemon, ids: list[int], timeout: float = 7200) -> list[p.TaskView]:
    """Wait for every task, WAIT_CHUNK at a time (one Wait after the other)."""
    views: list[p.TaskView] = []
    with bd.connect(daemon.paths, timeout=timeout) as conn:
        for i in range(0, len(ids), WAIT_CHUNK):
            views += conn.call(p.Wait(tasks=ids[i:i + WAIT_CHUNK]), list[p.TaskView])
    return views


class ScaleDaemon(Daemon):
    """bench_daemon's Daemon, but one that may take up to START_TIMEOUT s to answer (a
    long history can make start-up slow: that is a figure here, not a failure)."""

    def start(self) -> "ScaleDaemon":
        argv = [sys.executable, "-m", "orchestrad", "--home", str(self.home)]
        t0 = time.perf_counter()
        with open(self.home / "daemon.out", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        wait_for(self._answers, START_TIMEOUT, "the daemon to answer")
        self.start_seconds = time.perf_counter() - t0
        out = subprocess.run([ORCHESTRA, "daemon", "status", "--json"], env=self.env, capture_output=True, text=True, check=True)
        self.pid = json.loads(out.stdout)["pid"]
        if self.pid != self.proc.pid:
            raise RuntimeError(f"daemon status says pid {self.pid}, but we started {self.proc.pid}")
        return self


def history_daemon(name: str, source: Path | None, loop: str, extra_env: dict[str, str] | None = None) -> Daemon:
    """A Daemon (not started) on a fresh home; with `source`, a copy of that home's state."""
    daemon = ScaleDaemon(name, loop)
    if source is not None:
        copy_tree(source / "state", daemon.home / "state")
    if extra_env:
        daemon.env.update(extra_env)
    return daemon


# ---------------------------------------------------------------------------------------
# Task-spooler


class Tsp(bd.Spooler):
    """A task-spooler server of our own (socket and output files in a fresh directory),
    keeping as many finished jobs as it is to hold."""

    def __init__(self, name: str, max_finished: int, slots: int = 2) -> None:
        self.dir = fresh_dir(f"{name}-")
        self.socket = str(self.dir / "ts.sock")
        self.env = clean_env(TS_SOCKET=self.socket, TMPDIR=str(self.dir), TS_SLOTS=str(slots),
                             TS_MAXFINISHED=str(max_finished + 100))
        self.jobs = 0
        self.run("-S", str(slots))  # starts the server

    def submit(self, *argv: str) -> int:
        job = int(self.run(*argv).strip())
        self.jobs += 1
        return job

    def script(self, lines: list[str]) -> Path:
        path = self.dir / f"submit-{self.jobs}.sh"
        path.write_text("".join(line + "\n" for line in lines))
        return path

    def fill(self, count: int) -> float:
        """`count` more finished `true` jobs, submitted one after the other by a shell loop.
        Returns the seconds it took (until the last one finished)."""
        t0 = time.perf_counter()
        subprocess.run(["bash", "-c", f"for ((i=0; i<{count}; i++)); do {bd.TSP} true >/dev/null; done; {bd.TSP} -w >/dev/null 2>&1; true"],
                       env=self.env, check=True)
        self.jobs += count
        wait_for(self.idle, 120, "tsp to finish its jobs")
        return time.perf_counter() - t0

    def idle(self) -> bool:
        return all(s in ("finished", "skipped") for s in self.states())

    def server_pid(self) -> int | None:
        """The server: the tsp process with our socket in its environment (when no job runs,
        the only one)."""
        mark = f"TS_SOCKET={self.socket}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() not in ("tsp", "ts"):
                    continue
                if mark in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
        return min(found) if len(found) == 1 else None

    def cleanup(self) -> None:
        subprocess.run([bd.TSP, "-K"], env=self.env, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The synthetic mix: plans (what each task is), then the events a run of it records

_WORDS = (
    "the a an of to in for on with from by that this it is are be was were not but and or if then when while "
    "function module class method test tests parser config loader cache request response client server handler "
    "error errors retry timeout queue worker job task schedule scheduler database query index migration schema "
    "field value values list map key keys token session user users file files path paths directory build deploy "
    "release version branch commit change changes diff review docs readme comment comments type types check "
    "checks lint format style import imports export package dependency dependencies upgrade bump fix fixes bug "
    "issue case edge empty input output stream buffer chunk line lines byte bytes size limit limits memory leak "
    "slow fast performance latency throughput benchmark profile trace log logs metric metrics alert endpoint api "
    "route routes auth login password permission role roles admin account billing invoice payment order orders "
    "cart search filter sort page pages pagination cursor offset batch bulk upload download image images thumbnail "
    "email notification webhook event events message messages retry backoff jitter lock mutex thread async await "
    "callback promise future channel socket connection pool proxy gateway cluster node nodes shard replica backup "
    "restore snapshot rollback feature flag experiment toggle setting settings option options default defaults "
    "should must could would need needs make sure keep avoid handle handles return returns raise raises catch "
    "validate parse render serialize deserialize encode decode compress hash sign verify encrypt decrypt"
).split()
_VERBS = ["Add", "Fix", "Refactor", "Document", "Review", "Write tests for", "Speed up", "Simplify", "Remove", "Rename",
          "Split", "Migrate", "Validate", "Cache", "Add logging to", "Profile", "Harden", "Port", "Clean up", "Investigate"]
_NOUNS = ["the parser", "the config loader", "the retry logic", "the HTTP client", "the CLI's help text", "the scheduler",
          "the database migrations", "the cache layer", "the auth middleware", "the upload handler", "the metrics exporter",
          "the search index", "the billing job", "the websocket server", "the rate limiter", "the CSV importer",
          "the plugin loader", "the build script", "the docs site", "the error messages"]
_MODULES = ["parser", "config", "retry", "client", "cli", "scheduler", "migrations", "cache", "auth", "upload", "metrics",
            "search", "billing", "ws", "ratelimit", "importer", "plugins", "build", "docs", "errors"]
_PROJECTS = ["webapp", "api", "cli", "infra", "docs", "ml-pipeline"]
_CLAUDE_ROLES = (["generalist"] * 30 + ["tester"] * 20 + ["reviewer"] * 20 + ["architect"] * 10 + ["documenter"] * 10
                 + ["devops"] * 10)
_COMMAND_ROLES = ["generalist"] * 5 + ["tester"] * 3 + ["devops"] * 2
_TOOLS = ["Task", "Bash", "Glob", "Grep", "ExitPlanMode", "Read", "Edit", "Write", "NotebookEdit", "WebFetch", "TodoWrite",
          "WebSearch", "BashOutput", "KillShell", "SlashCommand", "LS"]
_MODELS = ["claude-sonnet-4-5-20250929"] * 4 + ["claude-opus-4-1-20250805"]
_CORPUS: list[str] = []


def corpus() -> str:
    """A few hundred KB of text to cut prompts, results and tool output from (cheap at 1M)."""
    if not _CORPUS:
        rng = random.Random(7)
        sentences = []
        for _ in range(6000):
            words = rng.choices(_WORDS, k=rng.randint(6, 20))
            sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "?", ":"]))
            if rng.random() < 0.08:
                sentences.append("\n\n")
        _CORPUS.append(" ".join(sentences))
    return _CORPUS[0]


def text(rng: random.Random, median: float, low: int, high: int, sigma: float = 0.9) -> str:
    size = int(min(high, max(low, rng.lognormvariate(math.log(median), sigma))))
    body = corpus()
    start = rng.randrange(0, len(body) - size - 1)
    start = body.find(" ", start) + 1
    return body[start:start + size].strip()


class Plan(msgspec.Struct):
    """One task of the mix: what is submitted, and what its process does."""

    id: int
    kind: str  # claude | command
    outcome: str  # succeeded | failed | cancelled_queued | cancelled_running
    submit: p.Submit
    lines: list[str] = []  # claude: its stream-json, one line each (before the hang, for cancelled_running)
    stdout: str = ""  # command
    stderr: str = ""
    exit: int = 0


def make_plan(rng: random.Random, task_id: int, cwd: str) -> Plan:
    roll = rng.random()
    outcome = "cancelled_queued" if roll < 0.04 else "cancelled_running" if roll < 0.06 else "ran"
    kind = "claude" if rng.random() < 0.6 else "command"
    priority = rng.choice([0] * 8 + [10, -10])
    if kind == "claude":
        role = rng.choice(_CLAUDE_ROLES)
        verb, noun, mod = rng.choice(_VERBS), rng.choice(_NOUNS), rng.choice(_MODULES)
        prompt = f"{verb} {noun} in src/{mod}.py. " + text(rng, 330, 10, 6000)
        title = f"{verb} {noun}"[:70] if rng.random() < 0.3 else ""
        submit = p.Submit(cwd=cwd, prompt=prompt, role=role, title=title, priority=priority)
        if outcome == "ran":
            outcome = "failed" if rng.random() < 0.09 else "succeeded"
        lines, code = claude_lines(rng, task_id, cwd, outcome)
        return Plan(id=task_id, kind=kind, outcome=outcome, submit=submit, lines=lines, exit=code)
    role = rng.choice(_COMMAND_ROLES)
    mod = rng.choice(_MODULES)
    argv = rng.choice([
        ["pytest", "-q", f"tests/test_{mod}.py"], ["pytest", "-x", "-q", "tests/"], ["make", "test"], ["make", "lint"],
        ["make", "build"], ["npm", "test"], ["npm", "run", "build"], ["cargo", "test", "--", mod], ["ruff", "check", "src/"],
        ["mypy", f"src/{mod}.py"], ["tox", "-e", "py311"],
    ])
    title = f"{argv[0]} {mod}" if rng.random() < 0.2 else ""
    submit = p.Submit(cwd=cwd, argv=argv, role=role, title=title, priority=priority)
    if outcome == "ran":
        outcome = "failed" if rng.random() < 0.12 else "succeeded"
    stdout, stderr, code = command_output(rng, argv, outcome)
    return Plan(id=task_id, kind=kind, outcome=outcome, submit=submit, stdout=stdout, stderr=stderr, exit=code)


_json = msgspec.json.encode


def claude_lines(rng: random.Random, task_id: int, cwd: str, outcome: str) -> tuple[list[str], int]:
    """Claude Code's stream-json for one turn: init, tool calls and their results, the
    answer, the result; or, for a task stopped while running, its first lines."""
    sid = "%08x-%04x-%04x-%04x-%012x" % (rng.getrandbits(32), rng.getrandbits(16), rng.getrandbits(16), rng.getrandbits(16),
                                          rng.getrandbits(48))
    model = rng.choice(_MODELS)
    uid = lambda: "%032x" % rng.getrandbits(128)  # noqa: E731
    lines = [_json({
        "type": "system", "subtype": "init", "cwd": cwd, "session_id": sid, "tools": _TOOLS, "mcp_servers": [],
        "model": model, "permissionMode": "default", "slash_commands": ["compact", "context", "cost", "init", "review"],
        "apiKeySource": "none", "claude_code_version": "2.0.30", "output_style": "default",
        "agents": ["general-purpose", "statusline-setup", "output-style-setup"], "uuid": uid(),
    }).decode()]
    usage = {"input_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0}
    tools = rng.randint(1, 6)
    for k in range(tools):
        tool = rng.choice(["Read", "Read", "Read", "Grep", "Glob", "LS"])
        mod = rng.choice(_MODULES)
        tool_input = {"Read": {"file_path": f"{cwd}/src/{mod}.py"}, "Grep": {"pattern": rng.choice(_WORDS), "path": cwd},
                      "Glob": {"pattern": f"**/*{mod}*"}, "LS": {"path": f"{cwd}/src"}}[tool]
        content: list[dict] = []
        if rng.random() < 0.5:
            content.append({"type": "text", "text": text(rng, 80, 10, 600)})
        tool_id = "toolu_%024x" % rng.getrandbits(96)
        content.append({"type": "tool_use", "id": tool_id, "name": tool, "input": tool_input})
        step = {"input_tokens": rng.randint(2, 12), "cache_creation_input_tokens": rng.randint(0, 4000),
                "cache_read_input_tokens": rng.randint(5000, 40000), "output_tokens": rng.randint(30, 600)}
        for key in usage:
            usage[key] += step[key]
        lines.append(_json({"type": "assistant", "message": {
            "model": model, "id": "msg_%024x" % rng.getrandbits(96), "type": "message", "role": "assistant", "content": content,
            "stop_reason": None, "stop_sequence": None, "usage": step}, "parent_tool_use_id": None, "session_id": sid,
            "uuid": uid()}).decode())
        lines.append(_json({"type": "user", "message": {"role": "user", "content": [
            {"tool_use_id": tool_id, "type": "tool_result", "content": text(rng, 200, 20, 2000, sigma=1.0)}]},
            "parent_tool_use_id": None, "session_id": sid, "uuid": uid()}).decode())
        if outcome == "cancelled_running":
            return lines, 0  # stopped while it works: what it wrote before
    answer = text(rng, 400, 20, 4000, sigma=0.8)
    if outcome == "failed":
        answer = "I could not finish this: " + answer
    lines.append(_json({"type": "assistant", "message": {
        "model": model, "id": "msg_%024x" % rng.getrandbits(96), "type": "message", "role": "assistant",
        "content": [{"type": "text", "text": answer}], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 4, "output_tokens": rng.randint(50, 900)}}, "parent_tool_use_id": None, "session_id": sid,
        "uuid": uid()}).decode())
    cost = round(sum(usage.values()) * rng.uniform(2e-6, 6e-6), 6)
    duration = rng.randint(5_000, 900_000)
    result: dict[str, Any] = {"type": "result", "subtype": "success", "is_error": False, "duration_ms": duration,
                              "duration_api_ms": int(duration * 0.8), "num_turns": tools + 1, "result": answer,
                              "session_id": sid, "total_cost_usd": cost, "usage": usage, "permission_denials": [], "uuid": uid()}
    if outcome == "failed":  # Claude Code's "error_max_turns": no result text, the turn's last words stand
        result.update(subtype="error_max_turns", is_error=True)
        del result["result"]
    lines.append(_json(result).decode())
    return lines, 1 if outcome == "failed" else 0


def command_output(rng: random.Random, argv: list[str], outcome: str) -> tuple[str, str, int]:
    tool = argv[0]
    out: list[str] = []
    err = ""
    failed = outcome == "failed"
    if tool == "pytest":
        tests = rng.randint(3, 400)
        out += ["============================= test session starts ==============================",
                "platform linux -- Python 3.11.7, pytest-8.3.3, pluggy-1.5.0", f"collected {tests} items", ""]
        done = 0
        while done < tests:
            width = min(tests - done, rng.randint(10, 60))
            out.append(f"tests/test_{rng.choice(_MODULES)}.py " + "." * width + f"  [{int(100 * (done + width) / tests):3d}%]")
            done += width
        if failed:
            out += ["", "=================================== FAILURES ===================================",
                    f"_________________________ test_{rng.choice(_WORDS)}_{rng.choice(_WORDS)} _________________________",
                    text(rng, 600, 50, 4000), "E       AssertionError: assert 3 == 4",
                    f"========================= 1 failed, {tests - 1} passed in {rng.uniform(0.5, 90):.2f}s ========================="]
        else:
            out.append(f"============================== {tests} passed in {rng.uniform(0.5, 90):.2f}s ==============================")
    elif tool == "npm":
        out += ["", f"> webapp@1.4.2 {' '.join(argv[1:])}", f"> {rng.choice(['vite build', 'jest', 'tsc -p .'])}", ""]
        out += [f"  {rng.choice(_WORDS)}/{rng.choice(_MODULES)}.ts  {rng.uniform(1, 300):.2f} kB" for _ in range(rng.randint(1, 30))]
        if rng.random() < 0.3:
            err = "npm WARN deprecated inflight@1.0.6: This module is not supported, and leaks memory.\n"
    else:
        out += [f"{tool}: {text(rng, 60, 10, 200)}" for _ in range(rng.randint(1, 25))]
    if failed:
        err += f"{tool}: error: {text(rng, 80, 10, 300)}\n"
        if tool == "make":
            err += f"make: *** [Makefile:{rng.randint(5, 80)}: {argv[1]}] Error 1\n"
    stdout = "".join(line + "\n" for line in out)
    if outcome == "cancelled_running":
        return stdout[: max(1, len(stdout) // 3)], "", 0
    return stdout, err, (rng.choice([1, 1, 2]) if failed else 0)


class Synth:
    """Turns plans into the records a real run writes, with the daemon's own code."""

    def __init__(self) -> None:
        from orchestra.shared.vocab import shorten, version
        from orchestrad import config as config_mod
        from orchestrad import events as ev
        from orchestrad import launch
        from orchestrad.agents.claude import ClaudeAgent
        from orchestrad.decide import decide
        from orchestrad.state import State, Task
        from orchestrad.workflows import RESULT_LIMIT

        self.ev, self.launch, self.ClaudeAgent, self.decide, self.State, self.Task = ev, launch, ClaudeAgent, decide, State, Task
        self.result_limit, self.shorten = RESULT_LIMIT, shorten
        self.config = config_mod.DEFAULT
        self.version = version()
        self.state = State()  # only for decide(Submit): its config and roles are the defaults
        self.pid = 40000

    def head(self, ts: float) -> list[tuple[float, Any, bytes]]:
        ev = self.ev
        return [
            (ts, ev.DaemonStarted(pid=1234, version=self.version, accounts={
                "claude": "claude:cdc62735dde1", "codex": "codex:f10cb2fd0973", "gemini": "gemini:1d2892a7becf"}), b""),
            (ts + 0.2, ev.ConfigChanged(changes={"max_concurrent": HISTORY_CONCURRENT, "retention_days": 365}), b""),
        ]

    def submitted(self, plan: Plan, ts: float):
        self.state.next_task = plan.id
        [event] = self.decide(self.state, plan.submit, ts)
        assert isinstance(event, self.ev.TaskSubmitted) and event.task == plan.id, event
        return event

    def records(self, plan: Plan, t0: float, rng: random.Random) -> tuple[list[tuple[float, Any, bytes]], int]:
        """The task's records (time, event, data) from its submit at `t0`, and its output bytes."""
        ev, task_id = self.ev, plan.id
        submitted = self.submitted(plan, t0)
        spec = submitted.spec
        out: list[tuple[float, Any, bytes]] = [(t0, submitted, b"")]
        if plan.outcome == "cancelled_queued":
            out.append((t0 + rng.uniform(1, 600), ev.TaskCancelled(task=task_id, reason="stopped before it started"), b""))
            return out, 0
        ts = t0 + rng.lognormvariate(math.log(2.0), 1.2) if rng.random() < 0.7 else t0 + 0.0002
        out.append((ts, ev.TaskStarting(task=task_id, attempt=1), b""))
        ts += rng.uniform(0.008, 0.03)
        self.pid += rng.randint(1, 40)
        pid = self.pid
        task = self.Task(id=task_id, spec=spec, role=spec.role, priority=spec.priority)
        stdout_bytes = b""
        size = 0
        if plan.kind == "claude":
            agent = self.ClaudeAgent()
            argv = agent.command(task, self.config, {})
            out.append((ts, ev.ProcessSpawned(task=task_id, attempt=1, pid=pid, argv=self.launch.shown(argv), cgroup=f"{task_id}-1"), b""))
            for event, data in agent.greeting(task).items:
                out.append((ts, event, data))
                size += len(data)
            for i, line in enumerate(plan.lines):
                ts += rng.lognormvariate(math.log(1.5), 1.0) if i == 0 else rng.lognormvariate(math.log(6.0), 1.0)
                reaction = agent.output(task, "stdout", line.encode() + b"\n")
                for item in reaction.items:
                    event, data = item if isinstance(item, tuple) else (item, b"")
                    out.append((ts, event, data))
                    size += len(data)
        else:
            argv = list(spec.argv)
            out.append((ts, ev.ProcessSpawned(task=task_id, attempt=1, pid=pid, argv=self.launch.shown(argv), cgroup=f"{task_id}-1"), b""))
            ts += rng.lognormvariate(math.log(4.0), 1.3)
            if plan.stdout:
                stdout_bytes = plan.stdout.encode()
                out.append((ts, ev.OutputAppended(task=task_id, stream="stdout", size=len(stdout_bytes)), stdout_bytes))
            if plan.stderr:
                data = plan.stderr.encode()
                out.append((ts + 0.0004, ev.OutputAppended(task=task_id, stream="stderr", size=len(data)), data))
            size += len(stdout_bytes) + len(plan.stderr.encode())
        tail = [] if plan.kind == "claude" else [
            ev.AgentResult(task=task_id, text=stdout_bytes[-self.result_limit:].decode(errors="replace").strip(), is_error=False)]
        if plan.outcome == "cancelled_running":
            ts += rng.uniform(2, 300)
            out.append((ts, ev.StopRequested(task=task_id, outcome=p.Status.CANCELLED, reason="stopped on request"), b""))
            ts += rng.uniform(0.002, 0.2)
            ends = [*tail, ev.ProcessExited(task=task_id, pid=pid, exit_code=None, signal=15),
                    ev.TaskFinished(task=task_id, outcome=p.Status.CANCELLED, reason="stopped on request")]
        else:
            ts += rng.uniform(0.01, 0.4)
            if plan.outcome == "succeeded":
                finished = ev.TaskFinished(task=task_id, outcome=p.Status.SUCCEEDED, reason="")
            elif plan.kind == "claude":
                result = [e for _, e, _ in out if isinstance(e, ev.AgentResult)][-1].text
                first = self.shorten(result.strip().splitlines()[0], 300) if result.strip() else ""
                finished = ev.TaskFinished(task=task_id, outcome=p.Status.FAILED, reason=f"the agent reported an error: {first or 'no message'}")
            else:
                finished = ev.TaskFinished(task=task_id, outcome=p.Status.FAILED, reason=f"exited with code {plan.exit}")
            ends = [*tail, ev.ProcessExited(task=task_id, pid=pid, exit_code=plan.exit, signal=None), finished]
        out += [(ts, e, b"") for e in ends]
        return out, size


def write_history(home: Path, plans: Iterator[Plan], end: float, count: int, seed: int,
                  progress: bool = False) -> dict[str, Any]:
    """Write the log of `plans` (submitted every MEAN_GAP s on average, ending about an hour
    before `end`) into `home`, then open it as the daemon does and write a snapshot."""
    from orchestrad import events as ev
    from orchestrad.log import Log
    from orchestrad.store import Store

    paths = resolve(home)
    for directory in (paths.state, paths.runtime, paths.config):
        make_private_dir(directory)
    synth = Synth()
    rng = random.Random(seed * 7919 + 1)
    log = Log.open(paths.log_dir)
    batch: list[tuple[bytes, bytes]] = []
    written = [0]

    def put(body: bytes, data: bytes) -> None:
        batch.append((body, data))
        if len(batch) >= 4096:
            log.append(batch)
            written[0] += len(batch)
            batch.clear()

    t = end - 3600 - count * MEAN_GAP
    for ts, event, data in synth.head(t):
        put(ev.encode(ts, event), data)
    heap: list[tuple[float, int, bytes, bytes]] = []
    order = itertools.count()
    t0 = time.perf_counter()
    tasks = 0
    for plan in plans:
        t += rng.expovariate(1 / MEAN_GAP)
        while heap and heap[0][0] <= t:
            _, _, body, data = heapq.heappop(heap)
            put(body, data)
        records, _size = synth.records(plan, t, rng)
        for ts, event, data in records:
            heapq.heappush(heap, (ts, next(order), ev.encode(ts, event), data))
        tasks += 1
        if progress and tasks % 100_000 == 0:
            print(f"    ... {tasks:,} tasks, {written[0]:,} records ({time.perf_counter() - t0:.0f} s)", flush=True)
    while heap:
        _, _, body, data = heapq.heappop(heap)
        put(body, data)
    if batch:
        log.append(batch)
        written[0] += len(batch)
    log.sync()
    log.close()
    t_log = time.perf_counter() - t0
    t1 = time.perf_counter()
    state_tasks = derive_snapshots(home)
    return {"tasks": tasks, "records": written[0], "state_tasks": state_tasks, "log_seconds": round(t_log, 1),
            "replay_snapshot_seconds": round(time.perf_counter() - t1, 1)}


def derive_snapshots(home: Path) -> int:
    """Open the home's log as the daemon does (a full replay when there is no snapshot) and
    write a snapshot (and whatever else the store derives from the log with it). Returns
    how many tasks the state says there are."""
    from orchestrad.store import Store

    paths = resolve(home)
    store = Store.open(paths.log_dir, paths.snapshot_dir)
    try:
        store.snapshot_now()
        held = held_tasks(store.state)
    finally:
        store.log.close()
        history = getattr(store, "history", None)
        if history is not None:
            history.close()
    return held


def held_tasks(state: Any) -> int:
    """Tasks in memory, plus those a newer tree moved out into its history (`State.cold`:
    a byte per task id, non-zero for a task that left memory)."""
    cold = getattr(state, "cold", None)
    return len(state.tasks) + (len(cold) - cold.count(0) if isinstance(cold, (bytes, bytearray)) else 0)


STORAGE_CODE = ["orchestrad/state.py", "orchestrad/store.py", "orchestrad/snapshots.py", "orchestrad/events.py",
                "orchestrad/history.py", "orchestrad/log/*.py"]


def storage_digest() -> str:
    """A digest of the daemon's code that reads and derives from a log: when it changed,
    a cached home's snapshots are made again (the log itself stays: it is the truth)."""
    import hashlib

    repo = OUT.parent.parent
    digest = hashlib.sha256()
    for pattern in STORAGE_CODE:
        for path in sorted(repo.glob(pattern)):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def plans_for(count: int, seed: int, cwd_of) -> Iterator[Plan]:
    rng = random.Random(seed)
    for task_id in range(1, count + 1):
        yield make_plan(rng, task_id, cwd_of(task_id, rng))


def project_cwd(_task_id: int, rng: random.Random) -> str:
    return f"/home/dev/src/{rng.choice(_PROJECTS)}"


def verify_home(home: Path) -> tuple[bool, str]:
    out = subprocess.run([sys.executable, "-m", "orchestrad", "--home", str(home), "--verify"], capture_output=True, text=True,
                         env=clean_env())
    lines = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode == 0 and any(line.startswith("ok:") for line in lines), " / ".join(lines)[-300:]


def internal(kind: str, home: Path, n: int) -> dict[str, Any]:
    """Build a history (`build`) or derive a cached one's snapshots again (`derive`) in a
    fresh interpreter: it runs the daemon's code as it is on disk now (this process
    imported it when it started, and the tree may have changed since), and says which
    code that was (`storage`, a digest taken as it starts)."""
    result = home.with_name(home.name + ".result.json")
    result.unlink(missing_ok=True)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--internal", kind, str(home), str(n), str(result)],
                   check=True, env=clean_env())
    out = json.loads(result.read_text())
    result.unlink()
    return out


def run_internal(kind: str, home: Path, n: int, result: Path) -> int:
    digest = storage_digest()  # before the daemon's modules are imported
    if kind == "build":
        out = write_history(home, plans_for(n, seed=n, cwd_of=project_cwd), time.time(), n, seed=n, progress=True)
    else:
        shutil.rmtree(resolve(home).snapshot_dir, ignore_errors=True)
        out = {"held": derive_snapshots(home)}
    result.write_text(json.dumps({**out, "storage": digest}))
    return 0


def cached_history(n: int, table: Table, rebuild: bool = False) -> Path:
    """The cached home holding `n` synthetic finished tasks (built if missing)."""
    home = CACHE / f"history-{n}-v{GEN_VERSION}"
    meta_path = home / "meta.json"
    if meta_path.exists() and not rebuild:
        meta = json.loads(meta_path.read_text())
        if meta.get("storage") != storage_digest():
            print(f"  the daemon's storage code changed since {home.name} was built: deriving its snapshots again ...", flush=True)
            t0 = time.perf_counter()
            done = internal("derive", home, n)
            held, digest = done["held"], done["storage"]
            ok, said = verify_home(home)
            if held != n or not ok:
                raise RuntimeError(f"the cached history of {n} no longer opens as {n} tasks ({held}) or verify refuses it: {said}")
            meta.update(storage=digest, verify=said, rederived=time.strftime("%Y-%m-%d %H:%M"))
            meta_path.write_text(json.dumps(meta, indent=1))
            table.note(f"history {fmt_n(n)}: the storage code changed since the cache was built; snapshots derived again "
                       f"with this tree in {time.perf_counter() - t0:.0f} s (verify included)")
        table.note(f"history {fmt_n(n)}: cached home {home.relative_to(OUT.parent.parent)} (built {meta['built']}, "
                   f"{meta['records']:,} records, verify at build: {meta['verify']})")
        return home
    shutil.rmtree(home, ignore_errors=True)
    building = home.with_name(home.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    print(f"  building the synthetic history of {n:,} tasks in {building} ...", flush=True)
    t0 = time.perf_counter()
    info = internal("build", building, n)
    built = time.perf_counter() - t0
    if info["state_tasks"] != n:
        raise RuntimeError(f"the synthetic history holds {info['state_tasks']} tasks, not {n}")
    ok, said = verify_home(building)
    if not ok:
        raise RuntimeError(f"orchestrad --verify refused the synthetic history of {n}: {said}")
    meta = {**info, "built": time.strftime("%Y-%m-%d %H:%M"), "build_seconds": round(built, 1), "verify": said,
            "code": code_version(), "gen_version": GEN_VERSION}
    (building / "meta.json").write_text(json.dumps(meta, indent=1))
    building.rename(home)
    table.note(f"history {fmt_n(n)}: built in {built:.0f} s ({info['records']:,} records: log {info['log_seconds']} s, "
               f"replay + snapshot {info['replay_snapshot_seconds']} s); verify: {said}")
    return home


# ---------------------------------------------------------------------------------------
# The check: 200 tasks through a real daemon, and the same 200 built synthetically

_FAKE = r'''#!{python} -IS
import json, os, sys, time
plan = json.load(open({plans!r}))[os.path.basename(os.getcwd())]
if plan["kind"] == "claude":
    for line in sys.stdin:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if isinstance(m, dict) and m.get("type") == "user":
            break
    for line in plan["lines"]:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        time.sleep(0.02)
else:
    if plan["stdout"]:
        sys.stdout.write(plan["stdout"])
        sys.stdout.flush()
    if plan["stderr"]:
        time.sleep(0.01)
        sys.stderr.write(plan["stderr"])
        sys.stderr.flush()
if plan["hang"]:
    time.sleep(3600)
sys.exit(plan["exit"])
'''

_VOLATILE = {"submitted_at", "started_at", "finished_at", "runtime", "last_activity", "pid", "cpu_seconds", "cpu_at",
             "silent_after", "hold_until"}


def _ps_json(daemon: Daemon) -> list[dict]:
    out = subprocess.run([ORCHESTRA, "ps", "--all", "--json"], env=daemon.env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"orchestra ps --all --json failed: {out.stderr[-500:]}")
    return sorted(json.loads(out.stdout), key=lambda t: t["id"])


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def _event_kinds(home: Path) -> tuple[dict[int, list[str]], int]:
    """Per task, the kinds of its events in log order, output chunks left out (how a
    stream is cut into chunks depends on timing); and how many output chunks there are."""
    from orchestrad import events as ev
    from orchestrad.log import Log

    kinds: dict[int, list[str]] = {}
    chunks = 0
    log = Log.open(resolve(home).log_dir, readonly=True)
    try:
        for _first, _segment, records in log.replay_decoded(ev.Body):
            for r in records:
                _ts, event = r.body
                task = getattr(event, "task", None)
                if isinstance(event, ev.OutputAppended):
                    chunks += 1
                elif isinstance(task, int):
                    kinds.setdefault(task, []).append(type(event).__name__)
    finally:
        log.close()
    return kinds, chunks


def check_synthetic(table: Table, args: argparse.Namespace) -> None:
    """Run CHECK_TASKS tasks of the mix through a real daemon and build the same tasks
    synthetically; compare what `ps --all --json` says of each and the events of each."""
    n = CHECK_TASKS
    root = fresh_dir("check-")
    work, bindir = root / "work", root / "bin"
    bindir.mkdir()
    plans = list(plans_for(n, seed=12345, cwd_of=lambda i, _rng: str(work / f"t{i}")))
    synth = Synth()
    expected_bytes = {}
    rng = random.Random(1)
    for plan in plans:
        (work / f"t{plan.id}").mkdir(parents=True)
        expected_bytes[plan.id] = synth.records(plan, 0.0, rng)[1]
    (root / "plans.json").write_text(json.dumps({f"t{pl.id}": {
        "kind": pl.kind, "lines": pl.lines, "stdout": pl.stdout, "stderr": pl.stderr, "exit": pl.exit,
        "hang": pl.outcome == "cancelled_running"} for pl in plans}))
    fake = bindir / "fake-agent"
    fake.write_text(_FAKE.replace("{python}", sys.executable).replace("{plans!r}", repr(str(root / "plans.json"))))
    fake.chmod(0o755)
    for name in {"claude", *(pl.submit.argv[0] for pl in plans if pl.submit.argv)}:
        (bindir / name).symlink_to(fake)
    env = {"PATH": f"{bindir}:{os.environ.get('PATH', '')}"}
    real = history_daemon("check-real", None, args.daemon_loop, env)
    synthetic = history_daemon("check-synth", None, args.daemon_loop)
    try:
        t0 = time.perf_counter()
        real.start()
        real.configure(max_concurrent=2)
        ids = []
        with real.connect() as conn:
            for plan in plans:
                if plan.outcome == "cancelled_queued":  # hold its role for a moment so that it is queued when stopped
                    conn.call(p.ConfigSet(key="role_limits", value={plan.submit.role or "generalist": 0}))
                task = conn.call(plan.submit, p.TaskView).id
                if task != plan.id:
                    raise RuntimeError(f"the real daemon numbered plan {plan.id} as task {task}")
                ids.append(task)
                if plan.outcome == "cancelled_queued":
                    conn.call(p.Stop(task=task))
                    conn.call(p.ConfigSet(key="role_limits", value={}))
                elif plan.outcome == "cancelled_running":
                    wait_for(lambda: (v := conn.call(p.Show(task=task), p.TaskView)).status is p.Status.RUNNING
                             and v.output_bytes >= expected_bytes[task], 60, f"task {task} to write its first output")
                    conn.call(p.Stop(task=task))
        wait_all(real, ids)
        real_seconds = time.perf_counter() - t0
        real_ps = _ps_json(real)
        real.stop()
        write_history(synthetic.home, iter(plans), time.time(), n, seed=12345)
        ok, said = verify_home(synthetic.home)
        synthetic.start()
        synth_ps = _ps_json(synthetic)
        synthetic.stop()

        same_shape = len(real_ps) == len(synth_ps) == n and all(_shape(a) == _shape(b) for a, b in zip(real_ps, synth_ps))
        differing = []
        for a, b in zip(real_ps, synth_ps):
            diff = sorted(k for k in set(a) | set(b) if k not in _VOLATILE and a.get(k) != b.get(k))
            if diff:
                differing.append((a["id"], diff, {k: (a.get(k), b.get(k)) for k in diff[:2]}))
        (real_kinds, real_chunks), (synth_kinds, synth_chunks) = _event_kinds(real.home), _event_kinds(synthetic.home)
        kinds_differ = [t for t in range(1, n + 1) if real_kinds.get(t) != synth_kinds.get(t)]
        counts: dict[str, int] = {}
        for view in real_ps:
            counts[view["status"]] = counts.get(view["status"], 0) + 1
        good = same_shape and not differing and not kinds_differ and ok
        table.add("history", f"check: {n} real vs synthetic tasks", "same" if good else "DIFFERENT",
                  f"real run {real_seconds:.0f} s; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), "",
                  "identical", verdict(good))
        table.add("history", "  ps --all --json: shape; values", f"{'same' if same_shape else 'DIFFERENT'}; "
                  f"{n - len(differing)}/{n} equal", "times and pids left out")
        table.add("history", "  events of each task (chunks aside)", f"{n - len(kinds_differ)}/{n} equal",
                  f"output chunks: real {real_chunks:,}, synthetic {synth_chunks:,}")
        table.add("history", "  orchestrad --verify of the synthetic log", "ok" if ok else "REFUSED", said[:60])
        for task_id, keys, sample in differing[:5]:
            table.note(f"check: task {task_id} differs in {', '.join(keys)}: real vs synthetic {sample}")
        for task_id in kinds_differ[:5]:
            table.note(f"check: task {task_id} events differ: real {real_kinds.get(task_id)} vs synthetic {synth_kinds.get(task_id)}")
        for line in (real.problems() + synthetic.problems())[:5]:
            table.note(f"check daemon log: {line}")
    finally:
        real.cleanup()
        synthetic.cleanup()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# 1. history


def bench_history(table: Table, args: argparse.Namespace) -> None:
    check_synthetic(table, args)
    runs = 5 if args.quick else 15
    tsp = Tsp("hist-tsp", max_finished=max(args.sizes))
    tsp_budget = args.tsp_fill_limit
    tsp_rate = None  # jobs/s, once measured
    try:
        for n in args.sizes:
            home = cached_history(n, table, args.rebuild)
            # Task-spooler: fill it up to n finished jobs, if the time allows.
            tsp_ok = False
            more = n - tsp.jobs
            if more / (tsp_rate or 700.0) > tsp_budget:
                table.note(f"history {fmt_n(n)}: tsp not measured: {more:,} more jobs would take ~{more / (tsp_rate or 700.0) / 60:.0f} min "
                           f"at {tsp_rate or 700.0:.0f} jobs/s, past the {tsp_budget:.0f} s left of --tsp-fill-limit")
            elif more >= 0:
                took = tsp.fill(more)
                tsp_budget -= took
                tsp_rate = more / took if took > 0 and more else tsp_rate
                finished = tsp.states().get("finished", 0)
                tsp_ok = finished == n
                if not tsp_ok:
                    table.note(f"history {fmt_n(n)}: tsp holds {finished:,} finished jobs, not {n:,}: not measured")
                else:
                    table.note(f"history {fmt_n(n)}: tsp filled to {n:,} finished jobs (`tsp true`, {more / took:.0f} jobs/s)")
            measure_history(table, n, home, tsp if tsp_ok else None, runs, args)
    finally:
        tsp.cleanup()


def measure_history(table: Table, n: int, home: Path, tsp: Tsp | None, runs: int, args: argparse.Namespace) -> None:
    label = fmt_n(n)
    daemon = history_daemon(f"hist{label}", home, args.daemon_loop)
    try:
        starts = []
        daemon.start()
        starts.append(daemon.start_seconds)
        time.sleep(2.0)  # let start-up settle (a snapshot, the first fsyncs)
        rss, hwm = proc_status(daemon.pid, "VmRSS"), proc_status(daemon.pid, "VmHWM")
        info = daemon.call(p.Info(), p.DaemonStatus)
        held = sum(info.counts.values())
        if held != n:
            table.note(f"history {label}: the daemon holds {held:,} tasks, expected {n:,} ({info.counts})")
        # the oldest task
        oldest = 1
        env = daemon.env
        check = subprocess.run([ORCHESTRA, "show", str(oldest)], env=env, capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"orchestra show {oldest} failed: {check.stderr[-300:]}")
        failed_ps = FAILED_PS
        failed = subprocess.run([ORCHESTRA, *failed_ps], env=env, capture_output=True, text=True)
        if failed.returncode != 0 and "not both" in failed.stderr:
            failed_ps = FAILED_PS_OLD
            table.note(f"history {label}: this CLI refuses `ps --all --limit`: measured `orchestra {' '.join(failed_ps)}`")
            failed = subprocess.run([ORCHESTRA, *failed_ps], env=env, capture_output=True, text=True)
        if failed.returncode != 0:
            raise RuntimeError(f"orchestra ps --status failed failed: {failed.stderr[-300:]}")
        shown_failed = sum(1 for line in failed.stdout.splitlines() if " failed " in f" {line} ")
        commands: dict[str, tuple[list[str], dict[str, str]]] = {
            "ps": ([ORCHESTRA, "ps"], env),
            "failed": ([ORCHESTRA, *failed_ps], env),
            "show": ([ORCHESTRA, "show", str(oldest)], env),
            "python": ([sys.executable, "-I", "-c", "pass"], clean_env()),
        }
        if tsp is not None:
            commands["tsp"] = ([bd.TSP, "-l"], tsp.env)
        times: dict[str, list[float]] = {k: [] for k in commands}
        for round_ in range(runs + 2):  # interleaved, 2 warm-ups
            for name, (argv, cenv) in commands.items():
                elapsed = timed_run(argv, cenv)
                if round_ >= 2:
                    times[name].append(elapsed)
        med = {k: statistics.median(v) for k, v in times.items()}
        state_bytes = disk_usage(daemon.paths.state)
        log_bytes = disk_usage(daemon.paths.log_dir)
        rss_after = proc_status(daemon.pid, "VmRSS")
        stops = []
        for _ in range(2):
            t0 = time.perf_counter()
            daemon.stop()
            stops.append(time.perf_counter() - t0)
            daemon.start()
            starts.append(daemon.start_seconds)
        rss_restarted = proc_status(daemon.pid, "VmRSS")
        t0 = time.perf_counter()
        daemon.stop()
        stops.append(time.perf_counter() - t0)
        start_med = statistics.median(starts)
        tsp_rss = ""
        if tsp is not None:
            pid = tsp.server_pid()
            tsp_rss = f"tsp server RSS {mb(proc_status(pid, 'VmRSS'))}" if pid else ""
        table.add("history", f"{label} tasks: daemon RSS settled / peak", f"{mb(rss)} / {mb(hwm)}", tsp_rss or "",
                  "", "<=150 MB at 1M", verdict(hwm / 1024 <= 150))
        table.add("history", f"  {label}: start-up to answering, median of 3", f"{start_med:.2f} s",
                  "runs: " + ", ".join(f"{s:.2f}" for s in starts), "", "<=0.3 s at 1M", verdict(start_med <= 0.3))
        table.add("history", f"  {label}: stop (SIGTERM to exit); RSS restarted", ", ".join(f"{s:.2f}" for s in stops) + " s",
                  f"RSS after a restart {mb(rss_restarted)}")
        table.add("history", f"  {label}: orchestra ps median / p90", f"{ms(med['ps'])} / {ms(pct(times['ps'], 90))}",
                  f"python -I: {ms(med['python'])}", f"{med['ps'] / med['python']:.1f}x", "<=3x python",
                  verdict(med["ps"] <= 3 * med["python"]))
        table.add("history", f"  {label}: {' '.join(failed_ps)}", ms(med["failed"]),
                  f"{shown_failed} rows shown", "", "<=100 ms", verdict(med["failed"] <= 0.1))
        table.add("history", f"  {label}: orchestra show {oldest} (the oldest)", ms(med["show"]), "", "", "<=100 ms",
                  verdict(med["show"] <= 0.1))
        table.add("history", f"  {label}: tsp -l, {label} finished jobs", "",
                  f"tsp -l: {ms(med['tsp'])} / {ms(pct(times['tsp'], 90))}" if tsp is not None else "tsp: not measured")
        table.add("history", f"  {label}: state dir on disk (log)", f"{state_bytes / 1e6:,.0f} MB ({log_bytes / 1e6:,.0f} MB)",
                  f"{state_bytes / n / 1024:.1f} KiB/task; RSS after runs {mb(rss_after)}")
        for line in daemon.problems()[:5]:
            table.note(f"history {label} daemon log: {line}")
    finally:
        daemon.cleanup()


# ---------------------------------------------------------------------------------------
# 2. queue


def queue_plan(n: int, seed: int) -> list[tuple[str, int]]:
    """(kind, priority) per task: "i" independent, "h" a chain's head, "l" a link after the
    task before it. The first is independent (tsp's -d would tie it to a blocker)."""
    rng = random.Random(seed)
    out: list[tuple[str, int]] = [("i", rng.randint(-10, 10))]
    while len(out) < n:
        if rng.random() < 0.2 / 4:  # chains of 2-6 (mean 4) make up ~20% of the tasks
            length = min(rng.randint(2, 6), n - len(out))
            out.append(("h", 0))
            out += [("l", 0)] * (length - 1)
        else:
            out.append(("i", rng.randint(-10, 10)))
    return out[:n]


def orchestra_queue(n: int, args: argparse.Namespace, rounds: int = 1, deadline: float | None = None) -> dict[str, Any]:
    """Queue n tasks behind 2 blockers, release, drain; `rounds` times in the same daemon."""
    daemon = Daemon(f"queue{fmt_n(n)}", args.daemon_loop)
    result: dict[str, Any] = {"n": n, "rounds": rounds, "drain": 0.0, "cpu": 0.0, "submit": 0.0}
    try:
        daemon.start()
        daemon.configure(max_concurrent=2)
        cwd = str(daemon.home)
        plan = queue_plan(n, seed=n)
        with daemon.connect() as conn:
            for _ in range(rounds):
                blockers = [conn.call(p.Submit(cwd=cwd, argv=["sleep", "3600"], title="blocker"), p.TaskView).id for _ in range(2)]
                wait_for(lambda: all(conn.call(p.Show(task=b), p.TaskView).status is p.Status.RUNNING for b in blockers), 30,
                         "the blockers to run")
                first = blockers[-1] + 1
                requests = []
                for i, (kind, priority) in enumerate(plan):
                    after = [first + i - 1] if kind == "l" else []
                    requests.append(p.Submit(cwd=cwd, argv=["true"], priority=priority, after=after))
                t0 = time.perf_counter()
                ids: list[int] = []
                step = 20_000
                for i in range(0, n, step):
                    got = conn.call_many(requests[i:i + step], p.TaskView)
                    bad = [g for g in got if isinstance(g, Exception)]
                    if bad:
                        raise RuntimeError(f"{len(bad)} submits refused, e.g. {bad[0]}")
                    ids += [g.id for g in got]
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"submitting took too long: {len(ids):,} of {n:,} in {time.perf_counter() - t0:.0f} s")
                result["submit"] += time.perf_counter() - t0
                if ids != list(range(first, first + n)):
                    raise RuntimeError("the tasks were not numbered as expected, so the chains are wrong")
                result["rss_queued_kb"] = proc_status(daemon.pid, "VmRSS")
                cpu0 = proc_cpu_seconds(daemon.pid)
                released = time.time()
                conn.call_many([p.Stop(task=b) for b in blockers])
                views = wait_all(daemon, ids)
                cpu1 = proc_cpu_seconds(daemon.pid)
                # A task that did not succeed is a finding, not a reason to drop the figures.
                bad = [v for v in views if v.status is not p.Status.SUCCEEDED]
                result.setdefault("bad", []).extend((v.id, v.status.value, v.reason) for v in bad)
                last = max(v.finished_at or 0 for v in views)
                result["drain"] += last - released
                result["cpu"] += cpu1 - cpu0
        result["hwm_kb"] = proc_status(daemon.pid, "VmHWM")
        result["problems"] = daemon.problems()[:5]
        return result
    finally:
        daemon.cleanup()


def tsp_queue(n: int, deadline: float | None = None) -> dict[str, Any]:
    plan = queue_plan(n, seed=n)
    tsp = Tsp(f"queue-tsp{fmt_n(n)}", max_finished=n + 10)
    feeder: subprocess.Popen | None = None
    blockers: list[int] = []
    try:
        blockers += [tsp.submit("sleep", "3600") for _ in range(2)]
        wait_for(lambda: tsp.states().get("running", 0) == 2, 30, "the tsp blockers to run")
        script = tsp.script([f"{bd.TSP} -d true >/dev/null" if kind == "l" else f"{bd.TSP} true >/dev/null" for kind, _ in plan])
        t0 = time.perf_counter()
        feeder = subprocess.Popen(["bash", str(script)], env=tsp.env)
        room = min(n, 950)  # tsp holds at most about 1,000 waiting jobs (each a client process)
        while feeder.poll() is None and tsp.states().get("queued", 0) < room:
            if time.perf_counter() - t0 > 600:
                raise TimeoutError("tsp's queue did not fill in 600 s")
            time.sleep(0.2)
        queued = tsp.states().get("queued", 0)
        all_queued = feeder.poll() is not None
        submit = time.perf_counter() - t0
        released = time.perf_counter()
        for job in blockers:
            tsp.run("-k", str(job))
        while feeder.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("tsp took too long")
            time.sleep(0.05)
        if feeder.returncode != 0:
            raise RuntimeError(f"tsp submissions failed ({feeder.returncode})")
        last = blockers[-1] + n
        subprocess.run([bd.TSP, "-w", str(last)], env=tsp.env, capture_output=True)
        wait_for(tsp.idle, 600, "tsp to finish")
        drained = time.perf_counter() - released
        states = tsp.states()
        done = states.get("finished", 0)
        if done != n + 2:
            raise RuntimeError(f"tsp ended with {states}, expected {n + 2} finished")
        return {"n": n, "drain": drained, "submit_before": submit, "queued_at_release": queued, "all_queued": all_queued}
    finally:
        if feeder is not None and feeder.poll() is None:
            feeder.kill()
        for job in blockers:  # never leave a blocker running past its server
            subprocess.run([bd.TSP, "-k", str(job)], env=tsp.env, capture_output=True)
        tsp.cleanup()


def bench_queue(table: Table, args: argparse.Namespace) -> None:
    start = time.monotonic()
    budget = args.queue_limit
    base_rounds = 3 if args.quick else 5
    base = orchestra_queue(100, args, rounds=base_rounds)
    base_cpu = base["cpu"] / (100 * base_rounds) * 1000
    table.add("queue", f"100 queued x {base_rounds} rounds: CPU/1,000 starts", f"{base_cpu:.2f} s",
              f"drain {100 * base_rounds / base['drain']:.0f} tasks/s", "", "(baseline)")
    previous: tuple[int, float] | None = None  # (n, seconds the size took)
    for n in args.queue_sizes:
        label = fmt_n(n)
        left = budget - (time.monotonic() - start)
        if previous is not None:
            pn, took = previous
            growth = max(1.0, n / pn)
            projected = took * growth * 1.3  # a little superlinear, to be safe
            if projected > left:
                table.add("queue", f"{label} queued", "not measured", f"projected ~{projected / 60:.0f} min, "
                          f"{max(0, left) / 60:.0f} min left of --queue-limit")
                continue
        t0 = time.monotonic()
        deadline = time.monotonic() + max(60.0, left)
        try:
            orc = orchestra_queue(n, args, deadline=deadline)
        except TimeoutError as exc:
            table.add("queue", f"{label} queued", "not finished", str(exc)[:60])
            previous = (n, time.monotonic() - t0)
            continue
        try:
            ref = tsp_queue(n, deadline=deadline + 600)
        except TimeoutError as exc:
            ref = None
            table.note(f"queue {label}: tsp not finished: {exc}")
        previous = (n, time.monotonic() - t0)
        cpu = orc["cpu"] / n * 1000
        rate = n / orc["drain"]
        ratio = orc["drain"] / ref["drain"] if ref else float("nan")
        table.add("queue", f"{label} queued: drain, release->last finish", f"{rate:,.0f} tasks/s ({orc['drain']:.1f} s)",
                  f"tsp: {n / ref['drain']:,.0f} tasks/s ({ref['drain']:.1f} s)" if ref else "tsp: not measured",
                  f"{ratio:.2f}x" if ref else "", "<=1.5x tsp", verdict(ratio <= 1.5) if ref else "")
        table.add("queue", f"  {label}: daemon CPU per 1,000 starts", f"{cpu:.2f} s", f"queue of 100: {base_cpu:.2f} s",
                  f"{cpu / base_cpu:.2f}x", "<=1.5x (100)", verdict(cpu <= 1.5 * base_cpu))
        table.add("queue", f"  {label}: submitting (pipelined); RSS queued", f"{n / orc['submit']:,.0f}/s ({orc['submit']:.1f} s)",
                  f"RSS with {label} queued {mb(orc['rss_queued_kb'])}, peak {mb(orc['hwm_kb'])}")
        if orc.get("bad"):
            bad = orc["bad"]
            table.note(f"queue {label}: {len(bad)} of {n:,} `true` tasks did not succeed (the daemon's doing, not the "
                       f"command's): " + "; ".join(f"task {i} {status}: {reason}" for i, status, reason in bad[:3]))
        if ref and not ref["all_queued"]:
            table.note(f"queue {label}: tsp held {ref['queued_at_release']:,} waiting jobs at the release (its limit); "
                       f"the other {n - ref['queued_at_release']:,} were submitted while it drained, so its drain includes submitting them")
        for line in orc.get("problems", []):
            table.note(f"queue {label} daemon log: {line}")


# ---------------------------------------------------------------------------------------
# 3. agents


def dat_bytes(daemon: Daemon) -> int:
    return sum(f.stat().st_size for f in daemon.paths.log_dir.glob("*.dat"))


def agents_run(table: Table, args: argparse.Namespace, history: int, home: Path | None) -> None:
    agents = 30 if args.quick else 300
    seconds = 8.0 if args.quick else 30.0
    lines_each = int(seconds * 10)
    label = fmt_n(history) if history else "empty"
    daemon = history_daemon(f"agents-{label}", home, args.daemon_loop)
    try:
        daemon.start()
        if daemon.start_seconds > 5:
            table.note(f"agents {label}: the daemon took {daemon.start_seconds:.0f} s to answer")
        daemon.configure(max_concurrent=agents + 2)
        cwd = str(daemon.home)
        argv = ["perl", "-e", PERL_WRITER, str(lines_each)]
        cpu_start, dat_start = proc_cpu_seconds(daemon.pid), dat_bytes(daemon)
        t_start = time.perf_counter()
        with daemon.connect() as conn:
            ids = [v.id for v in conn.call_many([p.Submit(cwd=cwd, argv=argv, title=f"writer {i}") for i in range(agents)], p.TaskView)]
            idset = set(ids)

            def running() -> list[p.TaskView]:
                page = conn.call(p.ListTasks(status=[p.Status.RUNNING], limit=p.PAGE_MAX), p.TaskPage)
                return [v for v in page.tasks if v.id in idset]

            wait_for(lambda: len(running()) == agents, 120, "every agent to run")
            time.sleep(1.0)
            window_ok = len(running()) == agents
            # The window is read without asking the daemon anything (a ListTasks over a long
            # history costs daemon CPU): output bytes are the growth of the log's .dat files,
            # which hold the output back to back and nothing else.
            bytes0, cpu0, m0, w0 = dat_bytes(daemon), proc_cpu_seconds(daemon.pid), machine_jiffies(), time.perf_counter()
            time.sleep(seconds * 0.6)
            bytes1, cpu1, m1, w1 = dat_bytes(daemon), proc_cpu_seconds(daemon.pid), machine_jiffies(), time.perf_counter()
            window_ok = window_ok and len(running()) == agents
        done = wait_all(daemon, ids)
        cpu_end = proc_cpu_seconds(daemon.pid)
        total_lines = sum(v.output_bytes for v in done) / LINE
        grown = dat_bytes(daemon) - dat_start
        if grown != sum(v.output_bytes for v in done):
            table.note(f"agents {label}: the log's data grew by {grown:,} bytes, the agents wrote {sum(v.output_bytes for v in done):,}")
        bad = [v for v in done if v.status is not p.Status.SUCCEEDED or v.output_bytes != lines_each * LINE]
        if bad:
            table.note(f"agents {label}: {len(bad)} agents did not end as expected, e.g. task {bad[0].id}: {bad[0].status.value}, "
                       f"{bad[0].output_bytes} bytes of {lines_each * LINE}")
        lines = (bytes1 - bytes0) / LINE
        per_line = (cpu1 - cpu0) / lines * 1e6 if lines else float("nan")
        busy = 1 - (m1[1] - m0[1]) / max(1, m1[0] - m0[0])
        table.add("agents", f"{agents} x 10 lines/s, history {label}: CPU/line", f"{per_line:.1f} us",
                  f"{lines / (w1 - w0):,.0f} lines/s over {w1 - w0:.0f} s; machine {busy:.0%} busy", "", "<=50 us",
                  verdict(per_line <= 50) if window_ok else "window incomplete")
        table.add("agents", f"  history {label}: whole run, starts and exits too",
                  f"{(cpu_end - cpu_start) / total_lines * 1e6:.1f} us/line",
                  f"{total_lines:,.0f} lines in {time.perf_counter() - t_start:.0f} s; RSS {mb(proc_status(daemon.pid, 'VmRSS'))}")
        for line in daemon.problems()[:5]:
            table.note(f"agents {label} daemon log: {line}")
    finally:
        daemon.cleanup()


def bench_agents(table: Table, args: argparse.Namespace) -> None:
    agents_run(table, args, 0, None)
    for n in args.agent_histories:
        home = cached_history(n, table, False)
        agents_run(table, args, n, home)


# ---------------------------------------------------------------------------------------
# 4. ingest


def bench_ingest(table: Table, args: argparse.Namespace) -> None:
    size = GIB // 4 if args.quick else GIB
    label = f"{size >> 20} MiB"
    rounds = 1 if args.quick else 2
    daemon = Daemon("ingest", args.daemon_loop)
    rates: list[float] = []
    disks: list[float] = []
    try:
        daemon.start()
        cwd = str(daemon.home)
        for _ in range(rounds):
            target_file = daemon.home / "disk-ref"
            t0 = time.perf_counter()
            subprocess.run(["dd", "if=/dev/zero", f"of={target_file}", "bs=1M", f"count={size >> 20}", "conv=fdatasync"],
                           check=True, capture_output=True)
            disks.append(size / (time.perf_counter() - t0) / 1e6)
            target_file.unlink()
            with daemon.connect() as conn:
                t0 = time.perf_counter()
                task = conn.call(p.Submit(cwd=cwd, argv=["head", "-c", str(size), "/dev/zero"]), p.TaskView).id
                [view] = conn.call(p.Wait(tasks=[task]), list[p.TaskView])
                elapsed = time.perf_counter() - t0
            if view.status is not p.Status.SUCCEEDED or view.output_bytes != size:
                raise RuntimeError(f"task ended {view.status.value} with {view.output_bytes} bytes of output, expected {size}")
            rates.append(size / elapsed / 1e6)
        hwm = proc_status(daemon.pid, "VmHWM")
        rate, disk = statistics.median(rates), statistics.median(disks)
        table.add("ingest", f"{label} on stdout: MB/s submit->finish", f"{rate:,.0f} MB/s",
                  f"dd+fdatasync: {disk:,.0f} MB/s", f"{rate / disk:.2f}x", ">=0.9x dd", verdict(rate >= 0.9 * disk))
        table.add("ingest", f"  each round (orchestra | dd)", ", ".join(f"{r:,.0f}" for r in rates),
                  ", ".join(f"{d:,.0f}" for d in disks), "", "", f"peak RSS {mb(hwm)}")
        for line in daemon.problems()[:5]:
            table.note(f"ingest daemon log: {line}")
    finally:
        daemon.cleanup()


# ---------------------------------------------------------------------------------------

BENCHES = {"history": bench_history, "queue": bench_queue, "agents": bench_agents, "ingest": bench_ingest,
           "check": check_synthetic}  # check: only the real-vs-synthetic comparison (history runs it first)


def main() -> int:
    if sys.argv[1:2] == ["--internal"]:  # cached_history's fresh interpreter
        kind, home, n, result = sys.argv[2:6]
        return run_internal(kind, Path(home), int(n), Path(result))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", help="history sizes (default 1000,10000,100000,1000000; --quick: 200,2000)")
    parser.add_argument("--queue-sizes", help="queue lengths (default: --sizes)")
    parser.add_argument("--agent-histories", help="histories to run the agents benchmark over besides an empty one "
                        "(default: the largest of --sizes; 'all': each; 'none')")
    parser.add_argument("--only", default="history,queue,agents,ingest", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="smaller runs, to check the script (not figures to quote)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached synthetic histories")
    parser.add_argument("--tsp-fill-limit", type=float, default=300, help="seconds to spend filling tsp with finished jobs")
    parser.add_argument("--queue-limit", type=float, default=1200, help="seconds for the queue benchmark; larger sizes "
                        "projected past it are skipped, and said so")
    parser.add_argument("--daemon-loop", choices=("uvloop", "asyncio"), default="uvloop", help=argparse.SUPPRESS)
    parser.add_argument("--busy-limit", type=float, default=0.25, help="wait before each benchmark until the machine is less busy than this")
    parser.add_argument("--wait-quiet", type=float, default=120, help="...for at most this many seconds")
    args = parser.parse_args()
    parse = lambda s: [int(float(x)) for x in s.split(",") if x.strip()]  # noqa: E731
    args.sizes = sorted(parse(args.sizes)) if args.sizes else ([200, 2000] if args.quick else [1000, 10_000, 100_000, 1_000_000])
    args.queue_sizes = sorted(parse(args.queue_sizes)) if args.queue_sizes else args.sizes
    if args.agent_histories in (None, ""):
        args.agent_histories = [max(args.sizes)]
    elif args.agent_histories == "all":
        args.agent_histories = list(args.sizes)
    elif args.agent_histories == "none":
        args.agent_histories = []
    else:
        args.agent_histories = parse(args.agent_histories)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    tsp_path()
    print(f"bench_scale: {machine()}; sizes {', '.join(fmt_n(n) for n in args.sizes)}{'; QUICK' if args.quick else ''}\n"
          f"code: {code_version()}", flush=True)
    table = Table()
    t_all = time.perf_counter()
    code0 = code_version()

    def say_which_tree(name: str) -> None:
        code = code_version()
        if code != code0:  # others commit while it runs: say which tree each benchmark measured
            table.note(f"{name}: measured on {code} (the run started on {code0})")

    failed = bd.run_each(chosen, BENCHES, table, args, before=say_which_tree)
    print(f"\n(all: {time.perf_counter() - t_all:.0f} s)\n")
    print(table.render())
    if table.notes:
        print("\nnotes:")
        print("\n".join(f"- {n}" for n in table.notes))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "code": code_version(), "quick": args.quick, "sizes": args.sizes,
                                         "rows": table.rows, "notes": table.notes}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
