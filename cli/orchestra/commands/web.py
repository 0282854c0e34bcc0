"""`web`: the console in a browser (`orchestra.web`)."""

from __future__ import annotations

import click

from orchestra.commands.base import App, Exit


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="The port on 127.0.0.1 (default 7878, else the next free one; 0: any free one).")
@click.pass_obj
def web(app: App, port: int | None):
    """Serve the console on 127.0.0.1 and print its link, which carries a token of its own:
    only a browser that opened that link may use it. Runs until interrupted."""
    from orchestra.web.server import serve

    try:
        serve(app.paths, app.autostart, port)
    except OSError as exc:
        click.echo(f"orchestra web: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}", err=True)
        raise SystemExit(Exit.BAD_INPUT) from None
