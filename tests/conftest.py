from __future__ import annotations

import pytest

from tests.daemon import Daemon


@pytest.fixture
def daemon():
    d = Daemon().start()
    yield d
    d.cleanup()
