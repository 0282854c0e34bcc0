"""`queue`: the queue in run order, a queued task's priority, taking one out."""

from __future__ import annotations

import click

from orchestra.shared import protocol as p
from orchestra.commands.base import App, Exit, emit, fail, json_option, task_id


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def queue(ctx, as_json):
    """The queue in run order; change a task's priority or remove it."""
    if ctx.invoked_subcommand is not None:
        return
    app: App = ctx.obj
    tasks = app.call(p.Queue(), list[p.TaskView])

    def human(tasks: list[p.TaskView]) -> str | None:
        if not tasks:
            click.echo("the queue is empty", err=True)
            return None
        from orchestra.render import table, terminal_width

        return table(tasks, width=terminal_width())

    emit(tasks, as_json, human)
    if len(tasks) >= p.PAGE_MAX:  # the head of a long queue: say how long it is
        queued = app.call(p.Info(), p.DaemonStatus).counts.get(p.Status.QUEUED.value, 0)
        click.echo(f"the first {len(tasks):,} of {queued:,} queued tasks are shown; `orchestra ps --status queued` lists them all", err=True)


@queue.command("priority")
@click.argument("task", type=task_id)
@click.argument("priority")
@click.pass_obj
def queue_priority(app: App, task, priority):
    """Set a queued task's priority (a number or low/normal/high/urgent)."""
    try:
        value = p.parse_priority(priority)
    except ValueError as exc:
        fail(str(exc), Exit.BAD_INPUT)
    view = app.call(p.SetPriority(task=task, priority=value), p.TaskView)
    click.echo(f"task {view.id} has priority {view.priority}")


@queue.command("remove")
@click.argument("task", type=task_id)
@click.pass_obj
def queue_remove(app: App, task):
    """Take a queued task out of the queue."""
    app.call(p.Remove(task=task))
    click.echo(f"task {task} removed")
