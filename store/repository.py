"""The control-plane store (PostgreSQL, asyncpg): the environment model and its secrets.

Projects, their environments, the elements of their blueprint collections and their
variables are stored as validated domain documents plus key columns; secret values only
sealed; API tokens only as SHA-256; webhook delivery ids for de-duplication; an
append-only audit trail that names who did what to which object, never a value.

`Store` is that whole repository; its parts live beside it by concern (store/core.py
says what they share). This module holds the schema (connect, migrate) and projects.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from domain.blueprint import Project
from store.blueprints import Blueprints
from store.errors import Conflict, Invalid, MigrationError, NotFound
from store.operations import Operations
from store.records import Page, ProjectRecord, ProjectSpec
from store.sql import audit, document, optional_document, page_bounds
from store.variables import VariablesAndSecrets

if TYPE_CHECKING:
    from engine.sealing import Sealer

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works, as long as every starter uses the same one.
MIGRATION_LOCK = 0x70726576_69657721 & 0x7FFF_FFFF_FFFF_FFFF


class Store(VariablesAndSecrets, Operations, Blueprints):
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
        for path in sorted(MIGRATIONS.glob("*.sql")):
            number, _, _ = path.name.partition("_")
            if not number.isdigit():
                raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
            found.append((int(number), path.name, path.read_text()))
        versions = [v for v, _, _ in found]
        if len(set(versions)) != len(versions):
            raise MigrationError(f"two migration files share a version in {MIGRATIONS}")
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

    # -- projects ------------------------------------------------------------------

    async def create_project(self, spec: ProjectSpec, actor: str) -> ProjectRecord:
        async with self.pool.acquire() as conn, conn.transaction():
            await self.refuse_repository_clash(conn, spec.repository, spec.name)
            row = await conn.fetchrow(
                "INSERT INTO projects (name, repository, source_environment, document, network,"
                " policy, compose) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, $6::jsonb, $7::jsonb)"
                " ON CONFLICT (name) DO NOTHING RETURNING *",
                spec.name, spec.repository, spec.source_environment,
                document(Project(name=spec.name, repository=spec.repository)),
                document(spec.network), document(spec.policy), optional_document(spec.compose),
            )
            if row is None:
                raise Conflict(f"project {spec.name!r} already exists",
                               object=f"project {spec.name!r}", field="name")
            await audit(conn, actor, "project.create", f"project {spec.name!r}", spec.name)
        return ProjectRecord.from_row(row)

    async def get_project(self, name: str) -> ProjectRecord:
        async with self.pool.acquire() as conn:
            return ProjectRecord.from_row(await self.project_row(conn, name))

    async def project_for_repository(self, repository: str) -> ProjectRecord | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM projects WHERE lower(repository) = lower($1)", repository
        )
        return ProjectRecord.from_row(row) if row else None

    async def list_projects(
        self, *, limit: int = 50, offset: int = 0, only: str | None = None
    ) -> Page[ProjectRecord]:
        """All projects by name, or just `only` (what a project token may see)."""
        limit, offset = page_bounds(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval(
                "SELECT count(*) FROM projects WHERE $1::text IS NULL OR name = $1", only
            )
            rows = await conn.fetch(
                "SELECT * FROM projects WHERE $1::text IS NULL OR name = $1 ORDER BY name "
                "LIMIT $2 OFFSET $3",
                only, limit, offset,
            )
        return Page[ProjectRecord](items=[ProjectRecord.from_row(r) for r in rows], total=total,
                                   limit=limit, offset=offset)

    async def update_project(self, name: str, spec: ProjectSpec, actor: str) -> ProjectRecord:
        if spec.name != name:
            raise Invalid(f"project {name!r}: the name in the body ({spec.name!r}) must match "
                          "the one in the path; renaming is not supported", field="name")
        async with self.pool.acquire() as conn, conn.transaction():
            current = await self.lock_project(conn, name)
            await self.refuse_repository_clash(conn, spec.repository, name)
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
                " network = $5, policy = $6, compose = $7, updated_at = now()"
                " WHERE name = $1 RETURNING *",
                name, spec.repository, spec.source_environment,
                document(Project(name=name, repository=spec.repository)),
                document(spec.network), document(spec.policy), optional_document(spec.compose),
            )
            await self.check_project(conn, row)
            await audit(conn, actor, "project.update", f"project {name!r}", name)
        return ProjectRecord.from_row(row)

    async def delete_project(self, name: str, actor: str) -> None:
        """Delete a project and everything it holds (secrets and tokens included)."""
        async with self.pool.acquire() as conn, conn.transaction():
            deleted = await conn.fetchval(
                "DELETE FROM projects WHERE name = $1 RETURNING true", name
            )
            if not deleted:
                raise NotFound(f"project {name!r} not found", object=f"project {name!r}")
            await audit(conn, actor, "project.delete", f"project {name!r}", name)
