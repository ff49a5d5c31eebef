"""The control-plane store (PostgreSQL, asyncpg): the environment model and its secrets.

Projects, environments, applications, databases and variables are stored as their
validated domain documents plus key columns; secret values only sealed; API tokens only
as SHA-256; webhook delivery ids for de-duplication; an append-only audit trail that
names who did what to which object, never a value.

Every write runs in one transaction that first locks the project row, so concurrent
writers to one project serialise, and ends by checking that the project still makes a
valid blueprint (references, cycles, variable aliases). A project that has applications
and its source environment therefore always exports.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets as token_source
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import QUOTA_EXCEEDED, invalid_input
from domain.blueprint import (
    Application,
    AppliesTo,
    Blueprint,
    Database,
    DnsName,
    Environment,
    Network,
    PreviewPolicy,
    Project,
    Variable,
    VariableKey,
    VariableKind,
    VariableScope,
)
from domain.blueprint_file import field_path
from domain.clusters import CLUSTER_NAME, KubeconfigError, check_kubeconfig
from domain.plan import sweep_targets
from domain.resources import (
    LIST_SWEEP_TARGETS,
    PreviewSlotSpec,
    StepInput,
    StepOutput,
    SweepTargets,
)
from domain.secrets import SealedValue
from domain.source import LoadSourceRequest, SourceEnvironment
from domain.variables import SecretVariable, Target, VariableError, resolve_variables

if TYPE_CHECKING:
    from engine.sealing import Sealer

log = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "store_schema"
# Any constant works, as long as every starter uses the same one.
MIGRATION_LOCK = 0x70726576_69657721 & 0x7FFF_FFFF_FFFF_FFFF
MAX_PAGE = 500
UNKNOWN_REPOSITORY = "UnknownRepository"


# ---------------------------------------------------------------------------- errors


class StoreError(Exception):
    """A request the store refuses; the message says what to do. Never holds a value."""

    code = "error"

    def __init__(self, message: str, *, object: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.object = object
        self.field = field


class NotFound(StoreError):
    code = "not_found"


class Conflict(StoreError):
    code = "conflict"


class Invalid(StoreError):
    code = "invalid"


class MigrationError(RuntimeError):
    pass


# ---------------------------------------------------------------------------- models

T = TypeVar("T")
RepositoryName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+$",
        max_length=255,
        description="owner/name (GitLab: group/subgroup/name) on the Git host",
    ),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Page(BaseModel, Generic[T]):
    """One page of a listing, with the total so clients know when to stop."""

    items: list[T]
    total: int = Field(description="Number of items across all pages")
    limit: int
    offset: int


class ProjectSpec(_Model):
    """A project as clients write it: what previews are copied from and how."""

    name: DnsName
    repository: RepositoryName
    source_environment: DnsName = Field(
        "production", description="The environment previews are copied from"
    )
    network: Network = Network()
    policy: PreviewPolicy = PreviewPolicy()


class ProjectRecord(ProjectSpec):
    created_at: datetime
    updated_at: datetime


class VariableRef(_Model):
    """What identifies one variable or secret within a project."""

    key: VariableKey
    scope: VariableScope = VariableScope.project
    environment: DnsName | None = Field(
        None, description="For scope environment; defaults to the project's source environment"
    )
    application: str | None = None
    applies_to: AppliesTo = AppliesTo.both

    @model_validator(mode="after")
    def _scope(self) -> VariableRef:
        _check_scope(self.key, self.scope, self.environment, self.application)
        return self


class ScopedVariable(Variable):
    """A stored variable: the blueprint's Variable plus, for scope environment, which one."""

    environment: DnsName | None = Field(
        None, description="For scope environment; defaults to the project's source environment"
    )

    @model_validator(mode="after")
    def _environment(self) -> ScopedVariable:
        _check_scope(self.key, self.scope, self.environment, self.application)
        return self

    @property
    def ref(self) -> VariableRef:
        return VariableRef(
            key=self.key, scope=self.scope, environment=self.environment,
            application=self.application, applies_to=self.applies_to,
        )

    def as_variable(self) -> Variable:
        return Variable(**self.model_dump(exclude={"environment"}))


def _check_scope(
    key: str, scope: VariableScope, environment: str | None, application: str | None
) -> None:
    if environment is not None and scope != VariableScope.environment:
        raise ValueError(f"variable {key}: `environment` is only for scope environment")
    if (scope == VariableScope.application) != (application is not None):
        raise ValueError(
            f"variable {key}: scope application needs `application`, other scopes must not"
        )


class SecretMetadata(_Model):
    """Everything about a stored secret except its value."""

    key: str
    scope: VariableScope
    environment: str | None
    application: str | None
    applies_to: AppliesTo
    key_id: str = Field(description="Id of the master key that wraps the value's data key")
    version: int = Field(description="1 when created, +1 on every change of value")
    created_at: datetime
    updated_at: datetime
    updated_by: str


class ClusterMetadata(_Model):
    """A stored cluster kubeconfig, without the kubeconfig."""

    name: str
    context: str | None = Field(description="The kubeconfig context used; None: its current")
    key_id: str = Field(description="Id of the master key that wraps the kubeconfig's data key")
    version: int
    created_at: datetime
    updated_at: datetime
    updated_by: str


class ClusterCredentials(_Model):
    """What a worker needs to reach a stored cluster: the sealed kubeconfig."""

    name: str
    context: str | None
    sealed: SealedValue


class TokenRecord(_Model):
    id: int
    name: str
    project: str | None = Field(description="The only project the token may act on; None: admin")
    admin: bool
    created_at: datetime
    created_by: str
    last_used_at: datetime | None


class AuditEntry(_Model):
    id: int
    at: datetime
    actor: str
    action: str
    object: str
    project: str | None


class ImportResult(_Model):
    project: str
    environment: str
    created: bool = Field(description="True when the import created the project")
    applications: int
    databases: int
    variables: int


# ---------------------------------------------------------------------------- helpers


def _json(model: BaseModel) -> str:
    return json.dumps(model.model_dump(mode="json"))


def _validation_message(error: ValidationError) -> tuple[str, str | None]:
    """A readable message and the first field it is about, without the input values."""
    parts, first = [], None
    for detail in error.errors(include_url=False, include_input=False):
        path = field_path(detail["loc"])
        message = detail["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {message}" if path else message)
        first = first or path or None
    return "; ".join(parts), first


def _clamp(limit: int, offset: int) -> tuple[int, int]:
    return max(1, min(limit, MAX_PAGE)), max(0, offset)


def _ref_text(ref: VariableRef) -> str:
    where = [f"scope={ref.scope.value}"]
    if ref.environment:
        where.append(f"environment={ref.environment}")
    if ref.application:
        where.append(f"application={ref.application}")
    where.append(f"applies_to={ref.applies_to.value}")
    return f"{ref.key} ({', '.join(where)})"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


_REF_WHERE = (
    "project_id = $1 AND key = $2 AND scope = $3 AND environment IS NOT DISTINCT FROM $4 "
    "AND application IS NOT DISTINCT FROM $5 AND applies_to = $6"
)


def _ref_args(project_id: int, ref: VariableRef) -> list[Any]:
    return [project_id, ref.key, ref.scope.value, ref.environment, ref.application,
            ref.applies_to.value]


def _variable(row: asyncpg.Record) -> ScopedVariable:
    return ScopedVariable(
        key=row["key"], value=row["value"], scope=row["scope"], environment=row["environment"],
        application=row["application"], kind=row["kind"], applies_to=row["applies_to"],
    )


def _secret_metadata(row: asyncpg.Record) -> SecretMetadata:
    return SecretMetadata(
        key=row["key"], scope=row["scope"], environment=row["environment"],
        application=row["application"], applies_to=row["applies_to"], key_id=row["key_id"],
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"],
        updated_by=row["updated_by"],
    )


def _project(row: asyncpg.Record) -> ProjectRecord:
    return ProjectRecord(
        name=row["name"], repository=row["repository"],
        source_environment=row["source_environment"],
        network=Network.model_validate_json(row["network"]),
        policy=PreviewPolicy.model_validate_json(row["policy"]),
        created_at=row["created_at"], updated_at=row["updated_at"],
    )


def _cluster(row: asyncpg.Record) -> ClusterMetadata:
    return ClusterMetadata(
        name=row["name"], context=row["context"], key_id=row["key_id"], version=row["version"],
        created_at=row["created_at"], updated_at=row["updated_at"], updated_by=row["updated_by"],
    )


def _token(row: asyncpg.Record) -> TokenRecord:
    return TokenRecord(
        id=row["id"], name=row["name"], project=row["project"], admin=row["admin"],
        created_at=row["created_at"], created_by=row["created_by"],
        last_used_at=row["last_used_at"],
    )


async def _audit(
    conn: asyncpg.Connection, actor: str, action: str, object: str, project: str | None
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, object, project) VALUES ($1, $2, $3, $4)",
        actor, action, object, project,
    )


# ---------------------------------------------------------------------------- collections

M = TypeVar("M", Environment, Application, Database)


class Collection(Generic[M]):
    """CRUD for one kind of named document of a project (environments, applications, databases)."""

    def __init__(self, store: Store, table: str, model: type[M], label: str) -> None:
        assert table in ("environments", "applications", "databases")  # never user input
        self._store, self._table, self.label = store, table, label
        self._model: type[M] = model

    def _object(self, project: str, name: str) -> str:
        return f"{self.label} {name!r} of project {project!r}"

    async def list(self, project: str, *, limit: int = 50, offset: int = 0) -> Page[M]:
        limit, offset = _clamp(limit, offset)
        async with self._store.pool.acquire() as conn, conn.transaction(readonly=True):
            row = await self._store._project_row(conn, project)
            total = await conn.fetchval(
                f"SELECT count(*) FROM {self._table} WHERE project_id = $1", row["id"]
            )
            rows = await conn.fetch(
                f"SELECT document FROM {self._table} WHERE project_id = $1 "
                "ORDER BY position, name LIMIT $2 OFFSET $3",
                row["id"], limit, offset,
            )
        items = [self._model.model_validate_json(r["document"]) for r in rows]
        return Page[M](items=items, total=total, limit=limit, offset=offset)

    async def get(self, project: str, name: str) -> M:
        async with self._store.pool.acquire() as conn:
            row = await self._store._project_row(conn, project)
            document = await conn.fetchval(
                f"SELECT document FROM {self._table} WHERE project_id = $1 AND name = $2",
                row["id"], name,
            )
        if document is None:
            raise NotFound(f"{self._object(project, name)} not found",
                           object=self._object(project, name))
        return self._model.model_validate_json(document)

    async def create(self, project: str, item: M, actor: str) -> M:
        async with self._store.pool.acquire() as conn, conn.transaction():
            row = await self._store._lock_project(conn, project)
            inserted = await conn.fetchval(
                f"INSERT INTO {self._table} (project_id, name, position, document) "
                f"SELECT $1, $2, coalesce(max(position), -1) + 1, $3::jsonb FROM {self._table} "
                "WHERE project_id = $1 ON CONFLICT (project_id, name) DO NOTHING RETURNING true",
                row["id"], item.name, _json(item),
            )
            if not inserted:
                raise Conflict(f"{self._object(project, item.name)} already exists; "
                               "replace it with PUT", object=self._object(project, item.name))
            await self._store._check(conn, row)
            await _audit(conn, actor, f"{self.label}.create", self._object(project, item.name),
                         project)
        log.info("%s created by %s", self._object(project, item.name), actor)
        return item

    async def replace(self, project: str, name: str, item: M, actor: str) -> M:
        if item.name != name:
            raise Invalid(f"{self.label} {name!r}: the name in the body ({item.name!r}) must "
                          "match the one in the path; renaming is not supported", field="name")
        async with self._store.pool.acquire() as conn, conn.transaction():
            row = await self._store._lock_project(conn, project)
            updated = await conn.fetchval(
                f"UPDATE {self._table} SET document = $3::jsonb, updated_at = now() "
                "WHERE project_id = $1 AND name = $2 RETURNING true",
                row["id"], name, _json(item),
            )
            if not updated:
                raise NotFound(f"{self._object(project, name)} not found",
                               object=self._object(project, name))
            await self._store._check(conn, row)
            await _audit(conn, actor, f"{self.label}.replace", self._object(project, name),
                         project)
        return item

    async def delete(self, project: str, name: str, actor: str) -> None:
        async with self._store.pool.acquire() as conn, conn.transaction():
            row = await self._store._lock_project(conn, project)
            if self._table == "environments" and name == row["source_environment"]:
                raise Conflict(
                    f"{self._object(project, name)} is the project's source environment; "
                    "point source_environment elsewhere first",
                    object=self._object(project, name),
                )
            deleted = await conn.fetchval(
                f"DELETE FROM {self._table} WHERE project_id = $1 AND name = $2 RETURNING true",
                row["id"], name,
            )
            if not deleted:
                raise NotFound(f"{self._object(project, name)} not found",
                               object=self._object(project, name))
            await self._store._check(conn, row, deleting=True)
            await _audit(conn, actor, f"{self.label}.delete", self._object(project, name),
                         project)


# ---------------------------------------------------------------------------- the store


class Store:
    def __init__(self, pool: asyncpg.Pool, sealer: Sealer | None = None) -> None:
        self.pool = pool
        self._sealer = sealer
        self.environments = Collection(self, "environments", Environment, "environment")
        self.applications = Collection(self, "applications", Application, "application")
        self.databases = Collection(self, "databases", Database, "database")

    @classmethod
    async def connect(cls, url: str, sealer: Sealer | None = None, *, max_size: int = 10) -> Store:
        return cls(await asyncpg.create_pool(url, min_size=1, max_size=max_size), sealer)

    async def close(self) -> None:
        await self.pool.close()

    # -- schema -----------------------------------------------------------------

    @staticmethod
    def migrations() -> list[tuple[int, str, str]]:
        """(version, file name, SQL) of every migration file, in order."""
        found = []
        for path in sorted(SCHEMA_DIR.glob("*.sql")):
            number, _, _ = path.name.partition("_")
            if not number.isdigit():
                raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
            found.append((int(number), path.name, path.read_text()))
        versions = [v for v, _, _ in found]
        if len(set(versions)) != len(versions):
            raise MigrationError(f"two migration files share a version in {SCHEMA_DIR}")
        return found

    async def migrate(self) -> list[str]:
        """Apply the migrations not applied yet, in order, in one transaction; return their names.

        An advisory lock makes concurrent starters wait for each other: the first applies,
        the others then find nothing left to do. A changed, already applied file is refused.
        """
        applied_now: list[str] = []
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"]: r for r in await conn.fetch("SELECT * FROM schema_version")}
            for version, name, sql in self.migrations():
                digest = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version]["sha256"] != digest:
                        raise MigrationError(
                            f"migration {name} was changed after it was applied; "
                            "add a new migration file instead"
                        )
                    continue
                await conn.execute(sql)  # no arguments: the simple protocol runs many statements
                await conn.execute(
                    "INSERT INTO schema_version (version, name, sha256) VALUES ($1, $2, $3)",
                    version, name, digest,
                )
                applied_now.append(name)
        if applied_now:
            log.info("store schema: applied %s", ", ".join(applied_now))
        return applied_now

    # -- internals ----------------------------------------------------------------

    async def _project_row(self, conn: asyncpg.Connection, name: str) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT * FROM projects WHERE name = $1", name)
        if row is None:
            raise NotFound(f"project {name!r} not found", object=f"project {name!r}")
        return row

    async def _lock_project(self, conn: asyncpg.Connection, name: str) -> asyncpg.Record:
        # Serialises writers of one project, so checks see what they guard.
        row = await conn.fetchrow("SELECT * FROM projects WHERE name = $1 FOR UPDATE", name)
        if row is None:
            raise NotFound(f"project {name!r} not found", object=f"project {name!r}")
        return row

    async def _assemble(
        self, conn: asyncpg.Connection, row: asyncpg.Record, *, strict: bool
    ) -> Blueprint | None:
        """The project's blueprint (its source environment); None if incomplete and not strict."""
        project_id, name, source = row["id"], row["name"], row["source_environment"]
        environment = await conn.fetchval(
            "SELECT document FROM environments WHERE project_id = $1 AND name = $2",
            project_id, source,
        )
        apps = await conn.fetch(
            "SELECT document FROM applications WHERE project_id = $1 ORDER BY position, name",
            project_id,
        )
        if environment is None or not apps:
            if not strict:
                return None
            missing = (f"its source environment {source!r}" if environment is None
                       else "an application")
            raise Conflict(f"project {name!r} is incomplete: add {missing} first",
                           object=f"project {name!r}")
        dbs = await conn.fetch(
            "SELECT document FROM databases WHERE project_id = $1 ORDER BY position, name",
            project_id,
        )
        variables = await conn.fetch(
            "SELECT * FROM variables WHERE project_id = $1 "
            "AND (scope <> 'environment' OR environment = $2) ORDER BY position, id",
            project_id, source,
        )
        try:
            return Blueprint(
                project=Project(name=name, repository=row["repository"]),
                environment=Environment.model_validate_json(environment),
                applications=[Application.model_validate_json(r["document"]) for r in apps],
                databases=[Database.model_validate_json(r["document"]) for r in dbs],
                network=Network.model_validate_json(row["network"]),
                variables=[_variable(r).as_variable() for r in variables],
                policy=PreviewPolicy.model_validate_json(row["policy"]),
            )
        except ValidationError as error:
            message, field = _validation_message(error)
            raise Invalid(f"project {name!r}: {message}", object=f"project {name!r}",
                          field=field) from None

    async def _secret_variables(
        self, conn: asyncpg.Connection, project_id: int, environment: str
    ) -> list[SecretVariable]:
        rows = await conn.fetch(
            "SELECT * FROM secrets WHERE project_id = $1 "
            "AND (scope <> 'environment' OR environment = $2) ORDER BY id",
            project_id, environment,
        )
        return [
            SecretVariable(
                key=r["key"], sealed=SealedValue.model_validate_json(r["sealed"]),
                scope=r["scope"], application=r["application"], applies_to=r["applies_to"],
            )
            for r in rows
        ]

    async def _check(
        self, conn: asyncpg.Connection, row: asyncpg.Record, *, deleting: bool = False
    ) -> None:
        """Refuse a change that leaves the project an invalid blueprint.

        Checks what the Blueprint model checks (references, dependency cycles) and that
        every application's variables resolve in both targets (alias cycles, dangling
        aliases). A delete that breaks something is a conflict; a write, invalid input.
        """
        row = await conn.fetchrow("SELECT * FROM projects WHERE id = $1", row["id"])
        error_type: type[StoreError] = Conflict if deleting else Invalid
        try:
            blueprint = await self._assemble(conn, row, strict=False)
        except Invalid as error:
            raise error_type(error.message, object=error.object, field=error.field) from None
        if blueprint is None:
            return
        secrets = await self._secret_variables(conn, row["id"], row["source_environment"])
        for app in blueprint.applications:
            for target in Target:
                try:
                    resolve_variables(blueprint.variables, secrets, target=target,
                                      application=app.name)
                except VariableError as error:
                    raise error_type(
                        f"project {row['name']!r}: {error} (application {app.name!r}, "
                        f"target {target.value})",
                        object=f"project {row['name']!r}", field="variables",
                    ) from None

    async def _complete_ref(
        self, conn: asyncpg.Connection, row: asyncpg.Record, ref: VariableRef
    ) -> VariableRef:
        """Fill in the default environment and check the environment/application exist."""
        if ref.scope == VariableScope.environment and ref.environment is None:
            ref = ref.model_copy(update={"environment": row["source_environment"]})
        if ref.environment is not None and not await conn.fetchval(
            "SELECT true FROM environments WHERE project_id = $1 AND name = $2",
            row["id"], ref.environment,
        ):
            raise Invalid(f"variable {ref.key} names unknown environment {ref.environment!r} "
                          f"of project {row['name']!r}", field="environment")
        if ref.application is not None and not await conn.fetchval(
            "SELECT true FROM applications WHERE project_id = $1 AND name = $2",
            row["id"], ref.application,
        ):
            raise Invalid(f"variable {ref.key} names unknown application {ref.application!r} "
                          f"of project {row['name']!r}", field="application")
        return ref

    # -- projects ------------------------------------------------------------------

    async def create_project(self, spec: ProjectSpec, actor: str) -> ProjectRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            await self._refuse_repository_clash(conn, spec.repository, spec.name)
            row = await conn.fetchrow(
                "INSERT INTO projects (name, repository, source_environment, document, network,"
                " policy) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb)"
                " ON CONFLICT (name) DO NOTHING RETURNING *",
                spec.name, spec.repository, spec.source_environment,
                _json(Project(name=spec.name, repository=spec.repository)),
                _json(spec.network), _json(spec.policy),
            )
            if row is None:
                raise Conflict(f"project {spec.name!r} already exists",
                               object=f"project {spec.name!r}", field="name")
            await _audit(conn, actor, "project.create", f"project {spec.name!r}", spec.name)
        return _project(row)

    async def _refuse_repository_clash(
        self, conn: asyncpg.Connection, repository: str, name: str
    ) -> None:
        other = await conn.fetchval(
            "SELECT name FROM projects WHERE lower(repository) = lower($1) AND name <> $2",
            repository, name,
        )
        if other is not None:
            raise Conflict(f"repository {repository!r} is already registered by project "
                           f"{other!r}", object=f"project {other!r}", field="repository")

    async def get_project(self, name: str) -> ProjectRecord:
        async with self.pool.acquire() as conn:
            return _project(await self._project_row(conn, name))

    async def project_for_repository(self, repository: str) -> ProjectRecord | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM projects WHERE lower(repository) = lower($1)", repository
        )
        return _project(row) if row else None

    async def list_projects(
        self, *, limit: int = 50, offset: int = 0, only: str | None = None
    ) -> Page[ProjectRecord]:
        """All projects by name, or just `only` (what a project token may see)."""
        limit, offset = _clamp(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval(
                "SELECT count(*) FROM projects WHERE $1::text IS NULL OR name = $1", only
            )
            rows = await conn.fetch(
                "SELECT * FROM projects WHERE $1::text IS NULL OR name = $1 ORDER BY name "
                "LIMIT $2 OFFSET $3",
                only, limit, offset,
            )
        return Page[ProjectRecord](items=[_project(r) for r in rows], total=total, limit=limit,
                                   offset=offset)

    async def update_project(self, name: str, spec: ProjectSpec, actor: str) -> ProjectRecord:
        if spec.name != name:
            raise Invalid(f"project {name!r}: the name in the body ({spec.name!r}) must match "
                          "the one in the path; renaming is not supported", field="name")
        async with self.pool.acquire() as conn, conn.transaction():
            current = await self._lock_project(conn, name)
            await self._refuse_repository_clash(conn, spec.repository, name)
            environments = [r["name"] for r in await conn.fetch(
                "SELECT name FROM environments WHERE project_id = $1", current["id"])]
            # Before any environment exists the source may be named ahead; after, it must exist.
            if environments and spec.source_environment not in environments:
                raise Invalid(
                    f"project {name!r} has no environment {spec.source_environment!r} "
                    f"(it has {', '.join(sorted(environments))}); create it first",
                    object=f"project {name!r}", field="source_environment",
                )
            row = await conn.fetchrow(
                "UPDATE projects SET repository = $2, source_environment = $3, document = $4,"
                " network = $5, policy = $6, updated_at = now() WHERE name = $1 RETURNING *",
                name, spec.repository, spec.source_environment,
                _json(Project(name=name, repository=spec.repository)),
                _json(spec.network), _json(spec.policy),
            )
            await self._check(conn, row)
            await _audit(conn, actor, "project.update", f"project {name!r}", name)
        return _project(row)

    async def delete_project(self, name: str, actor: str) -> None:
        """Delete a project and everything it holds (secrets and tokens included)."""
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM projects WHERE name = $1 RETURNING true", name
            )
            if not deleted:
                raise NotFound(f"project {name!r} not found", object=f"project {name!r}")
            await _audit(conn, actor, "project.delete", f"project {name!r}", name)

    # -- variables -------------------------------------------------------------------

    async def list_variables(
        self, project: str, *, key: str | None = None, scope: VariableScope | None = None,
        environment: str | None = None, application: str | None = None,
        limit: int = 50, offset: int = 0,
    ) -> Page[ScopedVariable]:
        limit, offset = _clamp(limit, offset)
        where = ("project_id = $1 AND ($2::text IS NULL OR key = $2) AND ($3::text IS NULL OR "
                 "scope = $3) AND ($4::text IS NULL OR environment = $4) AND "
                 "($5::text IS NULL OR application = $5)")
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            row = await self._project_row(conn, project)
            args = [row["id"], key, scope.value if scope else None, environment, application]
            total = await conn.fetchval(f"SELECT count(*) FROM variables WHERE {where}", *args)
            rows = await conn.fetch(
                f"SELECT * FROM variables WHERE {where} ORDER BY position, id "
                "LIMIT $6 OFFSET $7", *args, limit, offset,
            )
        return Page[ScopedVariable](items=[_variable(r) for r in rows], total=total,
                                    limit=limit, offset=offset)

    async def get_variable(self, project: str, ref: VariableRef) -> ScopedVariable:
        async with self.pool.acquire() as conn:
            row = await self._project_row(conn, project)
            ref = await self._complete_ref(conn, row, ref)
            found = await conn.fetchrow(
                f"SELECT * FROM variables WHERE {_REF_WHERE}", *_ref_args(row["id"], ref)
            )
        if found is None:
            raise NotFound(f"variable {_ref_text(ref)} of project {project!r} not found",
                           object=f"variable {_ref_text(ref)}")
        return _variable(found)

    async def create_variable(
        self, project: str, variable: ScopedVariable, actor: str
    ) -> ScopedVariable:
        stored, created = await self._write_variable(project, variable, actor, replace=False)
        if not created:
            what = f"variable {_ref_text(stored.ref)}"
            raise Conflict(f"{what} of project {project!r} already exists; replace it with PUT",
                           object=what)
        return stored

    async def set_variable(
        self, project: str, variable: ScopedVariable, actor: str
    ) -> tuple[ScopedVariable, bool]:
        """Create or replace a variable; True when it was created."""
        return await self._write_variable(project, variable, actor, replace=True)

    async def _write_variable(
        self, project: str, variable: ScopedVariable, actor: str, *, replace: bool
    ) -> tuple[ScopedVariable, bool]:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._lock_project(conn, project)
            ref = await self._complete_ref(conn, row, variable.ref)
            variable = variable.model_copy(update={"environment": ref.environment})
            if variable.kind != VariableKind.secret and await conn.fetchval(
                f"SELECT true FROM secrets WHERE {_REF_WHERE}", *_ref_args(row["id"], ref)
            ):
                raise Conflict(f"{_ref_text(ref)} is a secret of project {project!r}; delete the "
                               "secret first, or declare the variable with kind secret",
                               object=f"secret {_ref_text(ref)}", field="kind")
            existing = await conn.fetchval(
                f"SELECT id FROM variables WHERE {_REF_WHERE} FOR UPDATE",
                *_ref_args(row["id"], ref),
            )
            if existing is not None and not replace:
                return variable, False
            if existing is None:
                await conn.execute(
                    "INSERT INTO variables (project_id, key, scope, environment, application,"
                    " applies_to, kind, value, position) SELECT $1, $2, $3, $4, $5, $6, $7, $8,"
                    " coalesce(max(position), -1) + 1 FROM variables WHERE project_id = $1",
                    *_ref_args(row["id"], ref), variable.kind.value, variable.value,
                )
            else:
                await conn.execute(
                    "UPDATE variables SET kind = $2, value = $3, updated_at = now() "
                    "WHERE id = $1", existing, variable.kind.value, variable.value,
                )
            await self._check(conn, row)
            action = "variable.create" if existing is None else "variable.replace"
            await _audit(conn, actor, action, f"variable {_ref_text(ref)}", project)
        return variable, existing is None

    async def delete_variable(self, project: str, ref: VariableRef, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._lock_project(conn, project)
            ref = await self._complete_ref(conn, row, ref)
            deleted = await conn.fetchval(
                f"DELETE FROM variables WHERE {_REF_WHERE} RETURNING true",
                *_ref_args(row["id"], ref),
            )
            if not deleted:
                raise NotFound(f"variable {_ref_text(ref)} of project {project!r} not found",
                               object=f"variable {_ref_text(ref)}")
            await self._check(conn, row, deleting=True)
            await _audit(conn, actor, "variable.delete", f"variable {_ref_text(ref)}", project)

    # -- secrets ---------------------------------------------------------------------

    async def put_secret(
        self,
        project: str,
        key: str,
        value: str,
        scope: VariableScope = VariableScope.project,
        application: str | None = None,
        applies_to: AppliesTo = AppliesTo.both,
        actor: str = "system",
        *,
        environment: str | None = None,
        sealer: Sealer | None = None,
    ) -> tuple[SecretMetadata, bool]:
        """Seal and store a secret value; True when it was created. The value goes nowhere else."""
        sealer = sealer or self._sealer
        if sealer is None:
            raise RuntimeError("Store has no Sealer: pass one to Store(...) or put_secret(...)")
        try:
            ref = VariableRef(key=key, scope=scope, environment=environment,
                              application=application, applies_to=applies_to)
        except ValidationError as error:
            message, field = _validation_message(error)
            raise Invalid(message, field=field) from None
        sealed = await asyncio.to_thread(sealer.seal, value)  # KMS: a network call
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._lock_project(conn, project)
            ref = await self._complete_ref(conn, row, ref)
            if await conn.fetchval(
                f"SELECT true FROM variables WHERE {_REF_WHERE} AND kind <> 'secret'",
                *_ref_args(row["id"], ref),
            ):
                raise Conflict(f"{_ref_text(ref)} is a plain variable of project {project!r}; "
                               "delete it first or give the secret another key",
                               object=f"variable {_ref_text(ref)}", field="key")
            stored = await conn.fetchrow(
                "INSERT INTO secrets (project_id, key, scope, environment, application,"
                " applies_to, sealed, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)"
                " ON CONFLICT (project_id, key, scope, environment, application, applies_to)"
                " DO UPDATE SET sealed = EXCLUDED.sealed, version = secrets.version + 1,"
                " updated_at = now(), updated_by = EXCLUDED.updated_by"
                " RETURNING *, (xmax = 0) AS created",
                *_ref_args(row["id"], ref), _json(sealed), actor,
            )
            await self._check(conn, row)
            created = bool(stored["created"])
            await _audit(conn, actor, "secret.create" if created else "secret.update",
                         f"secret {_ref_text(ref)}", project)
        log.info("secret %s of project %s %s by %s (version %d)", _ref_text(ref), project,
                 "created" if created else "updated", actor, stored["version"])
        return _secret_metadata(stored), created

    async def secret_metadata(
        self, project: str, *, key: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[SecretMetadata]:
        """What secrets a project has (never their values)."""
        limit, offset = _clamp(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            row = await self._project_row(conn, project)
            total = await conn.fetchval(
                "SELECT count(*) FROM secrets WHERE project_id = $1 "
                "AND ($2::text IS NULL OR key = $2)", row["id"], key,
            )
            rows = await conn.fetch(
                "SELECT * FROM secrets WHERE project_id = $1 AND ($2::text IS NULL OR key = $2) "
                "ORDER BY key, id LIMIT $3 OFFSET $4", row["id"], key, limit, offset,
            )
        return Page[SecretMetadata](items=[_secret_metadata(r) for r in rows], total=total,
                                    limit=limit, offset=offset)

    async def get_secret_metadata(self, project: str, ref: VariableRef) -> SecretMetadata:
        async with self.pool.acquire() as conn:
            row = await self._project_row(conn, project)
            ref = await self._complete_ref(conn, row, ref)
            found = await conn.fetchrow(
                f"SELECT * FROM secrets WHERE {_REF_WHERE}", *_ref_args(row["id"], ref)
            )
        if found is None:
            raise NotFound(f"secret {_ref_text(ref)} of project {project!r} not found",
                           object=f"secret {_ref_text(ref)}")
        return _secret_metadata(found)

    async def delete_secret(self, project: str, ref: VariableRef, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._lock_project(conn, project)
            ref = await self._complete_ref(conn, row, ref)
            deleted = await conn.fetchval(
                f"DELETE FROM secrets WHERE {_REF_WHERE} RETURNING true",
                *_ref_args(row["id"], ref),
            )
            if not deleted:
                raise NotFound(f"secret {_ref_text(ref)} of project {project!r} not found",
                               object=f"secret {_ref_text(ref)}")
            await self._check(conn, row, deleting=True)
            await _audit(conn, actor, "secret.delete", f"secret {_ref_text(ref)}", project)

    async def rewrap_secrets(self, sealer: Sealer, actor: str = "system", batch: int = 200) -> int:
        """Re-wrap every data key (secrets' and stored kubeconfigs') under the sealer's
        current master key; return how many.

        Values stay sealed throughout (only data keys are unwrapped). Works in batches,
        each its own transaction, so a large store does not hold one long lock; running it
        again after an interruption finishes the job.
        """
        rewrapped = 0
        # Secrets, and the kubeconfigs of dedicated clusters, sealed the same way.
        for table, key, what, action in (("secrets", "id", "secrets", "secret.rewrap"),
                                         ("clusters", "name", "cluster kubeconfigs",
                                          "cluster.rewrap")):
            last: Any = 0 if key == "id" else ""
            while True:
                async with self.pool.acquire() as conn, conn.transaction():
                    rows = await conn.fetch(
                        f"SELECT {key}, sealed FROM {table} WHERE {key} > $1 ORDER BY {key} "
                        "LIMIT $2 FOR UPDATE", last, batch,
                    )
                    if not rows:
                        break
                    changed = 0
                    for row in rows:
                        old = SealedValue.model_validate_json(row["sealed"])
                        new = await asyncio.to_thread(sealer.rewrap, old)
                        if new != old:
                            await conn.execute(
                                f"UPDATE {table} SET sealed = $2::jsonb WHERE {key} = $1",
                                row[key], _json(new))
                            changed += 1
                    last = rows[-1][key]
                    if changed:
                        await _audit(conn, actor, action, f"{changed} {what} re-wrapped",
                                     None)
                    rewrapped += changed
        log.info("re-wrapped %d data keys", rewrapped)
        return rewrapped

    # -- dedicated clusters' kubeconfigs -------------------------------------------

    async def put_cluster(self, name: str, kubeconfig: str, context: str | None, actor: str,
                          *, sealer: Sealer | None = None) -> tuple[ClusterMetadata, bool]:
        """Check, seal and store a cluster's kubeconfig; True when it was created."""
        sealer = sealer or self._sealer
        if sealer is None:
            raise RuntimeError("Store has no Sealer: pass one to Store(...) or put_cluster(...)")
        if not re.fullmatch(CLUSTER_NAME, name) or name == "default":
            raise Invalid(f"cluster name {name!r} must be a DNS label other than 'default' "
                          "(the lifecycle worker's own cluster)", field="name")
        try:
            check_kubeconfig(kubeconfig, context)
        except KubeconfigError as error:
            raise Invalid(f"kubeconfig of cluster {name!r}: {error}", field="kubeconfig",
                          object=f"cluster {name!r}") from None
        sealed = await asyncio.to_thread(sealer.seal, kubeconfig)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO clusters (name, context, sealed, updated_by) "
                "VALUES ($1, $2, $3::jsonb, $4) ON CONFLICT (name) DO UPDATE SET "
                "context = EXCLUDED.context, sealed = EXCLUDED.sealed, "
                "version = clusters.version + 1, updated_at = now(), "
                "updated_by = EXCLUDED.updated_by RETURNING *, (xmax = 0) AS created",
                name, context, _json(sealed), actor)
            created = bool(row["created"])
            await _audit(conn, actor, "cluster.create" if created else "cluster.update",
                         f"cluster {name!r}", None)
        return _cluster(row), created

    async def list_clusters(self, *, limit: int = 50, offset: int = 0) -> Page[ClusterMetadata]:
        limit, offset = _clamp(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval("SELECT count(*) FROM clusters")
            rows = await conn.fetch("SELECT * FROM clusters ORDER BY name LIMIT $1 OFFSET $2",
                                    limit, offset)
        return Page[ClusterMetadata](items=[_cluster(r) for r in rows], total=total,
                                     limit=limit, offset=offset)

    async def delete_cluster(self, name: str, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("DELETE FROM clusters WHERE name = $1 RETURNING 1",
                                   name) is None:
                raise NotFound(f"cluster {name!r} not found", object=f"cluster {name!r}")
            await _audit(conn, actor, "cluster.delete", f"cluster {name!r}", None)

    async def cluster_credentials(self, name: str) -> ClusterCredentials | None:
        """The sealed kubeconfig of a stored cluster, for the worker that acts in it."""
        row = await self.pool.fetchrow("SELECT * FROM clusters WHERE name = $1", name)
        if row is None:
            return None
        return ClusterCredentials(name=row["name"], context=row["context"],
                                  sealed=SealedValue.model_validate_json(row["sealed"]))

    # -- API tokens -----------------------------------------------------------------

    async def create_token(
        self, name: str, project: str | None, actor: str
    ) -> tuple[str, TokenRecord]:
        """A new token (returned once, in clear) scoped to `project`, or admin when None."""
        token = "pvt_" + token_source.token_urlsafe(32)
        async with self.pool.acquire() as conn, conn.transaction():
            project_id = None
            if project is not None:
                project_id = (await self._project_row(conn, project))["id"]
            row = await conn.fetchrow(
                "WITH t AS (INSERT INTO api_tokens (token_sha256, name, project_id, admin,"
                " created_by) VALUES ($1, $2, $3, $4, $5) RETURNING *)"
                " SELECT t.*, p.name AS project FROM t LEFT JOIN projects p ON p.id = t.project_id",
                token_hash(token), name, project_id, project is None, actor,
            )
            await _audit(conn, actor, "token.create",
                         f"token {row['id']} ({name}) for "
                         + (f"project {project!r}" if project else "admin"), project)
        return token, _token(row)

    async def authenticate(self, token: str) -> TokenRecord | None:
        row = await self.pool.fetchrow(
            "WITH t AS (UPDATE api_tokens SET last_used_at = now() WHERE token_sha256 = $1"
            " RETURNING *)"
            " SELECT t.*, p.name AS project FROM t LEFT JOIN projects p ON p.id = t.project_id",
            token_hash(token),
        )
        return _token(row) if row else None

    async def list_tokens(self, *, limit: int = 50, offset: int = 0) -> Page[TokenRecord]:
        limit, offset = _clamp(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval("SELECT count(*) FROM api_tokens")
            rows = await conn.fetch(
                "SELECT t.*, p.name AS project FROM api_tokens t LEFT JOIN projects p"
                " ON p.id = t.project_id ORDER BY t.id LIMIT $1 OFFSET $2", limit, offset,
            )
        return Page[TokenRecord](items=[_token(r) for r in rows], total=total, limit=limit,
                                 offset=offset)

    async def delete_token(self, token_id: int, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "WITH t AS (DELETE FROM api_tokens WHERE id = $1 RETURNING *)"
                " SELECT t.*, p.name AS project FROM t LEFT JOIN projects p ON p.id = t.project_id",
                token_id,
            )
            if row is None:
                raise NotFound(f"token {token_id} not found", object=f"token {token_id}")
            await _audit(conn, actor, "token.delete", f"token {token_id} ({row['name']})",
                         row["project"])

    # -- preview slots (policy.max_live_previews) ---------------------------------

    async def claim_slot(self, repository: str, environment: str, limit: int) -> int | None:
        """Claim (or keep) the environment's slot; the number of live previews after it,
        or None when the repository is at its limit. Serialised per repository."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", repository)
            mine = await conn.fetchval(
                "SELECT 1 FROM preview_slots WHERE environment = $1", environment)
            live = await conn.fetchval(
                "SELECT count(*) FROM preview_slots WHERE repository = $1", repository)
            if mine:
                return int(live)
            if live >= limit:
                return None
            await conn.execute(
                "INSERT INTO preview_slots (environment, repository) VALUES ($1, $2)",
                environment, repository)
            return int(live) + 1

    async def release_slot(self, environment: str) -> None:
        await self.pool.execute("DELETE FROM preview_slots WHERE environment = $1", environment)

    # -- webhook deliveries -------------------------------------------------------

    async def record_delivery(self, delivery_id: str, event: str) -> bool:
        """True the first time a delivery id is seen; False for a redelivery (atomic)."""
        # A row without an outcome that is over a minute old belongs to a starter that
        # died mid-request: take it over, or that event would be lost to "duplicate".
        inserted = await self.pool.fetchval(
            "INSERT INTO webhook_deliveries (delivery_id, event) VALUES ($1, $2)"
            " ON CONFLICT (delivery_id) DO UPDATE SET received_at = now()"
            " WHERE webhook_deliveries.outcome IS NULL"
            " AND webhook_deliveries.received_at < now() - interval '60 seconds'"
            " RETURNING true",
            delivery_id, event,
        )
        return bool(inserted)

    async def set_delivery_outcome(self, delivery_id: str, outcome: str) -> None:
        await self.pool.execute(
            "UPDATE webhook_deliveries SET outcome = $2 WHERE delivery_id = $1",
            delivery_id, outcome,
        )

    async def forget_delivery(self, delivery_id: str) -> None:
        """Let a delivery be handled again (after handling it failed before any effect)."""
        await self.pool.execute(
            "DELETE FROM webhook_deliveries WHERE delivery_id = $1", delivery_id
        )

    # -- audit -------------------------------------------------------------------------

    async def audit_entries(
        self, *, project: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[AuditEntry]:
        """The audit trail, newest first; of one project when `project` is given."""
        limit, offset = _clamp(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval(
                "SELECT count(*) FROM audit_log WHERE $1::text IS NULL OR project = $1", project
            )
            rows = await conn.fetch(
                "SELECT * FROM audit_log WHERE $1::text IS NULL OR project = $1 "
                "ORDER BY id DESC LIMIT $2 OFFSET $3", project, limit, offset,
            )
        return Page[AuditEntry](items=[AuditEntry(**dict(r)) for r in rows], total=total,
                                limit=limit, offset=offset)

    # -- blueprints --------------------------------------------------------------------

    async def import_blueprint(self, blueprint: Blueprint, actor: str) -> ImportResult:
        """Make the project match the blueprint (create it if new); secrets are kept.

        Applications and databases not in the blueprint are deleted (with the variables
        and secrets scoped to them); the project's variables, and those of the blueprint's
        environment, are replaced. Re-importing the same blueprint changes nothing.
        """
        name, environment = blueprint.project.name, blueprint.environment.name
        try:
            spec = ProjectSpec(name=name, repository=blueprint.project.repository,
                               source_environment=environment, network=blueprint.network,
                               policy=blueprint.policy)
        except ValidationError as error:
            message, field = _validation_message(error)
            raise Invalid(f"project {name!r}: {message}", field=f"project.{field}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            await self._refuse_repository_clash(conn, spec.repository, name)
            row = await conn.fetchrow("SELECT * FROM projects WHERE name = $1 FOR UPDATE", name)
            created = row is None
            row = await conn.fetchrow(
                "INSERT INTO projects (name, repository, source_environment, document, network,"
                " policy) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb)"
                " ON CONFLICT (name) DO UPDATE SET repository = EXCLUDED.repository,"
                " source_environment = EXCLUDED.source_environment,"
                " document = EXCLUDED.document, network = EXCLUDED.network,"
                " policy = EXCLUDED.policy, updated_at = now() RETURNING *",
                name, spec.repository, environment, _json(blueprint.project),
                _json(spec.network), _json(spec.policy),
            )
            project_id = row["id"]
            await conn.execute(
                "INSERT INTO environments (project_id, name, position, document)"
                " SELECT $1, $2, coalesce(max(position), -1) + 1, $3::jsonb FROM environments"
                " WHERE project_id = $1 ON CONFLICT (project_id, name) DO UPDATE"
                " SET document = EXCLUDED.document, updated_at = now()",
                project_id, environment, _json(blueprint.environment),
            )
            documents: list[tuple[str, str, Sequence[Application | Database]]] = [
                ("applications", "application", blueprint.applications),
                ("databases", "database", blueprint.databases),
            ]
            for table, label, items in documents:
                names = [item.name for item in items]
                for position, item in enumerate(items):
                    await conn.execute(
                        f"INSERT INTO {table} (project_id, name, position, document)"
                        " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (project_id, name)"
                        " DO UPDATE SET position = EXCLUDED.position, document = EXCLUDED.document,"
                        " updated_at = CASE WHEN {t}.document = EXCLUDED.document"
                        " THEN {t}.updated_at ELSE now() END".replace("{t}", table),
                        project_id, item.name, position, _json(item),
                    )
                removed = await conn.fetch(
                    f"DELETE FROM {table} WHERE project_id = $1 AND NOT (name = ANY($2::text[]))"
                    " RETURNING name", project_id, names,
                )
                for gone in removed:
                    await _audit(conn, actor, f"{label}.delete",
                                 f"{label} {gone['name']!r} of project {name!r} (not in the "
                                 "imported blueprint)", name)
            await conn.execute(
                "DELETE FROM variables WHERE project_id = $1"
                " AND (scope <> 'environment' OR environment = $2)", project_id, environment,
            )
            for position, variable in enumerate(blueprint.variables):
                ref = VariableRef(
                    key=variable.key, scope=variable.scope, application=variable.application,
                    applies_to=variable.applies_to,
                    environment=environment if variable.scope == VariableScope.environment
                    else None,
                )
                if variable.kind != VariableKind.secret and await conn.fetchval(
                    f"SELECT true FROM secrets WHERE {_REF_WHERE}", *_ref_args(project_id, ref)
                ):
                    raise Invalid(f"variables[{position}]: {_ref_text(ref)} is a secret of "
                                  f"project {name!r}; declare it with kind secret",
                                  field=f"variables[{position}].kind")
                inserted = await conn.fetchval(
                    "INSERT INTO variables (project_id, key, scope, environment, application,"
                    " applies_to, kind, value, position) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
                    " $9) ON CONFLICT DO NOTHING RETURNING true",
                    *_ref_args(project_id, ref), variable.kind.value, variable.value, position,
                )
                if not inserted:
                    raise Invalid(f"variables[{position}]: {_ref_text(ref)} is defined twice",
                                  field=f"variables[{position}]")
            await self._check(conn, row)
            await _audit(conn, actor, "blueprint.import",
                         f"project {name!r} environment {environment!r}", name)
        log.info("blueprint of project %s imported by %s", name, actor)
        return ImportResult(project=name, environment=environment, created=created,
                            applications=len(blueprint.applications),
                            databases=len(blueprint.databases),
                            variables=len(blueprint.variables))

    async def export_blueprint(self, project: str) -> Blueprint:
        """The project's source environment as a blueprint (without secret values)."""
        async with self.pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            row = await self._project_row(conn, project)
            blueprint = await self._assemble(conn, row, strict=True)
        assert blueprint is not None
        return blueprint

    async def source_environments(self) -> tuple[list[Environment], list[str]]:
        """The source environment of every project (where its previews' resources live),
        and the projects whose environment no longer validates."""
        rows = await self.pool.fetch(
            "SELECT p.name, e.document FROM projects p JOIN environments e "
            "ON e.project_id = p.id AND e.name = p.source_environment ORDER BY p.name")
        found, skipped = [], []
        for row in rows:
            try:
                found.append(Environment.model_validate_json(row["document"]))
            except ValidationError:
                skipped.append(f"project {row['name']!r}: its environment is not valid")
        return found, skipped

    async def source_environment(self, repository: str) -> SourceEnvironment | None:
        """The blueprint and sealed secrets previews of `repository` copy; None if unknown."""
        async with self.pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            row = await conn.fetchrow(
                "SELECT * FROM projects WHERE lower(repository) = lower($1)", repository
            )
            if row is None:
                return None
            blueprint = await self._assemble(conn, row, strict=True)
            assert blueprint is not None
            secrets = await self._secret_variables(conn, row["id"], row["source_environment"])
        return SourceEnvironment(blueprint=blueprint, secrets=secrets)


# ---------------------------------------------------------------------------- activities


class StoreActivities:
    def __init__(self, store: Store) -> None:
        self._store = store

    @activity.defn(name=PreviewSlotSpec.present)
    async def claim_preview_slot(self, step: StepInput) -> StepOutput:
        spec = step.spec_as(PreviewSlotSpec)
        live = await self._store.claim_slot(spec.repository, spec.owner.environment,
                                            spec.max_live)
        if live is None:
            raise ApplicationError(
                f"{spec.repository} already has {spec.max_live} live previews, its limit "
                "(policy.max_live_previews): close one, or raise the limit",
                type=QUOTA_EXCEEDED, non_retryable=True,
            )
        return StepOutput(values={"live_previews": str(live)})

    @activity.defn(name=PreviewSlotSpec.absent)
    async def release_preview_slot(self, step: StepInput) -> None:
        await self._store.release_slot(step.spec_as(PreviewSlotSpec).owner.environment)

    @activity.defn(name=LIST_SWEEP_TARGETS)
    async def list_sweep_targets(self) -> SweepTargets:
        environments, skipped = await self._store.source_environments()
        return sweep_targets(environments).model_copy(update={"skipped": skipped})

    @activity.defn(name="load_source_environment")
    async def load_source_environment(self, request: LoadSourceRequest) -> SourceEnvironment:
        try:
            source = await self._store.source_environment(request.repository)
        except StoreError as error:
            raise invalid_input(error.message) from None
        if source is None:
            raise ApplicationError(
                f"No project is registered for repository {request.repository!r}. Register "
                "it by importing its blueprint: `preview blueprint import preview.yaml` (or "
                "POST the file to /api/blueprints), with `project.repository: "
                f"{request.repository}`.",
                type=UNKNOWN_REPOSITORY,
                non_retryable=True,
            )
        return source

