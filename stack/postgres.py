"""A private PostgreSQL server from the machine's own binaries, on a free loopback port.

It never touches a system cluster: its data folder is ours, its socket folder too.
PostgreSQL refuses to run as root, so as root it runs as the `postgres` user.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

import asyncpg

from stack.ports import free_port, stop_group

SUPERUSER = "preview"


def pg_bin_dir() -> Path:
    """Folder of initdb/postgres/pg_dump: PG_BIN, else the newest Debian install, else PATH."""
    if env := os.environ.get("PG_BIN"):
        return Path(env)
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if debian:
        return debian[-1]
    found = shutil.which("initdb")
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: install postgresql or set PG_BIN")
    return Path(found).resolve().parent


async def create_database(admin_url: str, name: str) -> None:
    """Create database `name` unless it exists."""
    conn = await asyncpg.connect(admin_url)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


class PostgresServer:
    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.bin = pg_bin_dir()
        self._process: subprocess.Popen[bytes] | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

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

    def start(self) -> PostgresServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.data_dir)
        pgdata = self.data_dir / "pgdata"
        if not (pgdata / "PG_VERSION").exists():
            subprocess.run(
                self._as_owner(
                    [
                        str(self.bin / "initdb"),
                        "-D",
                        str(pgdata),
                        "-U",
                        SUPERUSER,
                        "--auth=trust",
                        "--encoding=UTF8",
                        "--locale=C.UTF-8",
                        "--no-sync",
                    ]
                ),
                check=True,
                capture_output=True,
            )
        socket_dir = self.data_dir / "socket"
        socket_dir.mkdir(exist_ok=True)
        self._chown(socket_dir)
        log = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - lives with the process
        self._process = subprocess.Popen(
            self._as_owner(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(pgdata),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-k",
                    str(socket_dir),
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ]
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process and self._process.poll() is not None:
                code = self._process.returncode
                raise RuntimeError(f"postgres exited with {code}; see {self.data_dir}/postgres.log")
            ready = subprocess.run(
                [
                    str(self.bin / "pg_isready"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    SUPERUSER,
                    "-d",
                    "postgres",
                ],
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
    args = parser.parse_args()
    with PostgresServer(args.data_dir, args.port) as server:
        print(server.admin_url, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})


if __name__ == "__main__":
    main()
