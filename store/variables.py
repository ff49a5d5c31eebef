"""A project's variables (plain values) and secrets (sealed values, never in clear).

A variable or secret is identified by its VariableRef: key, scope, the environment or
application of that scope, and the targets it applies to. A secret and a plain variable
never share one ref.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Literal

import asyncpg
from pydantic import ValidationError

from domain.blueprint import AppliesTo, VariableKind, VariableScope
from domain.secrets import SealedValue
from store.core import StoreCore
from store.errors import Conflict, Invalid, NotFound, validation_message
from store.records import Page, ScopedVariable, SecretMetadata, VariableRef
from store.sql import audit, document, page_bounds

if TYPE_CHECKING:
    from engine.sealing import Sealer

log = logging.getLogger(__name__)

# The row of a VariableRef in `variables` or `secrets`; its arguments are ref_args(...).
REF_WHERE = (
    "project_id = $1 AND key = $2 AND scope = $3 AND environment IS NOT DISTINCT FROM $4 "
    "AND application IS NOT DISTINCT FROM $5 AND applies_to = $6"
)


def ref_args(project_id: int, ref: VariableRef) -> list[Any]:
    return [project_id, ref.key, ref.scope.value, ref.environment, ref.application,
            ref.applies_to.value]


Table = Literal["variables", "secrets"]
NOUN: dict[Table, str] = {"variables": "variable", "secrets": "secret"}


class VariablesAndSecrets(StoreCore):
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
            "SELECT EXISTS (SELECT 1 FROM applications WHERE project_id = $1 AND name = $2)"
            " OR EXISTS (SELECT 1 FROM jobs WHERE project_id = $1 AND name = $2)",
            row["id"], ref.application,
        ):
            raise Invalid(f"variable {ref.key} names unknown application or job "
                          f"{ref.application!r} of project {row['name']!r}",
                          field="application")
        return ref

    # -- variables -------------------------------------------------------------------

    async def list_variables(
        self, project: str, *, key: str | None = None, scope: VariableScope | None = None,
        environment: str | None = None, application: str | None = None,
        limit: int = 50, offset: int = 0,
    ) -> Page[ScopedVariable]:
        limit, offset = page_bounds(limit, offset)
        where = ("project_id = $1 AND ($2::text IS NULL OR key = $2) AND ($3::text IS NULL OR "
                 "scope = $3) AND ($4::text IS NULL OR environment = $4) AND "
                 "($5::text IS NULL OR application = $5)")
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            row = await self.project_row(conn, project)
            args = [row["id"], key, scope.value if scope else None, environment, application]
            total = await conn.fetchval(f"SELECT count(*) FROM variables WHERE {where}", *args)
            rows = await conn.fetch(
                f"SELECT * FROM variables WHERE {where} ORDER BY position, id "
                "LIMIT $6 OFFSET $7", *args, limit, offset,
            )
        return Page[ScopedVariable](items=[ScopedVariable.from_row(r) for r in rows],
                                    total=total, limit=limit, offset=offset)

    async def _row_at(self, table: Table, project: str, ref: VariableRef) -> asyncpg.Record:
        """The variable's or secret's row at `ref`; NotFound when there is none."""
        async with self.pool.acquire() as conn:
            row = await self.project_row(conn, project)
            ref = await self._complete_ref(conn, row, ref)
            found = await conn.fetchrow(
                f"SELECT * FROM {table} WHERE {REF_WHERE}", *ref_args(row["id"], ref)
            )
        if found is None:
            raise self._not_found(table, project, ref)
        return found

    async def _delete_at(self, table: Table, project: str, ref: VariableRef, actor: str) -> None:
        """Delete the variable or secret at `ref` (audited); NotFound when there is none."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self.lock_project(conn, project)
            ref = await self._complete_ref(conn, row, ref)
            deleted = await conn.fetchval(
                f"DELETE FROM {table} WHERE {REF_WHERE} RETURNING true",
                *ref_args(row["id"], ref),
            )
            if not deleted:
                raise self._not_found(table, project, ref)
            await self.check_project(conn, row, deleting=True)
            noun = NOUN[table]
            await audit(conn, actor, f"{noun}.delete", f"{noun} {ref.describe()}", project)

    @staticmethod
    def _not_found(table: Table, project: str, ref: VariableRef) -> NotFound:
        what = f"{NOUN[table]} {ref.describe()}"
        return NotFound(f"{what} of project {project!r} not found", object=what)

    async def get_variable(self, project: str, ref: VariableRef) -> ScopedVariable:
        return ScopedVariable.from_row(await self._row_at("variables", project, ref))

    async def create_variable(
        self, project: str, variable: ScopedVariable, actor: str
    ) -> ScopedVariable:
        stored, created = await self._write_variable(project, variable, actor, replace=False)
        if not created:
            what = f"variable {stored.ref.describe()}"
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
            row = await self.lock_project(conn, project)
            ref = await self._complete_ref(conn, row, variable.ref)
            variable = variable.model_copy(update={"environment": ref.environment})
            if variable.kind != VariableKind.secret and await conn.fetchval(
                f"SELECT true FROM secrets WHERE {REF_WHERE}", *ref_args(row["id"], ref)
            ):
                raise Conflict(f"{ref.describe()} is a secret of project {project!r}; delete "
                               "the secret first, or declare the variable with kind secret",
                               object=f"secret {ref.describe()}", field="kind")
            existing = await conn.fetchval(
                f"SELECT id FROM variables WHERE {REF_WHERE} FOR UPDATE",
                *ref_args(row["id"], ref),
            )
            if existing is not None and not replace:
                return variable, False
            if existing is None:
                await conn.execute(
                    "INSERT INTO variables (project_id, key, scope, environment, application,"
                    " applies_to, kind, value, position) SELECT $1, $2, $3, $4, $5, $6, $7, $8,"
                    " coalesce(max(position), -1) + 1 FROM variables WHERE project_id = $1",
                    *ref_args(row["id"], ref), variable.kind.value, variable.value,
                )
            else:
                await conn.execute(
                    "UPDATE variables SET kind = $2, value = $3, updated_at = now() "
                    "WHERE id = $1", existing, variable.kind.value, variable.value,
                )
            await self.check_project(conn, row)
            action = "variable.create" if existing is None else "variable.replace"
            await audit(conn, actor, action, f"variable {ref.describe()}", project)
        return variable, existing is None

    async def delete_variable(self, project: str, ref: VariableRef, actor: str) -> None:
        await self._delete_at("variables", project, ref, actor)

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
        sealer = sealer or self.sealer
        if sealer is None:
            raise RuntimeError("Store has no Sealer: pass one to Store(...) or put_secret(...)")
        try:
            ref = VariableRef(key=key, scope=scope, environment=environment,
                              application=application, applies_to=applies_to)
        except ValidationError as error:
            message, field = validation_message(error)
            raise Invalid(message, field=field) from None
        sealed = await asyncio.to_thread(sealer.seal, value)  # KMS: a network call
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self.lock_project(conn, project)
            ref = await self._complete_ref(conn, row, ref)
            if await conn.fetchval(
                f"SELECT true FROM variables WHERE {REF_WHERE} AND kind <> 'secret'",
                *ref_args(row["id"], ref),
            ):
                raise Conflict(f"{ref.describe()} is a plain variable of project {project!r}; "
                               "delete it first or give the secret another key",
                               object=f"variable {ref.describe()}", field="key")
            stored = await conn.fetchrow(
                "INSERT INTO secrets (project_id, key, scope, environment, application,"
                " applies_to, sealed, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)"
                " ON CONFLICT (project_id, key, scope, environment, application, applies_to)"
                " DO UPDATE SET sealed = EXCLUDED.sealed, version = secrets.version + 1,"
                " updated_at = now(), updated_by = EXCLUDED.updated_by"
                " RETURNING *, (xmax = 0) AS created",
                *ref_args(row["id"], ref), document(sealed), actor,
            )
            await self.check_project(conn, row)
            created = bool(stored["created"])
            await audit(conn, actor, "secret.create" if created else "secret.update",
                        f"secret {ref.describe()}", project)
        log.info("secret %s of project %s %s by %s (version %d)", ref.describe(), project,
                 "created" if created else "updated", actor, stored["version"])
        return SecretMetadata.from_row(stored), created

    async def secret_metadata(
        self, project: str, *, key: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[SecretMetadata]:
        """What secrets a project has (never their values)."""
        limit, offset = page_bounds(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            row = await self.project_row(conn, project)
            total = await conn.fetchval(
                "SELECT count(*) FROM secrets WHERE project_id = $1 "
                "AND ($2::text IS NULL OR key = $2)", row["id"], key,
            )
            rows = await conn.fetch(
                "SELECT * FROM secrets WHERE project_id = $1 AND ($2::text IS NULL OR key = $2) "
                "ORDER BY key, id LIMIT $3 OFFSET $4", row["id"], key, limit, offset,
            )
        return Page[SecretMetadata](items=[SecretMetadata.from_row(r) for r in rows],
                                    total=total, limit=limit, offset=offset)

    async def get_secret_metadata(self, project: str, ref: VariableRef) -> SecretMetadata:
        return SecretMetadata.from_row(await self._row_at("secrets", project, ref))

    async def delete_secret(self, project: str, ref: VariableRef, actor: str) -> None:
        await self._delete_at("secrets", project, ref, actor)

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
                                row[key], document(new))
                            changed += 1
                    last = rows[-1][key]
                    if changed:
                        await audit(conn, actor, action, f"{changed} {what} re-wrapped", None)
                    rewrapped += changed
        log.info("re-wrapped %d data keys", rewrapped)
        return rewrapped
