"""The shape of the installed project: what an install makes importable."""

from __future__ import annotations

import os
import subprocess
import sys


def test_an_editable_install_exposes_only_the_two_packages(tmp_path):
    """Not the folders above them: `cli`, `tests` and `bench` would collide with other
    distributions' packages of those names."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (
        "import importlib.util, orchestra, orchestrad\n"
        "print(sorted(n for n in ('cli', 'tests', 'bench') if importlib.util.find_spec(n) is not None))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"importable from anywhere: {done.stdout.strip()}"
