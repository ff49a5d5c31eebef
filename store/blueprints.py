"""Blueprints in and out: import makes a project match a blueprint, export gives a
project's source environment back as one, and workers load source environments."""

from __future__ import annotations

import logging

import asyncpg
from pydantic import ValidationError

from domain.blueprint import (
    COLLECTIONS,
    Blueprint,
    Environment,
    VariableKind,
    VariableScope,
    connections_by_application,
)
from domain.source import SourceEnvironment
from store.core import StoreCore
from store.errors import Invalid, validation_message
from store.records import ImportResult, ImportSummary, ProjectSpec, VariableRef
from store.sql import audit, document, optional_document
from store.variables import REF_WHERE, ref_args

log = logging.getLogger(__name__)


class Blueprints(StoreCore):
    async def import_blueprint(self, blueprint: Blueprint, actor: str) -> ImportSummary:
        """Make the project match the blueprint (create it if new); secrets are kept.

        Elements of its collections (applications, databases, ...) not in the blueprint
        are deleted (with the variables and secrets scoped to them); the project's
        variables, and those of the blueprint's environment, are replaced. Re-importing
        the same blueprint changes nothing.
        """
        name, environment = blueprint.project.name, blueprint.environment.name
        try:
            spec = ProjectSpec(name=name, repository=blueprint.project.repository,
                               source_environment=environment, network=blueprint.network,
                               policy=blueprint.policy, compose=blueprint.compose)
        except ValidationError as error:
            message, field = validation_message(error)
            raise Invalid(f"project {name!r}: {message}", field=f"project.{field}") from None
        async with self.pool.acquire() as conn, conn.transaction():
            await self.refuse_repository_clash(conn, spec.repository, name)
            existing = await conn.fetchval(
                "SELECT id FROM projects WHERE name = $1 FOR UPDATE", name)
            row = await conn.fetchrow(
                "INSERT INTO projects (name, repository, source_environment, document, network,"
                " policy, compose) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb, $7::jsonb)"
                " ON CONFLICT (name) DO UPDATE SET repository = EXCLUDED.repository,"
                " source_environment = EXCLUDED.source_environment,"
                " document = EXCLUDED.document, network = EXCLUDED.network,"
                " policy = EXCLUDED.policy, compose = EXCLUDED.compose, updated_at = now()"
                " RETURNING *",
                name, spec.repository, environment, document(blueprint.project),
                document(spec.network), document(spec.policy), optional_document(spec.compose),
            )
            await self.environments.put(conn, row["id"], blueprint.environment)
            for kind in COLLECTIONS:
                collection, items = self.collections[kind.field], kind.items(blueprint)
                for position, item in enumerate(items):
                    await collection.put(conn, row["id"], item, position)
                for gone in await collection.keep_only(conn, row["id"], [i.name for i in items]):
                    await audit(conn, actor, f"{kind.label}.delete",
                                f"{collection.describe(name, gone)} (not in the imported "
                                "blueprint)", name)
            await self._replace_variables(conn, row, blueprint)
            await self.check_project(conn, row)
            await audit(conn, actor, "blueprint.import",
                        f"project {name!r} environment {environment!r}", name)
        log.info("blueprint of project %s imported by %s", name, actor)
        return ImportResult.model_validate({
            "project": name, "environment": environment, "created": existing is None,
            "variables": len(blueprint.variables),
            "connections": connections_by_application(blueprint),
            **{kind.field: len(kind.items(blueprint)) for kind in COLLECTIONS},
        })

    async def _replace_variables(
        self, conn: asyncpg.Connection, row: asyncpg.Record, blueprint: Blueprint
    ) -> None:
        """The project's variables and its environment's become the blueprint's."""
        project_id, name, environment = row["id"], row["name"], blueprint.environment.name
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
                f"SELECT true FROM secrets WHERE {REF_WHERE}", *ref_args(project_id, ref)
            ):
                raise Invalid(f"variables[{position}]: {ref.describe()} is a secret of "
                              f"project {name!r}; declare it with kind secret",
                              field=f"variables[{position}].kind")
            inserted = await conn.fetchval(
                "INSERT INTO variables (project_id, key, scope, environment, application,"
                " applies_to, kind, value, position) VALUES ($1, $2, $3, $4, $5, $6, $7, $8,"
                " $9) ON CONFLICT DO NOTHING RETURNING true",
                *ref_args(project_id, ref), variable.kind.value, variable.value, position,
            )
            if not inserted:
                raise Invalid(f"variables[{position}]: {ref.describe()} is defined twice",
                              field=f"variables[{position}]")

    async def export_blueprint(self, project: str) -> Blueprint:
        """The project's source environment as a blueprint (without secret values)."""
        async with self.pool.acquire() as conn, conn.transaction(
            isolation="repeatable_read", readonly=True
        ):
            row = await self.project_row(conn, project)
            blueprint = await self.assemble_blueprint(conn, row, strict=True)
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

    async def repositories(self) -> list[str]:
        """The repository of every registered project."""
        rows = await self.pool.fetch("SELECT repository FROM projects ORDER BY repository")
        return [str(row["repository"]) for row in rows]

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
            blueprint = await self.assemble_blueprint(conn, row, strict=True)
            assert blueprint is not None
            secrets = await self.secret_variables(conn, row["id"], row["source_environment"])
        return SourceEnvironment(blueprint=blueprint, secrets=secrets)
