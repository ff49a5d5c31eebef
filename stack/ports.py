"""Free loopback ports, the ports a state folder keeps, and process groups: what every
part of the local stack needs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

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


def is_free(port: int) -> bool:
    """Whether a loopback listener could bind `port` now (as servers do, with
    SO_REUSEADDR: the connections a stopped server leaves in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortBook:
    """The ports (and node slot) a state folder's servers had, kept in a JSON file there:
    the local stack started again on the same folder listens where it did, so what an
    open preview holds (its connection URLs, the URL on its pull request) still leads
    somewhere. A port taken meanwhile is replaced, and `moved` says which."""

    def __init__(self, path: Path) -> None:
        self.moved: dict[str, tuple[int, int]] = {}  # name → (before, now)
        self.path = path
        self.known: dict[str, int] = {}
        self.unreadable = False  # the file was there but cut short: everything is new
        try:
            self.known = {str(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError):
            self.unreadable = True

    def port(self, name: str) -> int:
        before = self.known.get(name)
        with _lock:
            if before is not None and before not in _handed_out and is_free(before):
                _handed_out.add(before)
                return before
        now = free_port()
        if before is not None:
            self.moved[name] = (before, now)
        self._keep(name, now)
        return now

    def preferred(self, name: str) -> int | None:
        """A remembered value that is not a port (the node's slot)."""
        return self.known.get(name)

    def keep(self, name: str, value: int) -> None:
        if self.known.get(name) != value:
            if name in self.known:
                self.moved[name] = (self.known[name], value)
            self._keep(name, value)

    def _keep(self, name: str, value: int) -> None:
        self.known[name] = value
        # Whole or not at all: a stack killed mid-write must not leave a file cut short.
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.known, indent=1, sort_keys=True) + "\n")
        os.replace(partial, self.path)
