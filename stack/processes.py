"""Long-running children of the local stack: each in a process group of its own, its
output in a log file, killed with the process that started it (even on SIGKILL), and
stopped newest first. The control plane and the real node both run their parts here."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO


def set_pdeathsig() -> None:
    """Children die with the process that started them, even on SIGKILL (Linux).

    SIGKILL, not SIGTERM: kube-apiserver hangs in its graceful shutdown once etcd is
    gone, and with the parent dead nobody is left to escalate.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass


class ProcessDied(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]


class Supervisor:
    """Starts named children with logs under log_dir; `stop()` ends them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []
        self._lock = threading.Lock()

    def spawn(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: Path | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        log_file.write(f"$ {' '.join(argv)}\n".encode())
        log_file.flush()
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=cwd, env=dict(env) if env is not None else None,
            start_new_session=True,  # own process group: stop() kills it whole
            preexec_fn=set_pdeathsig,
        )
        child = Child(name, popen, log_path, log_file)
        with self._lock:
            self._children.append(child)
        return child

    @property
    def children(self) -> list[Child]:
        return list(self._children)

    def pid(self, name: str) -> int:
        return next(c.popen.pid for c in self._children if c.name == name)

    def check_alive(self) -> None:
        """Raise with the log tail of the first child that has exited."""
        for child in self._children:
            rc = child.popen.poll()
            if rc is not None:
                raise ProcessDied(f"{child.name} exited with {rc}; last log lines "
                                  f"({child.log_path}):\n{self.log_tail(child.name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each group, newest first, SIGKILL what does not leave. Idempotent."""
        with self._lock:
            children, self._children = self._children, []
        for child in reversed(children):
            self._signal(child, signal.SIGTERM)
            try:
                child.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(child, signal.SIGKILL)
                child.popen.wait(timeout=5)
            self._signal(child, signal.SIGKILL)  # any stray left in the group
            child.log_file.close()

    @staticmethod
    def _signal(child: Child, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.popen.pid, sig)  # start_new_session=True: pgid == pid
