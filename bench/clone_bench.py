"""How fast a preview gets its database: template clones against dump/restore and `cp`.

For each size it builds a source database of about that size on a private PostgreSQL
(stack.postgres.PostgresServer), then times, side by side and in rotating order:

- `CREATE DATABASE ... TEMPLATE src STRATEGY FILE_COPY`  (what previews use)
- `CREATE DATABASE ... TEMPLATE src STRATEGY WAL_LOG`    (PostgreSQL 15's default)
- `pg_dump -Fc | pg_restore` into a new database        (the cross-server fallback:
  activities.postgres.stream_copy, the very code previews use)
- `cp` of a file as large as the database on the same disk: the physical floor

and reports seconds (median and every run) and each median's ratio to the floor's.

    .venv/bin/python -m bench.clone_bench                       # 10MB,100MB,1GB
    .venv/bin/python -m bench.clone_bench --sizes 10MB,100MB --repeat 5 --durable both

The stack's server runs with fsync=off (a throw-away server); `--durable on` runs it
with fsync, full_page_writes and synchronous_commit on, and the floor then includes an
fsync of the copy. `--cache warm` reads the source's files into the page cache before
each run, `--cache cold` evicts them (only those files: POSIX_FADV_DONTNEED).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from activities.postgres import PgServer, stream_copy
from stack.postgres import PostgresServer

UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
METHODS = ["file_copy", "wal_log", "dump_restore", "cp_floor"]
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "clone.json"


def parse_size(text: str) -> int:
    text = text.strip().upper()
    for unit, factor in UNITS.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


class DurableServer(PostgresServer):
    """The stack's server with its no-durability settings turned back on."""

    def _as_owner(self, argv: list[str]) -> list[str]:
        durable = {"fsync=off": "fsync=on", "synchronous_commit=off": "synchronous_commit=on",
                   "full_page_writes=off": "full_page_writes=on"}
        return super()._as_owner([durable.get(arg, arg) for arg in argv])


async def fill(conn: asyncpg.Connection, target_bytes: int) -> int:
    """Rows of ~200 bytes of hex (incompressible enough, not TOASTed) with a primary
    key, until the database reaches the target size."""
    await conn.execute("CREATE TABLE filler (id bigint PRIMARY KEY, payload text NOT NULL)")
    start, chunk = 1, 20_000
    while True:
        size: int = await conn.fetchval("SELECT pg_database_size(current_database())")
        if size >= target_bytes:
            break
        remaining_rows = max(1_000, int((target_bytes - size) / 300))
        count = min(chunk * 10, remaining_rows)
        await conn.execute(
            "INSERT INTO filler SELECT g, md5(g::text) || md5((g * 7)::text) || "
            "md5((g * 13)::text) || md5((g * 17)::text) || md5((g * 19)::text) || "
            "md5((g * 23)::text) FROM generate_series($1::bigint, $2::bigint) g",
            start, start + count - 1)
        start += count
    await conn.execute("VACUUM ANALYZE filler")
    final: int = await conn.fetchval("SELECT pg_database_size(current_database())")
    return final


def _disk_counters(path: Path) -> tuple[int, ...] | None:
    """Completed and in-flight I/O of the block device holding `path` (or None)."""
    st_dev = os.stat(path).st_dev
    stat = Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}/stat")
    try:
        fields = [int(x) for x in stat.read_text().split()]
    except (OSError, ValueError):
        return None
    # reads, sectors read, writes, sectors written, in flight, discards (newer kernels)
    return (fields[0], fields[2], fields[4], fields[6], fields[8], *fields[11:15])


async def settle(path: Path, quiet: float = 0.5, limit: float = 30.0) -> float:
    """Wait until the disk is about idle for `quiet` seconds (under 2 MB written or
    discarded, nothing in flight): dropping a 1 GB database leaves write-back and
    discards running that would otherwise land in the next measurement."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    previous = _disk_counters(path)
    if previous is None:
        return 0.0
    while loop.time() - began < limit:
        await asyncio.sleep(quiet)
        current = _disk_counters(path)
        if current is None:
            break
        moved = (current[3] - previous[3]) + (current[7] - previous[7] if len(current) > 7 else 0)
        if moved < 4096 and current[4] == 0:
            break
        previous = current
    return loop.time() - began


def set_cache(files: list[Path], cache: str) -> None:
    """warm: read the files so the page cache holds them (this VM's DAMON reclaims
    pages idle for a while, which made `warm` measurements anything but); cold: evict
    just these files' (clean, synced) pages."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            if cache == "cold":
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            else:
                while os.read(fd, 1 << 20):
                    pass
        finally:
            os.close(fd)


async def timed(action: Callable[[], Awaitable[None]]) -> float:
    began = time.perf_counter()
    await action()
    return time.perf_counter() - began


async def bench_size(server: PostgresServer, target: int, repeat: int, durable: bool,
                     caches: list[str], scratch: Path) -> list[dict[str, Any]]:
    """One source database of about `target` bytes, every method timed `repeat` times
    for each cache state; one result per cache state."""
    admin = await asyncpg.connect(server.admin_url)
    pg = PgServer(server.admin_url)
    try:
        await admin.execute("DROP DATABASE IF EXISTS bench_src")
        await admin.execute("CREATE DATABASE bench_src")
        source = await asyncpg.connect(server.url("bench_src"))
        try:
            started = time.perf_counter()
            db_bytes = await fill(source, target)
            fill_seconds = time.perf_counter() - started
        finally:
            await source.close()
        await admin.execute("CHECKPOINT")
        oid = await admin.fetchval("SELECT oid FROM pg_database WHERE datname = 'bench_src'")
        template_dir = server.data_dir / "pgdata" / "base" / str(oid)

        floor_file, floor_copy = scratch / "floor.bin", scratch / "floor.copy"
        with open(floor_file, "wb") as out:
            left = db_bytes
            while left > 0:
                block = os.urandom(min(left, 8 << 20))
                out.write(block)
                left -= len(block)

        def clone(strategy: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                await admin.execute(
                    f"CREATE DATABASE bench_copy TEMPLATE bench_src STRATEGY {strategy}")
            return run

        async def dump_restore() -> None:
            await admin.execute("CREATE DATABASE bench_copy TEMPLATE template0")
            await stream_copy(pg, "bench_src", pg, "bench_copy")

        async def cp_floor() -> None:
            subprocess.run(["cp", str(floor_file), str(floor_copy)], check=True)
            if durable:
                fd = os.open(floor_copy, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "file_copy": clone("FILE_COPY"),
            "wal_log": clone("WAL_LOG"),
            "dump_restore": dump_restore,
            "cp_floor": cp_floor,
        }
        os.sync()  # start clean: no dirty pages of the fill or the floor's file
        await settle(scratch)
        sources = [*sorted(p for p in template_dir.iterdir() if p.is_file()), floor_file]
        results = []
        for cache in caches:
            runs: dict[str, list[float]] = {m: [] for m in METHODS}
            for n in range(repeat):
                order = METHODS[n % len(METHODS):] + METHODS[: n % len(METHODS)]
                for method in order:
                    set_cache(sources, cache)
                    runs[method].append(round(await timed(actions[method]), 4))
                    # Clean up outside the timing; the next run starts without dirty pages.
                    await admin.execute("DROP DATABASE IF EXISTS bench_copy")
                    floor_copy.unlink(missing_ok=True)
                    await admin.execute("CHECKPOINT")
                    os.sync()  # else write-back of this run lands in the next
                    await settle(scratch)
                    print(f"  {target / 1e6:>7.0f} MB {cache:>4} {method:<13} "
                          f"{runs[method][-1]:8.3f} s", flush=True)
            floor = statistics.median(runs["cp_floor"])
            results.append({
                "target_bytes": target,
                "cache": cache,
                "database_bytes": db_bytes,
                "fill_seconds": round(fill_seconds, 2),
                "methods": {
                    method: {
                        "median_seconds": round(statistics.median(values), 4),
                        "min_seconds": min(values),
                        "runs_seconds": values,
                        "ratio_to_floor": round(statistics.median(values) / floor, 2),
                        "mb_per_second": round(db_bytes / 1e6 / statistics.median(values), 1),
                    }
                    for method, values in runs.items()
                },
            })
        floor_file.unlink(missing_ok=True)
        await admin.execute("DROP DATABASE bench_src")
        return results
    finally:
        await admin.close()


async def run_mode(sizes: list[int], repeat: int, durable: bool, caches: list[str],
                   base: Path) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-pg-", dir=base))
    os.chmod(data_dir, 0o755)
    scratch = data_dir / "scratch"  # the floor's files: same file system as the database
    scratch.mkdir()
    server_class = DurableServer if durable else PostgresServer
    server = server_class(data_dir).start()
    try:
        conn = await asyncpg.connect(server.admin_url)
        try:
            version = await conn.fetchval("SHOW server_version")
            settings = {name: await conn.fetchval(f"SHOW {name}") for name in
                        ("fsync", "full_page_writes", "synchronous_commit", "shared_buffers",
                         "wal_level", "checkpoint_timeout", "max_wal_size")}
        finally:
            await conn.close()
        print(f"PostgreSQL {version}, fsync={settings['fsync']}", flush=True)
        results = [entry for size in sizes
                   for entry in await bench_size(server, size, repeat, durable, caches, scratch)]
        return {"durable": durable, "server_version": version, "server_settings": settings,
                "sizes": results}
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def summary(mode: dict[str, Any]) -> str:
    lines = [f"durable={mode['durable']}"]
    for size in mode["sizes"]:
        parts = [f"{m} {v['median_seconds']:.3f}s (x{v['ratio_to_floor']})"
                 for m, v in size["methods"].items()]
        lines.append(f"  {size['database_bytes'] / 1e6:8.1f} MB {size['cache']:>4}: "
                     + ", ".join(parts))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="10MB,100MB,1GB",
                        help="comma-separated database sizes (KB/MB/GB), default %(default)s")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method and size")
    parser.add_argument("--durable", choices=["off", "on", "both"], default="off",
                        help="fsync/full_page_writes/synchronous_commit (default off, as the "
                             "stack runs it); `both` runs the server each way")
    parser.add_argument("--cache", choices=["warm", "cold", "both"], default="warm",
                        help="source files read into the page cache before each run, or "
                             "evicted from it (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the server's data and the floor's file go (one disk)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.durable]
    caches = ["warm", "cold"] if args.cache == "both" else [args.cache]
    started = time.perf_counter()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    results = [asyncio.run(run_mode(sizes, args.repeat, durable, caches, args.data_dir))
               for durable in modes]
    document = {
        "benchmark": "preview database clone time",
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m",
                                                     "bench.clone_bench", *sys.argv[1:]]),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "load_average_at_start": load_at_start,
                    "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "notes": [
            "Each method's median over --repeat runs, run in rotating order; a CHECKPOINT and "
            "a sync (untimed) before each run, then a wait until the disk has been idle for "
            "0.5 s (/sys/dev/block/*/stat), so none pays for the previous one's write-back "
            "or discards (the file system is mounted with `discard`).",
            "cp_floor copies one file of the database's on-disk size (pg_database_size) on "
            "the same file system: the physical floor. Before each run the template's files "
            "and the floor's file are read into the page cache (cache=warm) or evicted from "
            "it with POSIX_FADV_DONTNEED (cache=cold).",
            "dump_restore is activities.postgres.stream_copy: pg_dump -Fc -Z0 | pg_restore "
            "--no-owner into a database created from template0 (its creation is timed too).",
            "ratio_to_floor = method median / cp_floor median.",
        ],
        "modes": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    for mode in results:
        print(summary(mode))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
