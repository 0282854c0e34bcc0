"""`mcp`: the Model Context Protocol server, on stdio or over HTTP (`orchestra.mcp`)."""

from __future__ import annotations

import click

from orchestra.commands.base import App, Exit


@click.command()
@click.option("--http", "address", metavar="HOST:PORT",
              help="Serve over MCP's streamable HTTP transport at http://HOST:PORT/mcp instead of stdio "
                   "(loopback only; PORT 0 picks a free one).")
@click.option("--token-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="With --http: the bearer token clients must send, read from FILE "
                   "(else $ORCHESTRA_MCP_TOKEN, else a random one, printed).")
@click.pass_obj
def mcp(app: App, address: str | None, token_file: str | None):
    """Serve the Model Context Protocol on stdio, for Claude Desktop, Claude Code and other
    MCP clients (starts the daemon if none answers); with --http, over HTTP for clients that
    connect to a URL, each request carrying a bearer token."""
    if address is None:
        if token_file:
            raise click.UsageError("--token-file goes with --http")
        from orchestra.mcp.server import serve

        serve(app.paths, autostart=app.autostart)
        return
    from orchestra.mcp.http import AddressError, serve_http

    try:
        serve_http(app.paths, app.autostart, address, token_file)
    except (AddressError, ValueError, OSError) as exc:
        click.echo(f"orchestra mcp: {exc}", err=True)
        raise SystemExit(Exit.BAD_INPUT) from None
