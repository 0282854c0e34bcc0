"""`workflow`: the templates (list, show), running one for a goal, and how runs are going."""

from __future__ import annotations

import os

import click

from orchestra.shared import protocol as p
from orchestra.commands.base import App, Exit, emit, fail, json_option, priority_option, task_id


@click.group()
def workflow():
    """Workflow templates: a goal becomes a small team whose steps feed each other."""


@workflow.command("list")
@json_option
@click.pass_obj
def workflow_list(app: App, as_json):
    """The templates you can run."""
    from orchestra.render import steps_line

    result = app.call(p.Templates(), p.TemplatesResult)

    def human(result: p.TemplatesResult) -> str:
        lines = []
        for template in result.templates:
            source = " (yours)" if template.name in result.custom else ""
            steps = steps_line(template)
            lines.append(f"{template.name:<20} {template.description}{source}\n{'':<20} {steps}")
        return "\n".join(lines)

    emit(result, as_json, human)
    if not as_json:
        for problem in result.problems:
            click.echo(f"problem: {problem}", err=True)


@workflow.command("show")
@click.argument("name")
@json_option
@click.pass_obj
def workflow_show(app: App, name, as_json):
    """One template: its steps, their roles, order and prompts."""
    from orchestra.render import template_details

    result = app.call(p.Templates(), p.TemplatesResult)
    match = [t for t in result.templates if t.name == name]
    if not match:
        fail(f"no workflow template {name!r}; `orchestra workflow list` shows them", Exit.NOT_FOUND)
    emit(match[0], as_json, template_details)


@workflow.command("run")
@click.argument("name")
@click.argument("goal", nargs=-1, required=True)
@click.option("--cwd", type=click.Path(file_okay=False), help="Where the team works (default: here).")
@click.option("--worktree/--no-worktree", default=None, help="Work in a git worktree on a new branch (default: as the template says).")
@priority_option
@click.option("--agent", "-a", help="Run every step with this agent kind (orchestra agents lists them).")
@click.option("--budget", type=float, help="Dollars all its tasks together may spend; reaching it pauses the next step to ask you.")
@click.option("--merge/--no-merge", default=None, help="Merge its branches onto their target once every step succeeded (default: as the template says).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where its steps run, unless a step says (default: as each step's role says, else config executor).")
@click.option("--node-label", "node_labels", multiple=True, help="Its steps run only on cluster nodes with this label (repeatable).")
@json_option
@click.pass_obj
def workflow_run(app: App, name, goal, cwd, worktree, priority, agent, budget, merge, executor, node_labels, as_json):
    """Run template NAME for GOAL; prints the workflow's id and its tasks."""
    view = app.call(
        p.RunWorkflow(template=name, goal=" ".join(goal), cwd=os.path.abspath(cwd or os.getcwd()), worktree=worktree, priority=priority, agent=agent,
                      budget_usd=budget, merge=merge, executor=executor, node_labels=list(node_labels)),
        p.WorkflowView,
    )
    emit(view, as_json, lambda v: f"workflow {v.id}: " + ", ".join(f"{step} = task {task}" for step, task in v.steps.items()))


@workflow.command("status")
@click.argument("workflow_id", required=False, type=task_id)
@json_option
@click.pass_obj
def workflow_status(app: App, workflow_id, as_json):
    """A workflow's steps and overall status and cost (all workflows without an id)."""
    from orchestra.render import terminal_width, workflow_block

    if workflow_id is not None:
        view = app.call(p.ShowWorkflow(workflow=workflow_id), p.WorkflowView)
        emit(view, as_json, lambda v: workflow_block(v, width=terminal_width(), steps=True))
        return

    def human(views: list[p.WorkflowView]) -> str | None:
        if not views:
            click.echo("no workflows yet", err=True)
        return "\n".join(workflow_block(v, width=terminal_width(), steps=True) for v in views)

    emit(app.call(p.ListWorkflows(), list[p.WorkflowView]), as_json, human)
