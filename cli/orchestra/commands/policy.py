"""`policy check`: which permission rule decides a tool call, and why."""

from __future__ import annotations

import os

import click

from orchestra.shared import protocol as p
from orchestra.commands.base import App, emit, json_option

_SAYS = {"allow": "allowed", "deny": "denied", "ask": "asks a person"}


@click.group()
def policy():
    """The permission policy the daemon applies to agents' tool calls."""


@policy.command()
@click.argument("call")
@click.option("--role", default="generalist", show_default=True, help="The role whose rules apply.")
@click.option("--cwd", type=click.Path(file_okay=False), default=None, help="The task's directory [default: here].")
@json_option
@click.pass_obj
def check(app: App, call, role, cwd, as_json):
    """Show which rule decides CALL, written TOOL(WHAT): 'Bash(git push origin main)',
    'Read(~/.ssh/id_rsa)', 'Write(src/app.py)', 'WebFetch(https://docs.python.org/3/)'."""
    cwd = os.path.abspath(cwd or os.getcwd())
    verdict = app.call(p.CheckPolicy(role=role, call=call, cwd=cwd), p.PolicyVerdict)

    def text(v: p.PolicyVerdict) -> str:
        if not v.effect:
            return f"{call}: no rule decides ({v.rules} tried)\n  {v.reason}"
        return f"{call}: {_SAYS[v.effect]}\n  by {v.by}\n  because it is {v.reason}"

    emit(verdict, as_json, text)
