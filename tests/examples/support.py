"""What the tests of the demo application and of its images share."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0) -> T:
    """Poll check() until it returns something truthy, or fail saying `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # polling a condition with a deadline


def redis_call(port: int, password: str, *args: str) -> bytes:
    """AUTH, then one command whose reply is one line (PING, FLUSHALL): both replies."""
    def encode(*parts: str) -> bytes:
        return f"*{len(parts)}\r\n".encode() + b"".join(
            f"${len(p.encode())}\r\n{p}\r\n".encode() for p in parts)

    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(encode("AUTH", password) + encode(*args))
        data = b""
        while data.count(b"\r\n") < 2 and (chunk := sock.recv(4096)):
            data += chunk
        return data
