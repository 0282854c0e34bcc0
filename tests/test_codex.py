"""The real Codex CLI as the agent (its app server), against a scripted stand-in of the
OpenAI Responses API.

These tests need the `codex` binary (`.ci/run` installs it into .local/npm-codex). When it
is missing they fail with the install command: they never skip.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from orchestra.shared import protocol as p
from orchestra import render
from orchestra.shared.protocol import Status
from orchestrad.agents import codex as adapter
from tests.daemon import Daemon, wait_for
from tests.scripted_openai import INSTALL_HINT, MODEL, ScriptedOpenAI, find_codex, reply

FINISHED = tuple(p.FINISHED)
USAGE = {"input_tokens": 1000, "cached_tokens": 400, "output_tokens": 50, "reasoning_tokens": 10}


@pytest.fixture
def codex() -> str:
    path = find_codex()
    if path is None:
        pytest.fail(INSTALL_HINT)
    return path


@pytest.fixture
def team(codex, tmp_path):
    """A daemon whose codex tasks talk to a ScriptedOpenAI; yields (daemon, api)."""
    api = ScriptedOpenAI().start()
    d = Daemon()
    home = api.codex_home(d.home / "codex")
    d.env.update(api.env(home, d.env))
    set_codex_path(d, codex)
    d.start()
    yield d, api
    d.cleanup()
    api.close()


def set_codex_path(d: Daemon, path: str) -> None:
    """`agent_paths` in config.toml, as a person would write it (`config set` is tested in test_agents)."""
    d.paths.config_file.parent.mkdir(parents=True, exist_ok=True)
    d.paths.config_file.write_text(f"agent_paths = {{ codex = {json.dumps(path)} }}\n")


def submit(d: Daemon, prompt: str, **kw) -> int:
    kw.setdefault("cwd", str(d.home))
    return d.call(p.Submit(prompt=prompt, agent="codex", **kw), p.TaskView).id


def test_a_file_write_asked_for_and_allowed(team, work):
    d, api = team
    target = d.home / "hello.txt"  # outside the task's directory: no rule allows it
    api.add(reply.add_file(str(target), "hello", usage=USAGE), reply.text("Wrote hello.txt", usage=USAGE))
    task = submit(d, "create hello.txt", cwd=str(work))
    waiting = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert waiting.status is Status.WAITING, waiting.reason
    assert waiting.waiting.kind == "permission" and waiting.waiting.prompt == f"Write: {target}"
    assert not target.exists()
    assert d.cli("respond", str(task), "--allow").exit_code == 0
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert target.read_text() == "hello\n"
    assert view.result == "Wrote hello.txt"
    assert view.session_id and api.turn_requests[0].model == MODEL
    transcript = d.cli("logs", str(task)).output
    assert "» create hello.txt" in transcript and f"→ Write: {target}" in transcript
    assert "  allowed" in transcript and "Wrote hello.txt" in transcript and "✓ turn completed" in transcript


def test_cost_and_tokens_are_recorded_from_the_turns_tokens(team):
    d, api = team
    api.add(reply.shell("true", usage=USAGE), reply.text("done", usage=USAGE))
    task = submit(d, "run true")
    view = d.wait_status(task, *FINISHED, timeout=60)  # `true` is allowed by the generalist's rules
    assert view.status is Status.SUCCEEDED, view.reason
    assert (view.input_tokens, view.output_tokens) == (2000, 100)
    expected = adapter.cost(MODEL, 2000, 800, 100)  # two responses of USAGE, at the default price
    assert expected == pytest.approx((1200 * 1.25 + 800 * 0.125 + 100 * 10.0) / 1e6)
    assert view.cost_usd == pytest.approx(expected)
    shown = d.cli("show", str(task)).output
    assert f"cost       {render.cost(view.cost_usd)} (" in shown and "2000 tokens in" in shown


def test_a_command_allowed_by_a_rule_runs_and_one_denied_does_not(team):
    d, api = team
    d.call(p.ConfigSet(key="policy", value=["allow Bash(touch ok.txt)", "deny Bash(touch no.txt)"]))
    allowed_call = reply.function_call("exec_command", {"cmd": "touch ok.txt"})
    api.add(reply.calls(allowed_call), reply.shell("touch no.txt"), reply.text("one of two"))
    task = submit(d, "touch both")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert (d.home / "ok.txt").exists() and not (d.home / "no.txt").exists()
    denied_output = api.turn_requests[2].outputs()
    assert any("rejected" in out for out in denied_output.values()), denied_output
    assert [(x.effect, x.tool, x.by) for x in view.decisions] == [
        ("allow", "Bash", "rule 1 of config (allow Bash(touch ok.txt))"),
        ("deny", "Bash", "rule 2 of config (deny Bash(touch no.txt))"),
    ]
    transcript = d.cli("logs", str(task)).output
    assert "→ Bash: touch no.txt" in transcript and "  denied" in transcript and "  ✗ declined" in transcript


def test_an_implementers_edit_inside_its_directory_is_allowed_by_the_built_in_rule(team, work):
    d, api = team
    api.add(reply.add_file(str(work / "app.py"), "x = 1"), reply.text("done"))
    task = submit(d, "write app.py", cwd=str(work), role="implementer")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert (work / "app.py").read_text() == "x = 1\n"
    [decision] = view.decisions
    assert (decision.effect, decision.tool, decision.by) == ("allow", "Write", "rule 1 of the built-in implementer role (allow Edit(./**))")


def test_a_command_denied_by_a_person_does_not_run(team):
    d, api = team
    api.add(reply.shell("cp /etc/hostname denied.txt"), reply.text("ok, I will not"))
    task = submit(d, "run it")
    waiting = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert waiting.status is Status.WAITING, waiting.reason
    assert waiting.waiting.prompt == "Bash: cp /etc/hostname denied.txt"
    denied = d.cli("respond", str(task), "--deny", "-m", "not today")
    assert denied.exit_code == 0, denied.output
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED and view.result == "ok, I will not"
    assert not (d.home / "denied.txt").exists()
    [output] = api.turn_requests[1].outputs().values()
    assert "rejected by user" in output


def test_a_question_answered_by_option_number(team):
    d, api = team
    api.add(reply.question("Which database should I use?", ["SQLite", "PostgreSQL"], id="db"), reply.text("Going with PostgreSQL"))
    task = submit(d, "set up storage")
    view = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    assert view.status is Status.WAITING, view.reason
    assert view.waiting.kind == "question" and view.waiting.prompt == "Which database should I use?"
    assert view.waiting.options == ["SQLite", "PostgreSQL"]
    answered = d.cli("respond", str(task), "2")
    assert answered.exit_code == 0 and answered.output == f"answered task {task}'s question with option 2: PostgreSQL\n"
    assert d.wait_status(task, *FINISHED, timeout=60).status is Status.SUCCEEDED
    [output] = api.turn_requests[1].outputs().values()
    assert json.loads(output) == {"answers": {"db": {"answers": ["PostgreSQL"]}}}
    assert "  answered: PostgreSQL" in d.cli("logs", str(task)).output


def test_a_follow_up_resumes_the_same_thread(team):
    d, api = team
    api.add(reply.text("The answer is 42.", usage=USAGE), reply.text("Because I said so.", usage=USAGE))
    task = submit(d, "what is the answer?")
    first = d.wait_status(task, *FINISHED, timeout=60)
    assert first.status is Status.SUCCEEDED, first.reason
    assert first.input_tokens == 1000
    assert d.cli("respond", str(task), "why?").exit_code == 0
    wait_for(lambda: d.task(task).attempts == 2, 30, "the second attempt")
    second = d.wait_status(task, *FINISHED, timeout=60)
    assert second.status is Status.SUCCEEDED and second.result == "Because I said so."
    assert second.session_id == first.session_id
    last = api.turn_requests[-1]
    assert "The answer is 42." in last.conversation_text() and last.last_user_text == "why?"
    assert second.input_tokens == 2000  # this attempt's tokens only, not the thread's again
    transcript = d.cli("logs", str(task)).output
    assert transcript.index("» what is the answer?") < transcript.index("» why?")


def test_an_api_error_fails_the_task_with_the_error_in_its_reason(team):
    d, api = team
    api.add(reply.error(401, "Incorrect API key provided"))
    task = submit(d, "anything")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.FAILED
    assert "401" in view.reason and "Incorrect API key provided" in view.reason, view.reason
    assert view.attempts == 1  # a bad key is not retried


def test_a_server_error_is_retried_in_the_same_thread(team):
    d, api = team
    d.call(p.ConfigSet(key="retry_base", value=0.1))
    api.add(reply.error(500, "boom"), reply.text("recovered"))
    task = submit(d, "anything")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED and view.result == "recovered", view.reason
    assert view.attempts == 2
    assert api.turn_requests[1].last_user_text.startswith("The API failed before you finished")


def test_a_role_prompt_reaches_the_model_and_a_read_only_role_cannot_write(team):
    d, api = team
    target = d.home / "review.txt"
    api.add(reply.add_file(str(target), "nope"), reply.text("LGTM"))
    task = submit(d, "review the parser", role="reviewer")
    view = d.wait_status(task, *FINISHED, timeout=60)
    assert view.status is Status.SUCCEEDED, view.reason
    assert not target.exists()
    from orchestrad import roles
    assert roles.get("reviewer").prompt in api.turn_requests[0].developer_text


def test_codex_not_found_says_what_to_do(team):
    d, api = team
    set_codex_path(d, "/nonexistent/codex")
    wait_for(lambda: d.call(p.ConfigGet(key="agent_paths"), Any)["agent_paths"] == {"codex": "/nonexistent/codex"}, 15, "config.toml to apply")
    view = d.wait_status(submit(d, "anything"), *FINISHED, timeout=30)
    assert view.status is Status.FAILED
    assert view.reason.startswith("codex not found: install @openai/codex"), view.reason


def test_a_task_that_reaches_its_budget_is_interrupted_waits_and_goes_on_in_its_thread_when_raised(team, work):
    d, api = team
    big = {"input_tokens": 10000, "cached_tokens": 0, "output_tokens": 100, "reasoning_tokens": 0}
    # The turn is interrupted once the first response's tokens are counted. The second
    # response waits until then (a real model takes seconds; the scripted one would answer
    # before the interrupt arrives), and answers every request from there on.
    later = threading.Event()
    api.add(reply.shell("true", usage=big), reply.text("Finished after the raise.", repeat=None, gate=later))
    task = submit(d, "do the steps", cwd=str(work), budget_usd=0.005)
    view = d.wait_status(task, Status.WAITING, *FINISHED, timeout=60)
    later.set()
    assert view.status is Status.WAITING and view.waiting.kind == "budget", view.reason
    assert view.cost_usd == pytest.approx(adapter.cost(MODEL, 10000, 0, 100)) and view.cost_usd > 0.005
    assert "(interrupted: the budget is spent)" in d.cli("logs", str(task)).output
    assert d.cli("respond", str(task), "--budget", "0.05").exit_code == 0
    done = d.wait_status(task, *FINISHED, timeout=60)
    assert done.status is Status.SUCCEEDED and done.result == "Finished after the raise.", done.reason
    assert done.attempts == 2 and done.session_id == view.session_id
    assert "do the steps" in api.turn_requests[-1].conversation_text()  # its thread went on


# -- the adapter's pure parts ---------------------------------------------------------------


def test_prices_go_by_the_longest_model_prefix_and_default_to_gpt_5s():
    assert adapter.price("gpt-5-mini-2025-08-07") == adapter.PRICES["gpt-5-mini"]
    assert adapter.price("gpt-5.1-codex-mini") == adapter.PRICES["gpt-5.1-codex-mini"]
    assert adapter.price("gpt-5") == adapter.PRICES["gpt-5"]
    assert adapter.price("gpt-5.5") == adapter.price("") == adapter.DEFAULT_PRICE
    assert adapter.price("o3-pro") == adapter.PRICES["o3"] and adapter.price("o30") == adapter.DEFAULT_PRICE
    assert adapter.cost("gpt-5-mini", 1_000_000, 1_000_000, 0) == pytest.approx(0.025)  # all cached


def test_which_failed_turns_are_about_the_apis_availability():
    assert adapter.availability("internalServerError") == "server error"
    assert adapter.availability("usageLimitExceeded") == "usage limit"
    assert adapter.availability({"httpConnectionFailed": {"httpStatusCode": 401}}) == ""
    assert adapter.availability({"httpConnectionFailed": {"httpStatusCode": 429}}) == "rate limited"
    assert adapter.availability({"responseStreamDisconnected": {"httpStatusCode": None}}) == "connection error"
    assert adapter.availability({"responseTooManyFailedAttempts": {"httpStatusCode": 503}}) == "server error"
    assert adapter.availability("unauthorized") == adapter.availability("other") == adapter.availability(None) == ""


def test_the_policy_sees_the_script_of_a_bash_lc_line():
    assert adapter.shell_script("/bin/bash -lc 'pytest -q tests/'") == "pytest -q tests/"
    assert adapter.shell_script("sh -c 'a && b'") == "a && b"
    assert adapter.shell_script("git status") == "git status"
    assert adapter.shell_script("/bin/bash -lc 'unterminated") == "/bin/bash -lc 'unterminated"


def test_credentials_are_a_key_a_login_or_a_provider_of_ones_own(tmp_path):
    agent = adapter.CodexAgent
    assert agent.missing_credentials({"OPENAI_API_KEY": "sk"}, str(tmp_path)) == ""
    missing = agent.missing_credentials({}, str(tmp_path))
    assert "codex login" in missing and "OPENAI_API_KEY" in missing
    (tmp_path / ".codex").mkdir()
    (tmp_path / ".codex" / "auth.json").write_text("{}")
    assert agent.missing_credentials({}, str(tmp_path)) == ""
    own = tmp_path / "own"
    own.mkdir()
    (own / "config.toml").write_text('model_provider = "mine"\n')
    assert agent.missing_credentials({"CODEX_HOME": str(own)}, str(tmp_path / "nobody")) == ""
