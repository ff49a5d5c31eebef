"""What the tests of the demo application and of its images share."""

from __future__ import annotations

import socket


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
