"""`orchestra`: the command-line client.

Every command is a thin call to one daemon request. Read commands take `--json`. Errors are
one line on stderr saying what went wrong and what to do, with exit codes that mean
something (see `Exit`). The commands live in `orchestra.commands`, one module per subject;
this group imports a module only when one of its commands runs, so `orchestra ps` pays for
`ps` alone: nothing imports the daemon, asyncio or the MCP SDK at module level. (The table
form of `ps` is answered before even click is imported: `orchestra.quick`.)
"""

from __future__ import annotations

import importlib

import click

from orchestra.commands.base import App, Exit  # noqa: F401 - Exit: the exit codes, for scripts and tests

# Command name -> "module:attribute" under orchestra.commands.
COMMANDS = {
    "submit": "tasks:submit",
    "ps": "tasks:ps",
    "show": "tasks:show",
    "logs": "tasks:logs",
    "respond": "tasks:respond",
    "review": "tasks:review",
    "stop": "tasks:stop",
    "resume": "tasks:resume",
    "wait": "tasks:wait",
    "queue": "queue:queue",
    "roles": "roles:roles",
    "agents": "roles:agents",
    "nodes": "roles:nodes",
    "assign-role": "roles:assign_role",
    "policy": "policy:policy",
    "workflow": "workflow:workflow",
    "config": "config:config",
    "daemon": "daemon:daemon",
    "service": "daemon:service",
    "cleanup": "maintenance:cleanup",
    "merge": "merge:merge",
    "diff": "changes:diff",
    "worktrees": "changes:worktrees",
    "dashboard": "dashboard:dashboard",
    "mcp": "mcp:mcp",
    "web": "web:web",
}


class LazyGroup(click.Group):
    """A group whose commands are imported by name, when one runs or help lists them."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.lazy:
            return super().get_command(ctx, name)
        module, _, attribute = self.lazy[name].partition(":")
        return getattr(importlib.import_module(f"orchestra.commands.{module}"), attribute)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        """As click's, but "Did you mean ..." knows the commands not imported yet."""
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            unknown = getattr(click.exceptions, "NoSuchCommand", None)  # click 8.2 and later
            if unknown is None or not isinstance(exc, unknown):
                raise
            raise unknown(exc.command_name, possibilities=self.list_commands(ctx), ctx=ctx) from None


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", envvar="ORCHESTRA_HOME", help="Directory for config, state and socket (default: the platform's places).")
@click.option("--no-autostart", is_flag=True, envvar="ORCHESTRA_NO_AUTOSTART", help="Do not start a daemon when none is running.")
@click.version_option(package_name="orchestra")
@click.pass_context
def cli(ctx: click.Context, home: str | None, no_autostart: bool) -> None:
    """Run a team of coding agents: queue tasks, watch them, answer them."""
    ctx.obj = App(home, autostart=not no_autostart)
    ctx.call_on_close(ctx.obj.close)


def main() -> None:
    cli(prog_name="orchestra")


if __name__ == "__main__":
    main()
