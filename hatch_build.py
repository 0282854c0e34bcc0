"""Editable installs that expose `orchestra` and `orchestrad` and nothing else of the checkout.

Hatch's default editable install puts the repository root on `sys.path`, which makes `cli`,
`tests` and `bench` importable as top-level packages from anywhere. Its exact mode maps only
the packages, but through an import hook whose start-up costs tens of milliseconds in every
interpreter. This hook does it for a fraction of a millisecond: `cli/` (which holds only the
`orchestra` package) goes on `sys.path`, and a finder on `sys.meta_path` answers for the one
name `orchestrad` from the root. Regular (non-editable) wheels are untouched.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

MODULE = "_orchestra_editable"

FINDER = '''\
"""Written by orchestra's editable install: finds `orchestrad` in the checkout {root!r}."""

import sys

# The class importlib.machinery re-exports; this module is loaded at start-up already, so
# importing it costs nothing (importlib.machinery would import warnings).
from _frozen_importlib_external import PathFinder

ROOT = {root!r}


class OrchestradFinder:
    """Answers for the top-level name `orchestrad` only; submodules follow its __path__."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "orchestrad" and path is None:
            return PathFinder.find_spec(name, [ROOT])
        return None


sys.meta_path.append(OrchestradFinder)
'''


class EditableHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if version != "editable":
            return
        self._staging = tempfile.mkdtemp(prefix="orchestra-editable-")
        files = {
            f"{MODULE}.py": FINDER.format(root=self.root),
            # Lines of a .pth file that start with "import" are run at start-up.
            f"{MODULE}.pth": f"import {MODULE}\n",
        }
        for name, text in files.items():
            source = os.path.join(self._staging, name)
            with open(source, "w", encoding="utf-8") as f:
                f.write(text)
            build_data["force_include_editable"][source] = name

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        staging = getattr(self, "_staging", None)
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
