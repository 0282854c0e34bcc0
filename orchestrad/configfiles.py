"""The files people edit: `config.toml`, `roles/*.toml` and `workflows/*.toml`.

Reading them is the shell's job (this module); what they mean is decided by the pure
parsers in `config`, `roles` and `workflows`. A file that does not parse or check out is
reported (file, line where known, what is wrong) and ignored: the last good version of it
stays in force, and the daemon never goes down for it, nor does one bad file keep the
others from loading.

Only files nobody else could have written are read (`trusted`: ssh's rule), and only so
much: a file over MAX_FILE_BYTES is refused unread, each directory gives at most MAX_FILES
files, and the roles and templates together stay within MAX_CATALOG_BYTES, so that they
fit in the one log record (`CatalogChanged`) that holds them.
"""

from __future__ import annotations

import heapq
import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Callable, TypeVar

import msgspec

from orchestra.shared.protocol import Role, WorkflowTemplate
from orchestrad import config as config_mod
from orchestrad import roles as roles_mod
from orchestrad import trusted
from orchestrad import workflows as workflows_mod

log = logging.getLogger("orchestrad")

MAX_FILE_BYTES = 256 << 10  # one config, role or template file
MAX_FILES = 256  # .toml files read from roles/, and as many from workflows/
MAX_CATALOG_BYTES = 8 << 20  # roles and templates as recorded; a log record holds 16 MiB

T = TypeVar("T", Role, WorkflowTemplate)


def load_catalog(
    config_dir: Path, previous_roles: dict[str, Role], previous_templates: dict[str, WorkflowTemplate]
) -> tuple[list[Role], list[WorkflowTemplate], list[str]]:
    """Roles and templates from their files; for a bad file, its last good version."""
    problems: list[str] = []
    budget = _Budget(MAX_CATALOG_BYTES)
    roles = _load_dir(config_dir, "roles", roles_mod.parse, previous_roles, problems, budget)
    known = set(roles_mod.names(roles))

    def parse_template(name: str, text: str) -> WorkflowTemplate:
        return workflows_mod.parse(name, text, known)

    templates = _load_dir(config_dir, "workflows", parse_template, previous_templates, problems, budget)
    return sorted(roles.values(), key=lambda r: r.name), sorted(templates.values(), key=lambda t: t.name), problems


def load_settings(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The settings in config.toml, checked; (None, problems) if it cannot be used."""
    kept = "; the last good settings stay in force"
    try:
        directory = trusted.open_dir(path.parent)
    except FileNotFoundError:
        return {}, []
    except trusted.Refused as exc:
        return None, ([f"{path} was not read: {exc}{kept}"] if os.path.lexists(path) else [])
    except OSError as exc:
        return None, [_problem(path, exc, True)]
    try:
        text = trusted.read_text(directory, path, MAX_FILE_BYTES)
    except FileNotFoundError:
        return {}, []
    except (trusted.Refused, OSError, UnicodeDecodeError) as exc:
        return None, [_problem(path, exc, True)]
    finally:
        os.close(directory)
    if text is None:
        return None, [f"{path}: it is a directory, not a file; the last good settings stay in force"]
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        return None, [_problem(path, exc, True)]
    problems = [f"{path}: {problem}" for key, value in raw.items() if (problem := config_mod.check(key, value))]
    if problems:
        return None, [p + kept for p in problems]
    return raw, []


class _Budget:
    """What is left of MAX_CATALOG_BYTES, counted in the bytes the log will record."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, item: Role | WorkflowTemplate) -> bool:
        size = len(msgspec.msgpack.encode(item))
        if self.used + size > self.limit:
            return False
        self.used += size
        return True


def _load_dir(
    config_dir: Path,
    name: str,
    parse: Callable[[str, str], T],
    previous: dict[str, T],
    problems: list[str],
    budget: _Budget,
) -> dict[str, T]:
    """The files of `config_dir/name`, parsed; for a bad file its previous version, and for
    a directory that cannot be trusted every previous version."""
    directory = config_dir / name
    loaded: dict[str, T] = {}
    try:
        top = trusted.open_dir(config_dir)
        try:
            fd = trusted.open_dir(directory, top)
        finally:
            os.close(top)
    except FileNotFoundError:
        return loaded
    except (trusted.Refused, OSError) as exc:
        if not os.path.lexists(directory):
            return loaded
        problems.append(f"{directory}/ was not read: {exc}; what was loaded from it before stays in force")
        return _keep(previous, problems, budget, directory)
    try:
        files = _toml_files(fd, directory, problems)
        for path in files:
            item = _load_file(fd, path, parse, problems, previous)
            if item is None:
                continue
            if budget.take(item):
                loaded[path.stem] = item
            else:
                problems.append(_over_budget(path, budget))
    finally:
        os.close(fd)
    return loaded


def _load_file(fd: int, path: Path, parse: Callable[[str, str], T], problems: list[str], previous: dict[str, T]) -> T | None:
    """The file parsed; its previous version (and a problem) if it is bad; None if there is
    nothing to load."""
    name = path.stem
    try:
        text = trusted.read_text(fd, path, MAX_FILE_BYTES)
        if text is None:  # a directory that happens to end in .toml
            return None
        return parse(name, text)
    except FileNotFoundError:  # removed since the directory was listed
        return None
    except RecursionError:
        problems.append(_problem(path, ValueError("it is nested too deeply to read"), name in previous))
    except (trusted.Refused, ValueError, OSError, UnicodeDecodeError) as exc:
        problems.append(_problem(path, exc, name in previous))
    except Exception as exc:  # one file must not keep the others from loading, whatever it holds
        log.exception("reading %s failed", path)
        problems.append(_problem(path, ValueError(f"orchestra could not read it ({type(exc).__name__}: {exc}); please report this"), name in previous))
    return previous.get(name)


def _keep(previous: dict[str, T], problems: list[str], budget: _Budget, directory: Path) -> dict[str, T]:
    kept: dict[str, T] = {}
    for name, item in sorted(previous.items()):
        if budget.take(item):
            kept[name] = item
        else:
            problems.append(_over_budget(directory / f"{name}.toml", budget))
    return kept


def _toml_files(fd: int, directory: Path, problems: list[str]) -> list[Path]:
    """The first MAX_FILES .toml files by name (a problem says so if there are more)."""
    with os.scandir(fd) as entries:
        names = heapq.nsmallest(MAX_FILES + 1, (e.name for e in entries if Path(e.name).suffix == ".toml"))
    if len(names) > MAX_FILES:
        problems.append(
            f"{directory}/ holds more than {MAX_FILES} .toml files; only the first {MAX_FILES} by name "
            f"were read (up to {names[MAX_FILES - 1]}); remove the ones you do not use"
        )
        del names[MAX_FILES:]
    return [directory / n for n in names]


def _over_budget(path: Path, budget: _Budget) -> str:
    return (
        f"{path}: not loaded: roles and templates may take {budget.limit:,} bytes in all, and the files "
        f"before it (roles first, then templates, by name) already take {budget.used:,}; make them smaller or fewer"
    )


def _problem(path: Path, exc: Exception, kept: bool) -> str:
    what = str(exc) or type(exc).__name__
    if isinstance(exc, trusted.Refused):  # it names the file itself
        return what + ("; the last good version stays in force" if kept else "; ignored")
    return f"{path}: {what}" + ("; the last good version stays in force" if kept else "; ignored")
