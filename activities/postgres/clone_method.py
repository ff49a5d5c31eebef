"""How a preview database's files are copied from its golden template: file_copy_method.

`CREATE DATABASE ... TEMPLATE golden STRATEGY FILE_COPY` copies the template's files.
PostgreSQL 18 does it with `file_copy_method = copy` (reads and writes every byte) or
`clone` (copy_file_range on Linux, copyfile on macOS): on a filesystem with reflinks
(XFS made with reflink=1, btrfs, ZFS with block cloning, APFS) a clone shares the
template's blocks, so it takes the same few milliseconds at any size, and its disk use
grows only with what the preview writes. Before 18 there is only copy.

On Linux, `clone` does not fail where there are no reflinks: copy_file_range quietly
copies the bytes instead. So the outcome is checked, not assumed: once per server and
golden generation, when the worker sees the server's data directory (same host), the
first clone is made with `clone` and one of its files is asked whether its extents are
shared (FIEMAP); yes keeps `clone`, no switches to `copy`, with the filesystem as the
reason. Where the worker cannot look (another host, no privilege to read
data_directory), the server's own setting (`file_copy_method` in postgresql.conf, put
there by whoever knows its volume) is the answer. A clone that fails outright ("could
not clone file", as copyfile does without APFS) is made again with `copy`.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import asyncpg

CLONE, COPY, STREAM = "clone", "copy", "dump_restore"
FIRST_VERSION = 180000  # server_version_num of the first release with file_copy_method

_FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP_HEADER = "=QQIIII"  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count
_EXTENT_SIZE = 56  # struct fiemap_extent
_EXTENTS = 16


@dataclass(frozen=True)
class CloneMethod:
    """The file_copy_method a server's clones of one golden generation use, and why.
    `check` = clone, to be confirmed by looking at the first clone's files."""

    method: str
    reason: str
    has_setting: bool = True  # the server has file_copy_method (18 and later)
    check: bool = False

    def detail(self, milliseconds: int) -> str:
        """The line for people: how this clone was made, how long it took, why."""
        verb = "cloned" if self.method == CLONE else "copied"
        setting = f" with file_copy_method={self.method}" if self.has_setting else ""
        return f"{verb} in {milliseconds} ms{setting} ({self.reason})"


async def planned_method(conn: asyncpg.Connection, host: str) -> CloneMethod:
    """What to try for the first clone of a generation on the server `conn` is on."""
    version = int(await conn.fetchval("SHOW server_version_num"))
    if version < FIRST_VERSION:
        return CloneMethod(COPY, f"PostgreSQL {version // 10000} has no file_copy_method",
                           has_setting=False)
    if await local_data_directory(conn, host) is not None:
        return CloneMethod(CLONE, "to be checked", check=True)
    return await configured_method(conn)


async def configured_method(conn: asyncpg.Connection) -> CloneMethod:
    """The server's own answer: its file_copy_method as configured (not as SET here)."""
    configured = await conn.fetchval(
        "SELECT reset_val FROM pg_settings WHERE name = 'file_copy_method'")
    if configured == CLONE:
        return CloneMethod(CLONE, "the server is configured with file_copy_method = clone")
    return CloneMethod(COPY, "the server is configured with file_copy_method = copy and its "
                             "data directory is not visible to the worker to check for "
                             "reflinks")


async def local_data_directory(conn: asyncpg.Connection, host: str) -> Path | None:
    """The server's data directory, when it is on this host and readable by us."""
    try:
        if not ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host != "localhost":
            return None
    try:
        setting = await conn.fetchval("SELECT current_setting('data_directory')")
        system = await conn.fetchval("SELECT system_identifier FROM pg_control_system()")
    except asyncpg.InsufficientPrivilegeError:
        return None  # neither superuser nor pg_read_all_settings (or pg_monitor)
    data_dir = Path(setting)
    base = data_dir / "base"
    if not (base.is_dir() and os.access(base, os.R_OK | os.X_OK)):
        return None
    # The same path here may be another server's (a port forwarded to loopback from a
    # container or a tunnel): only this server's own control file says it is its.
    try:
        with open(data_dir / "global" / "pg_control", "rb") as control:
            here = struct.unpack("=Q", control.read(8))[0]
    except (OSError, struct.error):
        return None
    return data_dir if here == system else None


async def checked_method(conn: asyncpg.Connection, host: str, database: str) -> CloneMethod:
    """After the first `clone` of a generation: did it share blocks? The method to keep."""
    data_dir = await local_data_directory(conn, host)
    oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", database)
    if data_dir is None or oid is None:
        return await configured_method(conn)
    # Off the event loop: FIEMAP_FLAG_SYNC writes the file's dirty pages out first.
    shared = await asyncio.to_thread(shares_blocks, data_dir / "base" / str(oid))
    if shared is None:
        configured = await configured_method(conn)
        return CloneMethod(configured.method, f"{filesystem_of(data_dir)} cannot tell "
                           "whether a file's blocks are shared (no FIEMAP), so the server's "
                           f"configured file_copy_method = {configured.method} decides")
    filesystem = filesystem_of(data_dir)
    if shared:
        return CloneMethod(CLONE, f"{filesystem} reflinks: it shares the golden copy's blocks")
    return CloneMethod(COPY, f"the data directory's filesystem ({filesystem}) has no reflinks")


def shares_blocks(folder: Path) -> bool | None:
    """Whether the largest file of a freshly cloned database folder shares its extents
    with another file; None when the filesystem cannot say (no FIEMAP)."""
    try:
        files = [p for p in folder.iterdir() if p.is_file()]
    except OSError:
        return None
    largest = max(files, key=lambda p: p.stat().st_size, default=None)
    if largest is None or largest.stat().st_size == 0:
        return None
    request = bytearray(struct.pack(_FIEMAP_HEADER, 0, 2**64 - 1, _FIEMAP_FLAG_SYNC, 0,
                                    _EXTENTS, 0) + bytes(_EXTENT_SIZE * _EXTENTS))
    try:
        with open(largest, "rb") as file:
            fcntl.ioctl(file.fileno(), _FS_IOC_FIEMAP, request, True)
    except OSError:
        return None
    mapped = struct.unpack_from("=I", request, 20)[0]
    header = struct.calcsize(_FIEMAP_HEADER)
    flags = [struct.unpack_from("=I", request, header + _EXTENT_SIZE * n + 40)[0]
             for n in range(min(mapped, _EXTENTS))]
    if not flags:
        return None
    return any(f & _FIEMAP_EXTENT_SHARED for f in flags)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it)."""
    best, kind = -1, "unknown"
    try:
        resolved = path.resolve()
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            mount_point = Path(left.split()[4].encode().decode("unicode_escape"))
            if resolved.is_relative_to(mount_point) and len(mount_point.parts) > best:
                best, kind = len(mount_point.parts), right.split()[0]
    except (OSError, IndexError):
        pass
    return kind


def is_clone_failure(error: BaseException) -> bool:
    """A clone that failed outright (no reflinks where copyfile needs them, another
    filesystem): a copy can still be made."""
    message = str(getattr(error, "message", "") or error)
    return message.startswith("could not clone file")
