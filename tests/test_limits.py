"""Usage limits and transient errors with the real Claude Code CLI through a real daemon,
against the scripted Messages API answering 429, 529 and 500 (orchestrad.retries; the pure
rules are in test_retries.py).

The daemon's environment here has no CLAUDE_CODE_MAX_RETRIES: the daemon itself tells the
CLI not to retry, and these tests would see one attempt where they expect two if it did not.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import retries
from tests.daemon import Daemon, wait_for
from tests.scripted_api import OAUTH_TOKEN, ScriptedAPI, reply

FINISHED = tuple(p.FINISHED)


def _daemon(claude: str, env: dict[str, str], **config) -> Daemon:
    d = Daemon()
    d.env.update(env)
    d.env.pop("CLAUDE_CODE_MAX_RETRIES")  # the daemon's own default must hold
    d.env["ORCHESTRA_HOME"] = str(d.home)
    d.start()
    for key, value in {"claude_path": claude, "retry_base": 0.1, **config}.items():
        d.call(p.ConfigSet(key=key, value=value))
    return d


@pytest.fixture
def api():
    with ScriptedAPI() as api:
        yield api


@pytest.fixture
def team(claude, api):
    """A daemon logged in with an API key; yields (daemon, api)."""
    d = _daemon(claude, api.env())
    yield d, api
    d.cleanup()


@pytest.fixture
def subscriber(claude, api):
    """A daemon whose Claude agents are logged in with OAuth, as a subscriber with usage
    limits is (only then does the CLI report them); yields (daemon, api)."""
    env = api.oauth_env()
    d = _daemon(claude, env)
    d.env.pop("ANTHROPIC_API_KEY", None)
    yield d, api
    d.cleanup()


def submit(d: Daemon, prompt: str, **kw) -> int:
    kw.setdefault("cwd", str(d.home))
    return d.call(p.Submit(prompt=prompt, **kw), p.TaskView).id


def test_429_and_529_are_retried_continuing_the_session_each_attempt_shown(team):
    d, api = team
    api.add(
        reply.tool_use("Bash", {"command": "echo step1", "description": "first step"}),
        reply.error(429, message="slow down"),  # an API key's 429: the server throttling
        reply.overloaded(),
        reply.text("Finished after the retries."),
    )
    task = submit(d, "do the two steps")
    done = d.wait_status(task, *FINISHED, timeout=90)
    assert done.status is Status.SUCCEEDED, done.reason
    assert done.result == "Finished after the retries." and done.attempts == 3
    assert [(s.attempt, s.kind, s.error) for s in done.setbacks] == [(1, "retry", "rate limited"), (2, "retry", "overloaded")]
    turns = api.turn_requests
    assert len(turns) == 4
    assert {r.headers["x-claude-code-session-id"] for r in turns} == {done.session_id}  # one session throughout
    last = turns[-1].conversation_text()
    assert "do the two steps" in last and "step1" in last  # the work before the failure is still there
    assert retries.RETRY_MESSAGE.format(error="overloaded") in turns[-1].last_user_text
    shown = d.cli("show", str(task)).output
    assert "  attempts   3\n             attempt 1: rate limited, retried at " in shown
    assert "             attempt 2: overloaded, retried at " in shown and "API Error: 529 Overloaded" in shown


def test_500_every_time_fails_with_the_last_error_after_the_retries(team):
    d, api = team
    d.call(p.ConfigSet(key="retries", value=2))
    api.add(reply.error(500, message="the database is on fire", repeat=None))
    task = submit(d, "anything")
    done = d.wait_status(task, *FINISHED, timeout=90)
    assert done.status is Status.FAILED and done.attempts == 3
    assert done.reason.startswith("server error on each of 3 attempts; the last said: API Error: 500 the database is on fire")
    assert len(api.turn_requests) == 3 and [s.kind for s in done.setbacks] == ["retry", "retry"]


def test_a_refused_connection_is_retried_then_fails_saying_so(claude, api):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = _daemon(claude, api.env(ANTHROPIC_BASE_URL=f"http://127.0.0.1:{port}"), retries=1)
    try:
        done = d.wait_status(submit(d, "anything"), *FINISHED, timeout=60)
    finally:
        d.cleanup()
    assert done.status is Status.FAILED and done.attempts == 2
    assert done.reason == "connection error on each of 2 attempts; the last said: API Error: Unable to connect to API (ConnectionRefused)"


def test_a_usage_limit_parks_the_task_holds_its_account_and_resumes_the_session_at_the_reset(subscriber, monkeypatch):
    d, api = subscriber
    monkeypatch.setenv("COLUMNS", "200")
    api.add(
        reply.tool_use("Bash", {"command": "echo step1", "description": "first step"}),
        reply.usage_limit(resets_in=5),
        reply.text("Done.", repeat=2),  # the resumed task and the other one, in either order
    )
    task = submit(d, "refactor the cache")
    err = d.home / "wait.err"
    with open(err, "w") as stderr:
        waiting = subprocess.Popen([sys.executable, "-m", "orchestra", "wait", str(task)], env=d.env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        parked = wait_for(lambda: (v := d.task(task)).hold == "parked" and v, 60, "the task to be parked")
        assert parked.status is Status.QUEUED and parked.attempts == 1 and parked.pid is None
        reset = parked.hold_until
        assert reset > time.time() - 1 and parked.hold_reason == "usage limit"
        at = time.strftime("%H:%M", time.localtime(reset))
        other = submit(d, "write the docs")
        held = d.task(other)
        assert (held.status, held.hold, held.hold_until) == (Status.QUEUED, "account", reset)
        ps = d.cli("ps").output
        assert f"refactor the cache · parked until {at} (usage limit)" in ps
        assert f"write the docs · held by its account's usage limit until {at}" in ps
        assert f"  held       parked until {at} (usage limit)" in d.cli("show", str(task)).output

        out, _ = waiting.communicate(timeout=60)  # `wait` waits through the parking
        assert waiting.returncode == 0 and out == f"task {task} succeeded\n"
        assert err.read_text() == f"orchestra: task {task} is parked until {at} (usage limit); it resumes by itself then\n"
    finally:
        waiting.kill()
    done = d.wait_status(task, *FINISHED, timeout=60)
    assert done.status is Status.SUCCEEDED and done.result == "Done." and done.attempts == 2
    assert done.session_id == parked.session_id
    assert done.started_at >= reset  # the resumed attempt started at the reset, not before
    assert [(s.attempt, s.kind, s.error, s.until) for s in done.setbacks] == [(1, "parked", "usage limit", reset)]
    second = d.wait_status(other, *FINISHED, timeout=60)
    assert second.status is Status.SUCCEEDED and second.attempts == 1
    assert second.started_at >= reset  # nothing of the account started while it was limited
    [resumed] = [r for r in api.turn_requests if "refactor the cache" in r.conversation_text() and r.turn == 2]
    assert resumed.headers["x-claude-code-session-id"] == parked.session_id
    assert resumed.headers["authorization"] == f"Bearer {OAUTH_TOKEN}"
    assert retries.LIMIT_MESSAGE in resumed.last_user_text and "step1" in resumed.conversation_text()


def test_with_resume_after_limit_off_a_limited_task_fails_and_is_not_resumed(subscriber):
    d, api = subscriber
    d.call(p.ConfigSet(key="resume_after_limit", value=False))
    api.add(reply.usage_limit(resets_in=60))
    task = submit(d, "anything")
    done = d.wait_status(task, *FINISHED, timeout=60)
    assert done.status is Status.FAILED and done.attempts == 1 and done.setbacks == []
    assert done.reason.startswith(f"its account met its usage limit; after the reset `orchestra resume {task}` continues it (resume_after_limit is off): You've hit your session limit")
    assert len(api.turn_requests) == 1
