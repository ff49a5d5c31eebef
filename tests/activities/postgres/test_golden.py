"""Golden copies against a real PostgreSQL 18: what masking leaves (in the data and in the
files), verification against the source, failed refreshes, pruning, tool errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError

from activities.errors import INVALID_INPUT
from activities.postgres import GoldenCopyActivities, PostgresAccess
from activities.postgres.verify import rule_columns
from domain import masking
from domain.blueprint import MaskingMethod, MaskingRule
from domain.errors import MASKING_NOT_VERIFIED, PG_TOOL_FAILED
from domain.golden import (
    GoldenDiscardInput,
    GoldenMaskInput,
    GoldenRefreshRequest,
    GoldenRestoreInput,
    GoldenVerifyInput,
)
from stack.postgres import PostgresServer
from tests.activities.postgres.shop import (
    ALL_RULES,
    KEY,
    ORDERS,
    RULES,
    SAMPLE_RULES,
    SAMPLES,
    SEALER,
    SOURCE,
    Golden,
    admin,
    clone_spec,
    connect_clone,
    current_golden,
    ensure,
    fresh_database,
    user_row,
)


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
    folder = server.pgdata / "base" / str(oid)
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


# --- masking ------------------------------------------------------------------------


async def test_masked_clone_holds_no_original_value(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    out = await ensure(golden.clones, clone_spec("scan"))
    # Scanned as made: copy-on-write where the data directory has reflinks.
    assert out.values["clone_method"] == ("clone" if postgres_server.on_reflinks else "copy")
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
    out = await ensure(golden.clones, clone_spec("counts"))
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
    out = await ensure(golden.clones, clone_spec("joins"))
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
    out = await ensure(golden.clones, clone_spec("reference"))
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
    names = await conn.fetch("SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
                             "AND attnum > 1 AND NOT attisdropped", table)
    return await rule_columns(conn, [MaskingRule(table=table, column=r[0],
                                                  method=MaskingMethod.hash) for r in names])


# --- golden refreshes ----------------------------------------------------------------


async def test_failed_refresh_leaves_previous_golden_in_service(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    before = await current_golden(postgres_server)
    assert before == golden.generation
    bad = [*ALL_RULES, MaskingRule(table="users", column="no_such_column",
                                   method=MaskingMethod.null)]
    with pytest.raises(ApplicationError) as failed:
        await golden.copies.refresh_golden_copy(GoldenRefreshRequest(
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
    out = await ensure(golden.clones, clone_spec("after-failure"))
    assert SEALER.unseal(out.secrets["url"])


async def test_verification_catches_what_masking_missed(
    golden: Golden, postgres_server: PostgresServer
) -> None:
    acts = golden.copies

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
    acts = GoldenCopyActivities(PostgresAccess(postgres_server.admin_url, SEALER, KEY))
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
    acts = GoldenCopyActivities(PostgresAccess(postgres_server.admin_url, SEALER, KEY))
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
