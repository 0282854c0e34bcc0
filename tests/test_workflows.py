"""Roles and workflow templates, pure: parsing files, checking templates, rendering prompts,
and what running a template decides."""

from __future__ import annotations

import re

import pytest

from orchestra.shared import protocol as p
from orchestra.shared.protocol import OrchestraError, Status
from orchestrad import events as ev
from orchestrad import roles, workflows
from tests.core import Core

ROLE_NAMES = set(roles.NAMES)


def test_seven_builtin_roles_with_read_only_reviewer_and_architect():
    for name in ("reviewer", "architect"):
        role = roles.get(name)
        assert {"Write", "Edit"} <= set(role.disallowed_tools)
    assert "file and line" in roles.get("reviewer").prompt
    assert "failure precisely" in roles.get("tester").prompt


def test_role_file_parses_and_overrides():
    role = roles.parse("dba", 'description = "Databases"\nprompt = "You review migrations."\nallowed_tools = ["Read"]\ntimeout = 60\n')
    assert role.name == "dba" and role.allowed_tools == ["Read"] and role.timeout == 60
    assert roles.get("dba", {"dba": role}) is role
    override = roles.parse("tester", 'prompt = "Only run pytest."')
    assert roles.get("tester", {"tester": override}).prompt == "Only run pytest."


@pytest.mark.parametrize(
    "text,words",
    [
        ('prompt = "x"\ncolour = "blue"', "unknown field `colour`"),
        ("prompt = \"x\"\nmodel = \n", "line 2"),
        ('prompt = "x"\npermission_mode = "yolo"', "permission_mode must be one of"),
        ('prompt = "  "', "prompt is empty"),
        ('prompt = "x"\ntimeout = -5', "timeout must be above 0"),
        ('description = "no prompt"', "missing required field `prompt`"),
    ],
)
def test_bad_role_files_say_what_is_wrong(text, words):
    with pytest.raises(ValueError, match=words):
        roles.parse("r", text)


def test_builtin_templates_check_out():
    assert set(workflows.BUILTIN) == {"code-review", "feature-development", "bug-fix", "refactoring"}
    for template in workflows.BUILTIN.values():
        assert workflows.check(template, ROLE_NAMES) == []
    feature = workflows.BUILTIN["feature-development"]
    assert [s.name for s in workflows.order(feature)] == ["design", "implement", "test", "document", "review"]
    assert [s.role for s in feature.steps] == ["architect", "implementer", "tester", "documenter", "reviewer"]


TEMPLATE = """
description = "t"
[[steps]]
name = "a"
argv = ["echo", "A"]
[[steps]]
name = "b"
after = ["a"]
argv = ["echo", "{steps.a.result}"]
"""


def test_template_file_parses():
    template = workflows.parse("mine", TEMPLATE, ROLE_NAMES)
    assert [s.name for s in template.steps] == ["a", "b"] and template.steps[1].after == ["a"]


@pytest.mark.parametrize(
    "steps,words",
    [
        ('[[steps]]\nname = "a"\nrole = "chef"\nprompt = "x"', "unknown role 'chef'"),
        ('[[steps]]\nname = "a"\nprompt = "x"\nafter = ["zz"]', "unknown step 'zz'"),
        ('[[steps]]\nname = "a"\nprompt = "x"\nafter = ["b"]\n[[steps]]\nname = "b"\nprompt = "y"\nafter = ["a"]', "cycle: a -> b -> a"),
        ('[[steps]]\nname = "a"\nprompt = "x"\n[[steps]]\nname = "a"\nprompt = "y"', "two steps are called 'a'"),
        ('[[steps]]\nname = "a"\nprompt = "x {steps.b.result}"\n[[steps]]\nname = "b"\nprompt = "y"', "does not run before it"),
        ('[[steps]]\nname = "a"', "either a prompt or an argv"),
        ('[[steps]]\nname = "a"\nprompt = "x"\nworkspace = "mars"', "Invalid enum value 'mars' - at `$.steps[0].workspace`"),
        ("", "missing required field `steps`"),
    ],
)
def test_invalid_templates_are_refused_with_reasons(steps, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        workflows.parse("bad", steps, ROLE_NAMES)


def _chain(n: int, back_to: str | None = None) -> p.WorkflowTemplate:
    """n steps, each after the one before (the first after `back_to`, for a cycle)."""
    steps = [p.WorkflowStep(name=f"s{i}", argv=["true"], after=[f"s{i - 1}"] if i else [back_to] if back_to else [])
             for i in range(n)]
    return p.WorkflowTemplate(name="chain", steps=steps)


def test_a_template_of_10000_steps_is_refused_for_its_size_not_with_a_recursion_error():
    assert workflows.check(_chain(10_000), ROLE_NAMES) == ["it has 10,000 steps, over the limit of 100; split it into smaller workflows"]
    assert workflows.check(_chain(workflows.MAX_STEPS), ROLE_NAMES) == []


def test_order_and_cycles_are_found_without_recursion_however_long_the_chain():
    assert [s.name for s in workflows.order(_chain(20_000))] == [f"s{i}" for i in range(20_000)]
    cycle = workflows._cycle(_chain(20_000, back_to="s19999"))
    assert cycle is not None and len(cycle) == 20_001 and cycle[0] == cycle[-1]
    assert workflows._cycle(_chain(20_000)) is None
    with pytest.raises(ValueError, match="cycle"):
        workflows.order(_chain(5, back_to="s4"))


def test_a_step_with_an_overlong_prompt_is_refused():
    step = p.WorkflowStep(name="a", prompt="x" * (workflows.MAX_STEP_TEXT + 1))
    problems = workflows.check(p.WorkflowTemplate(name="t", steps=[step]), ROLE_NAMES)
    assert problems == [f"step 'a': its prompt (or argv) holds {workflows.MAX_STEP_TEXT + 1:,} characters, over the limit of 64,000"]


def test_render_fills_goal_and_results_and_leaves_other_braces():
    text = "Goal: {goal}. Design: {steps.design.result} ({steps.design.status}). Code: {x: 1}"
    out = workflows.render(text, "add login", {"design": ("succeeded", "use OAuth")})
    assert out == "Goal: add login. Design: use OAuth (succeeded). Code: {x: 1}"


def test_long_results_are_shortened_in_the_middle():
    long = "start " + "x" * 20_000 + " end"
    out = workflows.shorten(long, 600)
    assert out.startswith("start") and out.endswith("end") and "characters left out" in out and len(out) < 700


def test_running_a_template_submits_one_task_per_step_wired_by_dependencies():
    core = Core()
    core.submit()  # ids continue after existing tasks
    events = core.do(p.RunWorkflow(template="feature-development", goal="add login", cwd="/repo"))
    created = events[0]
    assert isinstance(created, ev.WorkflowCreated) and created.workflow == 1
    steps = created.steps
    assert steps == {"design": 2, "implement": 3, "test": 4, "document": 5, "review": 6}
    tasks = core.state.tasks
    assert tasks[steps["implement"]].spec.after == [steps["design"]]
    assert sorted(tasks[steps["review"]].spec.after) == [steps["test"], steps["document"]]
    assert tasks[steps["design"]].role == "architect" and tasks[steps["design"]].spec.step == "design"
    assert all(tasks[t].spec.workflow == 1 for t in steps.values())


def test_unknown_template_and_empty_goal():
    core = Core()
    with pytest.raises(OrchestraError, match="no workflow template 'nope'"):
        core.do(p.RunWorkflow(template="nope", goal="g", cwd="/r"))
    with pytest.raises(OrchestraError, match="give it a goal"):
        core.do(p.RunWorkflow(template="bug-fix", goal=" ", cwd="/r"))


def test_conditions_run_a_step_only_on_the_named_outcome():
    core = Core()
    template = workflows.parse(
        "cond",
        """
[[steps]]
name = "check"
argv = ["false"]
[[steps]]
name = "on-failure"
if_failed = "check"
argv = ["echo", "fixing"]
[[steps]]
name = "on-success"
if_succeeded = "check"
argv = ["echo", "shipping"]
""",
        ROLE_NAMES,
    )
    core.apply([ev.CatalogChanged(roles=[], templates=[template], problems=[])])
    core.do(p.ConfigSet(key="max_concurrent", value=5))
    steps = core.do(p.RunWorkflow(template="cond", goal="g", cwd="/r"))[0].steps
    assert core.tick() == [steps["check"]]
    core.exit(steps["check"], 1)
    assert core.tick() == [steps["on-failure"]]
    skipped = core.state.tasks[steps["on-success"]]
    assert skipped.status is Status.CANCELLED
    assert skipped.reason == "skipped: it runs only if step check succeeded, and it failed"


def test_roles_from_files_are_accepted_by_submit_and_assign_role():
    core = Core()
    with pytest.raises(OrchestraError, match="unknown role 'dba'"):
        core.submit(role="dba")
    dba = roles.parse("dba", 'prompt = "You review migrations."\ntimeout = 90')
    core.apply([ev.CatalogChanged(roles=[dba], templates=[], problems=[])])
    task = core.submit(role="dba", prompt="check 0042.sql")
    assert core.state.tasks[task].spec.timeout == 90  # the role's limits apply
    other = core.submit()
    core.do(p.AssignRole(task=other, role="dba"))
    assert core.state.tasks[other].role == "dba"
