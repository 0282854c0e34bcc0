"""`mcp`: the Model Context Protocol server on stdio (`orchestra.mcp`)."""

from __future__ import annotations

import click

from orchestra.commands.base import App


@click.command()
@click.pass_obj
def mcp(app: App):
    """Serve the Model Context Protocol on stdio, for Claude Desktop, Claude Code and other
    MCP clients (starts the daemon if none answers)."""
    from orchestra.mcp.server import serve

    serve(app.paths, autostart=app.autostart)
