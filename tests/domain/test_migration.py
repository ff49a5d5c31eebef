"""The migration report's pure half: the schema's diff, the lock timeline, the report,
the policy's verdict and the PR comment's words."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from domain.migration import (
    BLOCKING,
    ColumnShape,
    DatabaseSnapshot,
    LockHeld,
    LockTimeline,
    MigrationLimits,
    MigrationReport,
    Rewrite,
    RowChange,
    TableShape,
    TableState,
    compare,
    human_bytes,
    render_markdown,
    schema_changes,
    summary_line,
    violations,
)

MODES = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock",
         "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]

# Single-token types and defaults, so that the test can read the lines back.
columns = st.builds(ColumnShape, type=st.sampled_from(["integer", "bigint", "text", "uuid"]),
                    nullable=st.booleans(),
                    default=st.sampled_from([None, "0", "1", "now()", "'x'::text"]))
definitions = st.sampled_from(["CREATE INDEX i ON t USING btree (a)",
                               "CREATE UNIQUE INDEX i ON t USING btree (b)",
                               "CHECK ((a > 0))", "PRIMARY KEY (id)"])
names = st.sampled_from(["a", "b", "c", "id"])
tables = st.builds(TableShape, columns=st.dictionaries(names, columns, max_size=4),
                   indexes=st.dictionaries(names, definitions, max_size=3),
                   constraints=st.dictionaries(names, definitions, max_size=3))
schemas = st.dictionaries(st.sampled_from(["public.a", "public.b", "x.orders"]), tables,
                          max_size=3)


def apply(shapes: dict[str, TableShape], lines: list[str]) -> dict[str, TableShape]:
    """The schema `lines` say the migration made of `shapes`."""
    made: dict[str, dict[str, Any]] = {name: shape.model_dump() for name, shape in
                                       shapes.items()}
    for line in lines:
        sign, kind, rest = line.split(" ", 2)
        if kind == "table":
            if sign == "+":
                made[rest] = {"columns": {}, "indexes": {}, "constraints": {}}
            else:
                del made[rest]
        elif kind == "column" and sign == "~":
            where, change = rest.split(": ", 1)
            table, column = where.rsplit(".", 1)
            old, new = change.split(" → ")
            shape = made[table]["columns"][column]
            if new in ("NULL", "NOT NULL"):
                assert shape["nullable"] == (old == "NULL")
                shape["nullable"] = new == "NULL"
            elif new.startswith("DEFAULT ") or new == "no default":
                shape["default"] = new.removeprefix("DEFAULT ") if new != "no default" else None
            else:
                assert shape["type"] == old
                shape["type"] = new
        elif kind == "column":
            where, spec = rest.split(" ", 1)
            table, column = where.rsplit(".", 1)
            if sign == "-":
                del made[table]["columns"][column]
                continue
            type_, _, tail = spec.partition(" ")
            nullable = not tail.startswith("NOT NULL")
            default = tail.removeprefix("NOT NULL").strip().removeprefix("DEFAULT ") or None
            made[table]["columns"][column] = {"type": type_, "nullable": nullable,
                                              "default": default}
        else:
            where, definition = rest.split(": ", 1)
            table, name = where.rsplit(".", 1)
            group = made[table]["indexes" if kind == "index" else "constraints"]
            if sign == "-":
                del group[name]
            else:
                group[name] = definition.split(" → ")[-1]
    return {name: TableShape.model_validate(shape) for name, shape in made.items()}


@given(schemas)
def test_same_schema_no_change(shapes: dict[str, TableShape]) -> None:
    assert schema_changes(shapes, shapes) == []


@given(schemas, schemas)
def test_changes_turn_before_into_after(before: dict[str, TableShape],
                                        after: dict[str, TableShape]) -> None:
    lines = schema_changes(before, after)
    assert apply(before, lines) == after
    assert len(lines) == len(set(lines))
    # Deterministic: the order the catalog returned things in does not matter.
    assert schema_changes(dict(reversed(before.items())),
                          dict(reversed(after.items()))) == lines


@given(schemas, schemas)
def test_changes_name_only_what_differs(before: dict[str, TableShape],
                                        after: dict[str, TableShape]) -> None:
    touched = {line.split(" ", 2)[2].split(" ", 1)[0].split(":")[0]
               for line in schema_changes(before, after)}
    for name in before.keys() & after.keys():
        if before[name] == after[name]:
            assert not any(t == name or t.startswith(name + ".") for t in touched)


def test_changes_in_words() -> None:
    old = {"public.t": TableShape(
        columns={"c": ColumnShape(type="integer", nullable=True),
                 "gone": ColumnShape(type="text", nullable=True)},
        indexes={"t_c_idx": "CREATE INDEX t_c_idx ON public.t USING btree (c)"},
        constraints={"t_c_check": "CHECK ((c > 0))"}),
        "public.y": TableShape(columns={}, indexes={}, constraints={})}
    new = {"public.t": TableShape(
        columns={"c": ColumnShape(type="bigint", nullable=False, default="0"),
                 "d": ColumnShape(type="bigint", nullable=False, default="0")},
        indexes={}, constraints={"t_c_check": "CHECK ((c > 1))"}),
        "public.x": TableShape(columns={"id": ColumnShape(type="bigint", nullable=False)},
                               indexes={}, constraints={})}
    assert schema_changes(old, new) == [
        "~ column public.t.c: integer → bigint",
        "~ column public.t.c: NULL → NOT NULL",
        "~ column public.t.c: no default → DEFAULT 0",
        "+ column public.t.d bigint NOT NULL DEFAULT 0",
        "- column public.t.gone text",
        "- index public.t.t_c_idx: CREATE INDEX t_c_idx ON public.t USING btree (c)",
        "~ constraint public.t.t_c_check: CHECK ((c > 0)) → CHECK ((c > 1))",
        "+ table public.x",
        "+ column public.x.id bigint NOT NULL",
        "- table public.y",
    ]


# --- the lock timeline -----------------------------------------------------------------

samples = st.lists(st.tuples(
    st.floats(min_value=0.001, max_value=1.0),
    st.lists(st.tuples(st.integers(1, 3), st.sampled_from(["public.a", "public.b"]),
                       st.sampled_from(MODES)), max_size=4)), min_size=1, max_size=12)


@given(samples)
def test_timeline_keeps_blocking_modes_only(seen: list[Any]) -> None:
    timeline, at = LockTimeline(0.1), 0.0
    for gap, held in seen:
        at += gap
        timeline.observe(at, held)
    for lock in timeline.held():
        assert lock.mode in BLOCKING and lock.blocks == BLOCKING[lock.mode]
        assert 0 < lock.seconds <= at + 0.1 + 1e-6


@given(samples)
def test_timeline_durations_never_shrink(seen: list[Any]) -> None:
    timeline, at = LockTimeline(0.1), 0.0
    previous: dict[tuple[str, str], float] = {}
    for gap, held in seen:
        at += gap
        timeline.observe(at, held)
        now = {(lock.table, lock.mode): lock.seconds for lock in timeline.held()}
        assert all(now.get(key, -1) >= seconds for key, seconds in previous.items())
        previous = now


def test_timeline_rule() -> None:
    timeline = LockTimeline(0.1)
    timeline.observe(10.0, [(7, "public.t", "ShareLock")])  # first sample: + interval
    timeline.observe(10.2, [(7, "public.t", "AccessShareLock")])
    timeline.observe(10.5, [(7, "public.t", "AccessExclusiveLock"),
                            (7, "public.t", "ShareLock")])  # under it: not counted
    timeline.observe(10.6, [(7, "public.t", "AccessExclusiveLock")])
    timeline.observe(11.6, [(8, "public.t", "AccessExclusiveLock")])
    timeline.observe(11.7, [])
    assert timeline.held() == [
        LockHeld(table="public.t", mode="AccessExclusiveLock", seconds=1.4,
                 blocks="reads and writes"),
        LockHeld(table="public.t", mode="ShareLock", seconds=0.1, blocks="writes")]
    with pytest.raises(ValueError):
        timeline.observe(11.0, [])


# --- the report and the policy -----------------------------------------------------------


def state(oid: int, node: int, size: int, ins: int = 0, upd: int = 0, dele: int = 0,
          ) -> TableState:
    return TableState(oid=oid, relfilenode=node, bytes=size, inserted=ins, updated=upd,
                      deleted=dele)


def snapshot(size: int, states: dict[str, TableState]) -> DatabaseSnapshot:
    return DatabaseSnapshot(database="main", bytes=size, sessions=[1],
                            tables={name: TableShape(columns={}, indexes={}, constraints={})
                                    for name in states}, states=states)


def test_compare() -> None:
    before = snapshot(900, {"public.orders": state(1, 10, 500, 5, 5, 5),
                            "public.same": state(2, 20, 100, 1),
                            "public.remade": state(3, 30, 100, 9)})
    after = snapshot(1000, {"public.orders": state(1, 11, 600, 5, 12, 5),
                            "public.same": state(2, 20, 100, 1),
                            "public.remade": state(4, 40, 100, 2),
                            "public.new": state(5, 50, 8, 3)})
    report = compare(before, after, [], job="migrate", seconds=1.23456)
    assert report.rewrites == [Rewrite(table="public.orders", bytes_before=500,
                                       bytes_after=600)]
    assert report.rows == [RowChange(table="public.new", inserted=3, updated=0, deleted=0),
                           RowChange(table="public.orders", inserted=0, updated=7, deleted=0),
                           RowChange(table="public.remade", inserted=2, updated=0, deleted=0)]
    assert (report.data_bytes, report.seconds, report.database) == (900, 1.235, "main")
    assert report.schema_changes == ["+ table public.new"]


def report(**changes: Any) -> MigrationReport:
    base: dict[str, Any] = {
        "job": "migrate", "database": "main", "seconds": 3.1, "data_bytes": 2_500_000_000,
        "schema_changes": ["~ column public.orders.amount: integer → bigint",
                           "+ index public.orders.o_idx: CREATE INDEX o_idx ON public.orders"
                           " USING btree (amount)"],
        "rewrites": [Rewrite(table="public.orders", bytes_before=812_000_000,
                             bytes_after=790_000_000)],
        "locks": [LockHeld(table="public.orders", mode="AccessExclusiveLock", seconds=2.9,
                           blocks="reads and writes")],
        "rows": [RowChange(table="public.orders", inserted=0, updated=1_200_000, deleted=0)]}
    return MigrationReport(**{**base, **changes})


def test_violations_name_table_figure_and_limit() -> None:
    assert violations(report(), MigrationLimits()) == []
    assert violations(report(), MigrationLimits(max_write_lock_seconds=1,
                                                max_rewrite_megabytes=500)) == [
        "migration job migrate held AccessExclusiveLock on public.orders for 2.9 s, which "
        "blocks reads and writes; the limit is 1 s (policy.migrations.max_write_lock_seconds)",
        "migration job migrate rewrote public.orders (812.0 MB), over 500 MB "
        "(policy.migrations.max_rewrite_megabytes)"]
    # A figure just over the limit shows the decimals that make it so.
    held = LockHeld(table="public.t", mode="ShareLock", seconds=1.04, blocks="writes")
    assert " for 1.04 s, which blocks writes; the limit is 1 s " in violations(
        report(locks=[held]), MigrationLimits(max_write_lock_seconds=1))[0]
    assert violations(report(), MigrationLimits(max_write_lock_seconds=2.9,
                                                max_rewrite_megabytes=812)) == []


def test_limits_are_checked() -> None:
    with pytest.raises(ValidationError):
        MigrationLimits(max_write_lock_seconds=0)
    with pytest.raises(ValidationError):
        MigrationLimits.model_validate({"max_rewrite_megabytes": -1})
    with pytest.raises(ValidationError):
        MigrationLimits.model_validate({"max_lock": 1})
    schema = MigrationLimits.model_json_schema()
    assert all(field.get("description") for field in schema["properties"].values())


def test_summary_line() -> None:
    assert summary_line(report()) == (
        "migrate on main: 3.1 s, 2 schema changes, rewrote public.orders (812 MB), "
        "AccessExclusiveLock on public.orders 2.9 s, 1 200 000 rows updated")
    quiet = report(schema_changes=[], rewrites=[], locks=[], rows=[], seconds=0.04,
                   note="partial: lock sampling failed after 3 samples: terminated")
    assert summary_line(quiet) == ("migrate on main: 0.0 s, 0 schema changes (partial: lock "
                                   "sampling failed after 3 samples: terminated)")


def test_markdown() -> None:
    quiet = report(job="seed", schema_changes=[], rewrites=[], locks=[], rows=[])
    text = render_markdown([report(), quiet])
    assert text.startswith("#### Migrations\n\n**migrate** on **main**\n\n3.1 s against 2.5 GB "
                           "of data.\n")
    assert ("```diff\n~ column public.orders.amount: integer → bigint\n+ index "
            "public.orders.o_idx: CREATE INDEX o_idx ON public.orders USING btree (amount)\n"
            "```") in text
    assert "- public.orders: 812 MB → 790 MB" in text
    assert "- AccessExclusiveLock on public.orders for 2.9 s (blocks reads and writes)" in text
    assert "| public.orders | 0 | 1 200 000 | 0 |" in text
    assert "**seed** on **main**" in text
    for empty in ("Schema: no change.", "Tables rewritten: none.",
                  "Locks that block reads or writes: none seen.",
                  "Rows: none inserted, updated or deleted."):
        assert text.count(empty) == 1
    assert render_markdown([]) == "#### Migrations\n\nNo migration ran.\n"


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (999, "999 B"), (1000, "1 kB"), (35_400, "35.4 kB"), (812_000_000, "812 MB"),
    (999_600_000, "1 GB"), (1_234_000_000, "1.23 GB"), (5 * 10**15, "5000 TB")])
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


def test_markdown_keeps_names_inert() -> None:
    odd = "public.x```\n| y"
    text = render_markdown([report(schema_changes=[f"+ table {odd}"], rows=[
        RowChange(table="public.a|b", inserted=1, updated=0, deleted=0)])])
    assert "````diff\n+ table public.x```\n| y\n````" in text  # the fence outgrows it
    assert "| public.a\\|b | 1 | 0 | 0 |" in text
