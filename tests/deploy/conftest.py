"""Fixtures for tests/deploy; the helpers are in deploylib.py (a module of
its own, so that it never collides with another folder's conftest)."""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def build():
    """The build folder with arbiterd and arbiterctl ($ARBITER_BUILD)."""
    b = os.environ.get("ARBITER_BUILD")
    if not b:
        pytest.fail("set ARBITER_BUILD to the absolute build folder, e.g. "
                    "make all BUILD=build-deploy && "
                    "ARBITER_BUILD=$PWD/build-deploy /usr/bin/python3 -m pytest tests/deploy")
    b = Path(b)
    for name in ("arbiterd", "arbiterctl"):
        if not os.access(b / name, os.X_OK):
            pytest.fail("%s is missing: run make all BUILD=%s" % (b / name, b))
    return b
