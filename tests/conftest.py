"""Test session: every plugin under tests/plugins provides fixtures for a real server."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The tests run on the development secrets written in engine/settings.py, which only
# the local profile accepts (and so do the services the tests start as subprocesses).
os.environ["PREVIEW_PROFILE"] = "local"

pytest_plugins = sorted(
    f"tests.plugins.{path.stem}"
    for path in (Path(__file__).parent / "plugins").glob("*.py")
    if path.stem != "__init__"
)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    # The Temporal SDK's Rust threads can crash the interpreter during finalisation,
    # turning a green run into exit 139 (see shared/temporal-notes.md): leave now.
    status = getattr(config, "_preview_exitstatus", None)
    if status is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._preview_exitstatus = exitstatus  # type: ignore[attr-defined]
