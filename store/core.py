"""What every part of the store stands on: the pool, the project rows writers lock, the
project's collections, and the check that a project still makes a valid blueprint.

Every write runs in one transaction that first locks the project row, so concurrent
writers to one project serialise, and ends with `check_project`: a project that has its
source environment and what a blueprint requires therefore always exports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from pydantic import ValidationError

from domain.blueprint import (
    COLLECTIONS,
    Blueprint,
    ComposeSource,
    Named,
    Network,
    PreviewPolicy,
    Project,
)
from domain.secrets import SealedValue
from domain.variables import SecretVariable, Target, VariableError, resolve_variables
from store.collections import Collection, Environments
from store.errors import Conflict, Invalid, NotFound, StoreError, validation_message
from store.records import ScopedVariable

if TYPE_CHECKING:
    from engine.sealing import Sealer


class StoreCore:
    def __init__(self, pool: asyncpg.Pool, sealer: Sealer | None = None) -> None:
        self.pool = pool
        self.sealer = sealer  # the default for writes that seal a value
        self.environments = Environments(self)
        # One per blueprint collection, by its Blueprint field: "applications", ...
        self.collections: dict[str, Collection[Named]] = {
            c.field: Collection(self, table=c.table, model=c.model, label=c.label)
            for c in COLLECTIONS
        }

    async def project_row(self, conn: asyncpg.Connection, name: str) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT * FROM projects WHERE name = $1", name)
        if row is None:
            raise NotFound(f"project {name!r} not found", object=f"project {name!r}")
        return row

    async def lock_project(self, conn: asyncpg.Connection, name: str) -> asyncpg.Record:
        # Serialises writers of one project, so checks see what they guard.
        row = await conn.fetchrow("SELECT * FROM projects WHERE name = $1 FOR UPDATE", name)
        if row is None:
            raise NotFound(f"project {name!r} not found", object=f"project {name!r}")
        return row

    async def refuse_repository_clash(
        self, conn: asyncpg.Connection, repository: str, name: str
    ) -> None:
        other = await conn.fetchval(
            "SELECT name FROM projects WHERE lower(repository) = lower($1) AND name <> $2",
            repository, name,
        )
        if other is not None:
            raise Conflict(f"repository {repository!r} is already registered by project "
                           f"{other!r}", object=f"project {other!r}", field="repository")

    async def assemble_blueprint(
        self, conn: asyncpg.Connection, row: asyncpg.Record, *, strict: bool
    ) -> Blueprint | None:
        """The project's blueprint (its source environment); None if incomplete and not strict."""
        project_id, name, source = row["id"], row["name"], row["source_environment"]
        try:
            environment = await self.environments.find(conn, project_id, source)
            elements = {c.field: await self.collections[c.field].documents(conn, project_id)
                        for c in COLLECTIONS}
            if environment is None:
                missing: str | None = f"its source environment {source!r}"
            else:
                # A Compose file gives the applications a blueprint would otherwise need.
                missing = next((c.indefinite for c in COLLECTIONS
                                if c.required and not elements[c.field]
                                and row["compose"] is None), None)
            if missing is not None:
                if not strict:
                    return None
                raise Conflict(f"project {name!r} is incomplete: add {missing} first",
                               object=f"project {name!r}")
            variables = await conn.fetch(
                "SELECT * FROM variables WHERE project_id = $1 "
                "AND (scope <> 'environment' OR environment = $2) ORDER BY position, id",
                project_id, source,
            )
            return Blueprint.model_validate({
                "project": Project(name=name, repository=row["repository"]),
                "environment": environment,
                **elements,
                "network": Network.model_validate_json(row["network"]),
                "variables": [ScopedVariable.from_row(r).as_variable() for r in variables],
                "policy": PreviewPolicy.model_validate_json(row["policy"]),
                "compose": (ComposeSource.model_validate_json(row["compose"])
                            if row["compose"] else None),
            })
        except ValidationError as error:
            message, field = validation_message(error)
            raise Invalid(f"project {name!r}: {message}", object=f"project {name!r}",
                          field=field) from None

    async def secret_variables(
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

    async def check_project(
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
            blueprint = await self.assemble_blueprint(conn, row, strict=False)
        except Invalid as error:
            raise error_type(error.message, object=error.object, field=error.field) from None
        if blueprint is None:
            return
        secrets = await self.secret_variables(conn, row["id"], row["source_environment"])
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
