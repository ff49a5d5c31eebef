"""Preview databases: one PostgreSQL database per preview, owned by a role of its own.

`CREATE DATABASE ... TEMPLATE <current golden> STRATEGY FILE_COPY` (or an empty / seeded
database), owned by a login role of its own with a generated password (returned sealed
only). On PostgreSQL 18 with reflinks the template's files are cloned (copy-on-write,
constant time), else copied: clone_method.py decides, and the step's output says which
and why (values["clone_method"], detail). When the golden copies live on another
server, the clone streams `pg_dump | pg_restore` instead. The orphan sweeper lists these
databases and removes those of environments that are gone.

A row of `preview_engine.databases` written before the create claims the name for its
environment (see server.py for the marks and locks).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import string
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import foreign_resource, invalid_input
from activities.postgres.clone_method import (
    CLONE,
    COPY,
    STREAM,
    CloneMethod,
    checked_method,
    is_clone_failure,
    planned_method,
)
from activities.postgres.server import (
    KIND_CLONE,
    KIND_ROLE,
    SCHEMA,
    PostgresAccess,
    activity_logger,
    advisory_lock,
    close_golden,
    connect,
    database_info,
    golden_source_lock,
    ident,
    is_user_error,
    keepalive,
    literal,
    lock_key,
    marks_environment,
    own_role_grant,
    ownership_mark,
    parse_mark,
    pg_message,
    role_info,
    scram_matches,
    scram_verifier,
    set_comment,
    stream_copy,
)
from domain.blueprint import DataPolicy
from domain.contract import LIST_PREVIEW_DATABASES, REMOVE_PREVIEW_DATABASE
from domain.naming import PG_IDENTIFIER
from domain.resources import PostgresCloneSpec, PreviewDatabase, StepInput, StepOutput
from domain.secrets import SealedValue

# Clone states: `loaded` = data copied, ownership not yet handed to the role.
CREATING, LOADED, READY = "creating", "loaded", "ready"
_PASSWORD_ALPHABET = string.ascii_letters + string.digits
# On the worker's metrics endpoint as preview_database_clone_duration_seconds{method}:
# from a reflink clone (tens of ms) to a copy or a stream of a large golden (minutes).
CLONE_DURATION = "preview_database_clone_duration"
CLONE_BUCKETS = {CLONE_DURATION: (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                                  120.0, 300.0, 600.0, 1800.0)}


def _record_clone(method: str, milliseconds: float) -> None:
    """How long the data took to arrive, by clone method (clone, copy, stream)."""
    if activity.in_activity():  # tests call the methods directly too
        activity.metric_meter().create_histogram_float(
            CLONE_DURATION, "Time to make a preview database's data from its golden copy, "
            "by method", "seconds").with_additional_attributes(
                {"method": method}).record(milliseconds / 1000)


def _new_password() -> str:
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(32))


def _transfer_ownership_sql(role: str) -> str:
    """Hand every user object the connected (admin) role owns to `role`.

    Schemas, tables, views, sequences not owned by a column, routines, types and
    domains, statistics objects and large objects; extension members stay. REASSIGN
    OWNED cannot do it: it refuses the bootstrap superuser and moves shared objects.
    """
    return f"""
DO $transfer$
DECLARE
    target text := {literal(role)};
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


class PreviewDatabaseActivities:
    """One database and role per preview on the preview server, cloned from the golden
    copies (on the same server or another); the sweeper's listing and removal."""

    def __init__(self, access: PostgresAccess, *, sweep_grace: float = 0.0) -> None:
        """sweep_grace: seconds; the sweeper's removal keeps an environment whose database
        was claimed more recently (a preview being made right now)."""
        self._access = access
        self.sweep_grace = sweep_grace
        self._preview = access.preview
        self._golden = access.golden
        self._sealer = access.sealer

    def all_activities(self) -> list[Callable[..., Awaitable[Any]]]:
        return [self.ensure_database_clone, self.remove_database_clone,
                self.check_database_clone,
                self.list_preview_databases, self.remove_preview_database]

    @activity.defn(name=PostgresCloneSpec.present)
    async def ensure_database_clone(self, step: StepInput) -> StepOutput:
        async with keepalive("making a preview database"):
            spec = step.spec_as(PostgresCloneSpec)
            env = spec.owner.environment
            self._check_spec(spec)
            async with self._access.admin(self._preview) as conn, advisory_lock(
                conn, lock_key("database", spec.database), exclusive=True,
                what=f"database {spec.database}",
            ):
                password, sealed = await self._claim(conn, spec, env)
                await self._ensure_role(conn, spec, env, password)
                mark = await self._ensure_database(conn, spec, env, password)
            apps = self._access.preview_for_apps
            values = {"host": apps.host, "port": str(apps.port),
                      "database": spec.database, "user": spec.role}
            if mark.get("clone-method"):
                values["clone_method"] = mark["clone-method"]
            url = apps.as_user(spec.role, password, spec.database)
            return StepOutput(values=values, detail=mark.get("clone-detail", ""),
                              secrets={"password": sealed,
                                       "url": await asyncio.to_thread(self._sealer.seal, url)})

    @activity.defn(name=PostgresCloneSpec.absent)
    async def remove_database_clone(self, step: StepInput) -> None:
        spec = step.spec_as(PostgresCloneSpec)
        async with self._access.admin(self._preview) as conn:
            await self._remove(conn, spec.database, spec.role, spec.owner.environment)

    @activity.defn(name=PostgresCloneSpec.check)
    async def check_database_clone(self, step: StepInput) -> str:
        """"" while the preview's database is there, ready and its role can log in;
        else what happened to it."""
        spec = step.spec_as(PostgresCloneSpec)
        async with self._access.admin(self._preview) as conn:
            info = await database_info(conn, spec.database)
            role = await conn.fetchval("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                                       spec.role)
        if info is None:
            return f"database {spec.database} is gone"
        if not marks_environment(info.mark, spec.owner.environment, KIND_CLONE):
            return f"database {spec.database} is no longer marked as this preview's"
        if not role:
            return f"role {spec.role} of database {spec.database} is gone"
        return ""

    @activity.defn(name=LIST_PREVIEW_DATABASES.name)
    async def list_preview_databases(self) -> list[PreviewDatabase]:
        async with self._access.admin(self._preview) as conn:
            rows = await conn.fetch(
                "SELECT datname, shobj_description(oid, 'pg_database') AS comment "
                "FROM pg_database ORDER BY datname")
            claims = {r["database"]: r for r in await conn.fetch(
                f"SELECT database, environment, role FROM {SCHEMA}.databases")}
        found: dict[str, PreviewDatabase] = {}
        for row in rows:
            mark = parse_mark(row["comment"])
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

    @activity.defn(name=REMOVE_PREVIEW_DATABASE.name)
    async def remove_preview_database(self, environment: str) -> list[str]:
        """Remove every database and role of one environment (the orphan sweeper)."""
        removed: list[str] = []
        async with self._access.admin(self._preview) as conn:
            youngest = await conn.fetchval(
                f"SELECT extract(epoch FROM now() - max(created_at)) FROM {SCHEMA}.databases "
                "WHERE environment = $1", environment)
            if youngest is not None and float(youngest) < self.sweep_grace:
                return []  # being made now, perhaps by a preview the sweep does not know yet
            for db in await self.list_preview_databases():
                if db.environment == environment and await self._remove(
                    conn, db.database, db.role, environment
                ):
                    removed.append(db.database)
            roles = await conn.fetch(
                "SELECT rolname, shobj_description(oid, 'pg_authid') AS comment FROM pg_roles")
            for row in roles:
                if marks_environment(parse_mark(row["comment"]), environment, KIND_ROLE):
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
        db = await database_info(conn, spec.database)
        if db is not None and not marks_environment(db.mark, env) and not (
            db.mark is None and claim is not None
        ):
            raise foreign_resource(f"PostgreSQL database {spec.database}", env)
        role = await role_info(conn, spec.role)
        if role is not None and not marks_environment(role.mark, env, KIND_ROLE):
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
        role = await role_info(conn, spec.role)
        name = ident(spec.role)
        if role is None:
            async with conn.transaction():  # the role and its mark appear together
                await conn.execute(
                    f"CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    f"NOBYPASSRLS CONNECTION LIMIT {spec.connection_limit} "
                    f"PASSWORD {literal(scram_verifier(password))}")
                role_mark = ownership_mark(KIND_ROLE, **{"preview-environment": env})
                await conn.execute(f"COMMENT ON ROLE {name} IS {literal(role_mark)}")
                if grant := await own_role_grant(conn, spec.role):
                    await conn.execute(grant)
            return
        if role.connection_limit != spec.connection_limit:
            await conn.execute(f"ALTER ROLE {name} CONNECTION LIMIT {spec.connection_limit}")
        if not scram_matches(role.password, password):
            await conn.execute(f"ALTER ROLE {name} PASSWORD {literal(scram_verifier(password))}")

    def _clone_comment(self, env: str, state: str, **extra: str) -> str:
        return ownership_mark(KIND_CLONE,
                              **{"preview-environment": env, "state": state, **extra})

    async def _ensure_database(self, conn: asyncpg.Connection, spec: PostgresCloneSpec,
                               env: str, password: str) -> dict[str, str]:
        """The database made, loaded, handed over and marked ready; its final mark."""
        db = await database_info(conn, spec.database)
        if db is not None and db.mark is None:
            # Our claim and no mark: we created it and stopped before marking it.
            await set_comment(conn, spec.database, self._clone_comment(env, CREATING))
            db = await database_info(conn, spec.database)
        state = db.mark.get("state", CREATING) if db is not None and db.mark else None
        copies = spec.data_policy in (DataPolicy.clone, DataPolicy.masked_clone)
        if db is not None and state == CREATING and copies:
            # A copy that stopped half way: start it again from scratch.
            await conn.execute(f"DROP DATABASE {ident(spec.database)} WITH (FORCE)")
            db, state = None, None
        if db is None:
            state = await self._create_database(conn, spec, env)
        if state in (CREATING, LOADED):
            await self._finish(conn, spec, env, password, loaded=state == LOADED)
        db = await database_info(conn, spec.database)
        if db is not None and db.connection_limit != spec.connection_limit:
            await conn.execute(f"ALTER DATABASE {ident(spec.database)} "
                               f"CONNECTION LIMIT {spec.connection_limit}")
        return dict(db.mark or {}) if db is not None else {}

    async def _create_database(self, conn: asyncpg.Connection, spec: PostgresCloneSpec,
                               env: str) -> str:
        name, owner, limit = ident(spec.database), ident(spec.role), spec.connection_limit
        if spec.data_policy in (DataPolicy.empty, DataPolicy.seed):
            await self._create(conn, f"CREATE DATABASE {name} OWNER {owner} TEMPLATE template0 "
                                     f"CONNECTION LIMIT {limit}", spec, env)
            made = ("an empty database" if spec.data_policy == DataPolicy.empty
                    else "an empty database, then its seed SQL")
            await set_comment(conn, spec.database,
                              self._clone_comment(env, CREATING, **{"clone-detail": made}))
            return CREATING
        async with self._access.admin(self._golden) as golden:
            if self._golden.endpoint == self._preview.endpoint:
                async with golden_source_lock(golden, spec.source, exclusive=False):
                    generation = await self._current_golden(golden, spec)
                    method, detail = await self._clone_template(
                        conn, spec, env, generation,
                        f"CREATE DATABASE {name} OWNER {owner} TEMPLATE {ident(generation)} "
                        f"STRATEGY FILE_COPY CONNECTION LIMIT {limit}")
            else:
                await self._create(conn, f"CREATE DATABASE {name} OWNER {owner} "
                                         f"TEMPLATE template0 CONNECTION LIMIT {limit}", spec, env)
                await set_comment(conn, spec.database, self._clone_comment(env, CREATING))
                # pg_dump must connect to the golden: nobody may clone it meanwhile.
                async with golden_source_lock(golden, spec.source, exclusive=True):
                    generation = await self._current_golden(golden, spec)
                    await golden.execute(
                        f"ALTER DATABASE {ident(generation)} ALLOW_CONNECTIONS true")
                    began = time.monotonic()
                    try:
                        await stream_copy(self._golden, generation, self._preview, spec.database)
                    finally:
                        await close_golden(golden, generation)
                method = STREAM
                _record_clone(STREAM, (time.monotonic() - began) * 1000)
                detail = (f"streamed with pg_dump | pg_restore in "
                          f"{time.monotonic() - began:.1f} s (the golden copies are on "
                          "another server)")
        await set_comment(conn, spec.database, self._clone_comment(
            env, LOADED, generation=generation,
            **{"clone-method": method, "clone-detail": detail}))
        return LOADED

    async def _clone_template(self, conn: asyncpg.Connection, spec: PostgresCloneSpec,
                              env: str, generation: str, create_sql: str) -> tuple[str, str]:
        """CREATE DATABASE from the golden template with the file_copy_method chosen for
        this server and generation (the first clone of each decides: clone_method.py).
        A failed CREATE DATABASE leaves no database, so a failed clone is simply made
        again as a copy. The method used and the line for people."""
        key = (self._preview.endpoint, generation)
        known = self._access.clone_methods.get(key)
        plan = known or await planned_method(conn, self._preview.host)
        for attempt in (plan, CloneMethod(COPY, "", has_setting=plan.has_setting)):
            if attempt.has_setting:
                await conn.execute(f"SET file_copy_method = {attempt.method}")
            began = time.monotonic()
            try:
                await self._create(conn, create_sql, spec, env)
            except asyncpg.PostgresError as error:
                if attempt.method != CLONE or not is_clone_failure(error):
                    raise
                failed = pg_message(error)
                self._access.clone_methods[key] = CloneMethod(
                    COPY, f"file_copy_method = clone failed: {failed}")
                continue
            finally:
                if attempt.has_setting:
                    await conn.execute("RESET file_copy_method")
            milliseconds = round((time.monotonic() - began) * 1000)
            chosen = self._access.clone_methods.get(key, attempt)
            if chosen.check:
                chosen = await checked_method(conn, self._preview.host, spec.database)
                if chosen.method == COPY:
                    # This one was made with `clone`, and copied all the same.
                    self._access.clone_methods[key] = chosen
                    this_one = CloneMethod(COPY, f"file_copy_method=clone copied: "
                                                 f"{chosen.reason}", has_setting=False)
                    _record_clone(COPY, milliseconds)
                    return COPY, this_one.detail(milliseconds)
            self._access.clone_methods[key] = chosen
            _record_clone(chosen.method, milliseconds)
            return chosen.method, chosen.detail(milliseconds)
        raise AssertionError("unreachable: the copy attempt returns or raises")

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

    async def _finish(self, conn: asyncpg.Connection, spec: PostgresCloneSpec, env: str,
                      password: str, *, loaded: bool) -> None:
        """Hand the data to the preview's role, lock others out, seed, mark ready."""
        if loaded:
            async with connect(self._preview, spec.database) as db:
                await db.execute(_transfer_ownership_sql(spec.role))
        await conn.execute(f"REVOKE ALL ON DATABASE {ident(spec.database)} FROM PUBLIC")
        db_info = await database_info(conn, spec.database)
        mark = dict(db_info.mark or {}) if db_info else {}
        mark.update({"state": READY, "preview-environment": env})
        ready = ownership_mark(KIND_CLONE, **{k: v for k, v in mark.items()
                                              if k not in ("managed-by", "kind")})
        if spec.data_policy != DataPolicy.seed:
            await set_comment(conn, spec.database, ready)
            return
        # Seed as the role itself, so the SQL cannot do more than the preview could.
        try:
            db = await asyncpg.connect(
                dsn=self._preview.as_user(spec.role, password, spec.database))
        except asyncpg.PostgresError as error:
            raise ApplicationError(f"cannot connect as role {spec.role} to seed "
                                   f"{spec.database}: {pg_message(error)}") from None
        try:
            async with db.transaction():  # the seed and the ready mark commit together
                await db.execute(spec.seed_sql or "")
                await set_comment(db, spec.database, ready)
        except asyncpg.PostgresError as error:
            if is_user_error(error):
                raise invalid_input(f"seed SQL of database {spec.database} failed: "
                                    f"{pg_message(error)}") from None
            raise
        finally:
            await db.close()

    async def _remove(self, conn: asyncpg.Connection, database: str, role: str | None,
                      env: str) -> bool:
        """Drop one clone and its role if they are ours; True when a database went."""
        dropped = False
        async with advisory_lock(conn, lock_key("database", database), exclusive=True,
                                 what=f"database {database}"):
            claim = await conn.fetchrow(
                f"SELECT environment, role FROM {SCHEMA}.databases WHERE database = $1", database)
            ours_claim = claim is not None and claim["environment"] == env
            role = role or (claim["role"] if ours_claim and claim else None)
            db = await database_info(conn, database)
            if db is not None:
                if marks_environment(db.mark, env) or (db.mark is None and ours_claim):
                    # FORCE ends its sessions first.
                    await conn.execute(
                        f"DROP DATABASE IF EXISTS {ident(database)} WITH (FORCE)")
                    dropped = True
                else:
                    activity_logger().warning(
                        "database %s is not managed by preview-engine for %s; leaving it",
                        database, env)
            if role:
                await self._drop_role(conn, role, env)
            if ours_claim:
                await conn.execute(f"DELETE FROM {SCHEMA}.databases WHERE database = $1",
                                   database)
        return dropped

    async def _drop_role(self, conn: asyncpg.Connection, role: str, env: str) -> None:
        info = await role_info(conn, role)
        if info is None or not marks_environment(info.mark, env, KIND_ROLE):
            return
        owns = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datdba = $1", info.oid)
        if owns:
            return  # still owns a database (of the same preview): that removal drops it
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE usename = $1", role)
        await conn.execute(f"DROP ROLE IF EXISTS {ident(role)}")
