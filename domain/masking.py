"""Masking of personal data in golden copies: the SQL, and a reference of it in Python.

Pure: no I/O, no clocks, no randomness. The activity introspects the columns a rule
names (`Column`) and runs the statements built here; the verification step computes
the expected masked value of every original with `mask_value`, an implementation
independent of the SQL, so a bug in one is caught by the other.

Semantics of each method (NULL stays NULL for every method but `null`, so "not set"
keeps its meaning):

- `hash`: HMAC-SHA256 of the value's text under the masking key. Equal inputs give
  equal outputs in every table and every database masked with the same key, so
  foreign keys and cross-database joins still match. Text columns get the hex digest
  (cut to the column's length), integer columns the digest's first bytes as a
  non-negative number of the column's width, uuid columns its first 16 bytes.
- `fake`: for text, a value of the same shape derived from the keyed hash: each digit
  becomes a digit, each ASCII letter a letter of the same case, each other letter a
  lower-case letter; spaces and punctuation stay, so e-mails still look like e-mails
  and lengths fit. Deterministic too (joins hold). For integer and uuid columns it is
  the keyed hash.
- `null`: NULL.
- `keep_first` / `keep_last`: keep N characters, replace the others by `*`, same
  length. A value of N characters or fewer is replaced entirely, so no value survives.
- `constant`: the rule's value, cast to the column's type.

The keyed hash in SQL is HMAC written with core `sha256()` (no pgcrypto needed):
`sha256(k_opad || sha256(k_ipad || utf8(value)))`, k_ipad and k_opad being the key,
padded to 64 bytes, XOR 0x36 and 0x5c. They travel as bind parameters ($1, $2),
never inside the SQL text, so they do not reach the server's statement log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from domain.blueprint import MaskingMethod, MaskingRule
from domain.naming import pg_identifier

BLOCK = 64  # SHA-256 block size: HMAC pads its key to this
KEY_PARAMS = "$1::bytea", "$2::bytea"  # k_ipad, k_opad
MASK_CHAR = "*"


class MaskingError(ValueError):
    """A rule that cannot be applied; the message names the rule, never a value."""


class Family(StrEnum):
    text = "text"
    integer = "integer"
    uuid = "uuid"
    other = "other"


ColumnKey = tuple[str, str, str]  # schema, table, column


@dataclass(frozen=True)
class Column:
    """What the catalog says about one column (domains resolved to their base type)."""

    schema: str
    table: str
    name: str
    type_sql: str  # format_type() output: safe to put in a cast
    base_type: str = "text"  # pg_type.typname of the base type
    category: str = "S"  # pg_type.typcategory of the base type
    max_length: int | None = None  # n of varchar(n) / char(n)
    not_null: bool = False
    generated: bool = False
    identity_always: bool = False

    @property
    def key(self) -> ColumnKey:
        return (self.schema, self.table, self.name)

    @property
    def family(self) -> Family:
        if self.category == "S":
            return Family.text
        if self.base_type in ("int2", "int4", "int8"):
            return Family.integer
        if self.base_type == "uuid":
            return Family.uuid
        return Family.other

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}.{self.name}"


# --- identifiers and literals ---------------------------------------------------------


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, always quoted: case, spaces and quotes survive."""
    if not name or "\x00" in name:
        raise MaskingError("an identifier must be non-empty and free of NUL characters")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A string literal that reads the same whatever standard_conforming_strings says."""
    if "\x00" in value:
        raise MaskingError("PostgreSQL text cannot hold NUL characters")
    body = value.replace("'", "''")
    if "\\" in body:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


def split_table(table: str) -> tuple[str, str]:
    """`schema.table` or `table` (schema public). A dot always separates the schema."""
    schema, dot, name = table.partition(".")
    if not dot:
        return "public", table
    if not schema or not name:
        raise MaskingError(f"table {table!r} is not of the form table or schema.table")
    return schema, name


def rule_key(rule: MaskingRule) -> ColumnKey:
    schema, table = split_table(rule.table)
    return (schema, table, rule.column)


# --- the keyed hash -------------------------------------------------------------------


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """(k_ipad, k_opad) of HMAC-SHA256, the SQL statements' two parameters."""
    if not key:
        raise MaskingError("the masking key is empty")
    if len(key) > BLOCK:
        key = hashlib.sha256(key).digest()
    padded = key.ljust(BLOCK, b"\x00")
    return bytes(b ^ 0x36 for b in padded), bytes(b ^ 0x5C for b in padded)


def keyed_hash(key: bytes, text: str) -> bytes:
    """HMAC-SHA256(key, UTF-8 of text): what the SQL computes from the pads."""
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _sql_hmac(text_expr: str) -> str:
    ipad, opad = KEY_PARAMS
    return f"sha256({opad} || sha256({ipad} || convert_to({text_expr}, 'UTF8')))"


# --- the reference implementation -----------------------------------------------------


def keep_first(text: str, keep: int) -> str:
    if len(text) > keep:
        return text[:keep] + MASK_CHAR * (len(text) - keep)
    return MASK_CHAR * len(text)


def keep_last(text: str, keep: int) -> str:
    if len(text) > keep:
        return MASK_CHAR * (len(text) - keep) + text[len(text) - keep:]
    return MASK_CHAR * len(text)


def fake_text(key: bytes, text: str) -> str:
    if not text:
        return ""
    digest = keyed_hash(key, text)
    blocks = (len(text) - 1) // 32 + 1
    stream = b"".join(
        hashlib.sha256(digest + n.to_bytes(4, "big", signed=True)).digest() for n in range(blocks)
    )
    out = []
    for i, char in enumerate(text):
        code, byte = ord(char), stream[i]
        if 48 <= code <= 57:
            out.append(chr(48 + byte % 10))
        elif 65 <= code <= 90:
            out.append(chr(65 + byte % 26))
        elif 97 <= code <= 122 or code > 127:
            out.append(chr(97 + byte % 26))
        else:
            out.append(char)
    return "".join(out)


def _hash_integer(digest: bytes, base_type: str) -> int:
    if base_type == "int2":
        return (digest[0] % 128) * 256 + digest[1]
    if base_type == "int4":
        return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF


def _fit(column: Column, text: str) -> str:
    """What casting to the column's type and back to text does to a string."""
    if column.max_length is not None:
        text = text[: column.max_length]
    if column.base_type == "bpchar":
        text = text.rstrip(" ")
    return text


def mask_value(rule: MaskingRule, column: Column, value: str | None, key: bytes) -> str | None:
    """The masked text of one value (its ::text form), as the SQL produces it."""
    check_rule(rule, column)
    if rule.method == MaskingMethod.null or value is None:
        return None
    family = column.family
    if rule.method == MaskingMethod.constant:
        assert rule.value is not None  # check_rule
        return _fit(column, rule.value) if family == Family.text else rule.value
    if family == Family.integer:
        return str(_hash_integer(keyed_hash(key, value), column.base_type))
    if family == Family.uuid:
        return str(uuid.UUID(bytes=keyed_hash(key, value)[:16]))
    if rule.method == MaskingMethod.hash:
        return _fit(column, keyed_hash(key, value).hex())
    if rule.method == MaskingMethod.fake:
        return _fit(column, fake_text(key, value))
    if rule.method == MaskingMethod.keep_first:
        return _fit(column, keep_first(value, rule.keep))
    return _fit(column, keep_last(value, rule.keep))


# --- the SQL --------------------------------------------------------------------------


def check_rule(rule: MaskingRule, column: Column) -> None:
    """Refuse a rule its column cannot take, with a message a user can act on."""
    where = f"masking rule {rule.method.value} on {column.label}"
    if column.generated:
        raise MaskingError(
            f"{where}: the column is generated; mask the columns it is computed from")
    if column.identity_always:
        raise MaskingError(f"{where}: the column is GENERATED ALWAYS AS IDENTITY and cannot be set")
    if rule.method == MaskingMethod.null and column.not_null:
        raise MaskingError(f"{where}: the column is NOT NULL; use constant, hash or fake")
    if rule.method == MaskingMethod.constant and rule.value is None:
        raise MaskingError(f"{where}: method constant needs `value`")
    family = column.family
    if rule.method in (MaskingMethod.keep_first, MaskingMethod.keep_last) and family != Family.text:
        raise MaskingError(f"{where}: {rule.method.value} applies to text columns only")
    if rule.method in (MaskingMethod.hash, MaskingMethod.fake) and family == Family.other:
        raise MaskingError(
            f"{where}: type {column.type_sql} cannot be hashed or faked; use null or constant"
        )


def uses_key(method: MaskingMethod) -> bool:
    return method in (MaskingMethod.hash, MaskingMethod.fake)


def _fake_sql(text_expr: str) -> str:
    byte = "get_byte(k.stream, (u.i - 1)::int)"
    return (
        "coalesce((SELECT string_agg(CASE"
        f" WHEN ascii(u.ch) BETWEEN 48 AND 57 THEN chr(48 + {byte} % 10)"
        f" WHEN ascii(u.ch) BETWEEN 65 AND 90 THEN chr(65 + {byte} % 26)"
        f" WHEN ascii(u.ch) BETWEEN 97 AND 122 OR ascii(u.ch) > 127 THEN chr(97 + {byte} % 26)"
        " ELSE u.ch END, '' ORDER BY u.i)"
        " FROM (SELECT string_agg(sha256(d.digest || int4send(n)), ''::bytea ORDER BY n) AS stream"
        f" FROM (SELECT {_sql_hmac(text_expr)} AS digest) AS d,"
        f" generate_series(0, (char_length({text_expr}) - 1) / 32) AS n) AS k,"
        f" unnest(string_to_array({text_expr}, NULL)) WITH ORDINALITY AS u(ch, i)), '')"
    )


def _integer_sql(digest: str, base_type: str) -> str:
    if base_type == "int2":
        return f"((get_byte({digest}, 0) % 128) * 256 + get_byte({digest}, 1))"
    if base_type == "int4":
        return f"(('x' || encode(substr({digest}, 1, 4), 'hex'))::bit(32)::int4 & 2147483647)"
    return (
        f"(('x' || encode(substr({digest}, 1, 8), 'hex'))::bit(64)::int8"
        " & 9223372036854775807)"
    )


def mask_expression(rule: MaskingRule, column: Column) -> str:
    """The right-hand side of `SET column = ...` for one rule."""
    check_rule(rule, column)
    col = quote_ident(column.name)
    if rule.method == MaskingMethod.null:
        return "NULL"
    text = f"{col}::text"
    family = column.family
    if rule.method == MaskingMethod.constant:
        assert rule.value is not None
        inner = quote_literal(rule.value)
    elif family == Family.integer:
        inner = _integer_sql(_sql_hmac(text), column.base_type)
    elif family == Family.uuid:
        inner = f"encode(substr({_sql_hmac(text)}, 1, 16), 'hex')"
    elif rule.method == MaskingMethod.hash:
        inner = f"encode({_sql_hmac(text)}, 'hex')"
    elif rule.method == MaskingMethod.fake:
        inner = _fake_sql(text)
    elif rule.method == MaskingMethod.keep_first:
        inner = (
            f"CASE WHEN char_length({text}) > {rule.keep}"
            f" THEN left({text}, {rule.keep}) || repeat('*', char_length({text}) - {rule.keep})"
            f" ELSE repeat('*', char_length({text})) END"
        )
    else:
        inner = (
            f"CASE WHEN char_length({text}) > {rule.keep}"
            f" THEN repeat('*', char_length({text}) - {rule.keep}) || right({text}, {rule.keep})"
            f" ELSE repeat('*', char_length({text})) END"
        )
    return f"CASE WHEN {col} IS NULL THEN NULL ELSE CAST({inner} AS {column.type_sql}) END"


@dataclass(frozen=True)
class MaskingStatement:
    schema: str
    table: str
    columns: tuple[str, ...]
    sql: str
    uses_key: bool  # pass (k_ipad, k_opad) as $1, $2 only then

    @property
    def qualified_table(self) -> str:
        return qualified(self.schema, self.table)


def resolve(rules: Sequence[MaskingRule], columns: Mapping[ColumnKey, Column]) -> list[Column]:
    """The column of every rule, refusing unknown or twice-named columns."""
    seen: set[ColumnKey] = set()
    found = []
    for rule in rules:
        key = rule_key(rule)
        if key in seen:
            raise MaskingError(f"column {'.'.join(key)} has more than one masking rule")
        seen.add(key)
        column = columns.get(key)
        if column is None:
            raise MaskingError(
                f"masking rule names column {'.'.join(key)}, which does not exist in the source"
            )
        check_rule(rule, column)
        found.append(column)
    return found


def masking_statements(
    rules: Sequence[MaskingRule], columns: Mapping[ColumnKey, Column]
) -> list[MaskingStatement]:
    """One UPDATE per table (one rewrite of it), tables in the rules' order."""
    resolved = resolve(rules, columns)
    by_table: dict[tuple[str, str], list[tuple[MaskingRule, Column]]] = {}
    for rule, column in zip(rules, resolved, strict=True):
        by_table.setdefault((column.schema, column.table), []).append((rule, column))
    statements = []
    for (schema, table), pairs in by_table.items():
        sets = ", ".join(f"{quote_ident(c.name)} = {mask_expression(r, c)}" for r, c in pairs)
        statements.append(MaskingStatement(
            schema=schema,
            table=table,
            columns=tuple(c.name for _, c in pairs),
            sql=f"UPDATE {qualified(schema, table)} SET {sets}",
            uses_key=any(uses_key(r.method) for r, _ in pairs),
        ))
    return statements


# --- verification queries -------------------------------------------------------------


def fingerprint(salt: bytes, text: str) -> bytes:
    """Salted digest of a value's text; `fingerprint_sql` computes the same in SQL."""
    return hashlib.sha256(salt + text.encode("utf-8")).digest()


def fingerprint_sql(column: str, salt_param: str = "$1") -> str:
    return f"sha256({salt_param}::bytea || convert_to({quote_ident(column)}::text, 'UTF8'))"


def distinct_values_sql(column: Column) -> str:
    col = quote_ident(column.name)
    table = qualified(column.schema, column.table)
    return f"SELECT DISTINCT {col}::text FROM {table} WHERE {col} IS NOT NULL"


def not_null_count_sql(column: Column) -> str:
    col = quote_ident(column.name)
    return f"SELECT count(*) FROM {qualified(column.schema, column.table)} WHERE {col} IS NOT NULL"


def constant_mismatch_sql(column: Column, value: str) -> str:
    col = quote_ident(column.name)
    return (
        f"SELECT count(*) FROM {qualified(column.schema, column.table)} "
        f"WHERE {col} IS DISTINCT FROM CAST({quote_literal(value)} AS {column.type_sql}) "
        f"AND {col} IS NOT NULL"
    )


def foreign_key_orphans_sql(
    child: tuple[str, str], child_columns: Sequence[str],
    parent: tuple[str, str], parent_columns: Sequence[str],
) -> str:
    """Rows of `child` whose (non-NULL) key finds no row in `parent` (MATCH SIMPLE)."""
    if not child_columns or len(child_columns) != len(parent_columns):
        raise MaskingError("a foreign key needs as many referencing as referenced columns")
    present = " AND ".join(f"c.{quote_ident(col)} IS NOT NULL" for col in child_columns)
    joined = " AND ".join(
        f"p.{quote_ident(pc)} = c.{quote_ident(cc)}"
        for cc, pc in zip(child_columns, parent_columns, strict=True)
    )
    return (
        f"SELECT count(*) FROM {qualified(*child)} AS c WHERE {present} "
        f"AND NOT EXISTS (SELECT 1 FROM {qualified(*parent)} AS p WHERE {joined})"
    )


def masked_tables(columns: Iterable[Column]) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str], None] = {}
    for column in columns:
        seen.setdefault((column.schema, column.table), None)
    return list(seen)


# --- golden generations ---------------------------------------------------------------


def golden_generation_name(source_name: str, when: datetime, run_id: str = "", *,
                           digest: bool = True) -> str:
    """Database name of one golden generation: the source, a UTC timestamp, the run.

    The run is a digest of the whole run id, not its first characters: Temporal's run
    ids are UUIDv7, whose leading characters are a clock that two runs started in the
    same minute share. (`digest=False` gives the older name, for runs that began with it.)"""
    stamp = when.strftime("%Y%m%d%H%M%S")
    if not run_id:
        run = None
    elif digest:
        run = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    else:
        run = run_id.replace("-", "")[:8]
    parts = ["golden", source_name, stamp] + ([run] if run else [])
    return pg_identifier(*parts)


def golden_dump_uri(bucket: str, source_name: str) -> str:
    """Where the current golden copy of a source is published for container databases:
    a small pointer (JSON: generation, dump key, masking digest), replaced at each refresh,
    to that generation's pg_dump, which is never changed once written."""
    return f"s3://{bucket}/golden/{source_name}/current.json"


def golden_generation_dump_key(source_name: str, generation: str) -> str:
    return f"golden/{source_name}/generations/{generation}.dump"


def masking_record(rules: Sequence[MaskingRule]) -> tuple[str, str]:
    """(digest, canonical JSON) of a set of masking rules, as published next to a golden
    dump so a restore can check the dump was masked with what it asks for."""
    canonical = json.dumps(sorted(rule_json(r) for r in rules))
    return hashlib.sha256(canonical.encode()).hexdigest(), canonical


def rule_json(rule: MaskingRule) -> str:
    return json.dumps(rule.model_dump(mode="json"), sort_keys=True)


def golden_masking_uri(dump_uri: str, digest: str) -> str:
    """Where the rules a published dump was masked with are kept (content-addressed)."""
    return f"{dump_uri.rsplit('/', 1)[0]}/masking/{digest}.json"


def unmet_rules(wanted: Sequence[MaskingRule], applied_json: str) -> list[MaskingRule]:
    """The rules a clone asks for that the golden copy was not masked with."""
    applied = set(json.loads(applied_json))
    return [r for r in wanted if rule_json(r) not in applied]
