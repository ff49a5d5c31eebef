"""`make run`'s program: it shows a preview reach Ready, and Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kube, pytest.mark.slow]
ROOT = Path(__file__).parents[2]


def processes_using(marker: str) -> list[str]:
    """Command lines of every process that mentions `marker` (our private state folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def test_local_stack_reaches_ready_and_ctrl_c_stops_everything() -> None:
    state = Path(tempfile.mkdtemp(prefix="preview-run-"))
    process = subprocess.Popen(
        [sys.executable, "-m", "stack.run", "--state-dir", str(state)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + 300
    pids: list[int] = []
    try:
        for line in process.stdout:  # ends when the program exits or we stop it
            output.append(line)
            if line.startswith("stack pids:"):
                pids = [int(p) for p in line.split(":")[1].split()]
            if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
                break
        text = "".join(output)
        assert "preview ready: hello-world-pr-2-" in text, text
        assert "http://web-pr-2.preview.localhost" in text
        assert processes_using(str(state)), "the stack should be running now"
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=120)
    assert process.returncode == 0, rest
    assert "stopped everything" in rest
    assert processes_using(str(state)) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in (
            Path(f"/proc/{pid}/status").read_text().lower()), f"pid {pid} still runs"
