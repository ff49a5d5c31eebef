"""What a pull request's database migration did, whatever tool ran it: the report made
from a snapshot of the preview's database before and after the migration job, and the
locks its sessions were seen holding while it ran (activities/postgres/migration.py takes
them). Pure: the figures come in, the report, its Markdown and the policy's verdict go
out.

Sizes are decimal (1 MB = 1 000 000 bytes), as `max_rewrite_megabytes` counts them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Blocks = Literal["reads and writes", "writes"]

# The lock modes that stop other sessions: AccessExclusiveLock conflicts with every mode
# (even a SELECT's AccessShareLock); these three conflict with RowExclusiveLock, the
# mode of INSERT, UPDATE and DELETE. Weaker modes block only other DDL and are ignored.
BLOCKING: dict[str, Blocks] = {
    "AccessExclusiveLock": "reads and writes",
    "ExclusiveLock": "writes",
    "ShareRowExclusiveLock": "writes",
    "ShareLock": "writes",
}
_MODE_ORDER = {mode: n for n, mode in enumerate(BLOCKING)}
MB = 1_000_000


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MigrationLimits(_Model):
    """When a preview fails because of its migration: unset limits are not checked."""

    max_write_lock_seconds: float | None = Field(
        default=None, gt=0,
        description="Longest time the migration may hold, on one table without a break, a "
                    "lock that blocks writes (AccessExclusiveLock, ExclusiveLock, "
                    "ShareRowExclusiveLock or ShareLock), in seconds.")
    max_rewrite_megabytes: float | None = Field(
        default=None, gt=0,
        description="Largest table the migration may rewrite (a new file for the same "
                    "table, e.g. ALTER COLUMN ... TYPE), in megabytes (10^6 bytes) of "
                    "the table with its indexes and TOAST, before or after, whichever is "
                    "larger.")


class ColumnShape(_Model):
    type: str = Field(description="format_type() of the column, e.g. 'character varying(20)'")
    nullable: bool
    default: str | None = Field(default=None, description="its DEFAULT (or generation) "
                                "expression as pg_get_expr shows it")


class TableShape(_Model):
    columns: dict[str, ColumnShape]
    indexes: dict[str, str] = Field(description="index name → pg_get_indexdef")
    constraints: dict[str, str] = Field(description="constraint name → pg_get_constraintdef "
                                        "(NOT NULL is the column's nullability)")


class TableState(_Model):
    oid: int
    relfilenode: int
    bytes: int = Field(description="pg_total_relation_size: heap, indexes and TOAST")
    inserted: int = Field(description="pg_stat_user_tables.n_tup_ins")
    updated: int = Field(description="pg_stat_user_tables.n_tup_upd")
    deleted: int = Field(description="pg_stat_user_tables.n_tup_del")


class DatabaseSnapshot(_Model):
    """A database at one moment; tables keyed "schema.table" (user tables only)."""

    database: str
    bytes: int = Field(description="pg_database_size")
    tables: dict[str, TableShape]
    states: dict[str, TableState]
    sessions: list[int] = Field(description="backend pids connected to the database")


class LockHeld(_Model):
    table: str
    mode: str = Field(description="PostgreSQL's name of the mode, e.g. AccessExclusiveLock")
    seconds: float
    blocks: Blocks


class Rewrite(_Model):
    table: str
    bytes_before: int
    bytes_after: int


class RowChange(_Model):
    table: str
    inserted: int
    updated: int
    deleted: int


class MigrationReport(_Model):
    job: str
    database: str
    seconds: float = Field(description="the job's duration")
    data_bytes: int = Field(description="size of the database it ran against")
    schema_changes: list[str]
    rewrites: list[Rewrite]
    locks: list[LockHeld]
    rows: list[RowChange]
    note: str | None = Field(default=None, description="what the report may miss, e.g. "
                             "'partial: lock sampling failed after 12 samples'")


# --- the schema's diff -----------------------------------------------------------------


def _column(column: ColumnShape) -> str:
    text = column.type + ("" if column.nullable else " NOT NULL")
    return text + (f" DEFAULT {column.default}" if column.default is not None else "")


def _default(value: str | None) -> str:
    return "no default" if value is None else f"DEFAULT {value}"


def _named(kind: str, where: str, before: dict[str, str], after: dict[str, str]) -> list[str]:
    """+, - and ~ lines of named definitions (indexes or constraints) of one table."""
    lines: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if old is None:
            lines.append(f"+ {kind} {where}.{name}: {new}")
        elif new is None:
            lines.append(f"- {kind} {where}.{name}: {old}")
        elif old != new:
            lines.append(f"~ {kind} {where}.{name}: {old} → {new}")
    return lines


def _table(name: str, before: TableShape, after: TableShape) -> list[str]:
    lines: list[str] = []
    for column in sorted(before.columns.keys() | after.columns.keys()):
        old, new = before.columns.get(column), after.columns.get(column)
        where = f"{name}.{column}"
        if old is None and new is not None:
            lines.append(f"+ column {where} {_column(new)}")
        elif new is None and old is not None:
            lines.append(f"- column {where} {_column(old)}")
        elif old is not None and new is not None:
            if old.type != new.type:
                lines.append(f"~ column {where}: {old.type} → {new.type}")
            if old.nullable != new.nullable:
                lines.append(f"~ column {where}: "
                             + ("NOT NULL → NULL" if new.nullable else "NULL → NOT NULL"))
            if old.default != new.default:
                lines.append(f"~ column {where}: {_default(old.default)} → "
                             f"{_default(new.default)}")
    lines += _named("index", name, before.indexes, after.indexes)
    lines += _named("constraint", name, before.constraints, after.constraints)
    return lines


_EMPTY = TableShape(columns={}, indexes={}, constraints={})


def schema_changes(before: dict[str, TableShape], after: dict[str, TableShape]) -> list[str]:
    """One line per change, tables in name order, within a table its columns, then its
    indexes, then its constraints, each in name order:

        + table public.x                 a new table, followed by a `+` line for each of
        + column public.x.id bigint NOT NULL     its columns, indexes and constraints
        - table public.y                 a dropped table: this line only
        + column public.t.c bigint NOT NULL DEFAULT 0
        - column public.t.c integer
        ~ column public.t.c: integer → bigint          one line per aspect that changed:
        ~ column public.t.c: NULL → NOT NULL           type, nullability, default
        ~ column public.t.c: no default → DEFAULT 0
        + index public.t.t_c_idx: CREATE INDEX t_c_idx ON public.t USING btree (c)
        ~ constraint public.t.t_c_check: CHECK ((c > 0)) → CHECK ((c > 1))

    Identical shapes give no line at all."""
    lines: list[str] = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name), after.get(name)
        if new is None:
            lines.append(f"- table {name}")
        elif old is None:
            lines.append(f"+ table {name}")
            lines += _table(name, _EMPTY, new)
        else:
            lines += _table(name, old, new)
    return lines


# --- locks seen while the job ran ------------------------------------------------------


class LockTimeline:
    """Locks seen at successive samples → how long each (table, mode) was held.

    A lock seen at consecutive samples t1..tn (consecutive: no sample in between where
    no session held it) was held for tn - t1 plus the interval before t1 (t1 minus the
    previous sample's time; `interval` when t1 was the first sample): it was taken some
    time after that previous sample, and the upper end is reported so that a lock seen
    once never counts 0 s. A (table, mode) held several times, e.g. by two statements,
    reports its longest such stretch: that is how long writers had to wait at once.
    Only modes that block reads or writes are kept (BLOCKING), and of a table's, only the
    strongest one held at a sample: a rewrite's ShareLock for its index build, under its
    own AccessExclusiveLock, blocks nothing more."""

    def __init__(self, interval: float = 0.1) -> None:
        self._interval = interval
        self._last_at: float | None = None
        # (table, mode) → (start of the current stretch, last sight), longest stretch
        self._open: dict[tuple[str, str], tuple[float, float]] = {}
        self._longest: dict[tuple[str, str], float] = {}
        self.samples = 0

    def observe(self, at: float, held: Iterable[tuple[int, str, str]]) -> None:
        """A sample at monotonic time `at`: the (pid, table, mode) granted then."""
        if self._last_at is not None and at < self._last_at:
            raise ValueError("samples must come in time order")
        strongest: dict[str, str] = {}  # table → the strongest blocking mode held
        for _pid, table, mode in held:
            current = strongest.get(table)
            if mode in BLOCKING and (current is None
                                     or _MODE_ORDER[mode] < _MODE_ORDER[current]):
                strongest[table] = mode
        seen = set(strongest.items())
        for key in list(self._open):
            if key not in seen:
                del self._open[key]  # released since the last sample
        for key in seen:
            if key in self._open:
                start, _ = self._open[key]
            else:
                start = self._last_at if self._last_at is not None else at - self._interval
            self._open[key] = (start, at)
            self._longest[key] = max(self._longest.get(key, 0.0), at - start)
        self._last_at = at
        self.samples += 1

    def held(self) -> list[LockHeld]:
        """Each (table, mode) seen, by table then mode (strongest first)."""
        return [LockHeld(table=table, mode=mode, seconds=round(seconds, 3),
                         blocks=BLOCKING[mode])
                for (table, mode), seconds in sorted(
                    self._longest.items(), key=lambda kv: (kv[0][0], _MODE_ORDER[kv[0][1]]))]


# --- the report ------------------------------------------------------------------------


def compare(before: DatabaseSnapshot, after: DatabaseSnapshot, locks: Sequence[LockHeld], *,
            job: str, seconds: float) -> MigrationReport:
    """The report of a job that ran between two snapshots of one database. A rewrite is
    a table of both with the same oid and another relfilenode (a table dropped and made
    again has another oid: it is in the schema's diff instead). Row counts are the
    increase of pg_stat_user_tables' counters (from 0 for a new table), tables with any
    increase only; a dropped table's counters are gone with it."""
    rewrites: list[Rewrite] = []
    rows: list[RowChange] = []
    for name in sorted(after.states):
        new, old = after.states[name], before.states.get(name)
        if old is not None and old.oid == new.oid and old.relfilenode != new.relfilenode:
            rewrites.append(Rewrite(table=name, bytes_before=old.bytes, bytes_after=new.bytes))
        same = old is not None and old.oid == new.oid
        deltas = [max(0, getattr(new, f) - (getattr(old, f) if same and old else 0))
                  for f in ("inserted", "updated", "deleted")]
        if any(deltas):
            rows.append(RowChange(table=name, inserted=deltas[0], updated=deltas[1],
                                  deleted=deltas[2]))
    return MigrationReport(
        job=job, database=after.database, seconds=round(seconds, 3), data_bytes=before.bytes,
        schema_changes=schema_changes(before.tables, after.tables), rewrites=rewrites,
        locks=sorted(locks, key=lambda lock: (lock.table, _MODE_ORDER.get(lock.mode, 99))),
        rows=rows)


def _over(figure: float, limit: float) -> str:
    """The figure with enough decimals to show it is over the limit (4.2, not 4)."""
    for digits in (1, 2, 3):
        if round(figure, digits) > limit:
            return f"{figure:.{digits}f}"
    return f"{figure:.3f}"


def violations(report: MigrationReport, limits: MigrationLimits) -> list[str]:
    """What the migration did beyond the policy's limits, one message each (table,
    figure, limit and the setting to change); empty when within them."""
    found: list[str] = []
    if (limit := limits.max_write_lock_seconds) is not None:
        for lock in report.locks:
            if lock.seconds > limit:
                found.append(
                    f"migration job {report.job} held {lock.mode} on {lock.table} for "
                    f"{_over(lock.seconds, limit)} s, which blocks {lock.blocks}; the limit "
                    f"is {limit:g} s (policy.migrations.max_write_lock_seconds)")
    if (megabytes := limits.max_rewrite_megabytes) is not None:
        for rewrite in report.rewrites:
            size = max(rewrite.bytes_before, rewrite.bytes_after) / MB
            if size > megabytes:
                found.append(
                    f"migration job {report.job} rewrote {rewrite.table} "
                    f"({_over(size, megabytes)} MB), over {megabytes:g} MB "
                    "(policy.migrations.max_rewrite_megabytes)")
    return found


# --- words and Markdown ----------------------------------------------------------------


def human_bytes(count: int) -> str:
    """812 MB, 1.2 GB, 35 kB, 120 B: three significant digits, decimal units."""
    if abs(count) < 1000:
        return f"{count} B"
    value = count / 1000
    for unit in ("kB", "MB", "GB"):
        if abs(value) < 999.5:  # else .3g would write 1e+03
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} TB" if abs(value) < 999.5 else f"{round(value)} TB"


def grouped(count: int) -> str:
    """1 200 000: digits grouped by threes, as in the PR comment's prose."""
    return f"{count:,}".replace(",", " ")


def _plural(count: int, word: str) -> str:
    return f"{grouped(count)} {word}{'' if count == 1 else 's'}"


def _first(items: list[str], most: int = 3) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most
                                      else "")


def summary_line(report: MigrationReport) -> str:
    """One line: job, database, duration, then only the parts that are not empty."""
    parts = [f"{report.seconds:.1f} s", _plural(len(report.schema_changes), "schema change")]
    if report.rewrites:
        parts.append("rewrote " + _first([
            f"{r.table} ({human_bytes(max(r.bytes_before, r.bytes_after))})"
            for r in report.rewrites]))
    longest = sorted(report.locks, key=lambda lock: -lock.seconds)
    parts += [_first([f"{lock.mode} on {lock.table} {lock.seconds:.1f} s" for lock in longest])
              ] if longest else []
    for kind in ("inserted", "updated", "deleted"):
        total = sum(getattr(row, kind) for row in report.rows)
        if total:
            parts.append(f"{_plural(total, 'row')} {kind}")
    line = f"{report.job} on {report.database}: " + ", ".join(parts)
    return line + (f" ({report.note})" if report.note else "")


def _cell(text: str) -> str:
    """Text from the database (names a PR chose) inside Markdown: inert."""
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
            .replace("*", "\\*").replace("_", "\\_").replace("<", "&lt;").replace("\n", " "))


def _fence(lines: list[str]) -> str:
    """A ```diff block whose fence is longer than any run of backticks inside it."""
    longest, run = 0, 0
    for char in "\n".join(lines):
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return "\n".join([f"{fence}diff", *lines, fence])


def _section(report: MigrationReport) -> list[str]:
    # Under the comment's own `###` headline: bold, not a larger heading.
    out = [f"**{_cell(report.job)}** on **{_cell(report.database)}**", "",
           f"{report.seconds:.1f} s against {human_bytes(report.data_bytes)} of data."]
    if report.note:
        out.append(f"Note: {_cell(report.note)}")
    out.append("")
    if report.schema_changes:
        out += [f"Schema: {_plural(len(report.schema_changes), 'change')}", "",
                _fence(report.schema_changes)]
    else:
        out.append("Schema: no change.")
    out.append("")
    if report.rewrites:
        out.append("Tables rewritten:")
        out += [f"- {_cell(r.table)}: {human_bytes(r.bytes_before)} → "
                f"{human_bytes(r.bytes_after)}" for r in report.rewrites]
    else:
        out.append("Tables rewritten: none.")
    out.append("")
    if report.locks:
        out.append("Locks that block reads or writes:")
        out += [f"- {lock.mode} on {_cell(lock.table)} for {lock.seconds:.1f} s "
                f"(blocks {lock.blocks})" for lock in report.locks]
    else:
        out.append("Locks that block reads or writes: none seen.")
    out.append("")
    if report.rows:
        out += ["| table | inserted | updated | deleted |", "|---|--:|--:|--:|"]
        out += [f"| {_cell(r.table)} | {grouped(r.inserted)} | {grouped(r.updated)} | "
                f"{grouped(r.deleted)} |" for r in report.rows]
    else:
        out.append("Rows: none inserted, updated or deleted.")
    return out


def render_markdown(reports: Sequence[MigrationReport]) -> str:
    """The PR comment's "Migrations" section: one part per job and database."""
    out = ["#### Migrations", ""]
    if not reports:
        return "\n".join([*out, "No migration ran."]) + "\n"
    for n, report in enumerate(reports):
        out += ([""] if n else []) + _section(report)
    return "\n".join(out) + "\n"
