"""`cleanup`: forget old finished tasks and give back the space only they used."""

from __future__ import annotations

import click

from orchestra.shared import protocol as p
from orchestra.commands.base import App, emit, json_option


@click.command()
@click.option("--force", is_flag=True, help="Remove worktrees even where work would be lost with them.")
@json_option
@click.pass_obj
def cleanup(app: App, force, as_json):
    """Forget finished tasks older than the retention (config retention_days), free
    the log space only they used, and remove their worktrees (their branches stay;
    uncommitted work is committed to the branch first, and a worktree whose work cannot be
    saved is kept unless --force)."""
    emit(app.call(p.Cleanup(force=force), p.CleanupResult), as_json, _cleaned)


def _cleaned(result: p.CleanupResult) -> str:
    lines = [f"purged {len(result.purged)} finished task(s); removed {result.segments_removed} log segment(s), {result.bytes_freed:,} bytes"]
    lines += [f"saved: {line}" for line in result.saved]
    lines += [f"kept: {line}" for line in result.kept]
    return "\n".join(lines)
