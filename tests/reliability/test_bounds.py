"""Bounded replies, however long the history, and limits on every field a client gives
(issue 14, items 6 and 10).

An outside attack suite broke every list past 16 MiB of reply: 3,000 finished tasks with a
7 KB result each made `ps`, `ps --status succeeded`, `wait` on all ids, the MCP tools
`list-processes` and `status-dashboard` fail for good (`the answer would be 19,339,528
bytes ...`); three 7 MiB titles did the same, and so did about 38,000 small tasks. Odd
values gave tracebacks (`--title $'x\\xff'`, `--after 10**30`) or were accepted (env names
"" and "A\\0B", timeouts of inf and 1e308).

Here the same histories are made with real tasks: `cat` of a 7 KB file under a raised
max_concurrent, and 38,000 tasks queued behind a sleeper and cancelled in bulk (what `ps`
then lists is the same size as 38,000 that ran). Reply sizes are printed; the bounds are
that every reply fits in a frame, and a page in PAGE_BYTES.
"""

from __future__ import annotations

import json
import subprocess
import time

import anyio
import msgspec
import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import wait_for
from tests.reliability.harness import PY, RDaemon, Raw, encode_map
from tests.test_mcp import call, connected

RESULT = ("r" * 99 + "\n") * 70  # 7,000 bytes on stdout; a command's result is its tail
FINISHED_TASKS = 3000
SMALL_TASKS = 38_000
SLACK = 64 << 10  # a page holds views up to PAGE_BYTES, plus the reply's own fields


def cli(d: RDaemon, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`orchestra ARGS` as a person runs it (the entry point, so `ps` takes the quick path)."""
    return subprocess.run([PY, "-m", "orchestra", *args], env={**d.env, "COLUMNS": "120"},
                          capture_output=True, text=True, timeout=timeout)


def raw_reply(d: RDaemon, request: p.Request | bytes) -> tuple[dict, int]:
    """The daemon's reply to one request sent as a raw frame, and the frame's size."""
    with Raw(d.paths.socket, timeout=60) as raw:
        raw.hello()
        raw.frame(request if isinstance(request, bytes) else msgspec.msgpack.encode(request))
        reply = raw.reply()
        assert reply is not None, "the daemon hung up without a reply"
        return reply, raw.last_size


def rows(table: str) -> list[str]:
    return [line for line in table.splitlines()[1:] if line[:1].isdigit()]


@pytest.fixture(scope="module")
def history():
    """A daemon that ran 3,000 tasks, each leaving a 7 KB result."""
    d = RDaemon()
    try:
        d.start()
        d.call(p.ConfigSet(key="max_concurrent", value=8))
        out = d.home / "7k.txt"
        out.write_text(RESULT)
        t0 = time.monotonic()
        with d.connect() as conn:
            views = conn.call_many([p.Submit(argv=["cat", str(out)], cwd=str(d.home), env=d.task_env())
                                    for _ in range(FINISHED_TASKS)], p.TaskView)
        ids = [v.id for v in views]
        wait_for(lambda: d.call(p.Info(), p.DaemonStatus).counts == {"succeeded": FINISHED_TASKS}, 300, "every task to succeed")
        print(f"\n{FINISHED_TASKS:,} tasks with a 7 KB result ran in {time.monotonic() - t0:.1f} s")
        yield d, ids
    finally:
        d.cleanup()


def test_lists_of_3000_tasks_with_7kb_results_fit_and_carry_previews(history):
    d, ids = history
    assert len(d.task(ids[0]).result) > 5000  # `show` keeps the whole result
    sizes = {}
    for name, request in [("ListTasks", p.ListTasks()), ("ListTasks succeeded", p.ListTasks(status=[Status.SUCCEEDED])),
                          ("Wait on all", p.Wait(tasks=ids)), ("Queue", p.Queue()), ("ListWorkflows", p.ListWorkflows())]:
        reply, size = raw_reply(d, request)
        assert reply["reply"] == "ok", f"{name}: {reply}"
        sizes[name] = size
        assert size <= p.MAX_FRAME
    print("reply sizes: " + ", ".join(f"{name} {size:,} bytes" for name, size in sizes.items()))
    page = msgspec.convert(raw_reply(d, p.ListTasks())[0]["result"], p.TaskPage)
    assert (len(page.tasks), page.more, page.total) == (p.PAGE_MAX, True, FINISHED_TASKS)
    assert [t.id for t in page.tasks] == sorted(ids, reverse=True)[: p.PAGE_MAX]  # newest first
    assert all(len(t.result) <= p.PREVIEW and t.result.endswith("…") for t in page.tasks)
    assert sizes["ListTasks"] <= p.PAGE_BYTES + SLACK
    assert len(d.tasks()) == FINISHED_TASKS  # page by page, with the cursor


def test_ps_shows_the_newest_finished_and_pages_through_all_of_them(history):
    d, ids = history
    for args in (["ps"], ["ps", "--status", "succeeded"]):
        result = cli(d, *args)
        assert result.returncode == 0, result.stderr
        assert len(rows(result.stdout)) == 20, args
        assert [int(r.split()[0]) for r in rows(result.stdout)] == ids[-20:]
        assert f"the newest 20 of {FINISHED_TASKS:,} finished tasks are shown" in result.stderr
    result = cli(d, "ps", "--all")
    assert result.returncode == 0, result.stderr
    assert [int(r.split()[0]) for r in rows(result.stdout)] == ids
    assert result.stderr == ""
    result = cli(d, "ps", "--limit", "1500", "--status", "succeeded")
    assert result.returncode == 0 and len(rows(result.stdout)) == 1500


def test_wait_on_every_id_answers_with_short_views(history):
    d, ids = history
    result = cli(d, "wait", *map(str, ids))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" succeeded\n") == FINISHED_TASKS
    result = cli(d, "wait", "--json", *map(str, ids[:50]))
    assert result.returncode == 0 and all(len(v["result"]) <= p.PREVIEW for v in json.loads(result.stdout))


def test_mcp_list_processes_pages_with_a_cursor(history):
    d, ids = history
    seen: list[int] = []

    async def main():
        async with connected(d.home) as client:
            first = await call(client, "list-processes")
            assert not first.is_error, first.content
            content = first.structured_content
            assert [t["id"] for t in content["tasks"]] == sorted(ids, reverse=True)[:50]
            assert content["total"] == FINISHED_TASKS and content["next_cursor"] == content["tasks"][-1]["id"]
            cursor = None
            while True:
                page = (await call(client, "list-processes", limit=p.PAGE_MAX, **({"cursor": cursor} if cursor else {}))).structured_content
                seen.extend(t["id"] for t in page["tasks"])
                cursor = page["next_cursor"]
                if cursor is None:
                    break

    anyio.run(main)
    assert seen == sorted(ids, reverse=True)


def test_mcp_status_dashboard_and_the_status_resource_stay_small(history):
    d, ids = history

    async def main():
        async with connected(d.home) as client:
            dashboard = await call(client, "status-dashboard")
            assert not dashboard.is_error, dashboard.content
            size = len(json.dumps(dashboard.structured_content))
            print(f"status-dashboard: {size:,} bytes of structured content")
            assert size < 64 << 10
            text = dashboard.structured_content["dashboard"]
            assert f"{FINISHED_TASKS} succeeded" in text and f"latest 5 of {FINISHED_TASKS}" in text
            assert dashboard.structured_content["counts"] == {"succeeded": FINISHED_TASKS}
            status = await client.read_resource("orchestra://status")
            assert len(status.contents[0].text) < 64 << 10

    anyio.run(main)


def test_three_7_mib_titles_are_refused_and_ps_still_works():
    d = RDaemon()
    try:
        d.start()
        for _ in range(3):
            with pytest.raises(p.OrchestraError) as refused:
                d.submit("true", title="t" * (7 << 20))
            assert refused.value.code is p.ErrorCode.BAD_REQUEST
            assert refused.value.message.startswith("the title is 7,340,032 characters, over the limit of 200")
        result = cli(d, "ps")
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "no tasks\n")
    finally:
        d.cleanup()


def test_a_history_of_38000_small_tasks_is_listed_a_page_at_a_time():
    d = RDaemon()
    try:
        d.start()
        d.call(p.ConfigSet(key="max_concurrent", value=1))
        sleeper = d.submit("sleep", "600", title="sleeper")  # holds the slot: the rest stay queued
        d.wait_status(sleeper, Status.RUNNING)
        t0 = time.monotonic()
        with d.connect() as conn:
            conn.sock.settimeout(300)
            views = conn.call_many([p.Submit(argv=["true"], cwd=str(d.home), env=d.task_env())
                                    for _ in range(SMALL_TASKS)], p.TaskView, window=256)
            stopped = conn.call_many([p.Stop(task=v.id) for v in views], p.TaskView, window=256)
        assert {v.status for v in stopped} == {Status.CANCELLED}
        print(f"\n{SMALL_TASKS:,} tasks submitted and cancelled in {time.monotonic() - t0:.1f} s")
        reply, size = raw_reply(d, p.ListTasks())
        print(f"ListTasks of {SMALL_TASKS + 1:,} tasks: a page of {size:,} bytes")
        assert reply["reply"] == "ok" and reply["result"]["more"] and size <= p.PAGE_BYTES + SLACK
        result = cli(d, "ps")
        assert result.returncode == 0, result.stderr
        assert len(rows(result.stdout)) == 21 and "sleeper" in result.stdout
        result = cli(d, "ps", "--all")
        assert result.returncode == 0, result.stderr
        assert len(rows(result.stdout)) == SMALL_TASKS + 1
        d.call(p.Stop(task=sleeper))
    finally:
        d.cleanup()


# ---------------------------------------------------------------------------------------
# odd values: one sentence and exit 2 from the CLI, an error reply from the daemon


@pytest.fixture(scope="module")
def plain():
    d = RDaemon()
    try:
        d.start()
        yield d
    finally:
        d.cleanup()


@pytest.mark.parametrize("args, words", [
    (["submit", "--title", "x\udcff", "--", "true"], "the title is not UTF-8 text (b'x\\xff')"),
    (["submit", "--after", "1" + "0" * 30, "--", "true"], "'1000000000000000000000000000000' is not a task id"),
    (["submit", "--", "tr\udcffue"], "word 1 of the command is not UTF-8 text"),
    (["submit", "-e", "A=\udcfe", "--", "true"], "the value of 'A' in the environment is not UTF-8 text"),
    (["show", "1" + "0" * 30], "is not a task id"),
    (["submit", "--timeout", "inf", "--", "true"], "timeout must be a number of seconds above 0 and at most 2,592,000"),
    (["submit", "--idle-timeout", "1e308", "--", "true"], "idle timeout must be a number of seconds above 0"),
    (["submit", "--title", "t" * 201, "--", "true"], "the title is 201 characters, over the limit of 200"),
    (["submit", "-e", "1X=y", "--", "true"], "'1X' is not an environment variable name"),
])
def test_odd_values_on_the_command_line_get_one_sentence_and_exit_2(plain, args, words):
    result = subprocess.run([PY, "-m", "orchestra", *args], env=plain.env, capture_output=True, timeout=30,
                            text=True, errors="surrogateescape")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("orchestra: ") and result.stderr.count("\n") == 1, result.stderr
    assert words in result.stderr


def _submit(**fields) -> bytes:
    return encode_map(**{"method": "submit", "argv": ["true"], **fields})


ODD_REQUESTS = {
    "env name ''": (dict(env={"": "x"}), "'' is not an environment variable name"),
    "env name 'A\\0B'": (dict(env={"A\0B": "x"}), "'A\\x00B' is not an environment variable name"),
    "env name 'A=B'": (dict(env={"A=B": "x"}), "is not an environment variable name"),
    "env value with NUL": (dict(env={"A": "x\0y"}), "the value of A holds a NUL character"),
    "env value of 1 MiB": (dict(env={"A": "v" * (1 << 20)}), "the value of A is 1,048,576 characters"),
    "300 env variables": (dict(env={f"V{i}": "x" for i in range(300)}), "300 environment variables"),
    "timeout inf": (dict(timeout=float("inf")), "timeout must be a number of seconds above 0"),
    "timeout 1e308": (dict(timeout=1e308), "not 1e+308"),
    "timeout nan": (dict(timeout=float("nan")), "not nan"),
    "idle timeout inf": (dict(idle_timeout=float("inf")), "idle timeout must be"),
    "budget inf": (dict(budget_usd=float("inf")), "budget must be above 0"),
    "argv with NUL": (dict(argv=["echo", "a\0b"]), "word 2 of the command, 'a\\x00b', holds a NUL"),
    "5,000 arguments": (dict(argv=["x"] * 5000), "5,000 arguments, over the limit of 4,096"),
    "argv of 300 KiB": (dict(argv=["echo", "a" * (300 << 10)]), "over the limit of 262,144"),
    "a 7 MiB title": (dict(title="t" * (7 << 20)), "the title is 7,340,032 characters"),
    "a 5,000-character cwd": (dict(cwd="/" + "d" * 4999), "the working directory is 5,000 characters"),
    "cwd with NUL": (dict(cwd="/tmp\0x"), "holds a NUL character"),
    "a model of 300 characters": (dict(model="m" * 300), "the model is 300 characters"),
    "2,000 dependencies": (dict(after=list(range(1, 2001))), "at most 1,000 others"),
    "dependency 0": (dict(after=[0]), "dependency 0 is not a task id"),
    "dependency 2**64-1": (dict(after=[2**64 - 1]), "is not a task id"),
}


@pytest.mark.parametrize("case", ODD_REQUESTS)
def test_odd_raw_requests_get_an_error_reply(plain, case):
    fields, words = ODD_REQUESTS[case]
    reply, size = raw_reply(plain, _submit(**{"cwd": str(plain.home), **fields}))
    assert reply["reply"] == "error" and reply["code"] == "bad_request", f"{case}: {str(reply)[:200]}"
    assert words in reply["message"], reply["message"]
    assert size < 1024, f"{case}: the error repeats the value ({size:,} bytes)"


@pytest.mark.parametrize("request_, words", [
    (encode_map(method="runworkflow", template="code-review", goal="g" * (p.MAX_PROMPT + 1), cwd="/"), "the goal is 1,048,577 characters"),
    (encode_map(method="runworkflow", template="code-review", goal="review", cwd="/" + "d" * 5000), "the working directory is 5,001 characters"),
    (encode_map(method="respond", task=1, text="a" * (p.MAX_PROMPT + 1)), "the answer is 1,048,577 characters"),
    (encode_map(method="wait", tasks=list(range(1, p.MAX_WAIT + 2))), "wait for at most 10,000 tasks"),
])
def test_other_requests_are_bounded_too(plain, request_, words):
    reply, _ = raw_reply(plain, request_)
    assert reply["reply"] == "error" and words in reply["message"], str(reply)[:300]


def test_settings_and_role_files_refuse_endless_seconds(plain):
    for key, value in (("default_timeout", float("inf")), ("default_idle_timeout", 1e308), ("kill_grace", float("inf"))):
        reply, _ = raw_reply(plain, encode_map(method="configset", key=key, value=value))
        assert reply["reply"] == "error" and "at most 30 days" in reply["message"], (key, reply)
    role = plain.paths.config / "roles" / "forever.toml"
    role.parent.mkdir(parents=True, exist_ok=True)
    role.write_text('description = "never stops"\nprompt = "Work."\ntimeout = inf\n')
    try:
        problems = wait_for(lambda: [x for x in plain.call(p.Roles(), p.RolesResult).problems if "forever.toml" in x],
                            what="the role file to be refused")
        assert "timeout must be above 0 and at most 2,592,000, not inf" in problems[0]
    finally:
        role.unlink()


def test_nothing_odd_was_recorded(plain):
    """Every request refused above left no task behind, and the daemon serves on."""
    assert plain.tasks() == []
    assert plain.call(p.Info(), p.DaemonStatus).counts == {}
