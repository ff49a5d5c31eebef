"""What the migration report costs: a migration run alone against the same migration run
with the report around it (activities.postgres.migration.MigrationWatcher: snapshot,
watch, settle, snapshot, then domain.migration.compare).

On a private PostgreSQL 18 (stack.postgres.PostgresServer, fsync off like the stack's),
one database holds a table of about --rows rows (137 MB at the default) and --tables
small tables with a primary key, an index and a check each, so that the catalog the
snapshots read is not trivially small. Two migrations, each --repeat times per way, the
two ways alternating which goes first:

- alter_type:  `ALTER TABLE big ALTER COLUMN amount TYPE bigint` (a rewrite) on a fresh
               copy of the large table, made before each run
- add_column:  `ALTER TABLE small ADD COLUMN note_<n> text` (catalog only)

A run is the job's session: connect, the statement, close. Watched, it is everything the
engine adds: snapshot before, the job inside watch(), settle(), snapshot after, compare.
The ratio is watched ÷ alone of the medians, with the overhead in seconds and where it
goes.

    .venv/bin/python -m bench.migration_report
    .venv/bin/python -m bench.migration_report --rows 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from activities.postgres import PostgresAccess
from activities.postgres.migration import MigrationWatcher
from bench.common import Recorder, finish, summary
from domain.migration import DatabaseSnapshot, compare, summary_line
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack.postgres import PostgresServer, create_database

DATABASE = "migration_bench"
SEALER = Sealer(Keyring.parse("bench:" + base64.b64encode(b"b" * 32).decode()))  # throw-away
BENCH_KEY = b"bench-masking-key"
NOTES = [
    "alone = the job's session only (connect, statement, close); watched = snapshot + "
    "watch(job) + settle + snapshot + compare, as the engine runs them around a job",
    "job_in_watch is the job's own time while the sampler runs beside it: against alone, "
    "what sampling pg_locks every interval costs the migration itself",
    "the server runs with fsync off (stack.postgres defaults), from a plain folder",
]


async def run_job(dsn: str, sql: str) -> float:
    began = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()
    return time.perf_counter() - began


async def watched(watcher: MigrationWatcher, dsn: str, sql: str) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    began = mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        parts[name] = now - mark
        mark = now

    before = await watcher.snapshot(DATABASE)
    lap("snapshot_before")
    async with watcher.watch(DATABASE, before) as seen:
        parts["job_in_watch"] = await run_job(dsn, sql)
    lap("watch")
    await watcher.settle(DATABASE, before)
    lap("settle")
    after = await watcher.snapshot(DATABASE)
    lap("snapshot_after")
    report = compare(before, after, seen.locks(), job="migrate", seconds=parts["job_in_watch"])
    lap("compare")
    parts.update(total=time.perf_counter() - began, samples=seen.samples,
                 summary=summary_line(report), note=seen.note)
    return parts


async def scenario(name: str, watcher: MigrationWatcher, dsn: str, repeat: int,
                   prepare: Callable[[int], Awaitable[str]]) -> dict[str, Any]:
    alone: list[float] = []
    runs: list[dict[str, Any]] = []
    for n in range(repeat):
        for way in (("alone", "watched") if n % 2 == 0 else ("watched", "alone")):
            sql = await prepare(len(alone) + len(runs))
            if way == "alone":
                alone.append(await run_job(dsn, sql))
            else:
                runs.append(await watched(watcher, dsn, sql))
        print(f"{name} {n + 1}/{repeat}: alone {alone[-1]:.3f} s, watched "
              f"{runs[-1]['total']:.3f} s ({runs[-1]['summary']})", flush=True)
    total = [r["total"] for r in runs]
    parts = {part: round(statistics.median(r[part] for r in runs), 4) for part in
             ("snapshot_before", "job_in_watch", "watch", "settle", "snapshot_after",
              "compare")}
    return {
        "alone_seconds": summary(alone), "watched_seconds": summary(total),
        "ratio_watched_to_alone": round(statistics.median(total) / statistics.median(alone), 3),
        "overhead_seconds_median": round(statistics.median(total) - statistics.median(alone),
                                         4),
        "job_in_watch_to_alone": round(parts["job_in_watch"] / statistics.median(alone), 3),
        "parts_median_seconds": parts,
        "samples_median": statistics.median(r["samples"] for r in runs),
        "notes_from_sampling": sorted({r["note"] for r in runs if r["note"]}),
        "last_report": runs[-1]["summary"], "alone_runs": [round(x, 4) for x in alone],
        "watched_runs": [round(x, 4) for x in total],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-migration-", dir=args.data_dir))
    os.chmod(base, 0o755)  # PostgreSQL runs as `postgres` under root
    server = PostgresServer(base, reflink="off")
    await asyncio.to_thread(server.start)
    try:
        await create_database(server.admin_url, DATABASE)
        dsn = server.url(DATABASE)
        conn = await asyncpg.connect(dsn)
        try:
            version = await conn.fetchval("SHOW server_version")
            await conn.execute(
                "CREATE TABLE base (id int PRIMARY KEY, amount int NOT NULL, pad text);"
                f"INSERT INTO base SELECT g, g % 1000, repeat('x', 250) "
                f"FROM generate_series(1, {args.rows}) g;"
                "CREATE TABLE small (id int PRIMARY KEY, name text);"
                "INSERT INTO small SELECT g, 'n' || g FROM generate_series(1, 1000) g")
            for n in range(args.tables):
                await conn.execute(
                    f"CREATE TABLE extra_{n} (id bigint PRIMARY KEY, name text NOT NULL "
                    f"DEFAULT '', qty int CHECK (qty >= 0), at timestamptz DEFAULT now());"
                    f"CREATE INDEX extra_{n}_name ON extra_{n} (name)")
            big_bytes = await conn.fetchval("SELECT pg_total_relation_size('base')")
        finally:
            await conn.close()
        print(f"PostgreSQL {version}: {args.rows} rows, {big_bytes / 1e6:.0f} MB, "
              f"{args.tables} more tables", flush=True)
        watcher = MigrationWatcher(PostgresAccess(server.admin_url, SEALER, BENCH_KEY),
                                   interval=args.interval)
        nobody = DatabaseSnapshot(database=DATABASE, bytes=0, tables={}, states={},
                                  sessions=[])

        async def fresh_big(_: int) -> str:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    "DROP TABLE IF EXISTS big; CREATE TABLE big (LIKE base INCLUDING ALL) "
                    "WITH (autovacuum_enabled = false); INSERT INTO big SELECT * FROM base;"
                    "CHECKPOINT")
            finally:
                await conn.close()
            await watcher.settle(DATABASE, nobody)  # the copy's statistics flushed
            return "ALTER TABLE big ALTER COLUMN amount TYPE bigint"

        async def next_column(n: int) -> str:
            return f"ALTER TABLE small ADD COLUMN note_{n} text"

        scenarios = {
            "alter_type": await scenario("alter_type", watcher, dsn, args.repeat, fresh_big),
            "add_column": await scenario("add_column", watcher, dsn, args.repeat, next_column),
        }
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(base, ignore_errors=True)
    return {
        "parameters": {"rows": args.rows, "tables": args.tables + 2, "repeat": args.repeat,
                       "interval": args.interval},
        "server": {"version": version, "storage": server.storage, "options": server.options},
        "big_table_bytes": big_bytes,
        "scenarios": scenarios,
        "figures": {name: {"alone_p50": s["alone_seconds"]["p50"],
                           "watched_p50": s["watched_seconds"]["p50"],
                           "ratio": s["ratio_watched_to_alone"],
                           "overhead_s": s["overhead_seconds_median"],
                           "job_in_watch_ratio": s["job_in_watch_to_alone"]}
                    for name, s in scenarios.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=420_000,
                        help="rows of the large table (250-byte rows), default %(default)s")
    parser.add_argument("--tables", type=int, default=50,
                        help="more small tables in the database, default %(default)s")
    parser.add_argument("--repeat", type=int, default=5, help="runs per way and migration")
    parser.add_argument("--interval", type=float, default=0.1,
                        help="lock sampling interval in seconds, default %(default)s")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    recorder = Recorder("bench.migration_report")
    document = asyncio.run(bench(args))
    finish(recorder, "migration_report", document, NOTES,
           "; ".join(f"{k} {v}" for k, v in document["figures"].items()), args.output)


if __name__ == "__main__":
    main()
