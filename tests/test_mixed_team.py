"""A team on three vendors' agents: one workflow whose steps run on Gemini CLI, Codex CLI
and Claude Code, each its real CLI against its own scripted model API, the result of each
step quoted in the next one's prompt. And `orchestra agents` seeing all three signed in."""

from __future__ import annotations

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from tests.daemon import Daemon
from tests.scripted_api import INSTALL_HINT as CLAUDE_HINT
from tests.scripted_api import ScriptedAPI, find_claude
from tests.scripted_api import reply as claude_reply
from tests.scripted_gemini import GEMINI_INSTALL_HINT, ScriptedGemini, find_gemini
from tests.scripted_gemini import reply as gemini_reply
from tests.scripted_openai import INSTALL_HINT as CODEX_HINT
from tests.scripted_openai import ScriptedOpenAI, find_codex
from tests.scripted_openai import reply as codex_reply
from tests.test_teams import tasks_of, wait_template, write

CROSS_CHECK = """
description = "Design on one vendor's model, build on another's, review on a third's"

[[steps]]
name = "design"
role = "architect"
agent = "gemini"
prompt = "Design this: {goal}"

[[steps]]
name = "implement"
role = "implementer"
agent = "codex"
after = ["design"]
prompt = "Build it to this design: {steps.design.result}"

[[steps]]
name = "review"
role = "reviewer"
agent = "claude"
after = ["implement"]
prompt = "Review what the implementer reported: {steps.implement.result}"
"""


def cli(find, hint: str) -> str:
    path = find()
    if path is None:
        pytest.fail(hint)
    return path


@pytest.fixture
def team():
    paths = {"claude": cli(find_claude, CLAUDE_HINT), "codex": cli(find_codex, CODEX_HINT), "gemini": cli(find_gemini, GEMINI_INSTALL_HINT)}
    with ScriptedAPI() as claude, ScriptedOpenAI() as codex, ScriptedGemini() as gemini:
        d = Daemon()
        d.env.update(claude.env(d.env))
        d.env.update(codex.env(codex.codex_home(d.home / "codex"), d.env))
        d.env.update(gemini.env(d.home / "gemini"))
        d.start()
        d.call(p.ConfigSet(key="agent_paths", value=paths))
        try:
            yield d, claude, codex, gemini
        finally:
            d.cleanup()


def test_a_workflow_runs_its_steps_on_three_agent_kinds_and_each_result_reaches_the_next(team):
    d, claude, codex, gemini = team
    agents = {a.name: a for a in d.call(p.Agents(), p.AgentList).agents}
    for name in ("claude", "codex", "gemini"):
        assert agents[name].usable and agents[name].version, (name, agents[name])

    gemini.add(gemini_reply.text("DESIGN-7: one function, parse(), that returns a date"))
    codex.add(codex_reply.text("IMPL-9: parse() written as designed"))
    claude.add(claude_reply.text("LGTM-3: the change matches the design"))
    write(d.paths.config / "workflows" / "cross-check.toml", CROSS_CHECK)
    wait_template(d, "cross-check")
    workflow = d.call(p.RunWorkflow(template="cross-check", goal="a date parser", cwd=str(d.home)), p.WorkflowView).id
    review = tasks_of(d, workflow)["review"].id
    d.wait_status(review, *p.FINISHED, timeout=120)

    steps = tasks_of(d, workflow)
    assert {name: (t.agent, t.status) for name, t in steps.items()} == {
        "design": ("gemini", Status.SUCCEEDED), "implement": ("codex", Status.SUCCEEDED), "review": ("claude", Status.SUCCEEDED),
    }, {name: t.reason for name, t in steps.items()}
    assert "Design this: a date parser" in gemini.turns[0].last_user_text
    assert "DESIGN-7" in codex.turn_requests[0].last_user_text  # Gemini's result, in Codex's prompt
    assert "IMPL-9" in claude.turn_requests[0].last_user_text  # Codex's result, in Claude's prompt
    assert steps["review"].result == "LGTM-3: the change matches the design"
    assert all(t.input_tokens > 0 for t in steps.values())  # each kind's tokens recorded
