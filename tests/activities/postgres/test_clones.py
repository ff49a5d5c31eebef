"""Preview databases against a real PostgreSQL 18: clones of the golden copy, seeded and
empty databases, ownership, removal, the sweeper's half, and the streaming fallback to a
second server (test_clone_method.py: clone or copy, and why)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import FOREIGN_RESOURCE, INVALID_INPUT
from activities.postgres import (
    PgServer,
    PostgresAccess,
    PreviewDatabaseActivities,
    postgres_activities,
)
from activities.postgres.server import scram_matches
from domain.blueprint import DataPolicy, MaskingMethod, MaskingRule
from domain.resources import StepInput
from stack.postgres import PostgresServer
from tests.activities.postgres.shop import (
    KEY,
    ORDERS,
    RULES,
    SEALER,
    USERS,
    Golden,
    admin,
    clone_spec,
    connect_clone,
    ensure,
)


async def test_two_previews_cloned_at_once(golden: Golden) -> None:
    first, second = clone_spec("together-1"), clone_spec("together-2")
    outs = await asyncio.gather(ensure(golden.clones, first), ensure(golden.clones, second))
    for out in outs:
        conn = await connect_clone(out)
        try:
            assert await conn.fetchval("SELECT count(*) FROM orders") == ORDERS
        finally:
            await conn.close()


async def test_clone_belongs_to_its_role_only(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    mine, other = clone_spec("owner-a"), clone_spec("owner-b")
    out, other_out = await ensure(golden.clones, mine), await ensure(golden.clones, other)
    password = SEALER.unseal(out.secrets["password"])
    method = "clone" if postgres_server.on_reflinks else "copy"
    assert out.values == {"host": "127.0.0.1", "port": str(postgres_server.port),
                          "database": mine.database, "user": mine.role,
                          "clone_method": method}
    assert out.detail.startswith("cloned in " if method == "clone" else "copied in ")
    assert password not in repr(out.values) and len(password) == 32
    assert SEALER.unseal(out.secrets["url"]) == (
        f"postgresql://{mine.role}:{password}@127.0.0.1:{postgres_server.port}/{mine.database}")
    conn = await connect_clone(out)
    try:
        # Migrations of the pull request need to own the tables.
        await conn.execute("ALTER TABLE users ADD COLUMN nickname text")
        await conn.execute('ALTER TABLE "Billing"."Pay ""Methods""" ADD COLUMN x int')
        await conn.execute("CREATE TABLE added (id int)")
        assert await conn.fetchval("SELECT order_total(1)") is not None
        assert await conn.fetchval("SELECT current_user") == mine.role
    finally:
        await conn.close()
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await asyncpg.connect(postgres_server.url(mine.database).replace(
            "preview@", f"{other.role}:{SEALER.unseal(other_out.secrets['password'])}@"))
    conn = await admin(postgres_server)
    try:
        role = await conn.fetchrow("SELECT rolpassword, rolconnlimit, rolsuper, rolcreatedb "
                                   "FROM pg_authid WHERE rolname = $1", mine.role)
        assert scram_matches(role["rolpassword"], password)
        assert (role["rolconnlimit"], role["rolsuper"], role["rolcreatedb"]) == (20, False, False)
        generation = await conn.fetchrow("SELECT datallowconn FROM pg_database WHERE datname = $1",
                                         golden.generation)
        assert generation["datallowconn"] is False
    finally:
        await conn.close()


async def test_ensure_twice_changes_nothing(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    spec = clone_spec("twice")

    async def state() -> tuple[Any, ...]:
        conn = await admin(postgres_server)
        try:
            db = await conn.fetchrow(
                "SELECT oid, datconnlimit, datacl::text, shobj_description(oid, 'pg_database') "
                "FROM pg_database WHERE datname = $1", spec.database)
            role = await conn.fetchrow("SELECT oid, rolpassword, rolconnlimit FROM pg_authid "
                                       "WHERE rolname = $1", spec.role)
            rows = await conn.fetch("SELECT * FROM preview_engine.databases "
                                    "WHERE environment = 'twice'")
            count = await conn.fetchval("SELECT count(*) FROM pg_database")
            return tuple(db), tuple(role), [tuple(r) for r in rows], count
        finally:
            await conn.close()

    out = await ensure(golden.clones, spec)
    before = await state()
    again = await ensure(golden.clones, spec)
    assert await state() == before
    assert again.secrets["password"] == out.secrets["password"]
    assert SEALER.unseal(again.secrets["url"]) == SEALER.unseal(out.secrets["url"])
    assert (again.values, again.detail) == (out.values, out.detail)  # read back from the mark
    assert '"state": "ready"' in before[0][3]


async def test_remove_clone_and_remove_absent(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    spec = clone_spec("removed")
    await golden.clones.remove_database_clone(StepInput(spec=spec))  # never existed
    out = await ensure(golden.clones, spec)
    session = await connect_clone(out)  # an open session does not block the removal
    try:
        await golden.clones.remove_database_clone(StepInput(spec=spec))
        await golden.clones.remove_database_clone(StepInput(spec=spec))
    finally:
        await session.close()
    conn = await admin(postgres_server)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                   spec.database) == 0
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1",
                                   spec.role) == 0
        assert await conn.fetchval("SELECT count(*) FROM preview_engine.databases "
                                   "WHERE database = $1", spec.database) == 0
    finally:
        await conn.close()


async def test_what_is_not_ours_is_refused_and_kept(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    foreign = clone_spec("foreign")
    conn = await admin(postgres_server)
    try:
        await conn.execute(f"CREATE DATABASE {foreign.database}")
        with pytest.raises(ApplicationError) as refused:
            await ensure(golden.clones, foreign)
        assert refused.value.type == FOREIGN_RESOURCE and refused.value.non_retryable
        await golden.clones.remove_database_clone(StepInput(spec=foreign))
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                   foreign.database) == 1
        # Marked ours, but for another environment: also refused, also kept.
        theirs = clone_spec("foreign-owner")
        await ensure(golden.clones, theirs)
        stolen = clone_spec("foreign-thief", database=theirs.database)
        with pytest.raises(ApplicationError) as refused:
            await ensure(golden.clones, stolen)
        assert refused.value.type == FOREIGN_RESOURCE
        await golden.clones.remove_database_clone(StepInput(spec=stolen))
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                   theirs.database) == 1
        # A role of the same name that is not ours.
        role_taken = clone_spec("foreign-role")
        await conn.execute(f"CREATE ROLE {role_taken.role}")
        with pytest.raises(ApplicationError) as refused:
            await ensure(golden.clones, role_taken)
        assert refused.value.type == FOREIGN_RESOURCE
        await golden.clones.remove_database_clone(StepInput(spec=role_taken))
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1",
                                   role_taken.role) == 1
    finally:
        await conn.close()


async def test_half_made_clone_is_adopted_by_its_claim(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    spec = clone_spec("crashed")
    out = await ensure(golden.clones, spec)
    conn = await admin(postgres_server)
    try:
        # As if the worker died between CREATE DATABASE and COMMENT: no mark, a claim.
        await conn.execute(f"COMMENT ON DATABASE {spec.database} IS NULL")
        again = await ensure(golden.clones, spec)
        assert again.secrets["password"] == out.secrets["password"]
        comment = await conn.fetchval("SELECT shobj_description(oid, 'pg_database') "
                                      "FROM pg_database WHERE datname = $1", spec.database)
        assert '"state": "ready"' in comment
    finally:
        await conn.close()
    dst = await connect_clone(again)
    try:
        assert await dst.fetchval("SELECT count(*) FROM users") == USERS
    finally:
        await dst.close()


async def test_seed_and_empty_policies(golden: Golden) -> None:
    seeded = clone_spec("seeded", DataPolicy.seed,
                        seed_sql="CREATE TABLE plans (id int PRIMARY KEY, name text);"
                                 "INSERT INTO plans VALUES (1, 'free'), (2, 'pro');")
    out = await ensure(golden.clones, seeded)
    await ensure(golden.clones, seeded)  # the seed runs once
    conn = await connect_clone(out)
    try:
        assert await conn.fetchval("SELECT count(*) FROM plans") == 2
        assert await conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'plans'"
                                   ) == seeded.role
    finally:
        await conn.close()

    assert "clone_method" not in out.values
    assert out.detail == "an empty database, then its seed SQL"
    empty = await ensure(golden.clones, clone_spec("empty", DataPolicy.empty))
    assert empty.detail == "an empty database"
    conn = await connect_clone(empty)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                                   ) == 0
        await conn.execute("CREATE TABLE mine (id int)")  # the role owns the database
    finally:
        await conn.close()

    broken = clone_spec("seed-broken", DataPolicy.seed, seed_sql="CREATE TABLE t (id nosuchtype)")
    with pytest.raises(ApplicationError) as failed:
        await ensure(golden.clones, broken)
    assert failed.value.type == INVALID_INPUT and "nosuchtype" in failed.value.message
    await golden.clones.remove_database_clone(StepInput(spec=broken))


async def test_clone_needs_a_golden_masked_with_its_rules(golden: Golden) -> None:
    extra = [*RULES, MaskingRule(table="products", column="title", method=MaskingMethod.hash)]
    with pytest.raises(ApplicationError) as refused:
        await ensure(golden.clones, clone_spec("unmasked-rule", masking=extra))
    assert refused.value.type == INVALID_INPUT and "products.title (hash)" in refused.value.message
    with pytest.raises(ApplicationError) as missing:
        await ensure(golden.clones, clone_spec("no-golden", source="nosuchsource"))
    assert missing.value.type == INVALID_INPUT and "no golden copy" in missing.value.message


async def test_sweeper_lists_and_removes_by_environment(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    spec = clone_spec("swept")
    await ensure(golden.clones, spec)
    listed = {d.database: d for d in await golden.clones.list_preview_databases()}
    assert listed[spec.database].environment == "swept"
    assert listed[spec.database].role == spec.role
    assert listed[spec.database].state == "ready"
    assert golden.generation not in listed  # golden copies are not previews
    assert await golden.clones.remove_preview_database("swept") == [spec.database]
    assert spec.database not in {d.database for d in await golden.clones.list_preview_databases()}
    conn = await admin(postgres_server)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1",
                                   spec.role) == 0
    finally:
        await conn.close()


# --- the streaming fallback ----------------------------------------------------------


@pytest.fixture(scope="module")
def second_server() -> Iterator[PostgresServer]:
    data_dir = Path(tempfile.mkdtemp(prefix="preview-test-pg2-"))
    os.chmod(data_dir, 0o755)
    server = PostgresServer(data_dir, reflink="off").start()  # it holds streamed copies
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def remote_acts(golden: Golden, second_server: PostgresServer,
                      postgres_server: PostgresServer,
                      ) -> AsyncIterator[PreviewDatabaseActivities]:
    # Previews on the second server, golden copies on the first.
    yield PreviewDatabaseActivities(PostgresAccess(
        second_server.admin_url, SEALER, KEY, golden_admin_url=postgres_server.admin_url))


async def test_streaming_copy_between_servers(
    golden: Golden, remote_acts: PreviewDatabaseActivities, postgres_server: PostgresServer,
    second_server: PostgresServer,
) -> None:
    local = await ensure(golden.clones, clone_spec("stream-reference"))
    spec = clone_spec("streamed")
    out = await ensure(remote_acts, spec)
    again = await ensure(remote_acts, spec)
    assert again.secrets["password"] == out.secrets["password"]
    assert out.values["port"] == str(second_server.port)
    assert out.values["clone_method"] == "dump_restore"
    assert out.detail.startswith("streamed with pg_dump | pg_restore in ")
    a, b = await connect_clone(local), await connect_clone(out)
    try:
        for query in ("SELECT * FROM users ORDER BY id", "SELECT * FROM orders ORDER BY id",
                      'SELECT * FROM "Billing"."Pay ""Methods""" ORDER BY "Id"',
                      "SELECT * FROM user_directory ORDER BY id"):
            assert await a.fetch(query) == await b.fetch(query), query
        await b.execute("ALTER TABLE users ADD COLUMN nickname text")  # the role owns it
        assert await b.fetchval("SELECT current_user") == spec.role
    finally:
        await a.close()
        await b.close()
    conn = await admin(postgres_server)
    try:
        allowed = await conn.fetchval("SELECT datallowconn FROM pg_database WHERE datname = $1",
                                      golden.generation)
        assert allowed is False  # closed again after the dump
    finally:
        await conn.close()
    await remote_acts.remove_database_clone(StepInput(spec=spec))
    conn = await admin(second_server)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                   spec.database) == 0
    finally:
        await conn.close()



async def test_a_previews_role_enters_its_own_database_only(
    golden: Golden, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture,
) -> None:
    """With the preview's own URL: the control plane's database (on the same server, as
    the defaults have it), `postgres`, `template1`, another preview's database and the
    golden copy all refuse it; its own database works."""
    control = PgServer(await postgres_server.new_database("pgt_control_plane")).database
    # The control plane connects as a role of its own, neither owner nor superuser, that
    # PUBLIC's grant let in until now: it keeps connecting.
    operator = f"pgt_control_{uuid.uuid4().hex[:8]}"
    conn = await admin(postgres_server)
    try:
        await conn.execute(f"CREATE ROLE {operator} LOGIN PASSWORD 'control-plane'")
    finally:
        await conn.close()
    control_url = (f"postgresql://{operator}:control-plane@127.0.0.1:{postgres_server.port}/"
                   f"{control}")
    objects = postgres_activities(postgres_server.admin_url.replace("127.0.0.1", "localhost"),
                                  SEALER, KEY, control_plane_url=control_url)
    assert f"the control plane's database {control} is on the preview server" in caplog.text
    clones = next(o for o in objects if isinstance(o, PreviewDatabaseActivities))
    mine, other = clone_spec("only-own-a"), clone_spec("only-own-b")
    out, other_out = await ensure(clones, mine), await ensure(clones, other)
    assert other_out.values["database"] == other.database
    own_url = SEALER.unseal(out.secrets["url"])

    def elsewhere(database: str) -> str:
        return own_url.rsplit("/", 1)[0] + "/" + database

    for database in (control, "postgres", "template1", other.database):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await asyncpg.connect(elsewhere(database))
    with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError,
                       match="not currently accepting connections"):
        await asyncpg.connect(elsewhere(golden.generation))
    conn = await asyncpg.connect(own_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == ORDERS
    finally:
        await conn.close()
    # The control plane's own role still gets in (a grant of its own), as does the owner.
    for url in (control_url, postgres_server.url(control)):
        conn = await asyncpg.connect(url)
        await conn.close()


async def test_a_check_says_whether_the_database_is_still_there(
    golden: Golden, postgres_server: PostgresServer,
) -> None:
    spec = clone_spec("check-there")
    await ensure(golden.clones, spec)
    step = StepInput(spec=spec)
    assert await golden.clones.check_database_clone(step) == ""
    conn = await admin(postgres_server)
    try:
        await conn.execute(f'DROP DATABASE "{spec.database}" WITH (FORCE)')  # behind its back
    finally:
        await conn.close()
    assert await golden.clones.check_database_clone(step) == (
        f"database {spec.database} is gone")
    await ensure(golden.clones, spec)  # a deploy puts it back
    assert await golden.clones.check_database_clone(step) == ""
