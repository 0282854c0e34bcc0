"""The files people edit: `config.toml`, `roles/*.toml` and `workflows/*.toml`.

Reading them is the shell's job (this module); what they mean is decided by the pure
parsers in `config`, `roles` and `workflows`. A file that does not parse or check out is
reported (file, line where known, what is wrong) and ignored: the last good version of it
stays in force, and the daemon never goes down for it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from orchestra.protocol import Role, WorkflowTemplate
from orchestrad import config as config_mod
from orchestrad import roles as roles_mod
from orchestrad import workflows as workflows_mod


def load_catalog(
    config_dir: Path, previous_roles: dict[str, Role], previous_templates: dict[str, WorkflowTemplate]
) -> tuple[list[Role], list[WorkflowTemplate], list[str]]:
    """Roles and templates from their files; for a bad file, its last good version."""
    problems: list[str] = []
    roles: dict[str, Role] = {}
    for path in _files(config_dir / "roles"):
        name = path.stem
        try:
            roles[name] = roles_mod.parse(name, path.read_text())
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            problems.append(_problem(path, exc, name in previous_roles))
            if name in previous_roles:
                roles[name] = previous_roles[name]
    known = set(roles_mod.names(roles))
    templates: dict[str, WorkflowTemplate] = {}
    for path in _files(config_dir / "workflows"):
        name = path.stem
        try:
            templates[name] = workflows_mod.parse(name, path.read_text(), known)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            problems.append(_problem(path, exc, name in previous_templates))
            if name in previous_templates:
                templates[name] = previous_templates[name]
    return sorted(roles.values(), key=lambda r: r.name), sorted(templates.values(), key=lambda t: t.name), problems


def load_settings(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The settings in config.toml, checked; (None, problems) if it cannot be used."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, []
    except (OSError, UnicodeDecodeError) as exc:
        return None, [_problem(path, exc, True)]
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [_problem(path, exc, True)]
    problems = [f"{path}: {problem}" for key, value in raw.items() if (problem := config_mod.check(key, value))]
    if problems:
        return None, [p + "; the last good settings stay in force" for p in problems]
    return raw, []


def _files(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == ".toml" and p.is_file())
    except FileNotFoundError:
        return []


def _problem(path: Path, exc: Exception, kept: bool) -> str:
    what = str(exc) or type(exc).__name__
    return f"{path}: {what}" + ("; the last good version stays in force" if kept else "; ignored")
