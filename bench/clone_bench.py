"""How fast a preview gets its database, and what it costs on disk: copy-on-write clones
against copies, dump/restore and `cp`.

For each size it builds a pgbench database of about that size on a private PostgreSQL
18 (stack.postgres.PostgresServer, its data directory on an XFS image with reflinks
where this process may mount one), then times, side by side and in rotating order:

- clone:        `SET file_copy_method = clone; CREATE DATABASE ... STRATEGY FILE_COPY`
                (what previews use where the data directory has reflinks)
- copy:         the same with `file_copy_method = copy` (what they use elsewhere)
- wal_log:      `CREATE DATABASE ... STRATEGY WAL_LOG` (PostgreSQL's default)
- dump_restore: `pg_dump -Fc | pg_restore` into a new database (the cross-server
                fallback: activities.postgres.stream_copy, the very code previews use)
- cp_floor:     `cp -r --reflink=never` of the template's files on the same filesystem:
                the floor of any byte copy
- cp_reflink:   `cp -r --reflink=always` of the same files: the floor of a clone

and reports seconds (median and every run), each median's ratio to cp_floor's and to
copy's. Then, at --fleet-size, the engine's own code (GoldenCopyActivities,
PreviewDatabaseActivities) makes a golden copy and --fleet previews' clones of it at
once: their time, the disk they take before and after a write to each.

    .venv/bin/python -m bench.clone_bench                       # 100MB,1GB,10GB
    .venv/bin/python -m bench.clone_bench --sizes 100MB,1GB --repeat 5

Sizes whose data would not fit the disk (about 3x the size, plus headroom) are skipped,
and the JSON says so. The server runs with fsync=off like the stack's (`--durable on`
turns fsync, full_page_writes and synchronous_commit back on).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from activities.postgres import (
    GoldenCopyActivities,
    PgServer,
    PostgresAccess,
    PreviewDatabaseActivities,
    pg_bin_dir,
    stream_copy,
)
from activities.postgres.clone_method import filesystem_of, shares_blocks
from bench.common import Recorder, finish, parse_size, summary
from domain.blueprint import DataPolicy
from domain.golden import GoldenRefreshRequest
from domain.naming import Ownership, pg_identifier
from domain.resources import PostgresCloneSpec, StepInput, StepOutput
from engine.keyring import Keyring
from engine.sealing import Sealer
from stack.postgres import PostgresServer

METHODS = ["clone", "copy", "wal_log", "dump_restore", "cp_floor", "cp_reflink"]
FAST_METHODS = ("clone", "cp_reflink")  # a tenth of a second: --fast-repeat runs each
SLOW_REPEAT = 3  # byte copies above --slow-repeat-above: minutes per size, 3 runs each
PGBENCH_SCALE_BYTES = 15_000_000  # pgbench -i: about 15 MB per unit of scale
DISK_HEADROOM = 4 * 10**9
# The fleet's write to each clone: 0.01% of the rows, spread over the whole table.
WRITE = "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10000 = 0"
BENCH_KEY = b"bench-masking-key"
SEALER = Sealer(Keyring.parse("bench:" + base64.b64encode(b"b" * 32).decode()))  # throw-away


def label(size: int) -> str:
    return f"{size / 1e9:g} GB" if size >= 10**9 else f"{size / 1e6:g} MB"


def disk_needed(size: int) -> int:
    """Peak use of one size: the template, one copy of it, the WAL of WAL_LOG."""
    return 3 * size + DISK_HEADROOM


def used_bytes(path: Path) -> int:
    """Blocks in use on the filesystem holding `path` (shared blocks count once)."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


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
    discarded, nothing in flight): dropping a large database leaves write-back and
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
    """warm: read the files so the page cache holds them (this VM's DAMON reclaims pages
    idle for a while, which would make every method pay for reads at random); cold:
    evict just these files' (clean, synced) pages, as a golden copy's are: no session
    ever reads a template."""
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # pg_internal.init: the relation cache's file comes and goes
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


def make_source(server: PostgresServer, database: str, target: int) -> tuple[int, float]:
    """A pgbench database of about `target` bytes (server-side generation); its scale
    and the seconds it took."""
    scale = max(1, round(target / PGBENCH_SCALE_BYTES))
    began = time.perf_counter()
    subprocess.run([str(pg_bin_dir() / "pgbench"), "-i", "-q", "-s", str(scale),
                    "-I", "dtGvp", server.url(database)], check=True, capture_output=True)
    return scale, time.perf_counter() - began


class SizeBench:
    """One source database of one size, every method timed on it."""

    def __init__(self, server: PostgresServer, admin: asyncpg.Connection, scratch: Path,
                 durable: bool) -> None:
        self.server, self.admin, self.scratch, self.durable = server, admin, scratch, durable
        self.pg = PgServer(server.admin_url)
        self.floor = scratch / "floor"

    def actions(self, template_dir: Path) -> dict[str, Callable[[], Awaitable[None]]]:
        async def clone(strategy: str, method: str | None = None) -> None:
            if method:
                await self.admin.execute(f"SET file_copy_method = {method}")
            await self.admin.execute(
                f"CREATE DATABASE bench_copy TEMPLATE bench_src STRATEGY {strategy}")

        async def dump_restore() -> None:
            await self.admin.execute("CREATE DATABASE bench_copy TEMPLATE template0")
            await stream_copy(self.pg, "bench_src", self.pg, "bench_copy")

        def cp(reflink: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                await asyncio.to_thread(subprocess.run, [
                    "cp", "-r", f"--reflink={reflink}", str(template_dir), str(self.floor)],
                    check=True)
                if self.durable:
                    await asyncio.to_thread(subprocess.run, ["sync", "-f", str(self.floor)])
            return run

        return {
            "clone": lambda: clone("FILE_COPY", "clone"),
            "copy": lambda: clone("FILE_COPY", "copy"),
            "wal_log": lambda: clone("WAL_LOG"),
            "dump_restore": dump_restore,
            "cp_floor": cp("never"),
            "cp_reflink": cp("always"),
        }

    async def clean(self) -> None:
        """Outside the timing: drop the copy; the next run starts without dirty pages."""
        await self.admin.execute("DROP DATABASE IF EXISTS bench_copy")
        await self.admin.execute("RESET file_copy_method")
        shutil.rmtree(self.floor, ignore_errors=True)
        await self.admin.execute("CHECKPOINT")
        os.sync()
        await settle(self.scratch)

    async def run(self, target: int, counts: RunCounts, methods: list[str],
                  caches: list[str]) -> list[dict[str, Any]]:
        """One source of about `target` bytes; every method timed (`counts` says how
        often) for each cache state; one result per cache state."""
        await self.admin.execute("DROP DATABASE IF EXISTS bench_src WITH (FORCE)")
        await self.admin.execute("CREATE DATABASE bench_src")
        scale, fill_seconds = await asyncio.to_thread(make_source, self.server, "bench_src",
                                                      target)
        await self.admin.execute("CHECKPOINT")
        db_bytes: int = await self.admin.fetchval("SELECT pg_database_size('bench_src')")
        oid = await self.admin.fetchval("SELECT oid FROM pg_database WHERE datname = 'bench_src'")
        template_dir = self.server.pgdata / "base" / str(oid)
        actions = self.actions(template_dir)
        os.sync()
        await settle(self.scratch)
        sources = sorted(p for p in template_dir.iterdir() if p.is_file())
        results = []
        for cache in caches:
            runs, shared = await self.timings(target, counts.of(methods, db_bytes), cache,
                                              sources, actions)
            results.append({
                "target_bytes": target,
                "cache": cache,
                "database_bytes": db_bytes,
                "pgbench_scale": scale,
                "fill_seconds": round(fill_seconds, 2),
                "clone_shares_blocks": shared,
                "methods": self.entries(runs, db_bytes),
            })
        return results

    async def timings(self, target: int, count: dict[str, int], cache: str,
                      sources: list[Path], actions: dict[str, Callable[[], Awaitable[None]]],
                      ) -> tuple[dict[str, list[float]], bool | None]:
        methods = list(count)
        runs: dict[str, list[float]] = {m: [] for m in methods}
        shared: bool | None = None
        for n in range(max(count.values())):
            order = methods[n % len(methods):] + methods[: n % len(methods)]
            for method in order:
                if len(runs[method]) >= count[method]:
                    continue
                set_cache(sources, cache)
                runs[method].append(round(await timed(actions[method]), 4))
                if method == "clone" and shared is None:
                    new_oid = await self.admin.fetchval(
                        "SELECT oid FROM pg_database WHERE datname = 'bench_copy'")
                    shared = shares_blocks(self.server.pgdata / "base" / str(new_oid))
                await self.clean()
                print(f"  {label(target):>7} {cache} {method:<13} {runs[method][-1]:8.3f} s",
                      flush=True)
        return runs, shared

    @staticmethod
    def entries(runs: dict[str, list[float]], db_bytes: int) -> dict[str, Any]:
        floor = statistics.median(runs["cp_floor"]) if runs.get("cp_floor") else None
        copy = statistics.median(runs["copy"]) if runs.get("copy") else None

        def entry(values: list[float]) -> dict[str, Any]:
            median = statistics.median(values)
            return {
                "median_seconds": round(median, 4),
                "min_seconds": min(values),
                "runs_seconds": values,
                "ratio_to_floor": round(median / floor, 3) if floor else None,
                "ratio_to_copy": round(median / copy, 4) if copy else None,
                "mb_per_second": round(db_bytes / 1e6 / median, 1),
            }

        return {m: entry(v) for m, v in runs.items() if v}


@dataclass(frozen=True)
class RunCounts:
    """How many runs each method gets at one size."""

    repeat: int
    fast_repeat: int
    slow_above: int

    def of(self, methods: list[str], db_bytes: int) -> dict[str, int]:
        big = db_bytes > self.slow_above

        def count(method: str) -> int:
            if method in FAST_METHODS:
                return max(self.repeat, self.fast_repeat)
            if big:  # minutes per run at this size
                return 1 if method == "dump_restore" else min(self.repeat, SLOW_REPEAT)
            return self.repeat

        return {m: count(m) for m in methods}


async def fleet(server: PostgresServer, admin: asyncpg.Connection, size: int,
                previews: int) -> dict[str, Any]:
    """A golden copy made by the engine, then `previews` previews' clones of it at once
    (PreviewDatabaseActivities, as the worker runs them): time and disk."""
    source = f"fleet_src_{uuid.uuid4().hex[:6]}"
    await admin.execute(f"CREATE DATABASE {source}")
    await asyncio.to_thread(make_source, server, source, size)
    access = PostgresAccess(server.admin_url, SEALER, BENCH_KEY)
    began = time.perf_counter()
    generation = await GoldenCopyActivities(access).refresh_golden_copy(
        GoldenRefreshRequest(source_url=server.url(source), source_name="fleet", jobs=2))
    refresh_seconds = time.perf_counter() - began
    await admin.execute(f"DROP DATABASE {source}")
    golden_bytes: int = await admin.fetchval("SELECT pg_database_size($1)", generation)
    clones = PreviewDatabaseActivities(access)
    specs = [PostgresCloneSpec(
        owner=Ownership(environment=f"fleet-{n}"), database=pg_identifier("fleet", str(n), "db"),
        role=pg_identifier("fleet", str(n), "app"), data_policy=DataPolicy.clone,
        source="fleet") for n in range(previews)]

    async def disk() -> dict[str, int]:
        await admin.execute("CHECKPOINT")
        os.sync()
        await settle(server.pgdata)
        wal = sum(p.stat().st_size for p in (server.pgdata / "pg_wal").iterdir() if p.is_file())
        used = used_bytes(server.pgdata)
        return {"used": used, "wal": wal, "used_without_wal": used - wal}

    async def one(spec: PostgresCloneSpec) -> tuple[float, StepOutput]:
        started = time.perf_counter()
        out = await clones.ensure_database_clone(StepInput(spec=spec))
        return time.perf_counter() - started, out

    before = await disk()
    began = time.perf_counter()
    made = await asyncio.gather(*(one(spec) for spec in specs))
    wall = time.perf_counter() - began
    after_clones = await disk()

    async def write(out: StepOutput) -> None:
        conn = await asyncpg.connect(SEALER.unseal(out.secrets["url"]))
        try:
            await conn.execute(WRITE)
        finally:
            await conn.close()

    await asyncio.gather(*(write(out) for _, out in made))
    after_writes = await disk()
    for spec in specs:
        await clones.remove_database_clone(StepInput(spec=spec))
    await admin.execute(f"DROP DATABASE {generation}")
    methods = sorted({out.values.get("clone_method", "") for _, out in made})
    return {
        "previews": previews,
        "golden_bytes": golden_bytes,
        "golden_refresh_seconds": round(refresh_seconds, 1),
        "clone_methods": methods,
        "details": sorted({out.detail for _, out in made})[:3],
        "all_at_once_wall_seconds": round(wall, 3),
        "per_preview_seconds": summary([t for t, _ in made], 3),
        "disk_used_bytes": {"before": before, "after_clones": after_clones,
                            "after_one_write_each": after_writes},
        "disk_added_by_clones_bytes": after_clones["used"] - before["used"],
        "disk_added_by_clones_fraction_of_golden": round(
            (after_clones["used"] - before["used"]) / golden_bytes, 4),
        "disk_added_after_writes_bytes": after_writes["used"] - before["used"],
        "disk_added_after_writes_fraction_of_golden": round(
            (after_writes["used"] - before["used"]) / golden_bytes, 4),
        "disk_added_after_writes_without_wal_bytes": (after_writes["used_without_wal"]
                                                      - before["used_without_wal"]),
        "write": WRITE,
    }


async def bench(args: argparse.Namespace, sizes: list[int], skipped: list[dict[str, Any]],
                ) -> dict[str, Any]:
    """Every size in each --durable mode (a server each), the fleet on the last one."""
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.durable]
    runs = [await bench_mode(args, sizes, durable, with_fleet=n == len(modes) - 1)
            for n, durable in enumerate(modes)]
    last = runs[-1]
    return {
        "parameters": {**last["parameters"], "durable": args.durable},
        "skipped_sizes": skipped,
        "storage": last["storage"],
        "modes": [mode for run in runs for mode in run["modes"]],
        "fleet": last["fleet"],
        "figures": last["figures"],
        "figures_by_durable": {str(run["modes"][0]["durable"]).lower(): run["figures"]
                               for run in runs},
    }


async def bench_mode(args: argparse.Namespace, sizes: list[int], durable: bool, *,
                     with_fleet: bool) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench-pg-", dir=args.data_dir))
    os.chmod(base, 0o755)
    largest = max([*sizes, parse_size(args.fleet_size)])
    image = f"{disk_needed(largest) // 10**9 + 2}G"  # sparse: only what is written counts
    options = {"fsync": "on", "synchronous_commit": "on",
               "full_page_writes": "on"} if durable else {}
    server = PostgresServer(base, reflink=args.reflink, image_size=image, options=options,
                            image_direct_io=True)
    await asyncio.to_thread(server.start)
    try:
        admin = await asyncpg.connect(server.admin_url)
        scratch = server.pgdata.parent / "scratch"  # the floor's files: same filesystem
        scratch.mkdir(exist_ok=True)
        try:
            version = await admin.fetchval("SHOW server_version")
            settings = {name: await admin.fetchval(f"SHOW {name}") for name in
                        ("fsync", "full_page_writes", "synchronous_commit", "shared_buffers",
                         "wal_level", "checkpoint_timeout", "max_wal_size")}
            methods = [m for m in args.methods.split(",") if m]
            if not server.on_reflinks and "cp_reflink" in methods:
                methods.remove("cp_reflink")  # no reflinks: `cp --reflink=always` fails
            print(f"PostgreSQL {version} on {server.storage}, fsync {settings['fsync']}",
                  flush=True)
            size_bench = SizeBench(server, admin, scratch, durable)
            results = []
            fleet_result = None
            caches = ["cold", "warm"] if args.cache == "both" else [args.cache]
            counts = RunCounts(args.repeat, args.fast_repeat, parse_size(args.slow_repeat_above))
            for size in sizes:
                results += await size_bench.run(size, counts, methods, caches)
            await admin.execute("DROP DATABASE IF EXISTS bench_src")
            if args.fleet and with_fleet:
                print(f"  {args.fleet} previews at once on a {args.fleet_size} golden copy",
                      flush=True)
                fleet_result = await fleet(server, admin, parse_size(args.fleet_size),
                                           args.fleet)
        finally:
            await admin.close()
        return {
            "parameters": {"sizes": [label(s) for s in sizes], "repeat": args.repeat,
                           "fast_repeat": args.fast_repeat,
                           "methods": methods, "durable": durable, "reflink": args.reflink,
                           "fleet": args.fleet, "fleet_size": args.fleet_size,
                           "slow_repeat_above": args.slow_repeat_above,
                           "cache": args.cache},
            "storage": {"data_directory": server.storage,
                        "filesystem": filesystem_of(server.pgdata), "image_size": image,
                        "loop_direct_io": server.on_reflinks},
            "modes": [{"durable": durable, "server_version": version,
                       "server_settings": settings, "sizes": results}],
            "fleet": fleet_result,
            "figures": figures(results, fleet_result),
        }
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(base, ignore_errors=True)


def figures(sizes: list[dict[str, Any]], fleet_result: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's acceptance figures, from this run alone: per cache state, and the
    fleet's."""
    found: dict[str, Any] = {}
    for cache in dict.fromkeys(s["cache"] for s in sizes):
        found[cache] = cache_figures([s for s in sizes if s["cache"] == cache])
    if fleet_result:
        found["fleet_disk_before_writes_fraction_of_golden"] = fleet_result[
            "disk_added_by_clones_fraction_of_golden"]
        found["fleet_disk_after_writes_fraction_of_golden"] = fleet_result[
            "disk_added_after_writes_fraction_of_golden"]
        found["fleet_all_at_once_wall_seconds"] = fleet_result["all_at_once_wall_seconds"]
    return found


def cache_figures(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    by_size = {s["target_bytes"]: s["methods"] for s in sizes}
    found: dict[str, Any] = {}
    one_gb = by_size.get(10**9, {})
    if "clone" in one_gb:
        found["clone_1gb_median_ms"] = round(one_gb["clone"]["median_seconds"] * 1000, 1)
    if "clone" in one_gb and "copy" in one_gb:
        found["copy_1gb_median_ms"] = round(one_gb["copy"]["median_seconds"] * 1000, 1)
        found["clone_1gb_speedup_vs_copy"] = round(
            one_gb["copy"]["median_seconds"] / one_gb["clone"]["median_seconds"], 1)
    ten_gb = by_size.get(10 * 10**9, {})
    if "clone" in one_gb and "clone" in ten_gb:
        found["clone_10gb_ms"] = round(ten_gb["clone"]["median_seconds"] * 1000, 1)
        found["clone_10gb_over_1gb"] = round(
            ten_gb["clone"]["median_seconds"] / one_gb["clone"]["median_seconds"], 2)
        # What grows with size: PostgreSQL's clone loop (see the notes).
        found["clone_ms_per_gb_above_1gb"] = round(
            (ten_gb["clone"]["median_seconds"] - one_gb["clone"]["median_seconds"]) * 1000 / 9, 1)
        if "cp_reflink" in ten_gb:
            found["cp_reflink_10gb_ms"] = round(ten_gb["cp_reflink"]["median_seconds"] * 1000, 1)
    return found


NOTES = [
    "One server, one run: every method on the same template, in rotating order, --repeat "
    "times; clone and cp_reflink --fast-repeat times; above --slow-repeat-above dump_restore "
    f"once and the other byte copies {SLOW_REPEAT} times; a CHECKPOINT, a sync and a wait "
    "until the disk is idle (/sys/dev/block/*/stat) after each run, outside the timing. "
    "Before each run the template's files are evicted from the page cache "
    "(POSIX_FADV_DONTNEED: cache=cold, as a golden copy's are, since no session reads a "
    "template) or read into it (cache=warm).",
    "The XFS image's loop device does direct I/O (losetup --direct-io=on): writes and cold "
    "reads reach the disk as on a volume, instead of the host's page cache holding the "
    "image a second time. fsync off: the local stack's settings; fsync on (full_page_writes "
    "and synchronous_commit too): a production server's.",
    "clone and copy are the same `CREATE DATABASE ... STRATEGY FILE_COPY` with "
    "file_copy_method = clone or copy; clone_shares_blocks says whether the first clone's "
    "largest file shares its extents (FIEMAP), i.e. whether the clone was copy-on-write.",
    "cp_floor = `cp -r --reflink=never` of the template's folder on the same filesystem "
    "(coreutils' cp reflinks by default where it can, so the floor says never); "
    "cp_reflink = `cp -r --reflink=always`. ratio_to_floor = median / cp_floor median; "
    "ratio_to_copy = median / copy median.",
    "Why clone still grows with size on Linux: PostgreSQL 18 clones each file with "
    "copy_file_range() 1 MB at a time (copydir.c, to check for interrupts between calls), "
    "and each call reflinks its 1 MB for about 10 us on XFS: about 10 ms per GB. `cp "
    "--reflink=always` (one FICLONE per file) stays at about 12 ms for 10 GB. Measured "
    "outside PostgreSQL on the same kind of XFS image: 10 GB in 1 MB copy_file_range "
    "calls 112-137 ms, in 1 GB calls 0.15 ms, one FICLONE 0.05 ms. perf: the time per call "
    "is XFS's remap transaction (refcount btree update, bmap intent, log commit), the same "
    "for 64 kB and 16 MB calls; btrfs measured the same (15-17 us per 1 MB call).",
    "What does not grow with size: two checkpoints, about 300 files made and cloned (a "
    "database's catalogs), and with fsync on one fsync per file; an fsync whose log force "
    "is already done still flushes the device's cache (xfs_file_fsync), which the loop "
    "device turns into an fsync of the image file on the host, so the durable clone's "
    "fixed cost follows the host disk's flush latency (with a Go build running beside it: "
    "370 ms median for 1 GB, 58 ms with fsync off).",
    "dump_restore is activities.postgres.stream_copy: pg_dump -Fc -Z0 | pg_restore "
    "--no-owner into a database created from template0 (its creation is timed too).",
    "Databases are `pgbench -i -I dtGvp` at a scale of about 15 MB per unit; "
    "database_bytes = pg_database_size.",
    "fleet: the engine's own activities: a golden refresh of a pgbench source (no masking "
    "rules), then ensure_database_clone of every preview at once (asyncio.gather, one "
    "PostgresAccess, as one worker runs them), their wall time, and the filesystem's used "
    "blocks (statvfs, after a CHECKPOINT; shared blocks count once) before the clones, "
    "after them and after one write to each. The filesystem also holds the WAL.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="100MB,1GB,10GB",
                        help="comma-separated database sizes (KB/MB/GB), default %(default)s")
    parser.add_argument("--repeat", type=int, default=5, help="runs per method and size")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--fast-repeat", type=int, default=9,
                        help="runs of clone and cp_reflink per size, default %(default)s")
    parser.add_argument("--slow-repeat-above", default="5GB",
                        help=f"above this size dump_restore runs once, the other byte "
                             f"copies {SLOW_REPEAT} times (default %(default)s)")
    parser.add_argument("--fleet", type=int, default=20,
                        help="previews cloned at once (0: none), default %(default)s")
    parser.add_argument("--fleet-size", default="1GB")
    parser.add_argument("--durable", choices=["off", "on", "both"], default="both",
                        help="fsync, full_page_writes, synchronous_commit (the stack runs "
                             "with them off); both: a server each way, the fleet and "
                             "`figures` on the durable one (default %(default)s)")
    parser.add_argument("--cache", choices=["cold", "warm", "both"], default="both",
                        help="the template's files evicted from the page cache before each "
                             "run, or read into it (default %(default)s)")
    parser.add_argument("--reflink", choices=["auto", "on", "off"], default="auto",
                        help="the data directory on an XFS image with reflinks "
                             "(stack/reflink.py), default %(default)s")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the server's image or data folder goes")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    recorder = Recorder("bench.clone_bench")
    free = shutil.disk_usage(args.data_dir).free
    sizes, skipped = [], []
    for size in (parse_size(s) for s in args.sizes.split(",") if s.strip()):
        if disk_needed(size) > free:
            skipped.append({"size": label(size), "reason": f"needs about "
                            f"{disk_needed(size) / 1e9:.0f} GB free in {args.data_dir}, "
                            f"{free / 1e9:.0f} GB are"})
        else:
            sizes.append(size)
    for entry in skipped:
        print(f"skipping {entry['size']}: {entry['reason']}", flush=True)
    document = asyncio.run(bench(args, sizes, skipped))
    fig = document["figures"]
    finish(recorder, "clone", document, NOTES,
           "; ".join(f"{k} {v}" for k, v in fig.items()) or "no figures", args.output)


if __name__ == "__main__":
    main()
