"""CRUD for the named documents of a project: its environments, and the elements of each
blueprint collection (domain.blueprint.COLLECTIONS: applications, databases, ...).

Every such table has one layout (store/migrations/README.md), so one class serves them
all. Table names come from code, never from a request.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Generic, TypeVar

import asyncpg

from domain.blueprint import Environment, Named
from store.errors import Conflict, Invalid, NotFound
from store.records import Page
from store.sql import audit, document, page_bounds

if TYPE_CHECKING:
    from store.core import StoreCore

log = logging.getLogger(__name__)

N = TypeVar("N", bound=Named)
TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class Collection(Generic[N]):
    """One kind of named document of a project, kept in blueprint order."""

    def __init__(self, store: StoreCore, *, table: str, model: type[N], label: str) -> None:
        if not TABLE_NAME.match(table):
            raise ValueError(f"{table!r} is not a plain table name")
        self.store, self.table, self.model, self.label = store, table, model, label

    def describe(self, project: str, name: str) -> str:
        return f"{self.label} {name!r} of project {project!r}"

    # -- parts of a caller's transaction ------------------------------------------------

    async def documents(self, conn: asyncpg.Connection, project_id: int) -> list[N]:
        rows = await conn.fetch(
            f"SELECT document FROM {self.table} WHERE project_id = $1 ORDER BY position, name",
            project_id,
        )
        return [self.model.model_validate_json(r["document"]) for r in rows]

    async def find(self, conn: asyncpg.Connection, project_id: int, name: str) -> N | None:
        found = await conn.fetchval(
            f"SELECT document FROM {self.table} WHERE project_id = $1 AND name = $2",
            project_id, name,
        )
        return None if found is None else self.model.model_validate_json(found)

    async def put(
        self, conn: asyncpg.Connection, project_id: int, item: N, position: int | None = None
    ) -> None:
        """Insert or replace one document, at `position` (None: a new one goes last, an
        existing one stays where it is). An unchanged document keeps its updated_at."""
        await conn.execute(
            f"INSERT INTO {self.table} AS t (project_id, name, position, document)"
            " VALUES ($1, $2, coalesce($4::integer, (SELECT coalesce(max(position), -1) + 1"
            f" FROM {self.table} WHERE project_id = $1)), $3::jsonb)"
            " ON CONFLICT (project_id, name) DO UPDATE SET"
            " position = coalesce($4::integer, t.position), document = EXCLUDED.document,"
            " updated_at = CASE WHEN t.document = EXCLUDED.document THEN t.updated_at"
            " ELSE now() END",
            project_id, item.name, document(item), position,
        )

    async def keep_only(
        self, conn: asyncpg.Connection, project_id: int, names: list[str]
    ) -> list[str]:
        """Delete every document not named in `names`; the names deleted."""
        rows = await conn.fetch(
            f"DELETE FROM {self.table} WHERE project_id = $1 AND NOT (name = ANY($2::text[]))"
            " RETURNING name", project_id, names,
        )
        return [r["name"] for r in rows]

    # -- requests, each one transaction ---------------------------------------------------

    async def list(self, project: str, *, limit: int = 50, offset: int = 0) -> Page[N]:
        limit, offset = page_bounds(limit, offset)
        async with self.store.pool.acquire() as conn, conn.transaction(readonly=True):
            row = await self.store.project_row(conn, project)
            total = await conn.fetchval(
                f"SELECT count(*) FROM {self.table} WHERE project_id = $1", row["id"]
            )
            rows = await conn.fetch(
                f"SELECT document FROM {self.table} WHERE project_id = $1 "
                "ORDER BY position, name LIMIT $2 OFFSET $3",
                row["id"], limit, offset,
            )
        items = [self.model.model_validate_json(r["document"]) for r in rows]
        return Page[N](items=items, total=total, limit=limit, offset=offset)

    async def get(self, project: str, name: str) -> N:
        async with self.store.pool.acquire() as conn:
            row = await self.store.project_row(conn, project)
            found = await self.find(conn, row["id"], name)
        if found is None:
            raise NotFound(f"{self.describe(project, name)} not found",
                           object=self.describe(project, name))
        return found

    async def create(self, project: str, item: N, actor: str) -> N:
        what = self.describe(project, item.name)
        async with self.store.pool.acquire() as conn, conn.transaction():
            row = await self.store.lock_project(conn, project)
            inserted = await conn.fetchval(
                f"INSERT INTO {self.table} (project_id, name, position, document) "
                f"SELECT $1, $2, coalesce(max(position), -1) + 1, $3::jsonb FROM {self.table} "
                "WHERE project_id = $1 ON CONFLICT (project_id, name) DO NOTHING RETURNING true",
                row["id"], item.name, document(item),
            )
            if not inserted:
                raise Conflict(f"{what} already exists; replace it with PUT", object=what)
            await self.store.check_project(conn, row)
            await audit(conn, actor, f"{self.label}.create", what, project)
        log.info("%s created by %s", what, actor)
        return item

    async def replace(self, project: str, name: str, item: N, actor: str) -> N:
        if item.name != name:
            raise Invalid(f"{self.label} {name!r}: the name in the body ({item.name!r}) must "
                          "match the one in the path; renaming is not supported", field="name")
        what = self.describe(project, name)
        async with self.store.pool.acquire() as conn, conn.transaction():
            row = await self.store.lock_project(conn, project)
            updated = await conn.fetchval(
                f"UPDATE {self.table} SET document = $3::jsonb, updated_at = now() "
                "WHERE project_id = $1 AND name = $2 RETURNING true",
                row["id"], name, document(item),
            )
            if not updated:
                raise NotFound(f"{what} not found", object=what)
            await self.store.check_project(conn, row)
            await audit(conn, actor, f"{self.label}.replace", what, project)
        return item

    async def delete(self, project: str, name: str, actor: str) -> None:
        what = self.describe(project, name)
        async with self.store.pool.acquire() as conn, conn.transaction():
            row = await self.store.lock_project(conn, project)
            self.refuse_delete(row, name)
            deleted = await conn.fetchval(
                f"DELETE FROM {self.table} WHERE project_id = $1 AND name = $2 RETURNING true",
                row["id"], name,
            )
            if not deleted:
                raise NotFound(f"{what} not found", object=what)
            await self.store.check_project(conn, row, deleting=True)
            await audit(conn, actor, f"{self.label}.delete", what, project)

    def refuse_delete(self, project: asyncpg.Record, name: str) -> None:
        """Raise if this document may not go, whatever else the project holds."""


class Environments(Collection[Environment]):
    """The project's environments: one of them, the source, is what previews copy."""

    def __init__(self, store: StoreCore) -> None:
        super().__init__(store, table="environments", model=Environment, label="environment")

    def refuse_delete(self, project: asyncpg.Record, name: str) -> None:
        if name == project["source_environment"]:
            what = self.describe(project["name"], name)
            raise Conflict(f"{what} is the project's source environment; point "
                           "source_environment elsewhere first", object=what)
