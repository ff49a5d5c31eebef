"""The masking SQL builder and its Python reference, without a database."""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain import masking
from domain.blueprint import MaskingMethod, MaskingRule
from domain.naming import PG_IDENTIFIER

# PostgreSQL text holds any character but NUL; UTF-8 cannot hold lone surrogates.
pg_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"))
KEY = b"test-masking-key"


def unquote_ident(quoted: str) -> str:
    assert quoted.startswith('"') and quoted.endswith('"')
    inner = quoted[1:-1]
    # Every quote inside comes doubled: nothing can close the identifier early.
    assert re.fullmatch(r'(?:[^"]|"")*', inner)
    return inner.replace('""', '"')


def unquote_literal(quoted: str) -> str:
    escaped = quoted.startswith("E'")
    inner = quoted[2:-1] if escaped else quoted[1:-1]
    assert quoted.endswith("'")
    assert re.fullmatch(r"(?:[^']|'')*", inner)
    if escaped:
        assert re.fullmatch(r"(?:[^\\]|\\\\)*", inner)
        inner = inner.replace("\\\\", "\\")
    return inner.replace("''", "'")


@given(pg_text.filter(bool))
def test_quote_ident_round_trips(name: str) -> None:
    assert unquote_ident(masking.quote_ident(name)) == name


@given(pg_text)
def test_quote_literal_round_trips(value: str) -> None:
    assert unquote_literal(masking.quote_literal(value)) == value


def test_quoting_refuses_nul_and_empty() -> None:
    with pytest.raises(masking.MaskingError):
        masking.quote_ident("")
    with pytest.raises(masking.MaskingError):
        masking.quote_ident("a\x00b")
    with pytest.raises(masking.MaskingError):
        masking.quote_literal("a\x00b")


@given(pg_text, st.integers(min_value=0, max_value=40))
def test_keep_first(text: str, keep: int) -> None:
    out = masking.keep_first(text, keep)
    assert len(out) == len(text)
    if len(text) > keep:
        assert out[:keep] == text[:keep]
        assert set(out[keep:]) <= {"*"}
    else:
        # Short values would survive whole: they are masked entirely instead.
        assert set(out) <= {"*"}
    masked = text[keep:] if len(text) > keep else text
    if set(masked) - {"*"}:  # something to hide (not already stars) was hidden
        assert out != text


@given(pg_text, st.integers(min_value=0, max_value=40))
def test_keep_last(text: str, keep: int) -> None:
    out = masking.keep_last(text, keep)
    assert len(out) == len(text)
    if len(text) > keep:
        assert out[len(text) - keep:] == text[len(text) - keep:]
        assert set(out[: len(text) - keep]) <= {"*"}
    else:
        assert set(out) <= {"*"}
    masked = text[: len(text) - keep] if len(text) > keep else text
    if set(masked) - {"*"}:
        assert out != text


@given(pg_text)
def test_fake_text_keeps_shape_and_is_keyed(text: str) -> None:
    out = masking.fake_text(KEY, text)
    assert len(out) == len(text)
    assert out == masking.fake_text(KEY, text)  # deterministic: joins still match
    for before, after in zip(text, out, strict=True):
        if before.isascii() and before.isdigit():
            assert after.isdigit()
        elif "A" <= before <= "Z":
            assert "A" <= after <= "Z"
        elif "a" <= before <= "z" or ord(before) > 127:
            assert "a" <= after <= "z"
        else:
            assert after == before


def test_fake_text_depends_on_the_key_and_value() -> None:
    email = "jane.doe@example.com"
    assert masking.fake_text(KEY, email) != masking.fake_text(b"other-key", email)
    assert masking.fake_text(KEY, email) != masking.fake_text(KEY, "jane.dog@example.com")
    assert re.fullmatch(r"[a-z]{4}\.[a-z]{3}@[a-z]{7}\.[a-z]{3}", masking.fake_text(KEY, email))


@given(st.binary(min_size=1, max_size=200), st.binary(max_size=300))
def test_sql_hmac_construction_is_hmac(key: bytes, message: bytes) -> None:
    ipad, opad = masking.hmac_pads(key)
    built = hashlib.sha256(opad + hashlib.sha256(ipad + message).digest()).digest()
    assert built == hmac.new(key, message, hashlib.sha256).digest()


def col(name: str = "email", **kw: object) -> masking.Column:
    base: dict[str, object] = {"schema": "public", "table": "users", "name": name,
                               "type_sql": "text"}
    base.update(kw)
    return masking.Column(**base)  # type: ignore[arg-type]


def rule(method: MaskingMethod, column: str = "email", table: str = "users",
         **kw: object) -> MaskingRule:
    return MaskingRule(table=table, column=column, method=method, **kw)  # type: ignore[arg-type]


@given(pg_text)
def test_integer_and_uuid_hashes_fit_their_types(value: str) -> None:
    for base_type, limit in (("int2", 2**15), ("int4", 2**31), ("int8", 2**63)):
        c = col(type_sql=base_type, base_type=base_type, category="N")
        out = masking.mask_value(rule(MaskingMethod.hash), c, value, KEY)
        assert out is not None and 0 <= int(out) < limit
    u = col(type_sql="uuid", base_type="uuid", category="U")
    out = masking.mask_value(rule(MaskingMethod.fake), u, value, KEY)
    assert out == str(uuid.UUID(out))


def test_mask_value_cuts_to_the_column_length() -> None:
    v10 = col(type_sql="character varying(10)", base_type="varchar", max_length=10)
    assert len(masking.mask_value(rule(MaskingMethod.hash), v10, "x", KEY) or "") == 10
    c8 = col(type_sql="character(8)", base_type="bpchar", max_length=8)
    assert masking.mask_value(rule(MaskingMethod.constant, value="ab   "), c8, "x", KEY) == "ab"
    assert masking.mask_value(rule(MaskingMethod.null), col(), "x", KEY) is None
    assert masking.mask_value(rule(MaskingMethod.hash), col(), None, KEY) is None


def test_statements_quote_every_identifier_and_group_by_table() -> None:
    weird = masking.Column(schema='My "Schema"', table="Pay; DROP TABLE x", name='a"b c',
                           type_sql="text")
    columns = {c.key: c for c in (col(), col("name"), weird)}
    statements = masking.masking_statements(
        [rule(MaskingMethod.hash), rule(MaskingMethod.null, "a\"b c",
                                        table='My "Schema".Pay; DROP TABLE x'),
         rule(MaskingMethod.keep_first, "name", keep=2)],
        columns,
    )
    assert [(s.schema, s.table, s.columns) for s in statements] == [
        ("public", "users", ("email", "name")),
        ('My "Schema"', "Pay; DROP TABLE x", ('a"b c',)),
    ]
    assert statements[0].uses_key and not statements[1].uses_key
    assert statements[1].sql == 'UPDATE "My ""Schema"""."Pay; DROP TABLE x" SET "a""b c" = NULL'
    assert "$1::bytea" in statements[0].sql and "$1" not in statements[1].sql


@pytest.mark.parametrize(
    ("rules", "columns", "message"),
    [
        ([rule(MaskingMethod.hash, "missing")], [col()], "public.users.missing, which does not"),
        ([rule(MaskingMethod.hash), rule(MaskingMethod.null)], [col()], "more than one"),
        ([rule(MaskingMethod.constant)], [col()], "needs `value`"),
        ([rule(MaskingMethod.keep_first, keep=2)],
         [col(type_sql="integer", base_type="int4", category="N")], "text columns only"),
        ([rule(MaskingMethod.hash)], [col(type_sql="jsonb", base_type="jsonb", category="U")],
         "cannot be hashed"),
        ([rule(MaskingMethod.null)], [col(not_null=True)], "NOT NULL"),
        ([rule(MaskingMethod.fake)], [col(generated=True)], "generated"),
        ([rule(MaskingMethod.hash, table="a.b.c")], [col()], "does not exist"),
    ],
)
def test_rules_a_column_cannot_take_are_refused(
    rules: list[MaskingRule], columns: list[masking.Column], message: str
) -> None:
    with pytest.raises(masking.MaskingError, match=re.escape(message)):
        masking.masking_statements(rules, {c.key: c for c in columns})


def test_split_table() -> None:
    assert masking.split_table("users") == ("public", "users")
    assert masking.split_table("billing.Pay Methods") == ("billing", "Pay Methods")
    with pytest.raises(masking.MaskingError):
        masking.split_table(".users")


def test_foreign_key_sql_matches_column_pairs() -> None:
    sql = masking.foreign_key_orphans_sql(("public", "orders"), ["user_email"],
                                          ("public", "users"), ["email"])
    assert 'c."user_email" IS NOT NULL' in sql and 'p."email" = c."user_email"' in sql
    with pytest.raises(masking.MaskingError):
        masking.foreign_key_orphans_sql(("public", "o"), ["a", "b"], ("public", "u"), ["a"])


@given(st.text(min_size=1, max_size=80), st.datetimes(), st.uuids())
def test_generation_names_are_valid_and_distinct(source: str, when: datetime,
                                                  run: uuid.UUID) -> None:
    name = masking.golden_generation_name(source, when, str(run))
    assert PG_IDENTIFIER.match(name) and len(name) <= 63
    assert name == masking.golden_generation_name(source, when, str(run))
    step = timedelta(seconds=1)
    later = when + step if when < datetime.max - step else when - step
    assert masking.golden_generation_name(source, later, str(run)) != name


def test_generation_name_reads_well() -> None:
    when = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
    name = masking.golden_generation_name("shop", when, "0f1e2d3c-aaaa")
    assert re.fullmatch(r"golden_shop_20250304050607_[0-9a-f]{8}", name)


def test_runs_started_in_the_same_second_get_different_generations() -> None:
    # Run ids from the Temporal server are UUIDv7: two runs started in the same second
    # share their first 12 hex digits (the clock). Seen on the dev server:
    first, second = ("01a21c94-ee84-73b7-ae95-bf83e2e314df",
                     "01a21c94-eed0-79a3-8993-8f07330edafa")
    when = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
    assert (masking.golden_generation_name("shop", when, first)
            != masking.golden_generation_name("shop", when, second))
