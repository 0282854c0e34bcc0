"""Each built-in workflow end to end: the real Claude Code CLI for every step, against a
scripted Messages API that answers each step by what its prompt says."""

from __future__ import annotations

import re

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import Status
from orchestrad import workflows
from tests.daemon import Daemon
from tests.scripted_api import Reply, ScriptedAPI, reply

FINISHED = tuple(p.FINISHED)


def result_for(prompt: str) -> str:
    """What the scripted model answers a step: a token naming the step's prompt."""
    return f"RESULT<{prompt.split(':')[0].strip()[:40]}>"


class Responder:
    """Answers each request from its last user message; `failing` prompts get an API error."""

    def __init__(self, failing: str | None = None, delay: float = 0.0) -> None:
        self.failing = failing
        self.delay = delay
        self.prompts: list[str] = []

    def __call__(self, request) -> Reply:
        # Claude Code may put <system-reminder> blocks before the user's words.
        prompt = re.sub(r"<system-reminder>.*?</system-reminder>", "", request.last_user_text, flags=re.S).strip()
        self.prompts.append(prompt)
        if self.failing and prompt.startswith(self.failing):
            return reply.error(400, message="scripted failure for this step")
        return reply.text(result_for(prompt), delay=self.delay)


def run(claude: str, template: str, responder: Responder) -> tuple[dict[str, p.TaskView], Responder]:
    with ScriptedAPI(side_reply=responder, classify=lambda body: True) as api:
        d = Daemon()
        d.env.update(api.env(d.env))
        d.env["ORCHESTRA_HOME"] = str(d.home)
        d.start()
        try:
            d.call(p.ConfigSet(key="claude_path", value=claude))
            d.call(p.ConfigSet(key="max_concurrent", value=4))
            view = d.call(p.RunWorkflow(template=template, goal="the parser drops unicode", cwd=str(d.home)), p.WorkflowView)
            for task in view.steps.values():
                d.wait_status(task, *FINISHED, timeout=120)
            final = d.call(p.ShowWorkflow(workflow=view.id), p.WorkflowView)
            return {t.step: t for t in final.tasks}, responder
        finally:
            d.cleanup()


@pytest.mark.parametrize("name", sorted(workflows.BUILTIN))
def test_builtin_workflow_runs_in_order_with_results_flowing(claude, name):
    template = workflows.BUILTIN[name]
    steps, responder = run(claude, name, Responder(delay=0.4))
    assert {s: t.status for s, t in steps.items()} == {s.name: Status.SUCCEEDED for s in template.steps}
    for step in template.steps:
        task = steps[step.name]
        assert task.role == step.role
        assert task.result.startswith("RESULT<") and "system-reminder" not in task.result and "system-reminder" not in task.result
        for dep in step.after:  # starts only after what it depends on has finished
            assert steps[dep].finished_at <= task.started_at
    by_prompt = {result_for(prompt): prompt for prompt in responder.prompts}
    assert len({t.result for t in steps.values()}) == len(steps)  # each step told apart
    for step in template.steps:
        prompt = by_prompt[steps[step.name].result]
        assert "the parser drops unicode" in prompt  # the goal reached every step
        for dep in workflows.ancestors(template, step.name):
            if f"{{steps.{dep}.result}}" in step.prompt:
                assert steps[dep].result in prompt, f"{step.name}'s prompt lacks {dep}'s result"
    parallel = [s for s in template.steps if len([o for o in template.steps if o.after == s.after]) > 1]
    if parallel:  # steps with the same dependencies ran at the same time
        a, b = (steps[s.name] for s in parallel[:2])
        assert a.started_at < b.finished_at and b.started_at < a.finished_at


def test_a_failed_step_stops_what_depends_on_it(claude):
    steps, _ = run(claude, "bug-fix", Responder(failing="Fix this bug"))
    assert steps["reproduce"].status is Status.SUCCEEDED
    assert steps["fix"].status is Status.FAILED and "scripted failure" in steps["fix"].reason
    for later in ("verify", "review"):
        assert steps[later].status is Status.CANCELLED and steps[later].started_at is None
    assert steps["verify"].reason == f"not run: dependency {steps['fix'].id} ended failed"
