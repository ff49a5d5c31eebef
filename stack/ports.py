"""Free loopback ports and process groups: what every part of the local stack needs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

# Every port handed out by this process. A port is free when asked for, but its server
# binds it later: without this, the next caller could be given the same one (seen: the
# local stack's starter and kube-apiserver both got 42863).
_handed_out: set[int] = set()
_lock = threading.Lock()


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports, none handed out before by this process."""
    socks: list[socket.socket] = []
    found: list[int] = []
    try:
        with _lock:
            while len(found) < n:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)  # held open until the end, so the kernel gives others
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
                if port not in _handed_out:
                    found.append(port)
            _handed_out.update(found)
        return found
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    return free_ports(1)[0]


def stop_group(
    process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM, timeout: float = 20
) -> None:
    """Signal a child's whole process group, and kill it if it does not leave in time."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
