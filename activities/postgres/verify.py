"""Masking of golden copies, checked against the source: the columns the rules name, and
the verification that no original value of a masked column is left anywhere.

Values are compared as salted fingerprints (a fresh salt per run) in temporary tables
of the generation's database, so the source's values never land in a table; problems
are reported as counts, never as values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import asyncpg

from activities.errors import invalid_input
from activities.postgres.server import heartbeat, ident
from domain import masking
from domain.blueprint import MaskingMethod, MaskingRule
from domain.golden import GoldenVerifyInput

FINGERPRINT_BATCH = 5000

_COLUMNS = """
SELECT n.nspname::text AS schema, c.relname::text AS table, a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS type_sql,
       bt.typname::text AS base_type, bt.typcategory::text AS category,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END AS typmod,
       a.attnotnull OR (t.typtype = 'd' AND t.typnotnull) AS not_null,
       a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attnum > 0 AND NOT a.attisdropped
"""


def _column(row: asyncpg.Record) -> masking.Column:
    typmod = row["typmod"]
    bounded = row["base_type"] in ("varchar", "bpchar") and typmod >= 4
    return masking.Column(
        schema=row["schema"], table=row["table"], name=row["name"], type_sql=row["type_sql"],
        base_type=row["base_type"], category=row["category"],
        max_length=typmod - 4 if bounded else None, not_null=row["not_null"],
        generated=row["generated"], identity_always=row["identity_always"],
    )


async def rule_columns(
    conn: asyncpg.Connection, rules: Sequence[MaskingRule]
) -> list[masking.Column]:
    """The column each rule names, from the catalog of the database `conn` is on."""
    try:
        keys = [masking.rule_key(rule) for rule in rules]
    except masking.MaskingError as error:
        raise invalid_input(str(error)) from None
    rows = await conn.fetch(
        _COLUMNS + " AND c.relkind IN ('r', 'p') AND (n.nspname, c.relname) IN "
        "(SELECT * FROM unnest($1::text[], $2::text[]))",
        [k[0] for k in keys], [k[1] for k in keys],
    )
    columns = {col.key: col for col in map(_column, rows)}
    try:
        return masking.resolve(rules, columns)
    except masking.MaskingError as error:
        raise invalid_input(str(error)) from None


async def masking_problems(db: asyncpg.Connection, src: asyncpg.Connection,
                           step: GoldenVerifyInput, masking_key: bytes) -> list[str]:
    """Compare the generation (`db`) with the source (`src`): no original value of a
    masked column may remain, except where masking itself produced it; keys must still
    join. What is wrong, in counts (never values); empty when the masking holds."""
    salt = os.urandom(16)
    problems: list[str] = []
    columns = await rule_columns(db, step.masking)
    await db.execute(
        "CREATE TEMP TABLE pe_original (rule int NOT NULL, h bytea NOT NULL, "
        "scan bool NOT NULL); CREATE TEMP TABLE pe_image (rule int NOT NULL, "
        "h bytea NOT NULL)")
    for n, (rule, column) in enumerate(zip(step.masking, columns, strict=True)):
        if rule.method == MaskingMethod.null:
            if count := await db.fetchval(masking.not_null_count_sql(column)):
                problems.append(f"{column.label}: {count} rows are not NULL")
        elif rule.method == MaskingMethod.constant:
            assert rule.value is not None
            sql = masking.constant_mismatch_sql(column, rule.value)
            if count := await db.fetchval(sql):
                problems.append(f"{column.label}: {count} rows differ from the constant")
        if rule.method in (MaskingMethod.null, MaskingMethod.constant) and \
                column.family != masking.Family.text:
            continue
        await _load_fingerprints(src, db, n, rule, column, salt, step.scan_min_length,
                                 masking_key)
    await db.execute("ANALYZE pg_temp.pe_original; ANALYZE pg_temp.pe_image")
    reported: set[masking.ColumnKey] = set()
    for n, (rule, column) in enumerate(zip(step.masking, columns, strict=True)):
        if rule.method in (MaskingMethod.null, MaskingMethod.constant):
            continue
        leaked = await db.fetchval(
            f"SELECT count(*) FROM (SELECT {masking.fingerprint_sql(column.name)} AS h "
            f"FROM {masking.qualified(column.schema, column.table)} "
            f"WHERE {ident(column.name)} IS NOT NULL) AS m "
            "WHERE EXISTS (SELECT 1 FROM pg_temp.pe_original o "
            "              WHERE o.rule = $2 AND o.h = m.h) "
            "AND NOT EXISTS (SELECT 1 FROM pg_temp.pe_image i "
            "                WHERE i.rule = $2 AND i.h = m.h)", salt, n)
        if leaked:
            reported.add(column.key)
            problems.append(f"{column.label}: {leaked} rows still hold an original value")
    problems += await _scan_everywhere(db, salt, reported)
    problems += await _foreign_key_problems(db, columns)
    return problems


async def _load_fingerprints(src: asyncpg.Connection, db: asyncpg.Connection, n: int,
                             rule: MaskingRule, column: masking.Column, salt: bytes,
                             scan_min_length: int, masking_key: bytes) -> None:
    """Salted fingerprints of the source's values and of their masked images (by the
    Python reference, independent of the SQL) into temporary tables of `db`."""
    originals: list[tuple[int, bytes, bool]] = []
    images: list[tuple[int, bytes]] = []
    scan = column.family == masking.Family.text

    async def flush() -> None:
        await db.copy_records_to_table("pe_original", records=originals,
                                       schema_name="pg_temp")
        await db.copy_records_to_table("pe_image", records=images, schema_name="pg_temp")
        originals.clear()
        images.clear()
        heartbeat(f"fingerprinting {column.label}")

    async with src.transaction(readonly=True):
        async for record in src.cursor(masking.distinct_values_sql(column),
                                       prefetch=FINGERPRINT_BATCH):
            value: str = record[0]
            originals.append((n, masking.fingerprint(salt, value),
                              scan and len(value) >= scan_min_length))
            image = masking.mask_value(rule, column, value, masking_key)
            if image is not None:
                images.append((n, masking.fingerprint(salt, image)))
            if len(originals) >= FINGERPRINT_BATCH:
                await flush()
    await flush()


async def _scan_everywhere(db: asyncpg.Connection, salt: bytes,
                           reported: set[masking.ColumnKey]) -> list[str]:
    """Search every text column of every table for long-enough originals of masked
    columns (a copy of an e-mail in an unmasked column, a stale materialised view)."""
    await db.execute(
        "CREATE TEMP TABLE pe_scan AS SELECT DISTINCT h FROM pg_temp.pe_original "
        "WHERE scan EXCEPT SELECT h FROM pg_temp.pe_image; ANALYZE pg_temp.pe_scan")
    if not await db.fetchval("SELECT EXISTS (SELECT 1 FROM pg_temp.pe_scan)"):
        return []
    rows = await db.fetch(
        _COLUMNS + " AND c.relkind IN ('r', 'm') AND bt.typcategory = 'S' "
        "AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' "
        "ORDER BY n.nspname, c.relname, a.attnum")
    by_table: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        by_table.setdefault((row["schema"], row["table"]), []).append(row["name"])
    problems = []
    for (schema, table), names in by_table.items():
        heartbeat(f"scanning {schema}.{table}")
        counts = ", ".join(
            f"count(*) FILTER (WHERE {masking.fingerprint_sql(name)} "
            "IN (SELECT h FROM pg_temp.pe_scan))" for name in names)
        found = await db.fetchrow(
            f"SELECT {counts} FROM ONLY {masking.qualified(schema, table)}", salt)
        for name, count in zip(names, found, strict=True):
            if count and (schema, table, name) not in reported:
                problems.append(f"{schema}.{table}.{name}: {count} rows hold an original "
                                "value of a masked column")
    return problems


async def _foreign_key_problems(db: asyncpg.Connection,
                                columns: list[masking.Column]) -> list[str]:
    masked = {c.key for c in columns}
    rows = await db.fetch("""
        SELECT con.conname, cn.nspname AS child_schema, cc.relname AS child_table,
               pn.nspname AS parent_schema, pc.relname AS parent_table,
               ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(n, o)
                     JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n
                     ORDER BY k.o) AS child_columns,
               ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(n, o)
                     JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n
                     ORDER BY k.o) AS parent_columns
        FROM pg_constraint con
        JOIN pg_class cc ON cc.oid = con.conrelid
        JOIN pg_namespace cn ON cn.oid = cc.relnamespace
        JOIN pg_class pc ON pc.oid = con.confrelid
        JOIN pg_namespace pn ON pn.oid = pc.relnamespace
        WHERE con.contype = 'f' AND con.conparentid = 0""")
    problems = []
    for row in rows:
        child = (row["child_schema"], row["child_table"])
        parent = (row["parent_schema"], row["parent_table"])
        touched = any((*child, c) in masked for c in row["child_columns"]) or any(
            (*parent, c) in masked for c in row["parent_columns"])
        if not touched:
            continue
        orphans = await db.fetchval(masking.foreign_key_orphans_sql(
            child, row["child_columns"], parent, row["parent_columns"]))
        if orphans:
            problems.append(
                f"foreign key {row['conname']} of {child[0]}.{child[1]}: {orphans} rows no "
                f"longer find their {parent[0]}.{parent[1]} row (mask both sides of a key "
                "with the same method)")
    return problems
