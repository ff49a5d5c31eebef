"""Golden copies: masked copies of source databases that preview databases clone.

Per source, a *generation* database is restored from a pg_dump of the source, masked
(domain/masking.py), scrubbed (no dead row version, index entry or statistic keeps an
original value) and frozen (so reads in copy-on-write clones write nothing), verified
against the source (verify.py), and only then made the source's current golden copy
(one row of `preview_engine.golden`, switched in one transaction). A refresh that fails
anywhere leaves the previous golden in service. Golden databases refuse connections
(datallowconn = false): a template clone needs no other session on its template. A
verified generation can also be published to S3 as a pg_dump, for container databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.aws import is_error, parse_s3_uri
from activities.errors import foreign_resource, invalid_input
from activities.postgres.server import (
    KIND_GOLDEN,
    SCHEMA,
    DatabaseInfo,
    PgServer,
    PostgresAccess,
    activity_logger,
    close_golden,
    connect,
    database_info,
    dump_stage,
    golden_source_lock,
    heartbeat,
    ident,
    is_user_error,
    keepalive,
    marks_golden_source,
    ownership_mark,
    pg_message,
    restore_stage,
    run_pipeline,
    set_comment,
)
from activities.postgres.verify import masking_problems, rule_columns
from domain import masking
from domain.contract import (
    DISCARD_GOLDEN,
    MASK_GOLDEN,
    PROMOTE_GOLDEN,
    PRUNE_GOLDEN,
    PUBLISH_GOLDEN,
    RESTORE_GOLDEN,
    VERIFY_GOLDEN,
)
from domain.errors import GOLDEN_STATE, MASKING_NOT_VERIFIED
from domain.golden import (
    GoldenDiscardInput,
    GoldenMaskInput,
    GoldenPromoteInput,
    GoldenPruneInput,
    GoldenPublishInput,
    GoldenRefreshRequest,
    GoldenRestoreInput,
    GoldenStep,
    GoldenVerifyInput,
)
from domain.resources import AwsTarget

# Generation states, in order; the comment on the database holds the state.
RESTORING, RESTORED, MASKED, SCRUBBED, VERIFIED = (
    "restoring", "restored", "masked", "scrubbed", "verified",
)
SCRUB_DEADLINE_SECONDS = 120.0


async def english_messages(db: asyncpg.Connection) -> None:
    """Server messages in English for this session (VACUUM VERBOSE's are parsed).

    `lc_messages` is a superuser's setting: a role without the right keeps the server's,
    which must then be English already (C, POSIX or en_*, the default of initdb and of
    managed servers)."""
    try:
        await db.execute("SET lc_messages = 'C'")
    except asyncpg.InsufficientPrivilegeError:
        current = str(await db.fetchval("SHOW lc_messages"))
        if not re.match(r"^(|C|POSIX|en)([._-]|$)", current):
            raise ApplicationError(
                f"the server's lc_messages is {current!r} and this role may not change it: "
                "set it to C or an English locale (postgresql.conf or the parameter "
                "group), or GRANT SET ON PARAMETER lc_messages to the engine's role",
                non_retryable=True) from None


class GoldenCopyActivities:
    """The steps of a golden refresh on the server holding golden copies (the workflow
    runs them one by one; `refresh_golden_copy` runs them all in this process)."""

    def __init__(self, access: PostgresAccess) -> None:
        self._access = access
        self._golden = access.golden
        self._key = access.masking_key
        self._pads = masking.hmac_pads(access.masking_key)
        self._aws = access.aws  # S3, where golden copies are published for container databases

    def all_activities(self) -> list[Callable[..., Awaitable[Any]]]:
        return [
            self.restore_golden_generation, self.mask_golden_generation,
            self.verify_golden_generation, self.promote_golden_generation,
            self.prune_golden_generations, self.discard_golden_generation,
            self.publish_golden_dump,
        ]

    async def _golden_state(self, conn: asyncpg.Connection, step: GoldenStep,
                            ) -> tuple[DatabaseInfo | None, str | None]:
        """The generation's database and state; refuses a database that is not ours."""
        db = await database_info(conn, step.generation)
        claim = await conn.fetchval(
            f"SELECT source_name FROM {SCHEMA}.golden_generations WHERE generation = $1",
            step.generation)
        if db is None:
            return None, None
        if marks_golden_source(db.mark, step.source_name):
            return db, (db.mark or {}).get("state", RESTORING)
        if db.mark is None and claim == step.source_name:
            return db, RESTORING  # created, not yet marked: treat as half restored
        raise foreign_resource(f"PostgreSQL database {step.generation}",
                               f"golden copies of {step.source_name}")

    def _golden_comment(self, source_name: str, state: str) -> str:
        return ownership_mark(KIND_GOLDEN, **{"golden-source": source_name, "state": state})

    def _require(self, state: str | None, step: GoldenStep, *allowed: str) -> None:
        if state not in allowed:
            raise ApplicationError(
                f"golden generation {step.generation} is {state or 'absent'}, "
                f"expected {' or '.join(allowed)}: run the refresh from the start",
                type=GOLDEN_STATE, non_retryable=True)

    @activity.defn(name=RESTORE_GOLDEN.name)
    async def restore_golden_generation(self, step: GoldenRestoreInput) -> str:
        async with keepalive(f"restoring {step.generation}"):
            async with self._access.admin(self._golden) as conn:
                db, state = await self._golden_state(conn, step)
                if state is not None and state != RESTORING:
                    return step.generation  # restored already (a retry after success)
                if db is not None:
                    await conn.execute(f"DROP DATABASE {ident(step.generation)} WITH (FORCE)")
                await conn.execute(
                    f"INSERT INTO {SCHEMA}.golden_generations (generation, source_name) "
                    "VALUES ($1, $2) ON CONFLICT (generation) DO NOTHING",
                    step.generation, step.source_name)
                await conn.execute(
                    f"CREATE DATABASE {ident(step.generation)} TEMPLATE template0")
                await set_comment(conn, step.generation,
                                  self._golden_comment(step.source_name, RESTORING))
            source = PgServer(step.source_url)
            folder = Path(tempfile.mkdtemp(prefix="preview-golden-"))  # mode 0700: unmasked data
            try:
                dump = folder / "source.dump"
                await run_pipeline([dump_stage(source, source.database, file=dump)],
                                   what=f"dumping {source.redacted()}",
                                   hide=[source.password or ""])
                jobs = max(1, min(step.jobs, os.cpu_count() or 1))
                await run_pipeline([restore_stage(self._golden, step.generation, jobs=jobs,
                                                   file=dump)],
                                   what=f"restoring golden generation {step.generation}",
                                   hide=[self._golden.password or ""])
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            async with self._access.admin(self._golden) as conn:
                await set_comment(conn, step.generation,
                                  self._golden_comment(step.source_name, RESTORED))
            return step.generation

    @activity.defn(name=MASK_GOLDEN.name)
    async def mask_golden_generation(self, step: GoldenMaskInput) -> None:
        async with keepalive(f"masking {step.generation}"):
            async with self._access.admin(self._golden) as conn:
                _, state = await self._golden_state(conn, step)
            self._require(state, step, RESTORED, MASKED, SCRUBBED, VERIFIED)
            if state in (SCRUBBED, VERIFIED):
                return
            async with connect(self._golden, step.generation) as db:
                columns = await rule_columns(db, step.masking)
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
                    heartbeat(f"masking {statement.schema}.{statement.table}")
                    args = self._pads if statement.uses_key else ()
                    await db.execute(statement.sql, *args)
                # The state moves in the same transaction as the data.
                await set_comment(db, step.generation,
                                  self._golden_comment(step.source_name, MASKED))
        except asyncpg.PostgresError as error:
            needs_grant = (isinstance(error, asyncpg.InsufficientPrivilegeError)
                           and "session_replication_role" in pg_message(error))
            if is_user_error(error):  # a missing privilege (42501) included
                hint = (" (the engine's role needs `GRANT SET ON PARAMETER "
                        "session_replication_role`, rds_superuser on RDS: README, "
                        "Production notes)") if needs_grant else ""
                raise invalid_input(f"masking golden generation {step.generation} failed: "
                                    f"{pg_message(error)}{hint}") from None
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

        await english_messages(db)  # the message parsed above
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
                    heartbeat(f"rewriting {target}")
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
        # Hint bits and frozen row versions set once, here: else each preview's first
        # read of a page sets them, which dirties the page, and a copy-on-write clone
        # then stores its own copy of every page it read (measured: all of them).
        heartbeat("freezing")
        await db.execute("VACUUM (FREEZE)")
        await set_comment(db, step.generation,
                          self._golden_comment(step.source_name, SCRUBBED))

    @activity.defn(name=VERIFY_GOLDEN.name)
    async def verify_golden_generation(self, step: GoldenVerifyInput) -> None:
        async with keepalive(f"verifying {step.generation}"):
            async with self._access.admin(self._golden) as conn:
                _, state = await self._golden_state(conn, step)
            self._require(state, step, SCRUBBED, VERIFIED)
            if state == VERIFIED:
                return
            async with connect(self._golden, step.generation) as db, \
                    connect(PgServer(step.source_url)) as src:
                problems = await masking_problems(db, src, step, self._key)
            if problems:
                raise ApplicationError(
                    f"masking of golden generation {step.generation} is not complete, so it is "
                    f"not put in service: {'; '.join(problems)}",
                    type=MASKING_NOT_VERIFIED, non_retryable=True)
            async with self._access.admin(self._golden) as conn:
                await set_comment(conn, step.generation,
                                  self._golden_comment(step.source_name, VERIFIED))

    @activity.defn(name=PROMOTE_GOLDEN.name)
    async def promote_golden_generation(self, step: GoldenPromoteInput) -> None:
        """Make a verified generation the source's current golden copy, atomically."""
        async with self._access.admin(self._golden) as conn:
            current = await conn.fetchval(
                f"SELECT current_generation FROM {SCHEMA}.golden WHERE source_name = $1",
                step.source_name)
            if current == step.generation:
                return
            _, state = await self._golden_state(conn, step)
            self._require(state, step, VERIFIED)
            # No session may stay on a template; nobody may open a new one.
            await close_golden(conn, step.generation)
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

    @activity.defn(name=PUBLISH_GOLDEN.name)
    async def publish_golden_dump(self, step: GoldenPublishInput) -> None:
        """Publish a dump of a verified generation for container databases: the masking
        rules (content-addressed), the dump under the generation's own key (never changed
        afterwards, so a restore gets exactly what was checked), then the pointer to it,
        replaced atomically. Keeps the newest `keep_generations` dumps."""
        if self._aws is None:
            raise invalid_input("this worker cannot publish golden dumps: it has no S3 client")
        async with keepalive(f"publishing {step.generation}"):
            async with self._access.admin(self._golden) as conn:
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
                await run_pipeline([dump_stage(self._golden, step.generation, file=dump,
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
            activity_logger().info("published %s as %s", step.generation, dump_key)

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

    @activity.defn(name=DISCARD_GOLDEN.name)
    async def discard_golden_generation(self, step: GoldenDiscardInput) -> None:
        """Drop a generation that did not make it (never the one in service)."""
        async with keepalive(f"discarding {step.generation}"), \
                self._access.admin(self._golden) as conn:
            in_service = await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {SCHEMA}.golden WHERE current_generation = $1)",
                step.generation)
            if in_service:
                return
            await self._drop_generation(conn, step.source_name, step.generation)

    @activity.defn(name=PRUNE_GOLDEN.name)
    async def prune_golden_generations(self, step: GoldenPruneInput) -> list[str]:
        """Keep the current generation and the newest earlier ones up to
        keep_generations; drop older ones and failed ones older than the current."""
        async with keepalive(f"pruning golden copies of {step.source_name}"), \
                self._access.admin(self._golden) as conn:
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
        async with golden_source_lock(conn, source_name, exclusive=True):
            step = GoldenStep(source_name=source_name, generation=generation)
            db, _ = await self._golden_state(conn, step)
            if db is not None:
                await conn.execute(f"DROP DATABASE IF EXISTS {ident(generation)} WITH (FORCE)")
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
