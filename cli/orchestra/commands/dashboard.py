"""`dashboard`: the live view of the team (drawn by `orchestra.dashboard`)."""

from __future__ import annotations

import click

from orchestra.commands.base import App


@click.command()
@click.pass_obj
def dashboard(app: App):
    """A live view of the team: tasks by status, what waiting tasks ask, the queue,
    workflows and cost. Updates as things happen; q or Ctrl-C to leave."""
    from orchestra.dashboard import run

    run(app)
