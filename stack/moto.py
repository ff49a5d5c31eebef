"""moto server on loopback: the AWS stand-in of the local stack and the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from stack.ports import free_port, stop_group


class MotoServer:
    def __init__(
        self, log_path: Path, port: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = env or {}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> Self:
        moto_bin = Path(sys.executable).parent / "moto_server"
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [str(moto_bin), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._env},
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not answer within {timeout}s") from None
                time.sleep(0.05)  # polling a condition with a deadline

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            # All its state is in memory and disposable; a SIGTERM exit spends ~1 s
            # tearing the backends down for nothing.
            stop_group(self._process, signal.SIGKILL)
        self._process = None

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
