"""The XFS image under the stack's PostgreSQL (stack/reflink.py), seen from outside: a
stop unmounts it and frees its loop device, the data survives a restart, a start clears
what a run killed with its guard left behind, and `off` is a plain folder."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from stack import reflink
from stack.postgres import PostgresServer
from tests.stack.test_local_stack import (
    image_expected,
    loop_devices_under,
    mounts_under,
    processes_using,
    wait_released,
)

ROOT = Path(__file__).parents[2]
needs_image = pytest.mark.skipif(not image_expected(),
                                 reason="no XFS image here (not root, no xfsprogs, or off)")


@pytest.fixture
def folder() -> Iterator[Path]:
    made = Path(tempfile.mkdtemp(prefix="preview-test-reflink-"))
    os.chmod(made, 0o755)  # the server runs as `postgres` when we are root
    yield made
    if not mounts_under(made):
        shutil.rmtree(made, ignore_errors=True)


async def database_exists(server: PostgresServer, name: str) -> bool:
    conn = await asyncpg.connect(server.admin_url)
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


@needs_image
async def test_stop_unmounts_and_a_restart_finds_the_data(folder: Path) -> None:
    server = await asyncio.to_thread(PostgresServer(folder).start)
    try:
        assert server.on_reflinks and "XFS image with reflinks" in server.storage
        assert mounts_under(folder) and loop_devices_under(folder)
        conn = await asyncpg.connect(server.admin_url)
        try:
            await conn.execute("CREATE DATABASE kept")
            data_directory = await conn.fetchval("SHOW data_directory")
        finally:
            await conn.close()
        assert Path(data_directory).is_relative_to(folder / "reflink")
    finally:
        await asyncio.to_thread(server.stop)
    wait_released(folder, timeout=10)
    server = await asyncio.to_thread(server.start)
    try:
        assert await database_exists(server, "kept")
    finally:
        await asyncio.to_thread(server.stop)
    wait_released(folder, timeout=10)


@needs_image
async def test_a_start_clears_what_a_killed_run_left_mounted(folder: Path) -> None:
    """The server's process and its guard both killed: the image stays mounted, with a
    postmaster on it, until the next start of the same folder clears it."""
    first = subprocess.Popen([sys.executable, "-m", "stack.postgres", "--data-dir", str(folder)],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert first.stdout is not None
    assert first.stdout.readline().startswith("postgresql://")
    assert "XFS image" in first.stdout.readline()
    guards = [int(p.split(":")[0]) for p in processes_using(str(folder))
              if "stack.reflink guard" in p]
    assert guards
    for pid in guards:
        os.kill(pid, signal.SIGKILL)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert mounts_under(folder)  # nobody left to clean up

    server = await asyncio.to_thread(PostgresServer(folder).start)
    try:
        assert server.on_reflinks
        assert len(mounts_under(folder)) == 1 and len(loop_devices_under(folder)) == 1
        assert await database_exists(server, "postgres")
    finally:
        await asyncio.to_thread(server.stop)
    wait_released(folder, timeout=10)
    assert [p for p in processes_using(str(folder)) if "pgdata" in p] == []


@needs_image
async def test_a_second_start_on_a_live_folder_is_refused_and_harms_nothing(
    folder: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two stacks on one state folder: the second would otherwise take the first's mount
    for a killed run's and clear it, stopping a live PostgreSQL."""
    monkeypatch.setattr(reflink, "LOCK_WAIT_SECONDS", 1.0)
    server = await asyncio.to_thread(PostgresServer(folder).start)
    try:
        with pytest.raises(RuntimeError, match="in use by another stack"):
            await asyncio.to_thread(PostgresServer(folder).start)
        assert server.on_reflinks and await database_exists(server, "postgres")
    finally:
        await asyncio.to_thread(server.stop)
    wait_released(folder, timeout=10)


async def test_off_is_a_plain_folder(folder: Path) -> None:
    server = await asyncio.to_thread(PostgresServer(folder, reflink="off").start)
    try:
        assert not server.on_reflinks
        assert server.storage == "plain folder (PREVIEW_PG_REFLINK=off)"
        assert server.pgdata == folder / "pgdata"
        assert mounts_under(folder) == []
    finally:
        await asyncio.to_thread(server.stop)
