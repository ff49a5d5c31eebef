"""Clone or copy, on a real PostgreSQL 18: copy-on-write clones are independent of the
golden copy and of each other; a data directory without reflinks gets copies, and the
step says so and why; a server the worker cannot look into is taken at its word; and
PostgreSQL 15 (no file_copy_method) copies.

The session's server (tests/plugins/postgres.py) has its data directory on an XFS image
with reflinks where the tests may mount one (root, xfsprogs); elsewhere these tests
check the copy path there too."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from activities.postgres import GoldenCopyActivities, PostgresAccess, PreviewDatabaseActivities
from activities.postgres.clone_method import (
    filesystem_of,
    local_data_directory,
    planned_method,
)
from domain.golden import GoldenRefreshRequest
from stack.postgres import PostgresServer
from tests.activities.postgres.shop import (
    ALL_RULES,
    KEY,
    SEALER,
    SOURCE,
    USERS,
    Golden,
    admin,
    clone_spec,
    connect_clone,
    ensure,
)


def plain_server(prefix: str, **options: object) -> PostgresServer:
    data_dir = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(data_dir, 0o755)  # the server runs as `postgres` when we are root
    return PostgresServer(data_dir, reflink="off", **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def folder_server() -> Iterator[PostgresServer]:
    """A second PostgreSQL 18 whose data directory is a plain folder (no reflinks here:
    the host's ext4, as for a user who may not mount loop devices)."""
    server = plain_server("preview-test-pg-plain-").start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


async def golden_files_digest(server: PostgresServer, generation: str) -> str:
    conn = await admin(server)
    try:
        await conn.execute("CHECKPOINT")  # nothing of the golden left only in buffers
        oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", generation)
    finally:
        await conn.close()
    digest = hashlib.sha256()
    for path in sorted((server.pgdata / "base" / str(oid)).iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


async def test_a_write_in_one_clone_is_seen_nowhere_else(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    conn = await admin(postgres_server)
    try:
        # Pages of the golden copy made dirty before this test (hint bits set when the
        # golden was masked and checked) reach its files at the next checkpoint: flush
        # them now, so the comparison below sees only what the clones' writes did.
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    before = await golden_files_digest(postgres_server, golden.generation)
    specs = [clone_spec(f"cow-{n}") for n in range(4)]
    outs = await asyncio.gather(*(ensure(golden.clones, spec) for spec in specs))  # at once
    expected = "clone" if postgres_server.on_reflinks else "copy"
    assert {out.values["clone_method"] for out in outs} == {expected}
    if expected == "clone":
        assert all("xfs reflinks" in out.detail and out.detail.startswith("cloned in ")
                   for out in outs), [out.detail for out in outs]

    writer = await connect_clone(outs[0])
    try:
        await writer.execute("UPDATE users SET name = 'written in cow-0', country = 'XX'")
        await writer.execute("DELETE FROM orders WHERE id % 2 = 0")
        await writer.execute("CREATE TABLE only_here AS SELECT generate_series(1, 50000) AS n")
        await writer.execute("VACUUM FULL users")  # new files, not just new blocks
    finally:
        await writer.close()
    conn = await admin(postgres_server)
    try:
        await conn.execute("CHECKPOINT")  # the writes reach the files, shared or not
    finally:
        await conn.close()

    # Not in the golden copy: its files are byte for byte what they were, and a clone
    # made after the write has the golden's data.
    assert await golden_files_digest(postgres_server, golden.generation) == before
    later = await ensure(golden.clones, clone_spec("cow-after"))
    for out in [*outs[1:], later]:
        conn = await connect_clone(out)
        try:
            assert await conn.fetchval("SELECT count(*) FROM users WHERE country = 'XX' "
                                       "OR name = 'written in cow-0'") == 0
            assert await conn.fetchval("SELECT count(*) FROM users") == USERS
            assert await conn.fetchval("SELECT count(*) FROM orders WHERE id % 2 = 0") > 0
            assert await conn.fetchval("SELECT to_regclass('only_here')") is None
        finally:
            await conn.close()


async def test_a_folder_without_reflinks_gets_copies_and_says_why(
    golden: Golden, folder_server: PostgresServer
) -> None:
    access = PostgresAccess(folder_server.admin_url, SEALER, KEY)
    await GoldenCopyActivities(access).refresh_golden_copy(GoldenRefreshRequest(
        source_url=golden.source_url, source_name=SOURCE, masking=ALL_RULES))
    clones = PreviewDatabaseActivities(access)
    filesystem = filesystem_of(folder_server.pgdata)
    assert filesystem not in ("xfs", "btrfs")  # this test needs a filesystem without them

    first = await ensure(clones, clone_spec("plain-1"))
    # The first clone of the generation tried `clone`, and its files showed a copy.
    assert first.values["clone_method"] == "copy"
    assert first.detail.startswith("copied in ")
    assert (f"file_copy_method=clone copied: the data directory's filesystem ({filesystem}) "
            "has no reflinks") in first.detail
    second = await ensure(clones, clone_spec("plain-2"))
    assert second.values["clone_method"] == "copy"
    assert (f"with file_copy_method=copy (the data directory's filesystem ({filesystem}) has "
            "no reflinks)") in second.detail
    conn = await connect_clone(second)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == USERS
    finally:
        await conn.close()


async def test_a_server_out_of_sight_is_taken_at_its_word(
    folder_server: PostgresServer,
) -> None:
    """The worker cannot see the data directory of a server on another host: the
    server's configured file_copy_method decides."""
    conn = await admin(folder_server)
    try:
        chosen = await planned_method(conn, "db.internal.example")
        assert (chosen.method, chosen.check) == ("copy", False)
        assert "configured with file_copy_method = copy" in chosen.reason
        assert (await planned_method(conn, "127.0.0.1")).check  # here: look at the files
        await conn.execute("ALTER SYSTEM SET file_copy_method = clone")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()
    conn = await admin(folder_server)
    try:
        chosen = await planned_method(conn, "db.internal.example")
        assert chosen.method == "clone"
        assert chosen.reason == "the server is configured with file_copy_method = clone"
    finally:
        await conn.execute("ALTER SYSTEM RESET file_copy_method")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.close()


class Forwarded:
    """A connection to one server that reports another server's data directory, as a
    port forwarded to loopback from a container or a tunnel would, where the same path
    on this host holds a different cluster."""

    def __init__(self, conn: asyncpg.Connection, data_directory: Path) -> None:
        self.conn, self.data_directory = conn, data_directory

    async def fetchval(self, query: str, *args: object) -> object:
        if "current_setting('data_directory')" in query:
            return str(self.data_directory)
        return await self.conn.fetchval(query, *args)


async def test_a_data_directory_here_of_another_server_is_not_looked_into(
    folder_server: PostgresServer, postgres_server: PostgresServer,
) -> None:
    conn = await admin(folder_server)
    try:
        assert await local_data_directory(conn, "127.0.0.1") == folder_server.pgdata
        other = Forwarded(conn, postgres_server.pgdata)
        assert await local_data_directory(other, "127.0.0.1") is None  # type: ignore[arg-type]
        chosen = await planned_method(other, "127.0.0.1")  # type: ignore[arg-type]
        assert (chosen.method, chosen.check) == ("copy", False)  # the server's own setting
    finally:
        await conn.close()


def postgres_15() -> Path | None:
    found = Path("/usr/lib/postgresql/15/bin")
    return found if (found / "postgres").exists() else None


@pytest.mark.skipif(postgres_15() is None, reason="Debian's PostgreSQL 15 is not installed")
async def test_postgresql_15_copies() -> None:
    server = await asyncio.to_thread(plain_server("preview-test-pg15-",
                                                  bin_dir=postgres_15()).start)
    try:
        conn = await asyncpg.connect(server.admin_url)
        try:
            chosen = await planned_method(conn, "127.0.0.1")
        finally:
            await conn.close()
        assert (chosen.method, chosen.has_setting) == ("copy", False)
        assert chosen.reason == "PostgreSQL 15 has no file_copy_method"
        assert chosen.detail(850) == "copied in 850 ms (PostgreSQL 15 has no file_copy_method)"
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(server.data_dir, ignore_errors=True)
