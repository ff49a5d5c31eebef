"""The shop: a source database with awkward names and values, masking rules for it, and
helpers the preview-database and golden-copy tests share."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from activities.postgres import GoldenCopyActivities, PreviewDatabaseActivities
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
    """The shop's source and current golden generation, and activities on that server."""

    clones: PreviewDatabaseActivities
    copies: GoldenCopyActivities
    source_url: str
    generation: str


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


async def ensure(acts: PreviewDatabaseActivities, spec: PostgresCloneSpec) -> StepOutput:
    return await acts.ensure_database_clone(StepInput(spec=spec))


async def connect_clone(out: StepOutput) -> asyncpg.Connection:
    return await asyncpg.connect(SEALER.unseal(out.secrets["url"]))


async def current_golden(server: PostgresServer, source: str = SOURCE) -> str | None:
    conn = await admin(server)
    try:
        value: str | None = await conn.fetchval(
            "SELECT current_generation FROM preview_engine.golden WHERE source_name = $1", source)
        return value
    finally:
        await conn.close()
