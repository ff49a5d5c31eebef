"""`make run`'s program: it shows a preview reach Ready, and Ctrl-C leaves nothing running;
its PostgreSQL's XFS image (stack/reflink.py) is unmounted and its loop device freed after
Ctrl-C and after a kill -9 of the stack process, as seen from outside (/proc/mounts,
`losetup`)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from stack import demo
from stack.reflink import reflink_mode, unavailable_reason

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


def mounts_under(folder: Path) -> list[str]:
    """Lines of /proc/mounts whose mount point is inside `folder`."""
    inside = str(folder.resolve())
    return [line for line in Path("/proc/mounts").read_text().splitlines()
            if len(line.split()) > 1 and line.split()[1].startswith(inside)]


def loop_devices_under(folder: Path) -> list[str]:
    """Lines of `losetup -a` whose backing file is inside `folder`."""
    if shutil.which("losetup") is None:
        return []
    listed = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return [line for line in listed.splitlines() if str(folder.resolve()) in line]


def image_expected() -> bool:
    return reflink_mode() != "off" and unavailable_reason() is None


def wait_released(state: Path, timeout: float = 60) -> None:
    """Until nothing of the state folder is mounted or attached (the guard works after
    the stack is gone), within a deadline."""
    deadline = time.monotonic() + timeout
    while mounts_under(state) or loop_devices_under(state):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling a condition with a deadline
    assert mounts_under(state) == [], "the XFS image is still mounted"
    assert loop_devices_under(state) == [], "its loop device is still attached"


def start_stack(state: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stack.run", "--state-dir", str(state)], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


ANSWERED = re.compile(r"GET (http://web-pr-2\.preview\.localhost:\d+) → 200: commit "
                      r"ec26c3e57ca3a959ca5aad62de7213c562f8c821, node-env development, "
                      r"customer-email (\S+)")


def run_until_ready(state: Path) -> tuple[subprocess.Popen[str], str, list[int]]:
    """`make run`'s program on `state`, read until it says it is up (or 300 s)."""
    process = start_stack(state)
    assert process.stdout is not None
    output: list[str] = []
    deadline = time.monotonic() + 300
    pids: list[int] = []
    for line in process.stdout:  # ends when the program exits or we stop it
        output.append(line)
        if line.startswith("stack pids:"):
            pids = [int(p) for p in line.split(":")[1].split()]
        if "Ctrl-C stops everything" in line or time.monotonic() > deadline:
            break
    return process, "".join(output), pids


def ctrl_c(process: subprocess.Popen[str], state: Path, pids: list[int], node: str) -> None:
    """SIGINT, as Ctrl-C sends it: the program stops everything and leaves nothing."""
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 0, rest
    assert "stopped everything" in rest
    assert processes_using(str(state)) == []
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in (
            Path(f"/proc/{pid}/status").read_text().lower()), f"pid {pid} still runs"
    wait_released(state, timeout=10)  # stopped, not killed: nothing is left at all
    assert node not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                      text=True).stdout


def test_local_stack_reaches_ready_and_ctrl_c_stops_everything() -> None:
    """...and started again on the same state folder, the preview left open answers at the
    same URL with the same data: its servers kept their addresses (ports.json), so the
    connection URLs the preview holds still lead to its database."""
    state = Path(tempfile.mkdtemp(prefix="preview-run-"))
    process, text, pids = run_until_ready(state)
    try:
        assert "preview ready: hello-world-pr-2-" in text, text
        # The URL answers, from the PR's head commit, with a masked customer.
        answered = ANSWERED.search(text)
        assert answered, text
        assert answered.group(2) not in {email for _, email in demo.CUSTOMERS}
        # The example's migration ran before the api rolled out, and its report is shown.
        assert "migration report: migrate on main:" in text, text
        assert "+ column public.customers.plan text NOT NULL DEFAULT 'free'::text" in text
        node = re.search(r"node +(preview-node-\d+): pods run for real", text)
        assert node, text
        assert processes_using(str(state)), "the stack should be running now"
        if image_expected():
            assert "XFS image with reflinks" in text, text
            assert mounts_under(state) and loop_devices_under(state)
    finally:
        ctrl_c(process, state, pids, node.group(1) if node else "-")

    assert node is not None and answered is not None
    process, again, pids = run_until_ready(state)
    try:
        assert "moved from" not in again, again
        assert f"node            {node.group(1)}:" in again, again  # the same slot
        after = ANSWERED.search(again)
        assert after, again
        assert after.groups() == answered.groups()  # same URL, same masked customer
    finally:
        ctrl_c(process, state, pids, node.group(1))
    shutil.rmtree(state, ignore_errors=True)


def test_a_killed_stack_leaves_no_mount_or_loop_device() -> None:
    """kill -9 of the stack process right after its PostgreSQL came up: the image's
    guard stops that server and unmounts; the loop device goes with the mount."""
    if not image_expected():
        pytest.skip(f"no XFS image here: {unavailable_reason() or 'PREVIEW_PG_REFLINK=off'}")
    state = Path(tempfile.mkdtemp(prefix="preview-kill-"))
    process = start_stack(state)
    assert process.stdout is not None
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "PostgreSQL " in line and "postgresql://" in line:
                break
        assert "XFS image with reflinks" in "".join(seen), "".join(seen)
        assert mounts_under(state) and loop_devices_under(state)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        wait_released(state)
        servers = [p for p in processes_using(str(state))
                   if "pgdata" in p and "stack.reflink" not in p]
        assert servers == [], servers  # stopped before the unmount
    finally:
        process.kill()
        process.wait()
        # What else the stack had started by then (it may be starting Temporal).
        for entry in processes_using(str(state)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.split(":")[0]), signal.SIGKILL)
    if not mounts_under(state):
        shutil.rmtree(state, ignore_errors=True)
