"""Golden copies and preview clones against a real PostgreSQL 15 (and a second one for the
cross-server fallback)."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import FOREIGN_RESOURCE, INVALID_INPUT
from activities.postgres import (
    MASKING_NOT_VERIFIED,
    PG_TOOL_FAILED,
    GoldenDiscardInput,
    GoldenMaskInput,
    GoldenRefreshRequest,
    GoldenRestoreInput,
    GoldenVerifyInput,
    PostgresActivities,
    scram_matches,
)
from domain import masking
from domain.blueprint import DataPolicy, MaskingMethod, MaskingRule
from domain.naming import Ownership, pg_identifier
from domain.resources import PostgresCloneSpec, StepInput, StepOutput
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack.postgres import PostgresServer

KEY = b"test-masking-key-0123456789"
SEALER = Sealer(Keyring.parse("test:" + base64.b64encode(b"k" * 32).decode()))
SOURCE = "shop"
WEIRD_TABLE = 'Billing.Pay "Methods"'  # schema Billing, table Pay "Methods"
WEIRD_COLUMN = "Owner Email; --"

RULES = [
    MaskingRule(table="users", column="email", method=MaskingMethod.hash),
    MaskingRule(table="orders", column="user_email", method=MaskingMethod.hash),
    MaskingRule(table=WEIRD_TABLE, column=WEIRD_COLUMN, method=MaskingMethod.hash),
    MaskingRule(table="users", column="name", method=MaskingMethod.fake),
    MaskingRule(table="orders", column="shipping_name", method=MaskingMethod.fake),
    MaskingRule(table="users", column="phone", method=MaskingMethod.keep_first, keep=3),
    MaskingRule(table="users", column="card", method=MaskingMethod.keep_last, keep=4),
    MaskingRule(table="users", column="notes", method=MaskingMethod.null),
    MaskingRule(table="users", column="secret_answer", method=MaskingMethod.constant,
                value="redacted"),
    MaskingRule(table=WEIRD_TABLE, column="IBAN", method=MaskingMethod.keep_first, keep=4),
]
SAMPLE_RULES = [
    MaskingRule(table="samples", column="t_hash", method=MaskingMethod.hash),
    MaskingRule(table="samples", column="t_fake", method=MaskingMethod.fake),
    MaskingRule(table="samples", column="t_first", method=MaskingMethod.keep_first, keep=2),
    MaskingRule(table="samples", column="t_last", method=MaskingMethod.keep_last, keep=2),
    MaskingRule(table="samples", column="v10", method=MaskingMethod.hash),
    MaskingRule(table="samples", column="c8", method=MaskingMethod.fake),
    MaskingRule(table="samples", column="i2", method=MaskingMethod.hash),
    MaskingRule(table="samples", column="i4", method=MaskingMethod.hash),
    MaskingRule(table="samples", column="i8", method=MaskingMethod.fake),
    MaskingRule(table="samples", column="u", method=MaskingMethod.hash),
]
ALL_RULES = RULES + SAMPLE_RULES
# Strings that have broken masking code before: quotes, backslashes, multi-byte
# characters, more than one 32-byte block of key stream, blanks, the empty string.
SAMPLES = [
    "", " ", "a", "Z", "0", "abc", "O'Reilly", 'say "hi"', "back\\slash", "tab\tand\nnewline",
    "ÄÖÜ äöü ß", "日本語のテキスト", "emoji 😀 mix", "x" * 33, "y" * 64 + "Z9",
    "mixed-CASE_123@ex.com", "     leading", "trailing   ", "Zoë Ångström-Łukasz",
]
FIRST = ["Anneliese", "Bartholomew", "Cordelia", "Dmitri", "Evangeline", "Fitzgerald", "Zoë"]
LAST = ["O'Sullivan", "Abernathy", "Kowalczyk", "Søndergaard", "Villanueva", "Whitford"]
USERS, ORDERS = 240, 900


def user_row(i: int) -> tuple[Any, ...]:
    first, last = FIRST[i % len(FIRST)], LAST[(i // len(FIRST)) % len(LAST)]
    return (
        i,
        f"{first.lower()}.{last.lower().replace(chr(39), '')}{i}@mail{i % 5}.example.org",
        f"{first} {last} the {i}th",
        f"+1-555-01{i:05d}",
        f"4111-1111-{i:04d}-{(i * 7919) % 10000:04d}",
        f"Called on Tuesday about parcel {i}",
        f"my first pet was called Rex{i}",
        ["DE", "FR", "US"][i % 3],
    )


SCHEMA_SQL = """
CREATE TABLE users (
    id int PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name varchar(60),
    phone char(14),
    card text,
    notes text,
    secret_answer text,
    country text NOT NULL
);
CREATE INDEX users_name ON users (name);
CREATE TABLE orders (
    id int PRIMARY KEY,
    user_id int NOT NULL REFERENCES users (id),
    user_email text NOT NULL REFERENCES users (email),
    shipping_name text,
    total_cents int NOT NULL
);
CREATE TABLE products (id int PRIMARY KEY, title text NOT NULL, description text);
CREATE SCHEMA "Billing";
CREATE TABLE "Billing"."Pay ""Methods""\" (
    "Id" int PRIMARY KEY,
    "Owner Email; --" text REFERENCES users (email),
    "IBAN" varchar(34)
);
CREATE MATERIALIZED VIEW user_directory AS SELECT id, email, name FROM users;
CREATE TABLE samples (
    id int PRIMARY KEY, t_hash text, t_fake text, t_first text, t_last text,
    v10 varchar(10), c8 char(8), i2 smallint, i4 int, i8 bigint, u uuid
);
CREATE FUNCTION order_total(int) RETURNS bigint LANGUAGE sql AS
    'SELECT sum(total_cents) FROM orders WHERE user_id = $1';
CREATE VIEW big_spenders AS SELECT id FROM users WHERE order_total(id) > 1000;
"""


async def build_source(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA_SQL)
        users = [user_row(i) for i in range(1, USERS + 1)]
        await conn.copy_records_to_table("users", records=users)
        orders = []
        for n in range(1, ORDERS + 1):
            user = users[(n * 37) % USERS]
            orders.append((n, user[0], user[1], user[2], n * 13 % 5000))
        await conn.copy_records_to_table("orders", records=orders)
        await conn.copy_records_to_table("products", records=[
            (n, f"Product number {n}", f"A fine product, model {n}") for n in range(1, 51)])
        await conn.copy_records_to_table(
            "Pay \"Methods\"", schema_name="Billing",
            records=[(n, users[n][1], f"DE89370400440532{n:06d}") for n in range(1, 61)])
        samples = [
            (n, s, s, s, s, s[:10], s[:8].rstrip(" ") or None, (n * 1009) % 30000 - 100,
             n * 100_003 - 7, n * 10_000_000_019, uuid.uuid5(uuid.NAMESPACE_URL, s))
            for n, s in enumerate(SAMPLES, 1)
        ]
        await conn.copy_records_to_table("samples", records=samples)
        await conn.execute("REFRESH MATERIALIZED VIEW user_directory; ANALYZE")
    finally:
        await conn.close()


async def admin(server: PostgresServer, database: str = "postgres") -> asyncpg.Connection:
    return await asyncpg.connect(server.url(database))


async def fresh_database(server: PostgresServer, name: str) -> str:
    conn = await admin(server)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    return server.url(name)


@dataclass
class Golden:
    acts: PostgresActivities
    source_url: str
    generation: str


@pytest.fixture(scope="module")
async def golden(postgres_server: PostgresServer) -> Golden:
    source_url = await fresh_database(postgres_server, "pgt_source_shop")
    await build_source(source_url)
    acts = PostgresActivities(postgres_server.admin_url, SEALER, KEY)
    generation = await acts.refresh_golden_copy(
        GoldenRefreshRequest(source_url=source_url, source_name=SOURCE, masking=ALL_RULES))
    return Golden(acts, source_url, generation)


def clone_spec(env: str, policy: DataPolicy = DataPolicy.masked_clone, **extra: Any,
               ) -> PostgresCloneSpec:
    fields: dict[str, Any] = {
        "owner": Ownership(environment=env),
        "database": pg_identifier("pgt", env, "main"),
        "role": pg_identifier("pgt", env, "app"),
        "data_policy": policy,
    }
    if policy in (DataPolicy.clone, DataPolicy.masked_clone):
        fields.update(source=SOURCE, masking=RULES)
    fields.update(extra)
    return PostgresCloneSpec(**fields)


async def ensure(acts: PostgresActivities, spec: PostgresCloneSpec) -> StepOutput:
    return await acts.ensure_database_clone(StepInput(spec=spec))


async def connect_clone(out: StepOutput) -> asyncpg.Connection:
    return await asyncpg.connect(SEALER.unseal(out.secrets["url"]))


async def text_values(conn: asyncpg.Connection, skip: frozenset[str] = frozenset(),
                      ) -> dict[str, set[str]]:
    """Every value of every text column of every table and materialised view."""
    columns = await conn.fetch("""
        SELECT n.nspname, c.relname, a.attname FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        WHERE c.relkind IN ('r', 'm') AND a.attnum > 0 AND NOT a.attisdropped
          AND t.typcategory = 'S' AND n.nspname NOT LIKE 'pg\\_%'
          AND n.nspname <> 'information_schema'""")
    found: dict[str, set[str]] = {}
    for schema, table, column in columns:
        if table in skip:
            continue
        q = masking.quote_ident
        rows = await conn.fetch(f"SELECT {q(column)}::text FROM {q(schema)}.{q(table)} "
                                f"WHERE {q(column)} IS NOT NULL")
        found[f"{schema}.{table}.{column}"] = {r[0] for r in rows}
    return found


async def masked_originals(source_url: str) -> set[str]:
    """The source's values of every masked column of the realistic tables."""
    conn = await asyncpg.connect(source_url)
    try:
        values: set[str] = set()
        for rule in RULES:
            schema, table = masking.split_table(rule.table)
            q = masking.quote_ident
            rows = await conn.fetch(f"SELECT {q(rule.column)}::text FROM {q(schema)}.{q(table)} "
                                    f"WHERE {q(rule.column)} IS NOT NULL")
            values |= {r[0] for r in rows}
        return values
    finally:
        await conn.close()


def database_files(server: PostgresServer, oid: int) -> bytes:
    folder = server.data_dir / "pgdata" / "base" / str(oid)
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


async def current_golden(server: PostgresServer, source: str = SOURCE) -> str | None:
    conn = await admin(server)
    try:
        value: str | None = await conn.fetchval(
            "SELECT current_generation FROM preview_engine.golden WHERE source_name = $1", source)
        return value
    finally:
        await conn.close()


# --- masking ------------------------------------------------------------------------


async def test_masked_clone_holds_no_original_value(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    out = await ensure(golden.acts, clone_spec("scan"))
    originals = await masked_originals(golden.source_url)
    conn = await connect_clone(out)
    try:
        found = await text_values(conn, skip=frozenset({"samples"}))
    finally:
        await conn.close()
    leaks = {where: values & originals for where, values in found.items() if values & originals}
    assert not leaks
    assert len(found) >= 12  # the scan did look at the text columns

    # Not in the files either: UPDATE leaves old row versions behind, FILE_COPY copies
    # files. The source's files hold them (the search works), the copies do not.
    conn = await admin(postgres_server)
    try:
        await conn.execute("CHECKPOINT")
        oids = {r["datname"]: r["oid"] for r in await conn.fetch(
            "SELECT datname, oid FROM pg_database WHERE datname = ANY($1::text[])",
            ["pgt_source_shop", golden.generation, out.values["database"]])}
    finally:
        await conn.close()
    probes = [v.encode() for v in sorted(originals) if len(v) >= 8]
    source_bytes = database_files(postgres_server, oids["pgt_source_shop"])
    assert all(p in source_bytes for p in probes[:50])
    for name in (golden.generation, out.values["database"]):
        files = database_files(postgres_server, oids[name])
        assert [p for p in probes if p in files] == [], f"original values in the files of {name}"


async def test_unmasked_columns_and_row_counts_match(golden: Golden) -> None:
    out = await ensure(golden.acts, clone_spec("counts"))
    src, dst = await asyncpg.connect(golden.source_url), await connect_clone(out)
    try:
        for table in ("users", "orders", "products", '"Billing"."Pay ""Methods"""', "samples",
                      "user_directory"):
            assert await src.fetchval(f"SELECT count(*) FROM {table}") == \
                await dst.fetchval(f"SELECT count(*) FROM {table}"), table
        for query in ("SELECT id, country FROM users ORDER BY id",
                      "SELECT id, user_id, total_cents FROM orders ORDER BY id",
                      "SELECT * FROM products ORDER BY id",
                      "SELECT id FROM big_spenders ORDER BY id"):
            assert await src.fetch(query) == await dst.fetch(query), query
        # Masked columns: NULL, the constant, kept characters.
        assert await dst.fetchval("SELECT count(*) FROM users WHERE notes IS NOT NULL") == 0
        assert {r[0] for r in await dst.fetch("SELECT secret_answer FROM users")} == {"redacted"}
        phones = await dst.fetch("SELECT id, phone FROM users ORDER BY id")
        assert all(p["phone"] == "+1-" + "*" * 11 for p in phones)
        cards = await dst.fetch("SELECT id, card FROM users ORDER BY id")
        assert all(c["card"] == "*" * 15 + user_row(c["id"])[4][-4:] for c in cards)
    finally:
        await src.close()
        await dst.close()


async def test_keys_still_join_after_keyed_hash(golden: Golden) -> None:
    out = await ensure(golden.acts, clone_spec("joins"))
    dst = await connect_clone(out)
    try:
        joined = await dst.fetchval(
            "SELECT count(*) FROM orders o JOIN users u ON u.email = o.user_email "
            "AND u.id = o.user_id")
        assert joined == ORDERS
        billing = await dst.fetchval(
            'SELECT count(*) FROM "Billing"."Pay ""Methods""" p '
            'JOIN users u ON u.email = p."Owner Email; --"')
        assert billing == 60
        # The same person's fake name is the same everywhere (shipping = account name).
        assert await dst.fetchval(
            "SELECT count(*) FROM orders o JOIN users u ON u.id = o.user_id "
            "WHERE o.shipping_name IS DISTINCT FROM u.name") == 0
        email = await dst.fetchval("SELECT email FROM users WHERE id = 1")
        assert email == masking.keyed_hash(KEY, user_row(1)[1]).hex()
    finally:
        await dst.close()


async def test_sql_masking_matches_the_python_reference(golden: Golden) -> None:
    out = await ensure(golden.acts, clone_spec("reference"))
    src, dst = await asyncpg.connect(golden.source_url), await connect_clone(out)
    try:
        columns = {c.name: c for c in await _columns(dst, "samples")}
        before = {r["id"]: r for r in await src.fetch(
            "SELECT id, t_hash, t_fake, t_first, t_last, v10, c8::text AS c8, i2::text, "
            "i4::text, i8::text, u::text FROM samples")}
        after = {r["id"]: r for r in await dst.fetch(
            "SELECT id, t_hash, t_fake, t_first, t_last, v10, c8::text AS c8, i2::text, "
            "i4::text, i8::text, u::text FROM samples")}
        checked = 0
        for rule in SAMPLE_RULES:
            for n, row in before.items():
                want = masking.mask_value(rule, columns[rule.column], row[rule.column], KEY)
                assert after[n][rule.column] == want, (rule.column, row[rule.column])
                checked += 1
        assert checked == len(SAMPLES) * len(SAMPLE_RULES)
    finally:
        await src.close()
        await dst.close()


async def _columns(conn: asyncpg.Connection, table: str) -> list[masking.Column]:
    from activities.postgres import _rule_columns

    names = await conn.fetch("SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
                             "AND attnum > 1 AND NOT attisdropped", table)
    return await _rule_columns(conn, [MaskingRule(table=table, column=r[0],
                                                  method=MaskingMethod.hash) for r in names])


# --- clones -------------------------------------------------------------------------


async def test_two_previews_cloned_at_once(golden: Golden) -> None:
    first, second = clone_spec("together-1"), clone_spec("together-2")
    outs = await asyncio.gather(ensure(golden.acts, first), ensure(golden.acts, second))
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
    out, other_out = await ensure(golden.acts, mine), await ensure(golden.acts, other)
    password = SEALER.unseal(out.secrets["password"])
    assert out.values == {"host": "127.0.0.1", "port": str(postgres_server.port),
                          "database": mine.database, "user": mine.role}
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

    out = await ensure(golden.acts, spec)
    before = await state()
    again = await ensure(golden.acts, spec)
    assert await state() == before
    assert again.secrets["password"] == out.secrets["password"]
    assert SEALER.unseal(again.secrets["url"]) == SEALER.unseal(out.secrets["url"])
    assert '"state": "ready"' in before[0][3]


async def test_remove_clone_and_remove_absent(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    spec = clone_spec("removed")
    await golden.acts.remove_database_clone(StepInput(spec=spec))  # never existed
    out = await ensure(golden.acts, spec)
    session = await connect_clone(out)  # an open session does not block the removal
    try:
        await golden.acts.remove_database_clone(StepInput(spec=spec))
        await golden.acts.remove_database_clone(StepInput(spec=spec))
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
            await ensure(golden.acts, foreign)
        assert refused.value.type == FOREIGN_RESOURCE and refused.value.non_retryable
        await golden.acts.remove_database_clone(StepInput(spec=foreign))
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                   foreign.database) == 1
        # Marked ours, but for another environment: also refused, also kept.
        theirs = clone_spec("foreign-owner")
        await ensure(golden.acts, theirs)
        stolen = clone_spec("foreign-thief", database=theirs.database)
        with pytest.raises(ApplicationError) as refused:
            await ensure(golden.acts, stolen)
        assert refused.value.type == FOREIGN_RESOURCE
        await golden.acts.remove_database_clone(StepInput(spec=stolen))
        assert await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                   theirs.database) == 1
        # A role of the same name that is not ours.
        role_taken = clone_spec("foreign-role")
        await conn.execute(f"CREATE ROLE {role_taken.role}")
        with pytest.raises(ApplicationError) as refused:
            await ensure(golden.acts, role_taken)
        assert refused.value.type == FOREIGN_RESOURCE
        await golden.acts.remove_database_clone(StepInput(spec=role_taken))
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1",
                                   role_taken.role) == 1
    finally:
        await conn.close()


async def test_half_made_clone_is_adopted_by_its_claim(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    spec = clone_spec("crashed")
    out = await ensure(golden.acts, spec)
    conn = await admin(postgres_server)
    try:
        # As if the worker died between CREATE DATABASE and COMMENT: no mark, a claim.
        await conn.execute(f"COMMENT ON DATABASE {spec.database} IS NULL")
        again = await ensure(golden.acts, spec)
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
    out = await ensure(golden.acts, seeded)
    await ensure(golden.acts, seeded)  # the seed runs once
    conn = await connect_clone(out)
    try:
        assert await conn.fetchval("SELECT count(*) FROM plans") == 2
        assert await conn.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = 'plans'"
                                   ) == seeded.role
    finally:
        await conn.close()

    empty = await ensure(golden.acts, clone_spec("empty", DataPolicy.empty))
    conn = await connect_clone(empty)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                                   ) == 0
        await conn.execute("CREATE TABLE mine (id int)")  # the role owns the database
    finally:
        await conn.close()

    broken = clone_spec("seed-broken", DataPolicy.seed, seed_sql="CREATE TABLE t (id nosuchtype)")
    with pytest.raises(ApplicationError) as failed:
        await ensure(golden.acts, broken)
    assert failed.value.type == INVALID_INPUT and "nosuchtype" in failed.value.message
    await golden.acts.remove_database_clone(StepInput(spec=broken))


async def test_clone_needs_a_golden_masked_with_its_rules(golden: Golden) -> None:
    extra = [*RULES, MaskingRule(table="products", column="title", method=MaskingMethod.hash)]
    with pytest.raises(ApplicationError) as refused:
        await ensure(golden.acts, clone_spec("unmasked-rule", masking=extra))
    assert refused.value.type == INVALID_INPUT and "products.title (hash)" in refused.value.message
    with pytest.raises(ApplicationError) as missing:
        await ensure(golden.acts, clone_spec("no-golden", source="nosuchsource"))
    assert missing.value.type == INVALID_INPUT and "no golden copy" in missing.value.message


async def test_sweeper_lists_and_removes_by_environment(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    spec = clone_spec("swept")
    await ensure(golden.acts, spec)
    listed = {d.database: d for d in await golden.acts.list_preview_databases()}
    assert listed[spec.database].environment == "swept"
    assert listed[spec.database].role == spec.role
    assert listed[spec.database].state == "ready"
    assert golden.generation not in listed  # golden copies are not previews
    assert await golden.acts.remove_preview_database("swept") == [spec.database]
    assert spec.database not in {d.database for d in await golden.acts.list_preview_databases()}
    conn = await admin(postgres_server)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1",
                                   spec.role) == 0
    finally:
        await conn.close()


# --- golden refreshes ----------------------------------------------------------------


async def test_failed_refresh_leaves_previous_golden_in_service(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    before = await current_golden(postgres_server)
    assert before == golden.generation
    bad = [*ALL_RULES, MaskingRule(table="users", column="no_such_column",
                                   method=MaskingMethod.null)]
    with pytest.raises(ApplicationError) as failed:
        await golden.acts.refresh_golden_copy(GoldenRefreshRequest(
            source_url=golden.source_url, source_name=SOURCE, masking=bad))
    assert failed.value.type == INVALID_INPUT
    assert "public.users.no_such_column" in failed.value.message
    assert await current_golden(postgres_server) == before
    conn = await admin(postgres_server)
    try:
        names = {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
        failed_generations = {n for n in names if n.startswith("golden_shop_") and n != before}
        assert not failed_generations  # the failed attempt was discarded
    finally:
        await conn.close()
    out = await ensure(golden.acts, clone_spec("after-failure"))
    assert SEALER.unseal(out.secrets["url"])


async def test_verification_catches_what_masking_missed(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    acts = golden.acts

    async def restored(tag: str, rules: list[MaskingRule]) -> dict[str, Any]:
        step = {"source_name": SOURCE, "generation": f"golden_shop_verify_{tag}"}
        await acts.restore_golden_generation(GoldenRestoreInput(**step,
                                                                source_url=golden.source_url))
        await acts.mask_golden_generation(GoldenMaskInput(**step, masking=rules))
        return step

    # Only one side of a foreign key hashed: the keys no longer join.
    one_sided = [r for r in RULES if r.column != "user_email"]
    step = await restored("fk", one_sided)
    with pytest.raises(ApplicationError) as failed:
        await acts.verify_golden_generation(GoldenVerifyInput(
            **step, source_url=golden.source_url, masking=one_sided))
    assert failed.value.type == MASKING_NOT_VERIFIED and failed.value.non_retryable
    assert "foreign key orders_user_email_fkey" in failed.value.message
    # The unmasked copy of each e-mail in orders is found by the all-columns scan too.
    assert "public.orders.user_email: 900 rows hold an original value" in failed.value.message
    await acts.discard_golden_generation(GoldenDiscardInput(**step))

    # Masked, then an original value put back (as a buggy rule or trigger would).
    step = await restored("leak", RULES)
    conn = await admin(postgres_server)
    try:
        await conn.execute(f"ALTER DATABASE {step['generation']} ALLOW_CONNECTIONS true")
    finally:
        await conn.close()
    gen = await admin(postgres_server, step["generation"])
    try:
        await gen.execute("UPDATE users SET name = $1 WHERE id = 7", user_row(7)[2])
    finally:
        await gen.close()
    with pytest.raises(ApplicationError) as failed:
        await acts.verify_golden_generation(GoldenVerifyInput(
            **step, source_url=golden.source_url, masking=RULES))
    assert "public.users.name: 1 rows still hold an original value" in failed.value.message
    assert user_row(7)[2] not in failed.value.message  # counts, never values
    await acts.discard_golden_generation(GoldenDiscardInput(**step))
    assert await current_golden(postgres_server) == golden.generation


async def test_generations_are_pruned_to_keep(postgres_server: PostgresServer) -> None:
    source_url = await fresh_database(postgres_server, "pgt_source_small")
    conn = await asyncpg.connect(source_url)
    try:
        await conn.execute("CREATE TABLE t (id int PRIMARY KEY, email text); "
                           "INSERT INTO t VALUES (1, 'someone@example.org')")
    finally:
        await conn.close()
    acts = PostgresActivities(postgres_server.admin_url, SEALER, KEY)
    rules = [MaskingRule(table="t", column="email", method=MaskingMethod.fake)]
    start = datetime(2030, 1, 1, tzinfo=UTC)
    made = [await acts.refresh_golden_copy(
        GoldenRefreshRequest(source_url=source_url, source_name="small", masking=rules,
                             keep_generations=2), when=start + timedelta(hours=n))
        for n in range(3)]
    assert await current_golden(postgres_server, "small") == made[-1]
    conn = await admin(postgres_server)
    try:
        names = {r[0] for r in await conn.fetch("SELECT datname FROM pg_database")}
    finally:
        await conn.close()
    assert made[0] not in names and {made[1], made[2]} <= names


async def test_tool_errors_carry_stderr_but_no_password(postgres_server: PostgresServer) -> None:
    acts = PostgresActivities(postgres_server.admin_url, SEALER, KEY)
    secret = "s3cret-Pa55word"
    url = f"postgresql://preview:{secret}@127.0.0.1:{postgres_server.port}/pgt_no_such_db"
    with pytest.raises(ApplicationError) as failed:
        await acts.restore_golden_generation(GoldenRestoreInput(
            source_name="missing", generation="golden_missing_1", source_url=url))
    assert failed.value.type == PG_TOOL_FAILED
    assert 'database "pgt_no_such_db" does not exist' in failed.value.message
    assert secret not in failed.value.message and secret not in str(failed.value)
    await acts.discard_golden_generation(GoldenDiscardInput(source_name="missing",
                                                            generation="golden_missing_1"))


# --- the streaming fallback ----------------------------------------------------------


@pytest.fixture(scope="module")
def second_server() -> Iterator[PostgresServer]:
    data_dir = Path(tempfile.mkdtemp(prefix="preview-test-pg2-"))
    os.chmod(data_dir, 0o755)
    server = PostgresServer(data_dir).start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
async def remote_acts(golden: Golden, second_server: PostgresServer,
                      postgres_server: PostgresServer) -> AsyncIterator[PostgresActivities]:
    # Previews on the second server, golden copies on the first.
    yield PostgresActivities(second_server.admin_url, SEALER, KEY,
                             golden_admin_url=postgres_server.admin_url)


async def test_streaming_copy_between_servers(
    golden: Golden, remote_acts: PostgresActivities, postgres_server: PostgresServer,
    second_server: PostgresServer,
) -> None:
    local = await ensure(golden.acts, clone_spec("stream-reference"))
    spec = clone_spec("streamed")
    out = await ensure(remote_acts, spec)
    again = await ensure(remote_acts, spec)
    assert again.secrets["password"] == out.secrets["password"]
    assert out.values["port"] == str(second_server.port)
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
