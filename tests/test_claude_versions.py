"""The real Claude Code CLIs, the oldest supported (2.1.197) and the current release (2.1.332),
through a real daemon against the scripted Messages API, where the two differ: what a run
costs across follow-ups and resumes (2.1.332's totals cover a resumed session), a budget
over several attempts, and a question of several parts."""

from __future__ import annotations

import json

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import Daemon, wait_for
from tests.scripted_api import ScriptedAPI, reply

FINISHED = tuple(p.FINISHED)


@pytest.fixture
def team(claude_version):
    which, path = claude_version
    api = ScriptedAPI().start()
    d = Daemon()
    d.env.update(api.env(d.env))
    d.start()
    d.call(p.ConfigSet(key="claude_path", value=path))
    yield d, api
    d.cleanup()
    api.close()


def submit(d: Daemon, prompt: str, **kw) -> int:
    kw.setdefault("cwd", str(d.home))
    return d.call(p.Submit(prompt=prompt, **kw), p.TaskView).id


def follow_up(d: Daemon, task: int, text: str, attempts: int) -> p.TaskView:
    assert d.cli("respond", str(task), text).exit_code == 0
    wait_for(lambda: d.task(task).attempts == attempts, 30, f"attempt {attempts}")
    return d.wait_status(task, *FINISHED, timeout=60)


def test_the_cost_of_each_run_is_counted_once_across_follow_ups_and_a_resume(team):
    d, api = team
    api.add(reply.text("one"), reply.text("two"), reply.text("three"), reply.text("four"))
    task = submit(d, "first")
    first = d.wait_status(task, Status.SUCCEEDED, timeout=60)
    per_run = first.cost_usd  # one scripted turn at the version's default model's prices
    assert per_run > 0
    for n, text in ((2, "second"), (3, "third")):
        view = follow_up(d, task, text, n)
        assert view.status is Status.SUCCEEDED and view.cost_usd == pytest.approx(n * per_run), view
    assert d.cli("resume", str(task), "fourth").exit_code == 0
    wait_for(lambda: d.task(task).attempts == 4, 30, "the resumed attempt")
    done = d.wait_status(task, *FINISHED, timeout=60)
    assert done.status is Status.SUCCEEDED and done.result == "four" and done.session_id == first.session_id
    assert done.cost_usd == pytest.approx(4 * per_run)
    assert done.input_tokens == 4 * 100 and done.output_tokens == 4 * 20
    assert len(api.turn_requests) == 4


def test_a_budget_over_several_follow_ups_is_not_reached_early(team):
    d, api = team
    api.add(reply.text("one"), reply.text("two"), reply.text("three"), reply.text("four"))
    # 3.5 runs' worth: three follow-ups fit, the fourth run reaches it
    probe = submit(d, "price")
    per_run = d.wait_status(probe, Status.SUCCEEDED, timeout=60).cost_usd
    task = submit(d, "first", budget_usd=round(3.5 * per_run, 6))
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    for n in (2, 3):
        view = follow_up(d, task, f"again {n}", n)
        assert view.status is Status.SUCCEEDED, view.reason
    assert view.cost_usd == pytest.approx(3 * per_run)


def test_a_question_of_two_parts_one_multi_select_each_answered(team):
    d, api = team
    question = {"questions": [
        {"question": "Which database?", "header": "DB", "multiSelect": False,
         "options": [{"label": "SQLite", "description": "a file"}, {"label": "PostgreSQL", "description": "a server"}]},
        {"question": "Which colors?", "header": "Colors", "multiSelect": True,
         "options": [{"label": "Red", "description": "warm"}, {"label": "Green", "description": "calm"}, {"label": "Blue", "description": "cool"}]},
    ]}
    api.add(reply.tool_use("AskUserQuestion", question), reply.text("Set up."))
    task = submit(d, "set it up")
    first = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert first.status is Status.WAITING and first.waiting.prompt == "(1/2) Which database?"
    assert d.cli("respond", str(task), "2").output == f"answered task {task}'s question with option 2: PostgreSQL\n"
    wait_for(lambda: (d.task(task).waiting or first.waiting).prompt.startswith("(2/2)"), 30, "the second question")
    second = d.task(task).waiting
    assert second.prompt == "(2/2) Which colors? (one or more: their numbers, e.g. 1,3)" and second.options == ["Red", "Green", "Blue"]
    assert d.cli("respond", str(task), "1,3").exit_code == 0
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    sent = json.dumps(api.turn_requests[-1].tool_results())
    assert "PostgreSQL" in sent and "Red, Blue" in sent
    transcript = d.cli("logs", str(task)).output
    assert "  answered: PostgreSQL" in transcript and "  answered: Red, Blue" in transcript
