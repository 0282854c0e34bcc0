"""The configuration directory, watched: config.toml, roles/ and workflows/.

`changes` reads the files (through `configfiles`, which refuses what others could have
written) and returns the facts that record what differs from the state: a
`CatalogChanged` for roles, templates and their problems, a `ConfigChanged` for settings
the file changed. `watch` calls back, on the loop, whenever something in the directory
changes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Callable

from orchestra.shared.paths import Paths
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


def watch(paths: Paths, on_change: Callable[[], None]) -> threading.Event:
    """Call `on_change` on the running loop whenever something in the config directory
    changes (debounced). Returns the event that stops watching.

    The watcher runs in a daemon thread of its own, which wakes once a second to look for
    the stop event: an idle daemon stays idle, an edit applies within about a second, and
    shutting down never waits for that second (nothing joins the thread)."""
    import watchfiles

    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def changed() -> None:
        try:
            on_change()
        except Exception:  # never let a bad file take the daemon down
            log.exception("could not reload the configuration files")

    def run() -> None:
        try:
            for _ in watchfiles.watch(paths.config, debounce=1600, step=1000, stop_event=stop, recursive=True, raise_interrupt=False):
                loop.call_soon_threadsafe(changed)
        except RuntimeError:  # the loop closed first: the daemon is gone
            pass
        except Exception:
            log.exception("the config directory is no longer watched; restart the daemon to watch it again")

    threading.Thread(target=run, name="config-watch", daemon=True).start()
    return stop
