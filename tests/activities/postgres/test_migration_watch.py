"""The migration report against a real PostgreSQL 18: each test makes a database owned
by a login role of its own (as a preview's is), then plays the migration job as that
role on a connection of its own, opened after the before-snapshot."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from activities.postgres import PostgresAccess
from activities.postgres.migration import LockWatch, MigrationWatcher
from domain.migration import (
    DatabaseSnapshot,
    LockHeld,
    MigrationLimits,
    MigrationReport,
    RowChange,
    compare,
    violations,
)
from stack.postgres import PostgresServer
from tests.activities.postgres.shop import KEY, SEALER

INTERVAL = 0.05
MB = 1_000_000


@dataclass
class Preview:
    server: PostgresServer
    database: str
    password: str
    watcher: MigrationWatcher

    async def connect(self) -> asyncpg.Connection:
        """A session of the preview's own role (the job's, or the application's)."""
        return await asyncpg.connect(host="127.0.0.1", port=self.server.port,
                                     user=self.database, password=self.password,
                                     database=self.database)

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.server.url(self.database))

    async def setup(self, sql: str) -> None:
        """Build the data as the role, then wait until that session's statistics are
        flushed, so they are not counted as the job's."""
        conn = await self.connect()
        try:
            await conn.execute(sql)
        finally:
            await conn.close()
        await self.watcher.settle(self.database, DatabaseSnapshot(
            database=self.database, bytes=0, tables={}, states={}, sessions=[]))


@pytest.fixture
async def preview(postgres_server: PostgresServer) -> AsyncIterator[Preview]:
    name, password = f"mig_{uuid.uuid4().hex[:10]}", secrets.token_hex(16)
    admin = await asyncpg.connect(postgres_server.admin_url)
    try:
        await admin.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        await admin.execute(f"CREATE DATABASE {name} OWNER {name}")
        access = PostgresAccess(postgres_server.admin_url, SEALER, KEY)
        yield Preview(postgres_server, name, password,
                      MigrationWatcher(access, interval=INTERVAL))
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {name}")
        await admin.close()


async def watched(preview: Preview, job: Callable[[asyncpg.Connection], Awaitable[None]],
                  ) -> tuple[MigrationReport, LockWatch]:
    """snapshot, watch (the job on a new session of the role), settle, snapshot."""
    watcher, db = preview.watcher, preview.database
    before = await watcher.snapshot(db)
    async with watcher.watch(db, before) as seen:
        began = time.monotonic()
        conn = await preview.connect()
        try:
            await job(conn)
        finally:
            await conn.close()
        seconds = time.monotonic() - began
    assert await watcher.settle(db, before) == []
    after = await watcher.snapshot(db)
    assert seen.note is None and seen.samples > 0
    return compare(before, after, seen.locks(), job="migrate", seconds=seconds), seen


def lock(report: MigrationReport, table: str, mode: str) -> LockHeld:
    found = [held for held in report.locks if (held.table, held.mode) == (table, mode)]
    assert found, f"no {mode} on {table} in {report.locks}"
    return found[0]


async def test_rewrite_of_a_large_table(preview: Preview) -> None:
    await preview.setup(
        "CREATE TABLE big (id int PRIMARY KEY, amount int NOT NULL, pad text) "
        "WITH (autovacuum_enabled = false);"
        "INSERT INTO big SELECT g, g % 1000, repeat('x', 250) "
        "FROM generate_series(1, 420000) g")
    admin = await preview.admin()
    try:
        size_before = await admin.fetchval("SELECT pg_total_relation_size('public.big')")
        assert size_before >= 100 * MB
        timed: dict[str, float] = {}

        async def job(conn: asyncpg.Connection) -> None:
            began = time.monotonic()
            await conn.execute("ALTER TABLE big ALTER COLUMN amount TYPE bigint")
            timed["alter"] = time.monotonic() - began
            assert await conn.execute(
                "UPDATE big SET amount = amount + 1 WHERE id <= 1234") == "UPDATE 1234"

        report, _ = await watched(preview, job)
        size_after = await admin.fetchval("SELECT pg_total_relation_size('public.big')")
    finally:
        await admin.close()
    assert report.schema_changes == ["~ column public.big.amount: integer → bigint"]
    assert [(r.table, r.bytes_before, r.bytes_after) for r in report.rewrites] == [
        ("public.big", size_before, size_after)]
    assert report.data_bytes > size_before
    held = lock(report, "public.big", "AccessExclusiveLock")
    assert held.blocks == "reads and writes"
    alter = timed["alter"]
    # Seen from the first sample after it was taken to the last before it went, plus
    # the interval before the first: within a few intervals of the ALTER's own time.
    assert max(INTERVAL, alter - 0.3) <= held.seconds <= alter + 0.5, (held.seconds, alter)
    assert report.rows == [RowChange(table="public.big", inserted=0, updated=1234, deleted=0)]
    found = violations(report, MigrationLimits(max_rewrite_megabytes=50))
    assert found == [f"migration job migrate rewrote public.big "
                     f"({max(size_before, size_after) / MB:.1f} MB), over 50 MB "
                     "(policy.migrations.max_rewrite_megabytes)"]


async def test_added_column_and_index(preview: Preview) -> None:
    await preview.setup(
        "CREATE TABLE t (id int PRIMARY KEY, name text);"
        "INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 1000) g")

    async def job(conn: asyncpg.Connection) -> None:
        await conn.execute("ALTER TABLE t ADD COLUMN note text")
        async with conn.transaction():
            await conn.execute("CREATE INDEX t_note_idx ON t (note)")
            await conn.execute("SELECT pg_sleep(0.3)")  # the ShareLock stays until commit

    report, _ = await watched(preview, job)
    assert report.schema_changes == [
        "+ column public.t.note text",
        "+ index public.t.t_note_idx: CREATE INDEX t_note_idx ON public.t USING btree (note)",
    ]
    assert report.rewrites == []
    assert report.rows == []
    share = lock(report, "public.t", "ShareLock")
    assert share.blocks == "writes"
    assert 0.25 <= share.seconds <= 0.3 + 4 * INTERVAL + 0.2


async def test_lock_over_the_limit(preview: Preview) -> None:
    await preview.setup("CREATE TABLE t (id int)")

    async def job(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
            await conn.execute("SELECT pg_sleep(1.5)")

    report, _ = await watched(preview, job)
    found = violations(report, MigrationLimits(max_write_lock_seconds=0.5))
    assert len(found) == 1, found
    assert found[0].startswith("migration job migrate held AccessExclusiveLock on public.t "
                               "for ")
    assert found[0].endswith("which blocks reads and writes; the limit is 0.5 s "
                             "(policy.migrations.max_write_lock_seconds)")
    figure = re.search(r" for ([0-9.]+) s,", found[0])
    assert figure is not None and 1.4 <= float(figure[1]) <= 1.5 + 4 * INTERVAL + 0.3
    assert violations(report, MigrationLimits(max_write_lock_seconds=3)) == []


async def test_sessions_connected_before_are_not_the_job(preview: Preview) -> None:
    await preview.setup("CREATE TABLE app_t (id int); CREATE TABLE t (id int)")
    application = await preview.connect()  # connected, holding a lock that blocks writes
    try:
        await application.execute("BEGIN; LOCK TABLE app_t IN EXCLUSIVE MODE")

        async def job(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute("LOCK TABLE t IN SHARE MODE")
                await conn.execute("SELECT pg_sleep(0.3)")
            await conn.execute("INSERT INTO t VALUES (1), (2)")

        began = time.monotonic()
        report, seen = await watched(preview, job)
        # settle() did not wait for the application (its timeout is 10 s).
        assert time.monotonic() - began < 5
        assert application.get_server_pid() not in seen.pids
    finally:
        await application.close()
    assert [(held.table, held.mode) for held in report.locks] == [("public.t", "ShareLock")]
    assert report.rows == [RowChange(table="public.t", inserted=2, updated=0, deleted=0)]


async def test_settle_waits_for_the_job_to_leave(preview: Preview) -> None:
    await preview.setup("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
    watcher, db = preview.watcher, preview.database
    before = await watcher.snapshot(db)
    job = await preview.connect()
    await job.execute("UPDATE t SET id = id WHERE id <= 10")
    # A backend flushes its counters at most once a second while it lives: these wait
    # for its exit, which the job (the subject) makes late.
    await job.execute("UPDATE t SET id = id WHERE id <= 20")

    async def leave_late() -> None:
        await asyncio.sleep(0.5)
        await job.close()

    leaving = asyncio.create_task(leave_late())
    began = time.monotonic()
    unsettled = await watcher.settle(db, before)
    waited = time.monotonic() - began
    await leaving
    assert waited >= 0.45 and unsettled == []
    report = compare(before, await watcher.snapshot(db), [], job="migrate", seconds=1)
    assert report.rows == [RowChange(table="public.t", inserted=0, updated=30, deleted=0)]

    lingering = await preview.connect()  # never leaves: settle gives up and says who
    try:
        began = time.monotonic()
        unsettled = await watcher.settle(db, before, timeout=0.3)
        assert 0.3 <= time.monotonic() - began < 2
        assert unsettled == [lingering.get_server_pid()]
    finally:
        await lingering.close()


async def test_sampling_failure_leaves_a_note(preview: Preview) -> None:
    await preview.setup("CREATE TABLE t (id int)")
    watcher, db = preview.watcher, preview.database
    before = await watcher.snapshot(db)
    admin = await preview.admin()
    try:
        async with watcher.watch(db, before) as seen:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = $1 AND application_name = 'preview-engine' "
                                "AND pid <> pg_backend_pid()", db)
            for _ in range(100):  # polls the condition, at most 5 s
                if seen.note is not None:
                    break
                await asyncio.sleep(INTERVAL)
    finally:
        await admin.close()
    assert seen.note is not None and seen.note.startswith("partial: lock sampling failed")
    assert seen.locks() == []
