"""The engine as a role with CREATEDB and CREATEROLE only, as on a managed server (the RDS
master user is not a superuser): golden refresh, clone, re-run, removal and the sweeper's
half all work, and the preview's role still owns only its database."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import INVALID_INPUT
from activities.postgres import GoldenCopyActivities, PostgresAccess, PreviewDatabaseActivities
from domain.golden import GoldenRefreshRequest
from stack.postgres import PostgresServer
from tests.activities.postgres.shop import (
    ALL_RULES,
    KEY,
    ORDERS,
    SEALER,
    SOURCE,
    admin,
    build_source,
    clone_spec,
    connect_clone,
    ensure,
)


@contextlib.asynccontextmanager
async def limited_role(server: PostgresServer, *, may_set_replication_role: bool,
                       ) -> AsyncIterator[str]:
    """A login role with CREATEDB and CREATEROLE, and a database of its own for the
    engine's bookkeeping schema; what it leaves is dropped after."""
    role = f"engine_{uuid.uuid4().hex[:8]}"
    conn = await admin(server)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN CREATEDB CREATEROLE")
        await conn.execute(f"CREATE DATABASE {role} OWNER {role}")
        if may_set_replication_role:
            # Masking turns triggers and foreign-key checks off (README: Production notes).
            await conn.execute(f"GRANT SET ON PARAMETER session_replication_role TO {role}")
        assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", role)
        yield f"postgresql://{role}@127.0.0.1:{server.port}/{role}"
    finally:
        for name in await conn.fetch(
                "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                "WHERE r.rolname = $1", role):
            await conn.execute(f'DROP DATABASE "{name[0]}" WITH (FORCE)')
        if may_set_replication_role:
            await conn.execute(f"REVOKE SET ON PARAMETER session_replication_role FROM {role}")
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
        await conn.close()


@pytest.fixture
async def engine_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    async with limited_role(postgres_server, may_set_replication_role=True) as url:
        yield url


async def test_a_role_with_createdb_and_createrole_only_runs_every_step(
    engine_url: str, postgres_server: PostgresServer,
) -> None:
    source_url = await postgres_server.new_database("pgt_limited_source")
    await build_source(source_url)
    access = PostgresAccess(engine_url, SEALER, KEY)
    probe = await asyncpg.connect(engine_url)
    try:  # the engine really is that role
        assert not await probe.fetchval(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    finally:
        await probe.close()
    source = f"{SOURCE}_limited"
    await GoldenCopyActivities(access).refresh_golden_copy(
        GoldenRefreshRequest(source_url=source_url, source_name=source, masking=ALL_RULES))
    clones = PreviewDatabaseActivities(access)
    spec = clone_spec("limited", source=source)

    out = await ensure(clones, spec)
    again = await ensure(clones, spec)  # a re-run: the role exists, its password is reset
    assert again.secrets["password"] == out.secrets["password"]
    conn = await connect_clone(again)
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == ORDERS
        assert await conn.fetchval("SELECT current_user") == spec.role
        # The preview's role owns its tables, and cannot create roles or databases.
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
            "AND tableowner <> current_user") == 0
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CREATE ROLE intruder")
    finally:
        await conn.close()

    assert [d.database for d in await clones.list_preview_databases()
            if d.environment == "limited"] == [spec.database]
    assert await clones.remove_preview_database("limited") == [spec.database]
    check = await admin(postgres_server)
    try:
        assert await check.fetchval(
            "SELECT count(*) FROM pg_database WHERE datname = $1", spec.database) == 0
        assert await check.fetchval(
            "SELECT count(*) FROM pg_roles WHERE rolname = $1", spec.role) == 0
    finally:
        await check.close()


async def test_masking_without_the_replication_role_setting_names_the_grant(
    postgres_server: PostgresServer,
) -> None:
    """The one privileged setting masking needs: its absence fails the refresh with the
    grant to ask for, not only PostgreSQL's "permission denied", and leaves no copy."""
    source_url = await postgres_server.new_database("pgt_no_replica_source")
    await build_source(source_url)
    source = f"{SOURCE}_no_replica"
    async with limited_role(postgres_server, may_set_replication_role=False) as url:
        access = PostgresAccess(url, SEALER, KEY)
        with pytest.raises(ApplicationError) as failed:
            await GoldenCopyActivities(access).refresh_golden_copy(GoldenRefreshRequest(
                source_url=source_url, source_name=source, masking=ALL_RULES))
        assert failed.value.type == INVALID_INPUT and failed.value.non_retryable
        message = str(failed.value)
        assert "permission denied to set parameter \"session_replication_role\"" in message
        assert "GRANT SET ON PARAMETER session_replication_role" in message
        check = await admin(postgres_server)
        try:  # the restored, unmasked generation was discarded
            assert await check.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1",
                f"golden_{source}%") == []
        finally:
            await check.close()
