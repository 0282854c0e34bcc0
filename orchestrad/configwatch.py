"""The configuration directory, watched: config.toml, roles/ and workflows/.

`changes` reads the files (through `configfiles`, which refuses what others could have
written) and returns the facts that record what differs from the state: a
`CatalogChanged` for roles, templates and their problems, a `ConfigChanged` for settings
the file changed. `watch` calls back whenever something in the directory changes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from orchestra.paths import Paths
from orchestrad import config as config_mod
from orchestrad import configfiles
from orchestrad import events as ev
from orchestrad.state import State

log = logging.getLogger(__name__)


def changes(paths: Paths, state: State) -> list[ev.Event]:
    """What the files say now that the state does not."""
    roles, templates, problems = configfiles.load_catalog(paths.config, state.roles, state.templates)
    values, config_problems = configfiles.load_settings(paths.config_file)
    problems += config_problems
    items: list[ev.Event] = []
    if roles != list(state.roles.values()) or templates != list(state.templates.values()) or problems != state.catalog_problems:
        items.append(ev.CatalogChanged(roles=roles, templates=templates, problems=problems))
        for problem in problems:
            log.warning("%s", problem)
    if values is not None:
        changed = config_mod.file_changes(state.config_file, values)
        if changed:
            items.append(ev.ConfigChanged(changes=changed, source="file"))
    return items


async def watch(paths: Paths, stop: asyncio.Event, on_change: Callable[[], None]) -> None:
    """Call `on_change` whenever something in the config directory changes (debounced)."""
    import watchfiles

    # step: how often the watcher thread wakes to check for changes; once a second keeps
    # an idle daemon idle, and an edit still applies within about a second.
    async for _ in watchfiles.awatch(paths.config, debounce=1600, step=1000, stop_event=stop, recursive=True):
        try:
            on_change()
        except Exception:  # never let a bad file take the daemon down
            log.exception("could not reload the configuration files")
