"""PostgreSQL: masked golden copies of source databases, and one clone per preview.

Golden copies: per source, a *generation* database is restored from a pg_dump of the
source, masked (domain/masking.py), scrubbed (no dead row version, index entry or
statistic keeps an original value), verified against the source, and only then made
the source's current golden copy (one row of `preview_engine.golden`, switched in one
transaction). A refresh that fails anywhere leaves the previous golden in service.
Golden databases refuse connections (datallowconn = false): a template clone needs
no other session on its template.

Preview clones: `CREATE DATABASE ... TEMPLATE <current golden> STRATEGY FILE_COPY`
(or an empty / seeded database), owned by a login role of its own with a generated
password (returned sealed only). When the golden copies live on another server, the
clone streams `pg_dump | pg_restore` instead.

Ownership marks: a JSON comment on every database and role we make
(`{"managed-by": "preview-engine", "preview-environment": ..., ...}`), plus the
bookkeeping tables of schema `preview_engine` in the admin database. A database
appears before its comment can be set (CREATE DATABASE cannot share a transaction),
so a row written *before* the create claims the name for its environment; an
unmarked database is adopted only with such a row.

Locks: session advisory locks on the admin database. Clones of one golden source take
the source's lock shared (PostgreSQL 15 clones one template concurrently), whatever
must connect to or drop a golden takes it exclusive, so neither fails the other.

Passwords never reach argv or messages: pg_dump/pg_restore get them via PGPASSWORD,
role passwords are sent as SCRAM verifiers, masking keys as bind parameters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import string
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import AwsClients, is_error, parse_s3_uri
from activities.errors import foreign_resource, invalid_input
from domain import masking
from domain.blueprint import DataPolicy, MaskingMethod, MaskingRule
from domain.naming import MANAGED_BY, PG_IDENTIFIER
from domain.resources import (
    AwsTarget,
    PostgresCloneSpec,
    PreviewDatabase,
    StepInput,
    StepOutput,
)
from domain.secrets import SealedValue
from engine.sealing import Sealer
from stack.postgres import pg_bin_dir

log = logging.getLogger(__name__)

# Activity names (the workflows import these, not this module's code).
RESTORE_GOLDEN = "restore_golden_generation"
MASK_GOLDEN = "mask_golden_generation"
VERIFY_GOLDEN = "verify_golden_generation"
PROMOTE_GOLDEN = "promote_golden_generation"
PRUNE_GOLDEN = "prune_golden_generations"
DISCARD_GOLDEN = "discard_golden_generation"
PUBLISH_GOLDEN = "publish_golden_dump"
LIST_PREVIEW_DATABASES = "list_preview_databases"
REMOVE_PREVIEW_DATABASE = "remove_preview_database"

# Error types (non-retryable ones are raised with non_retryable=True).
MASKING_NOT_VERIFIED = "MaskingNotVerified"
GOLDEN_STATE = "GoldenState"
PG_TOOL_FAILED = "PgToolFailed"

SCHEMA = "preview_engine"
KIND_CLONE, KIND_ROLE, KIND_GOLDEN = "clone", "clone-role", "golden"
# Golden generation states, in order; the comment on the database holds the state.
RESTORING, RESTORED, MASKED, SCRUBBED, VERIFIED = (
    "restoring", "restored", "masked", "scrubbed", "verified",
)
GOLDEN_ORDER = [RESTORING, RESTORED, MASKED, SCRUBBED, VERIFIED]
# Clone states: `loaded` = data copied, ownership not yet handed to the role.
CREATING, LOADED, READY = "creating", "loaded", "ready"

HEARTBEAT_SECONDS = 5.0
FINGERPRINT_BATCH = 5000
SCRUB_DEADLINE_SECONDS = 120.0
_PASSWORD_ALPHABET = string.ascii_letters + string.digits
_SOURCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_GENERATION = r"^[a-z_][a-z0-9_]{0,62}$"


# --- inputs and outputs of the golden-copy activities --------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GoldenRefreshRequest(_Model):
    """One refresh of a source's golden copy (what the schedule starts)."""

    source_url: str = Field(
        repr=False,
        description="libpq URL of the source database. Prefer no password here: the "
        "worker's PGPASSFILE serves it, and this value is stored in workflow history.",
    )
    source_name: str = Field(pattern=_SOURCE_NAME)
    masking: list[MaskingRule] = Field(default_factory=list)
    keep_generations: int = Field(3, ge=1, le=50)
    jobs: int = Field(2, ge=1, le=16, description="pg_restore parallel jobs")
    scan_min_length: int = Field(
        6, ge=1, description="Originals this long are searched in every text column too"
    )
    dump_bucket: str | None = Field(
        None, description="S3 bucket to publish the verified copy to as a pg_dump, for "
        "container databases (see domain.masking.golden_dump_uri); None: not published"
    )


class GoldenStep(_Model):
    source_name: str = Field(pattern=_SOURCE_NAME)
    generation: str = Field(pattern=_GENERATION)


class GoldenRestoreInput(GoldenStep):
    source_url: str = Field(repr=False)
    jobs: int = Field(2, ge=1, le=16)


class GoldenMaskInput(GoldenStep):
    masking: list[MaskingRule] = Field(default_factory=list)


class GoldenVerifyInput(GoldenStep):
    source_url: str = Field(repr=False)
    masking: list[MaskingRule] = Field(default_factory=list)
    scan_min_length: int = Field(6, ge=1)


class GoldenPromoteInput(GoldenStep):
    masking: list[MaskingRule] = Field(default_factory=list)


class GoldenDiscardInput(GoldenStep):
    pass


class GoldenPublishInput(GoldenStep):
    dump_uri: str = Field(pattern=r"^s3://[^/]+/.+", description="The pointer to update")
    masking: list[MaskingRule] = Field(default_factory=list)
    keep_generations: int = Field(3, ge=1, le=50)


class GoldenPruneInput(_Model):
    source_name: str = Field(pattern=_SOURCE_NAME)
    keep_generations: int = Field(3, ge=1, le=50)


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

    def libpq(self, database: str | None = None) -> tuple[str, dict[str, str]]:
        """URL without password for a client's argv, and the environment carrying it."""
        env = dict(os.environ)  # a PGPASSFILE of the worker keeps working
        env.setdefault("PGCONNECT_TIMEOUT", "30")
        if self.password:
            env["PGPASSWORD"] = self.password
        return self._url(database), env

    def redacted(self, database: str | None = None) -> str:
        return self._url(database)


# --- small helpers --------------------------------------------------------------------


def _heartbeat(*details: Any) -> None:
    if activity.in_activity():
        activity.heartbeat(*details)


@contextlib.asynccontextmanager
async def _keepalive(what: str) -> AsyncIterator[None]:
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


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    return activity.logger if activity.in_activity() else log


def _mark(kind: str, **fields: str) -> str:
    return json.dumps({"managed-by": MANAGED_BY, "kind": kind, **fields}, sort_keys=True)


def _parse_mark(comment: str | None) -> dict[str, str] | None:
    if not comment:
        return None
    try:
        mark = json.loads(comment)
    except ValueError:
        return None
    if not isinstance(mark, dict) or mark.get("managed-by") != MANAGED_BY:
        return None
    return {str(k): str(v) for k, v in mark.items()}


def _clone_mark(mark: dict[str, str] | None, environment: str, kind: str = KIND_CLONE) -> bool:
    return (mark is not None and mark.get("kind") == kind
            and mark.get("preview-environment") == environment)


def _golden_mark(mark: dict[str, str] | None, source_name: str) -> bool:
    return (mark is not None and mark.get("kind") == KIND_GOLDEN
            and mark.get("golden-source") == source_name)


def _lock_key(kind: str, name: str) -> int:
    digest = hashlib.sha256(f"preview-engine/{kind}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _new_password() -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(32))


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


def _pg_message(error: BaseException) -> str:
    """The primary message only: DETAIL lines of PostgreSQL errors can quote row data."""
    message = getattr(error, "message", None) or (error.args[0] if error.args else "")
    return str(message).splitlines()[0] if message else type(error).__name__


def _is_user_error(error: BaseException) -> bool:
    """Errors a retry cannot fix: bad data, constraints, SQL, privileges."""
    state = str(getattr(error, "sqlstate", "") or "")
    return state[:2] in {"22", "23", "42", "0A", "2B", "44", "P0"}


def _q(name: str) -> str:
    return masking.quote_ident(name)


def _lit(value: str) -> str:
    return masking.quote_literal(value)


@dataclass(frozen=True)
class _DbInfo:
    oid: int
    mark: dict[str, str] | None
    connection_limit: int
    allow_connections: bool


@dataclass(frozen=True)
class _RoleInfo:
    oid: int
    mark: dict[str, str] | None
    connection_limit: int
    password: str | None


async def _database_info(conn: asyncpg.Connection, name: str) -> _DbInfo | None:
    row = await conn.fetchrow(
        "SELECT oid, shobj_description(oid, 'pg_database') AS comment, datconnlimit, "
        "datallowconn FROM pg_database WHERE datname = $1", name)
    if row is None:
        return None
    return _DbInfo(row["oid"], _parse_mark(row["comment"]), row["datconnlimit"],
                   row["datallowconn"])


async def _role_info(conn: asyncpg.Connection, name: str) -> _RoleInfo | None:
    row = await conn.fetchrow(
        "SELECT oid, shobj_description(oid, 'pg_authid') AS comment, rolconnlimit, "
        "rolpassword FROM pg_authid WHERE rolname = $1", name)
    if row is None:
        return None
    return _RoleInfo(row["oid"], _parse_mark(row["comment"]), row["rolconnlimit"],
                     row["rolpassword"])


async def _set_comment(conn: asyncpg.Connection, database: str, mark: str) -> None:
    await conn.execute(f"COMMENT ON DATABASE {_q(database)} IS {_lit(mark)}")


@contextlib.asynccontextmanager
async def _advisory_lock(
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
            _heartbeat(f"waiting for {what}")
    await conn.execute("SET lock_timeout = 0")
    try:
        yield
    finally:
        if not conn.is_closed():
            await conn.execute(f"SELECT {free}($1::bigint)", key)


# --- pg_dump / pg_restore ------------------------------------------------------------


@dataclass(frozen=True)
class _Stage:
    argv: list[str]
    env: dict[str, str]


async def _read_tail(stream: asyncio.StreamReader | None, limit: int = 4000) -> str:
    tail = b""
    if stream is None:
        return ""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-limit:]
    return tail.decode("utf-8", "replace")


async def run_pipeline(stages: Sequence[_Stage], *, what: str, hide: Sequence[str] = ()) -> None:
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
            _heartbeat(what)
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


def _dump_argv(server: PgServer, database: str, *, file: Path | None = None,
               compress: bool = False) -> _Stage:
    url, env = server.libpq(database)
    # Uncompressed for local pipes (CPU-bound otherwise); compressed to travel.
    argv = [str(pg_bin_dir() / "pg_dump"), "--format=custom",
            "--compress=6" if compress else "--compress=0", "--no-sync",
            "--no-subscriptions", "--no-publications", "--no-security-labels",
            f"--dbname={url}"]
    if file is not None:
        argv.append(f"--file={file}")
    return _Stage(argv, env)


def _restore_argv(server: PgServer, database: str, *, jobs: int = 1,
                  file: Path | None = None) -> _Stage:
    url, env = server.libpq(database)
    argv = [str(pg_bin_dir() / "pg_restore"), "--no-owner", "--no-privileges",
            "--no-subscriptions", "--no-publications", "--no-security-labels",
            "--no-tablespaces", "--exit-on-error", f"--dbname={url}"]
    if jobs > 1:
        argv.append(f"--jobs={jobs}")
    if file is not None:
        argv.append(str(file))
    return _Stage(argv, env)


async def stream_copy(source: PgServer, source_db: str, target: PgServer, target_db: str) -> None:
    """`pg_dump | pg_restore` from one database into an existing, empty one."""
    await run_pipeline(
        [_dump_argv(source, source_db), _restore_argv(target, target_db)],
        what=f"copying database {source_db} into {target_db}",
        hide=[p for p in (source.password, target.password) if p],
    )


def _transfer_ownership_sql(role: str) -> str:
    """Hand every user object the connected (admin) role owns to `role`.

    Schemas, tables, views, sequences not owned by a column, routines, types and
    domains, statistics objects and large objects; extension members stay. REASSIGN
    OWNED cannot do it: it refuses the bootstrap superuser and moves shared objects.
    """
    return f"""
DO $transfer$
DECLARE
    target text := {_lit(role)};
    me oid := (SELECT oid FROM pg_roles WHERE rolname = current_user);
    r record;
BEGIN
    FOR r IN
        SELECT n.nspname FROM pg_namespace n
        WHERE n.nspowner = me AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                          AND d.objid = n.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, target);
    END LOOP;
    FOR r IN
        SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relowner = me AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                          AND d.objid = c.oid
                          AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO %I',
            CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                           WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE'
                           ELSE 'TABLE' END, r.name, target);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure AS name FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.proowner = me AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                          AND d.objid = p.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.name, target);
    END LOOP;
    FOR r IN
        SELECT t.oid::regtype AS name FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typowner = me AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
          AND t.typtype IN ('c', 'd', 'e', 'r')
          AND (t.typtype <> 'c'
               OR (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c')
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_type'::regclass
                          AND d.objid = t.oid AND d.deptype = 'e')
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO %I', r.name, target);
    END LOOP;
    FOR r IN
        SELECT s.stxnamespace::regnamespace AS nsp, s.stxname FROM pg_statistic_ext s
        WHERE s.stxowner = me
    LOOP
        EXECUTE format('ALTER STATISTICS %s.%I OWNER TO %I', r.nsp, r.stxname, target);
    END LOOP;
    FOR r IN SELECT oid FROM pg_largeobject_metadata WHERE lomowner = me
    LOOP
        EXECUTE format('ALTER LARGE OBJECT %s OWNER TO %I', r.oid, target);
    END LOOP;
END
$transfer$"""


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

_COLUMNS = """
SELECT n.nspname::text AS schema, c.relname::text AS table, a.attname::text AS name,
       format_type(a.atttypid, a.atttypmod) AS type_sql,
       bt.typname::text AS base_type, bt.typcategory::text AS category,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END AS typmod,
       a.attnotnull OR (t.typtype = 'd' AND t.typnotnull) AS not_null,
       a.attgenerated <> '' AS generated, a.attidentity = 'a' AS identity_always
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attnum > 0 AND NOT a.attisdropped
"""


def _column(row: asyncpg.Record) -> masking.Column:
    typmod = row["typmod"]
    bounded = row["base_type"] in ("varchar", "bpchar") and typmod >= 4
    return masking.Column(
        schema=row["schema"], table=row["table"], name=row["name"], type_sql=row["type_sql"],
        base_type=row["base_type"], category=row["category"],
        max_length=typmod - 4 if bounded else None, not_null=row["not_null"],
        generated=row["generated"], identity_always=row["identity_always"],
    )


async def _rule_columns(
    conn: asyncpg.Connection, rules: Sequence[MaskingRule]
) -> list[masking.Column]:
    """The column each rule names, from the catalog of the database `conn` is on."""
    try:
        keys = [masking.rule_key(rule) for rule in rules]
    except masking.MaskingError as error:
        raise invalid_input(str(error)) from None
    rows = await conn.fetch(
        _COLUMNS + " AND c.relkind IN ('r', 'p') AND (n.nspname, c.relname) IN "
        "(SELECT * FROM unnest($1::text[], $2::text[]))",
        [k[0] for k in keys], [k[1] for k in keys],
    )
    columns = {col.key: col for col in map(_column, rows)}
    try:
        return masking.resolve(rules, columns)
    except masking.MaskingError as error:
        raise invalid_input(str(error)) from None


# --- the activities ------------------------------------------------------------------


class PostgresActivities:
    """Activities on the preview PostgreSQL server (admin_url) and, if elsewhere, the
    server holding golden copies (golden_admin_url, default: the same server)."""

    def __init__(
        self, admin_url: str, sealer: Sealer, masking_key: bytes, *,
        golden_admin_url: str | None = None, aws: AwsClients | None = None,
    ) -> None:
        if not masking_key:
            raise ValueError("masking_key must not be empty")
        self._preview = PgServer(admin_url)
        self._golden = PgServer(golden_admin_url or admin_url)
        self._sealer = sealer
        self._key = masking_key
        self._pads = masking.hmac_pads(masking_key)
        self._ready: set[str] = set()
        self._aws = aws  # S3, where golden copies are published for container databases

    def all_activities(self) -> list[Callable[..., Awaitable[Any]]]:
        return [
            self.ensure_database_clone, self.remove_database_clone,
            self.restore_golden_generation, self.mask_golden_generation,
            self.verify_golden_generation, self.promote_golden_generation,
            self.prune_golden_generations, self.discard_golden_generation,
            self.publish_golden_dump, self.list_preview_databases, self.remove_preview_database,
        ]

    # connections -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connect(self, server: PgServer, database: str | None = None,
                       ) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(
            dsn=server.dsn(database), server_settings={"application_name": "preview-engine"})
        try:
            yield conn
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def _admin(self, server: PgServer) -> AsyncIterator[asyncpg.Connection]:
        async with self._connect(server) as conn:
            if server.url not in self._ready:
                async with conn.transaction():
                    # Concurrent CREATE ... IF NOT EXISTS can still collide: serialise.
                    await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)",
                                       _lock_key("schema", SCHEMA))
                    await conn.execute(_BOOKKEEPING)
                self._ready.add(server.url)
            yield conn

    # per-preview clones ------------------------------------------------------------

    @activity.defn(name=PostgresCloneSpec.present)
    async def ensure_database_clone(self, step: StepInput) -> StepOutput:
        async with _keepalive("making a preview database"):
            spec = step.spec_as(PostgresCloneSpec)
            env = spec.owner.environment
            self._check_spec(spec)
            async with self._admin(self._preview) as conn, _advisory_lock(
                conn, _lock_key("database", spec.database), exclusive=True,
                what=f"database {spec.database}",
            ):
                password, sealed = await self._claim(conn, spec, env)
                await self._ensure_role(conn, spec, env, password)
                await self._ensure_database(conn, spec, env, password)
            values = {"host": self._preview.host, "port": str(self._preview.port),
                      "database": spec.database, "user": spec.role}
            url = self._preview.as_user(spec.role, password, spec.database)
            return StepOutput(values=values,
                              secrets={"password": sealed,
                                       "url": await asyncio.to_thread(self._sealer.seal, url)})

    @activity.defn(name=PostgresCloneSpec.absent)
    async def remove_database_clone(self, step: StepInput) -> None:
        spec = step.spec_as(PostgresCloneSpec)
        async with self._admin(self._preview) as conn:
            await self._remove(conn, spec.database, spec.role, spec.owner.environment)

    @activity.defn(name=LIST_PREVIEW_DATABASES)
    async def list_preview_databases(self) -> list[PreviewDatabase]:
        async with self._admin(self._preview) as conn:
            rows = await conn.fetch(
                "SELECT datname, shobj_description(oid, 'pg_database') AS comment "
                "FROM pg_database ORDER BY datname")
            claims = {r["database"]: r for r in await conn.fetch(
                f"SELECT database, environment, role FROM {SCHEMA}.databases")}
        found: dict[str, PreviewDatabase] = {}
        for row in rows:
            mark = _parse_mark(row["comment"])
            if mark is None or mark.get("kind") != KIND_CLONE:
                continue
            claim = claims.get(row["datname"])
            found[row["datname"]] = PreviewDatabase(
                database=row["datname"], environment=mark.get("preview-environment", ""),
                role=claim["role"] if claim else None, state=mark.get("state", ""))
        for name, claim in claims.items():
            if name not in found:
                # A claim without a marked database: a half-made or half-removed one.
                exists = any(r["datname"] == name for r in rows)
                found[name] = PreviewDatabase(database=name, environment=claim["environment"],
                                              role=claim["role"], state="", exists=exists)
        return sorted(found.values(), key=lambda d: d.database)

    @activity.defn(name=REMOVE_PREVIEW_DATABASE)
    async def remove_preview_database(self, environment: str) -> list[str]:
        """Remove every database and role of one environment (the orphan sweeper)."""
        removed: list[str] = []
        async with self._admin(self._preview) as conn:
            for db in await self.list_preview_databases():
                if db.environment == environment and await self._remove(
                    conn, db.database, db.role, environment
                ):
                    removed.append(db.database)
            roles = await conn.fetch(
                "SELECT rolname, shobj_description(oid, 'pg_authid') AS comment FROM pg_authid")
            for row in roles:
                if _clone_mark(_parse_mark(row["comment"]), environment, KIND_ROLE):
                    await self._drop_role(conn, row["rolname"], environment)
        return removed

    def _check_spec(self, spec: PostgresCloneSpec) -> None:
        for what, name in (("database", spec.database), ("role", spec.role)):
            if not PG_IDENTIFIER.match(name):
                raise invalid_input(f"{what} name {name!r} is not a valid PostgreSQL identifier "
                                    "(use domain.naming.pg_identifier)")
        if spec.data_policy in (DataPolicy.clone, DataPolicy.masked_clone) and not spec.source:
            raise invalid_input(f"database {spec.database}: data policy "
                                f"{spec.data_policy.value} needs a source")
        if spec.data_policy == DataPolicy.seed and not spec.seed_sql:
            raise invalid_input(f"database {spec.database}: data policy seed needs seed_sql")
        if spec.connection_limit < 1:
            raise invalid_input(f"database {spec.database}: connection_limit must be positive")

    async def _claim(self, conn: asyncpg.Connection, spec: PostgresCloneSpec, env: str,
                     ) -> tuple[str, SealedValue]:
        """Refuse what is not ours; write (or read back) our claim with the password."""
        claim = await conn.fetchrow(
            f"SELECT environment, password FROM {SCHEMA}.databases WHERE database = $1",
            spec.database)
        if claim is not None and claim["environment"] != env:
            raise foreign_resource(f"PostgreSQL database {spec.database}", env)
        db = await _database_info(conn, spec.database)
        if db is not None and not _clone_mark(db.mark, env) and not (
            db.mark is None and claim is not None
        ):
            raise foreign_resource(f"PostgreSQL database {spec.database}", env)
        role = await _role_info(conn, spec.role)
        if role is not None and not _clone_mark(role.mark, env, KIND_ROLE):
            raise foreign_resource(f"PostgreSQL role {spec.role}", env)
        if claim is None:
            password = _new_password()
            # Off the event loop: with KMS, sealing is a network call.
            sealed = await asyncio.to_thread(self._sealer.seal, password)
            await conn.execute(
                f"INSERT INTO {SCHEMA}.databases (database, environment, role, source_name, "
                "password) VALUES ($1, $2, $3, $4, $5::jsonb)",
                spec.database, env, spec.role, spec.source, sealed.model_dump_json())
            return password, sealed
        await conn.execute(f"UPDATE {SCHEMA}.databases SET role = $2 WHERE database = $1",
                           spec.database, spec.role)
        sealed = SealedValue.model_validate_json(claim["password"])
        return await asyncio.to_thread(self._sealer.unseal, sealed), sealed

    async def _ensure_role(self, conn: asyncpg.Connection, spec: PostgresCloneSpec, env: str,
                           password: str) -> None:
        role = await _role_info(conn, spec.role)
        name = _q(spec.role)
        if role is None:
            async with conn.transaction():  # the role and its mark appear together
                await conn.execute(
                    f"CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    f"NOBYPASSRLS CONNECTION LIMIT {spec.connection_limit} "
                    f"PASSWORD {_lit(scram_verifier(password))}")
                await conn.execute(f"COMMENT ON ROLE {name} IS "
                                   f"{_lit(_mark(KIND_ROLE, **{'preview-environment': env}))}")
            return
        if role.connection_limit != spec.connection_limit:
            await conn.execute(f"ALTER ROLE {name} CONNECTION LIMIT {spec.connection_limit}")
        if not scram_matches(role.password, password):
            await conn.execute(f"ALTER ROLE {name} PASSWORD {_lit(scram_verifier(password))}")

    def _clone_comment(self, env: str, state: str, **extra: str) -> str:
        return _mark(KIND_CLONE, **{"preview-environment": env, "state": state, **extra})

    async def _ensure_database(self, conn: asyncpg.Connection, spec: PostgresCloneSpec,
                               env: str, password: str) -> None:
        db = await _database_info(conn, spec.database)
        if db is not None and db.mark is None:
            # Our claim and no mark: we created it and stopped before marking it.
            await _set_comment(conn, spec.database, self._clone_comment(env, CREATING))
            db = await _database_info(conn, spec.database)
        state = db.mark.get("state", CREATING) if db is not None and db.mark else None
        copies = spec.data_policy in (DataPolicy.clone, DataPolicy.masked_clone)
        if db is not None and state == CREATING and copies:
            # A copy that stopped half way: start it again from scratch.
            await conn.execute(f"DROP DATABASE {_q(spec.database)} WITH (FORCE)")
            db, state = None, None
        if db is None:
            state = await self._create_database(conn, spec, env)
        if state in (CREATING, LOADED):
            await self._finish(conn, spec, env, password, loaded=state == LOADED)
        db = await _database_info(conn, spec.database)
        if db is not None and db.connection_limit != spec.connection_limit:
            await conn.execute(f"ALTER DATABASE {_q(spec.database)} "
                               f"CONNECTION LIMIT {spec.connection_limit}")

    async def _create_database(self, conn: asyncpg.Connection, spec: PostgresCloneSpec,
                               env: str) -> str:
        name, owner, limit = _q(spec.database), _q(spec.role), spec.connection_limit
        if spec.data_policy in (DataPolicy.empty, DataPolicy.seed):
            await self._create(conn, f"CREATE DATABASE {name} OWNER {owner} TEMPLATE template0 "
                                     f"CONNECTION LIMIT {limit}", spec, env)
            await _set_comment(conn, spec.database, self._clone_comment(env, CREATING))
            return CREATING
        async with self._admin(self._golden) as golden:
            if self._golden.endpoint == self._preview.endpoint:
                async with _advisory_lock(golden, _lock_key("golden", spec.source),
                                          exclusive=False, what=f"golden copy of {spec.source}"):
                    generation = await self._current_golden(golden, spec)
                    await self._create(conn, f"CREATE DATABASE {name} OWNER {owner} "
                                             f"TEMPLATE {_q(generation)} STRATEGY FILE_COPY "
                                             f"CONNECTION LIMIT {limit}", spec, env)
            else:
                await self._create(conn, f"CREATE DATABASE {name} OWNER {owner} "
                                         f"TEMPLATE template0 CONNECTION LIMIT {limit}", spec, env)
                await _set_comment(conn, spec.database, self._clone_comment(env, CREATING))
                # pg_dump must connect to the golden: nobody may clone it meanwhile.
                async with _advisory_lock(golden, _lock_key("golden", spec.source),
                                          exclusive=True, what=f"golden copy of {spec.source}"):
                    generation = await self._current_golden(golden, spec)
                    await golden.execute(f"ALTER DATABASE {_q(generation)} ALLOW_CONNECTIONS true")
                    try:
                        await stream_copy(self._golden, generation, self._preview, spec.database)
                    finally:
                        await self._close_golden(golden, generation)
        await _set_comment(conn, spec.database,
                           self._clone_comment(env, LOADED, generation=generation))
        return LOADED

    async def _create(self, conn: asyncpg.Connection, sql: str, spec: PostgresCloneSpec,
                      env: str) -> None:
        try:
            await conn.execute(sql)
        except asyncpg.DuplicateDatabaseError:
            # We hold the name's lock and saw no database: someone else made it just now.
            await conn.execute(f"DELETE FROM {SCHEMA}.databases WHERE database = $1",
                               spec.database)
            raise foreign_resource(f"PostgreSQL database {spec.database}", env) from None

    async def _current_golden(self, golden: asyncpg.Connection, spec: PostgresCloneSpec) -> str:
        row = await golden.fetchrow(
            f"SELECT current_generation, masking FROM {SCHEMA}.golden WHERE source_name = $1",
            spec.source)
        if row is None:
            raise invalid_input(f"no golden copy of source {spec.source!r} yet: run its golden "
                                "refresh (GoldenRefreshWorkflow) first")
        if spec.data_policy == DataPolicy.masked_clone:
            applied = {json.dumps(r, sort_keys=True) for r in json.loads(row["masking"])}
            missing = [r for r in spec.masking
                       if json.dumps(r.model_dump(mode="json"), sort_keys=True) not in applied]
            if missing:
                names = ", ".join(f"{r.table}.{r.column} ({r.method.value})" for r in missing)
                raise invalid_input(f"the golden copy of {spec.source!r} was not masked with: "
                                    f"{names}; add them to its refresh and run it again")
        generation: str = row["current_generation"]
        return generation

    async def _close_golden(self, golden: asyncpg.Connection, generation: str) -> None:
        await golden.execute(f"ALTER DATABASE {_q(generation)} ALLOW_CONNECTIONS false")
        await golden.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()", generation)

    async def _finish(self, conn: asyncpg.Connection, spec: PostgresCloneSpec, env: str,
                      password: str, *, loaded: bool) -> None:
        """Hand the data to the preview's role, lock others out, seed, mark ready."""
        if loaded:
            async with self._connect(self._preview, spec.database) as db:
                await db.execute(_transfer_ownership_sql(spec.role))
        await conn.execute(f"REVOKE ALL ON DATABASE {_q(spec.database)} FROM PUBLIC")
        db_info = await _database_info(conn, spec.database)
        mark = dict(db_info.mark or {}) if db_info else {}
        mark.update({"state": READY, "preview-environment": env})
        ready = _mark(KIND_CLONE, **{k: v for k, v in mark.items()
                                     if k not in ("managed-by", "kind")})
        if spec.data_policy != DataPolicy.seed:
            await _set_comment(conn, spec.database, ready)
            return
        # Seed as the role itself, so the SQL cannot do more than the preview could.
        try:
            db = await asyncpg.connect(
                dsn=self._preview.as_user(spec.role, password, spec.database))
        except asyncpg.PostgresError as error:
            raise ApplicationError(f"cannot connect as role {spec.role} to seed "
                                   f"{spec.database}: {_pg_message(error)}") from None
        try:
            async with db.transaction():  # the seed and the ready mark commit together
                await db.execute(spec.seed_sql or "")
                await _set_comment(db, spec.database, ready)
        except asyncpg.PostgresError as error:
            if _is_user_error(error):
                raise invalid_input(f"seed SQL of database {spec.database} failed: "
                                    f"{_pg_message(error)}") from None
            raise
        finally:
            await db.close()

    async def _remove(self, conn: asyncpg.Connection, database: str, role: str | None,
                      env: str) -> bool:
        """Drop one clone and its role if they are ours; True when a database went."""
        dropped = False
        async with _advisory_lock(conn, _lock_key("database", database), exclusive=True,
                                  what=f"database {database}"):
            claim = await conn.fetchrow(
                f"SELECT environment, role FROM {SCHEMA}.databases WHERE database = $1", database)
            ours_claim = claim is not None and claim["environment"] == env
            role = role or (claim["role"] if ours_claim and claim else None)
            db = await _database_info(conn, database)
            if db is not None:
                if _clone_mark(db.mark, env) or (db.mark is None and ours_claim):
                    # FORCE ends its sessions first.
                    await conn.execute(f"DROP DATABASE IF EXISTS {_q(database)} WITH (FORCE)")
                    dropped = True
                else:
                    _logger().warning("database %s is not managed by preview-engine for %s; "
                                      "leaving it", database, env)
            if role:
                await self._drop_role(conn, role, env)
            if ours_claim:
                await conn.execute(f"DELETE FROM {SCHEMA}.databases WHERE database = $1",
                                   database)
        return dropped

    async def _drop_role(self, conn: asyncpg.Connection, role: str, env: str) -> None:
        info = await _role_info(conn, role)
        if info is None or not _clone_mark(info.mark, env, KIND_ROLE):
            return
        owns = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datdba = $1", info.oid)
        if owns:
            return  # still owns a database (of the same preview): that removal drops it
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE usename = $1", role)
        await conn.execute(f"DROP ROLE IF EXISTS {_q(role)}")

    # golden copies ----------------------------------------------------------------

    async def _golden_state(self, conn: asyncpg.Connection, step: GoldenStep,
                            ) -> tuple[_DbInfo | None, str | None]:
        """The generation's database and state; refuses a database that is not ours."""
        db = await _database_info(conn, step.generation)
        claim = await conn.fetchval(
            f"SELECT source_name FROM {SCHEMA}.golden_generations WHERE generation = $1",
            step.generation)
        if db is None:
            return None, None
        if _golden_mark(db.mark, step.source_name):
            return db, (db.mark or {}).get("state", RESTORING)
        if db.mark is None and claim == step.source_name:
            return db, RESTORING  # created, not yet marked: treat as half restored
        raise foreign_resource(f"PostgreSQL database {step.generation}",
                               f"golden copies of {step.source_name}")

    def _golden_comment(self, source_name: str, state: str) -> str:
        return _mark(KIND_GOLDEN, **{"golden-source": source_name, "state": state})

    def _require(self, state: str | None, step: GoldenStep, *allowed: str) -> None:
        if state not in allowed:
            raise ApplicationError(
                f"golden generation {step.generation} is {state or 'absent'}, "
                f"expected {' or '.join(allowed)}: run the refresh from the start",
                type=GOLDEN_STATE, non_retryable=True)

    @activity.defn(name=RESTORE_GOLDEN)
    async def restore_golden_generation(self, step: GoldenRestoreInput) -> str:
        async with _keepalive(f"restoring {step.generation}"):
            async with self._admin(self._golden) as conn:
                db, state = await self._golden_state(conn, step)
                if state is not None and state != RESTORING:
                    return step.generation  # restored already (a retry after success)
                if db is not None:
                    await conn.execute(f"DROP DATABASE {_q(step.generation)} WITH (FORCE)")
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.golden_generations (generation, source_name) "
                    "VALUES ($1, $2) ON CONFLICT (generation) DO NOTHING",
                    step.generation, step.source_name)
                await conn.execute(f"CREATE DATABASE {_q(step.generation)} TEMPLATE template0")
                await _set_comment(conn, step.generation,
                                   self._golden_comment(step.source_name, RESTORING))
            source = PgServer(step.source_url)
            folder = Path(tempfile.mkdtemp(prefix="preview-golden-"))  # mode 0700: unmasked data
            try:
                dump = folder / "source.dump"
                await run_pipeline([_dump_argv(source, source.database, file=dump)],
                                   what=f"dumping {source.redacted()}",
                                   hide=[source.password or ""])
                jobs = max(1, min(step.jobs, os.cpu_count() or 1))
                await run_pipeline([_restore_argv(self._golden, step.generation, jobs=jobs,
                                                  file=dump)],
                                   what=f"restoring golden generation {step.generation}",
                                   hide=[self._golden.password or ""])
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            async with self._admin(self._golden) as conn:
                await _set_comment(conn, step.generation,
                                   self._golden_comment(step.source_name, RESTORED))
            return step.generation

    @activity.defn(name=MASK_GOLDEN)
    async def mask_golden_generation(self, step: GoldenMaskInput) -> None:
        async with _keepalive(f"masking {step.generation}"):
            async with self._admin(self._golden) as conn:
                _, state = await self._golden_state(conn, step)
            self._require(state, step, RESTORED, MASKED, SCRUBBED, VERIFIED)
            if state in (SCRUBBED, VERIFIED):
                return
            async with self._connect(self._golden, step.generation) as db:
                columns = await _rule_columns(db, step.masking)
                if state == RESTORED:
                    await self._apply_masking(db, step, columns)
                await self._scrub(db, step, columns)

    async def _apply_masking(self, db: asyncpg.Connection, step: GoldenMaskInput,
                             columns: list[masking.Column]) -> None:
        statements = masking.masking_statements(step.masking, {c.key: c for c in columns})
        try:
            async with db.transaction():
                # Triggers and foreign-key checks off: both sides of a key are masked
                # by the same keyed hash, and verification checks every key after.
                await db.execute("SET LOCAL session_replication_role = replica")
                for statement in statements:
                    _heartbeat(f"masking {statement.schema}.{statement.table}")
                    args = self._pads if statement.uses_key else ()
                    await db.execute(statement.sql, *args)
                # The state moves in the same transaction as the data.
                await _set_comment(db, step.generation,
                                   self._golden_comment(step.source_name, MASKED))
        except asyncpg.PostgresError as error:
            if _is_user_error(error):
                raise invalid_input(f"masking golden generation {step.generation} failed: "
                                    f"{_pg_message(error)}") from None
            raise

    async def _scrub(self, db: asyncpg.Connection, step: GoldenMaskInput,
                     columns: list[masking.Column]) -> None:
        """Leave no copy of an original value: UPDATE left the old row versions in the
        table files (a FILE_COPY clone copies files), in indexes and in statistics."""
        kept: list[int] = []

        def listen(_: Any, message: Any) -> None:
            found = re.search(r"(\d+) dead row versions cannot be removed yet",
                              getattr(message, "detail", None) or "")
            if found:
                kept.append(int(found[1]))

        await db.execute("SET lc_messages = 'C'")  # the message parsed above
        db.add_log_listener(listen)
        try:
            targets = [masking.qualified(s, t) for s, t in masking.masked_tables(columns)]
            deadline = asyncio.get_running_loop().time() + SCRUB_DEADLINE_SECONDS
            while True:
                # An old snapshot in this database would keep masked row versions alive.
                await db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")
                kept.clear()
                for target in targets:
                    _heartbeat(f"rewriting {target}")
                    await db.execute(f"VACUUM (FULL, VERBOSE, ANALYZE) {target}")
                for view in await db.fetch(
                    "SELECT c.oid::regclass::text AS name FROM pg_class c "
                    "WHERE c.relkind = 'm' AND c.relispopulated ORDER BY c.oid"
                ):
                    await db.execute(f"REFRESH MATERIALIZED VIEW {view['name']}")
                    await db.execute(f"ANALYZE {view['name']}")
                for catalog in ("pg_statistic", "pg_statistic_ext_data"):
                    await db.execute(f"VACUUM (FULL, VERBOSE) pg_catalog.{catalog}")
                if not any(kept):
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise ApplicationError(
                        f"golden generation {step.generation}: {sum(kept)} masked row versions "
                        "are still visible to an open transaction; retrying")
                await asyncio.sleep(1.0)  # let the holder of the old snapshot finish
        finally:
            db.remove_log_listener(listen)
        await _set_comment(db, step.generation,
                           self._golden_comment(step.source_name, SCRUBBED))

    @activity.defn(name=VERIFY_GOLDEN)
    async def verify_golden_generation(self, step: GoldenVerifyInput) -> None:
        async with _keepalive(f"verifying {step.generation}"):
            async with self._admin(self._golden) as conn:
                _, state = await self._golden_state(conn, step)
            self._require(state, step, SCRUBBED, VERIFIED)
            if state == VERIFIED:
                return
            problems = await self._verify(step)
            if problems:
                raise ApplicationError(
                    f"masking of golden generation {step.generation} is not complete, so it is "
                    f"not put in service: {'; '.join(problems)}",
                    type=MASKING_NOT_VERIFIED, non_retryable=True)
            async with self._admin(self._golden) as conn:
                await _set_comment(conn, step.generation,
                                   self._golden_comment(step.source_name, VERIFIED))

    async def _verify(self, step: GoldenVerifyInput) -> list[str]:
        """Compare the generation with the source: no original value of a masked column
        may remain, except where masking itself produced it; keys must still join."""
        salt = os.urandom(16)
        source = PgServer(step.source_url)
        problems: list[str] = []
        async with self._connect(self._golden, step.generation) as db, \
                self._connect(source) as src:
            columns = await _rule_columns(db, step.masking)
            await db.execute(
                "CREATE TEMP TABLE pe_original (rule int NOT NULL, h bytea NOT NULL, "
                "scan bool NOT NULL); CREATE TEMP TABLE pe_image (rule int NOT NULL, "
                "h bytea NOT NULL)")
            for n, (rule, column) in enumerate(zip(step.masking, columns, strict=True)):
                if rule.method == MaskingMethod.null:
                    if count := await db.fetchval(masking.not_null_count_sql(column)):
                        problems.append(f"{column.label}: {count} rows are not NULL")
                elif rule.method == MaskingMethod.constant:
                    assert rule.value is not None
                    sql = masking.constant_mismatch_sql(column, rule.value)
                    if count := await db.fetchval(sql):
                        problems.append(f"{column.label}: {count} rows differ from the constant")
                if rule.method in (MaskingMethod.null, MaskingMethod.constant) and \
                        column.family != masking.Family.text:
                    continue
                await self._load_fingerprints(src, db, n, rule, column, salt,
                                              step.scan_min_length)
            await db.execute("ANALYZE pg_temp.pe_original; ANALYZE pg_temp.pe_image")
            reported: set[masking.ColumnKey] = set()
            for n, (rule, column) in enumerate(zip(step.masking, columns, strict=True)):
                if rule.method in (MaskingMethod.null, MaskingMethod.constant):
                    continue
                leaked = await db.fetchval(
                    f"SELECT count(*) FROM (SELECT {masking.fingerprint_sql(column.name)} AS h "
                    f"FROM {masking.qualified(column.schema, column.table)} "
                    f"WHERE {_q(column.name)} IS NOT NULL) AS m "
                    "WHERE EXISTS (SELECT 1 FROM pg_temp.pe_original o "
                    "              WHERE o.rule = $2 AND o.h = m.h) "
                    "AND NOT EXISTS (SELECT 1 FROM pg_temp.pe_image i "
                    "                WHERE i.rule = $2 AND i.h = m.h)", salt, n)
                if leaked:
                    reported.add(column.key)
                    problems.append(f"{column.label}: {leaked} rows still hold an original value")
            problems += await self._scan_everywhere(db, salt, reported)
            problems += await self._foreign_key_problems(db, columns)
        return problems

    async def _load_fingerprints(self, src: asyncpg.Connection, db: asyncpg.Connection, n: int,
                                 rule: MaskingRule, column: masking.Column, salt: bytes,
                                 scan_min_length: int) -> None:
        """Salted fingerprints of the source's values and of their masked images (by the
        Python reference, independent of the SQL) into temporary tables of `db`."""
        originals: list[tuple[int, bytes, bool]] = []
        images: list[tuple[int, bytes]] = []
        scan = column.family == masking.Family.text

        async def flush() -> None:
            await db.copy_records_to_table("pe_original", records=originals,
                                           schema_name="pg_temp")
            await db.copy_records_to_table("pe_image", records=images, schema_name="pg_temp")
            originals.clear()
            images.clear()
            _heartbeat(f"fingerprinting {column.label}")

        async with src.transaction(readonly=True):
            async for record in src.cursor(masking.distinct_values_sql(column),
                                           prefetch=FINGERPRINT_BATCH):
                value: str = record[0]
                originals.append((n, masking.fingerprint(salt, value),
                                  scan and len(value) >= scan_min_length))
                image = masking.mask_value(rule, column, value, self._key)
                if image is not None:
                    images.append((n, masking.fingerprint(salt, image)))
                if len(originals) >= FINGERPRINT_BATCH:
                    await flush()
        await flush()

    async def _scan_everywhere(self, db: asyncpg.Connection, salt: bytes,
                               reported: set[masking.ColumnKey]) -> list[str]:
        """Search every text column of every table for long-enough originals of masked
        columns (a copy of an e-mail in an unmasked column, a stale materialised view)."""
        await db.execute(
            "CREATE TEMP TABLE pe_scan AS SELECT DISTINCT h FROM pg_temp.pe_original "
            "WHERE scan EXCEPT SELECT h FROM pg_temp.pe_image; ANALYZE pg_temp.pe_scan")
        if not await db.fetchval("SELECT EXISTS (SELECT 1 FROM pg_temp.pe_scan)"):
            return []
        rows = await db.fetch(
            _COLUMNS + " AND c.relkind IN ('r', 'm') AND bt.typcategory = 'S' "
            "AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' "
            "ORDER BY n.nspname, c.relname, a.attnum")
        by_table: dict[tuple[str, str], list[str]] = {}
        for row in rows:
            by_table.setdefault((row["schema"], row["table"]), []).append(row["name"])
        problems = []
        for (schema, table), names in by_table.items():
            _heartbeat(f"scanning {schema}.{table}")
            counts = ", ".join(
                f"count(*) FILTER (WHERE {masking.fingerprint_sql(name)} "
                "IN (SELECT h FROM pg_temp.pe_scan))" for name in names)
            found = await db.fetchrow(
                f"SELECT {counts} FROM ONLY {masking.qualified(schema, table)}", salt)
            for name, count in zip(names, found, strict=True):
                if count and (schema, table, name) not in reported:
                    problems.append(f"{schema}.{table}.{name}: {count} rows hold an original "
                                    "value of a masked column")
        return problems

    async def _foreign_key_problems(self, db: asyncpg.Connection,
                                    columns: list[masking.Column]) -> list[str]:
        masked = {c.key for c in columns}
        rows = await db.fetch("""
            SELECT con.conname, cn.nspname AS child_schema, cc.relname AS child_table,
                   pn.nspname AS parent_schema, pc.relname AS parent_table,
                   ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(n, o)
                         JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n
                         ORDER BY k.o) AS child_columns,
                   ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(n, o)
                         JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n
                         ORDER BY k.o) AS parent_columns
            FROM pg_constraint con
            JOIN pg_class cc ON cc.oid = con.conrelid
            JOIN pg_namespace cn ON cn.oid = cc.relnamespace
            JOIN pg_class pc ON pc.oid = con.confrelid
            JOIN pg_namespace pn ON pn.oid = pc.relnamespace
            WHERE con.contype = 'f' AND con.conparentid = 0""")
        problems = []
        for row in rows:
            child = (row["child_schema"], row["child_table"])
            parent = (row["parent_schema"], row["parent_table"])
            touched = any((*child, c) in masked for c in row["child_columns"]) or any(
                (*parent, c) in masked for c in row["parent_columns"])
            if not touched:
                continue
            orphans = await db.fetchval(masking.foreign_key_orphans_sql(
                child, row["child_columns"], parent, row["parent_columns"]))
            if orphans:
                problems.append(
                    f"foreign key {row['conname']} of {child[0]}.{child[1]}: {orphans} rows no "
                    f"longer find their {parent[0]}.{parent[1]} row (mask both sides of a key "
                    "with the same method)")
        return problems

    @activity.defn(name=PROMOTE_GOLDEN)
    async def promote_golden_generation(self, step: GoldenPromoteInput) -> None:
        """Make a verified generation the source's current golden copy, atomically."""
        async with self._admin(self._golden) as conn:
            current = await conn.fetchval(
                f"SELECT current_generation FROM {SCHEMA}.golden WHERE source_name = $1",
                step.source_name)
            if current == step.generation:
                return
            _, state = await self._golden_state(conn, step)
            self._require(state, step, VERIFIED)
            # No session may stay on a template; nobody may open a new one.
            await self._close_golden(conn, step.generation)
            rules = json.dumps([r.model_dump(mode="json") for r in step.masking])
            async with conn.transaction():
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.golden (source_name, current_generation, masking, "
                    "updated_at) VALUES ($1, $2, $3::jsonb, now()) ON CONFLICT (source_name) "
                    "DO UPDATE SET current_generation = EXCLUDED.current_generation, "
                    "masking = EXCLUDED.masking, updated_at = EXCLUDED.updated_at",
                    step.source_name, step.generation, rules)
                await conn.execute(
                    f"UPDATE {SCHEMA}.golden_generations SET promoted_at = now() "
                    "WHERE generation = $1", step.generation)

    @activity.defn(name=PUBLISH_GOLDEN)
    async def publish_golden_dump(self, step: GoldenPublishInput) -> None:
        """Publish a dump of a verified generation for container databases: the masking
        rules (content-addressed), the dump under the generation's own key (never changed
        afterwards, so a restore gets exactly what was checked), then the pointer to it,
        replaced atomically. Keeps the newest `keep_generations` dumps."""
        if self._aws is None:
            raise invalid_input("this worker cannot publish golden dumps: it has no S3 client")
        async with _keepalive(f"publishing {step.generation}"):
            async with self._admin(self._golden) as conn:
                _, state = await self._golden_state(conn, step)
            self._require(state, step, VERIFIED)
            bucket, pointer_key = parse_s3_uri(step.dump_uri)
            s3 = self._aws.client("s3", AwsTarget(region=self._aws.default_region))
            digest, rules = masking.masking_record(step.masking)
            _, rules_key = parse_s3_uri(masking.golden_masking_uri(step.dump_uri, digest))
            try:
                await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=rules_key,
                                        Body=rules.encode(), ContentType="application/json")
            except ClientError as error:
                if is_error(error, "NoSuchBucket"):
                    raise invalid_input(f"cannot publish golden copies to {step.dump_uri}: "
                                        f"bucket {bucket!r} does not exist") from None
                raise
            dump_key = masking.golden_generation_dump_key(step.source_name, step.generation)
            folder = Path(tempfile.mkdtemp(prefix="preview-golden-"))
            try:
                dump = folder / "golden.dump"
                await run_pipeline([_dump_argv(self._golden, step.generation, file=dump,
                                               compress=True)],
                                   what=f"dumping golden generation {step.generation}",
                                   hide=[self._golden.password or ""])
                await asyncio.to_thread(
                    s3.upload_file, str(dump), bucket, dump_key,
                    ExtraArgs={"Metadata": {"generation": step.generation, "masking": digest}})
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            pointer = {"generation": step.generation, "dump": dump_key, "masking": digest}
            await asyncio.to_thread(s3.put_object, Bucket=bucket, Key=pointer_key,
                                    Body=json.dumps(pointer).encode(),
                                    ContentType="application/json")
            await asyncio.to_thread(self._prune_published, s3, bucket, dump_key,
                                    step.keep_generations)
            _logger().info("published %s as %s", step.generation, dump_key)

    @staticmethod
    def _prune_published(s3: Any, bucket: str, current: str, keep: int) -> None:
        """Delete all but the newest `keep` generation dumps (never the current one). One
        just replaced stays a while: a restore may still be fetching it."""
        prefix = current.rsplit("/", 1)[0] + "/"
        found = [o for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
        found.sort(key=lambda o: (o["LastModified"], o["Key"]), reverse=True)
        kept = {current} | {o["Key"] for o in found[:keep]}
        for old in found:
            if old["Key"] not in kept:
                s3.delete_object(Bucket=bucket, Key=old["Key"])

    @activity.defn(name=DISCARD_GOLDEN)
    async def discard_golden_generation(self, step: GoldenDiscardInput) -> None:
        """Drop a generation that did not make it (never the one in service)."""
        async with _keepalive(f"discarding {step.generation}"), \
                self._admin(self._golden) as conn:
            in_service = await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.golden WHERE current_generation = $1)",
                step.generation)
            if in_service:
                return
            await self._drop_generation(conn, step.source_name, step.generation)

    @activity.defn(name=PRUNE_GOLDEN)
    async def prune_golden_generations(self, step: GoldenPruneInput) -> list[str]:
        """Keep the current generation and the newest earlier ones up to
        keep_generations; drop older ones and failed ones older than the current."""
        async with _keepalive(f"pruning golden copies of {step.source_name}"), \
                self._admin(self._golden) as conn:
            current = await conn.fetchval(
                f"SELECT current_generation FROM {SCHEMA}.golden WHERE source_name = $1",
                step.source_name)
            if current is None:
                return []
            rows = await conn.fetch(
                f"SELECT generation, created_at, promoted_at FROM {SCHEMA}.golden_generations "
                "WHERE source_name = $1 ORDER BY created_at DESC, generation DESC",
                step.source_name)
            current_created = next(
                (r["created_at"] for r in rows if r["generation"] == current), None)
            kept = 1
            dropped: list[str] = []
            for row in rows:
                name = row["generation"]
                if name == current:
                    continue
                if row["promoted_at"] is not None and kept < step.keep_generations:
                    kept += 1
                    continue
                older = current_created is not None and row["created_at"] < current_created
                if row["promoted_at"] is not None or older:
                    await self._drop_generation(conn, step.source_name, name)
                    dropped.append(name)
        return dropped

    async def _drop_generation(self, conn: asyncpg.Connection, source_name: str,
                               generation: str) -> None:
        async with _advisory_lock(conn, _lock_key("golden", source_name), exclusive=True,
                                  what=f"golden copy of {source_name}"):
            step = GoldenStep(source_name=source_name, generation=generation)
            db, _ = await self._golden_state(conn, step)
            if db is not None:
                await conn.execute(f"DROP DATABASE IF EXISTS {_q(generation)} WITH (FORCE)")
            await conn.execute(
                f"DELETE FROM {SCHEMA}.golden_generations WHERE generation = $1", generation)

    async def refresh_golden_copy(self, request: GoldenRefreshRequest, *,
                                  when: datetime | None = None) -> str:
        """The whole refresh in this process (scripts, tests); the workflow runs the same
        steps as separate activities. Returns the new generation's name."""
        generation = masking.golden_generation_name(
            request.source_name, when or datetime.now(UTC), secrets.token_hex(4))
        base = {"source_name": request.source_name, "generation": generation}
        try:
            await self.restore_golden_generation(GoldenRestoreInput(
                **base, source_url=request.source_url, jobs=request.jobs))
            await self.mask_golden_generation(GoldenMaskInput(**base, masking=request.masking))
            await self.verify_golden_generation(GoldenVerifyInput(
                **base, source_url=request.source_url, masking=request.masking,
                scan_min_length=request.scan_min_length))
            await self.promote_golden_generation(GoldenPromoteInput(
                **base, masking=request.masking))
        except BaseException:
            with contextlib.suppress(Exception):
                await self.discard_golden_generation(GoldenDiscardInput(**base))
            raise
        await self.prune_golden_generations(GoldenPruneInput(
            source_name=request.source_name, keep_generations=request.keep_generations))
        return generation
