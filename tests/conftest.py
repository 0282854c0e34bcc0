from __future__ import annotations

import pytest

from tests.daemon import Daemon
from tests.scripted_api import INSTALL_HINT, find_claude


@pytest.fixture
def daemon():
    d = Daemon().start()
    yield d
    d.cleanup()


@pytest.fixture
def claude() -> str:
    """The real Claude Code CLI (installed by .ci/run); a test that needs it fails without it."""
    path = find_claude()
    if path is None:
        pytest.fail(INSTALL_HINT)
    return path
