"""`roles` (the profiles tasks run as), `assign-role` (give a task another one) and
`agents` (the agent kinds they run on)."""

from __future__ import annotations

import click

from orchestra.shared import protocol as p
from orchestra.commands.base import App, Exit, emit, fail, json_option, task_id


@click.command()
@click.argument("name", required=False)
@json_option
@click.pass_obj
def roles(app: App, name, as_json):
    """List the roles, or show one: its prompt, tools and limits."""
    result = app.call(p.Roles(), p.RolesResult)
    if name is not None:
        match = [r for r in result.roles if r.name == name]
        if not match:
            fail(f"no role {name!r}; known roles: {', '.join(r.name for r in result.roles)}", Exit.NOT_FOUND)
        from orchestra.render import role_details

        emit(match[0], as_json, lambda role: role_details(role, custom=name in result.custom))
        return

    emit(result, as_json, lambda result: "\n".join(f"{r.name:<12} {r.description}{' (yours)' if r.name in result.custom else ''}" for r in result.roles))
    if not as_json:
        for problem in result.problems:
            click.echo(f"problem: {problem}", err=True)


@click.command()
@json_option
@click.pass_obj
def agents(app: App, as_json):
    """List the agent kinds: each one's CLI, its version, and whether it can run here."""
    from orchestra.render import agent_table

    emit(app.call(p.Agents(), p.AgentList), as_json, lambda result: agent_table(result.agents))


@click.command()
@json_option
@click.pass_obj
def nodes(app: App, as_json):
    """List the nodes of the Ray cluster (config ray_address): slots, labels, health, tasks."""
    from orchestra.render import node_table

    emit(app.call(p.Nodes(), p.NodeList), as_json, node_table)


@click.command("assign-role")
@click.argument("task", type=task_id)
@click.argument("role")
@json_option
@click.pass_obj
def assign_role(app: App, task, role, as_json):
    """Give a task another role (a running one takes it from its next attempt)."""
    emit(app.call(p.AssignRole(task=task, role=role)), as_json, lambda result: result.note)
