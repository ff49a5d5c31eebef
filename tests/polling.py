"""Waiting for a condition in a test: poll it, with a deadline, and say what never came."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 60.0,
               interval: float = 0.2) -> T:
    """Poll check() until it returns something truthy (returned), or fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # polling a condition with a deadline
