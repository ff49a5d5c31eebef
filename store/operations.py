"""What runs the engine, beside what describes a project: dedicated clusters' sealed
kubeconfigs, API tokens (kept as SHA-256 only), preview slots, webhook deliveries, and
the append-only audit trail."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets as token_source
from typing import TYPE_CHECKING

from domain.clusters import CLUSTER_NAME, KubeconfigError, check_kubeconfig
from domain.secrets import SealedValue
from store.core import StoreCore
from store.errors import Invalid, NotFound
from store.records import AuditEntry, ClusterCredentials, ClusterMetadata, Page, TokenRecord
from store.sql import audit, document, page_bounds

if TYPE_CHECKING:
    from engine.sealing import Sealer


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Operations(StoreCore):
    # -- dedicated clusters' kubeconfigs -------------------------------------------

    async def put_cluster(self, name: str, kubeconfig: str, context: str | None, actor: str,
                          *, sealer: Sealer | None = None) -> tuple[ClusterMetadata, bool]:
        """Check, seal and store a cluster's kubeconfig; True when it was created."""
        sealer = sealer or self.sealer
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
                name, context, document(sealed), actor)
            created = bool(row["created"])
            await audit(conn, actor, "cluster.create" if created else "cluster.update",
                        f"cluster {name!r}", None)
        return ClusterMetadata.from_row(row), created

    async def list_clusters(self, *, limit: int = 50, offset: int = 0) -> Page[ClusterMetadata]:
        limit, offset = page_bounds(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval("SELECT count(*) FROM clusters")
            rows = await conn.fetch("SELECT * FROM clusters ORDER BY name LIMIT $1 OFFSET $2",
                                    limit, offset)
        return Page[ClusterMetadata](items=[ClusterMetadata.from_row(r) for r in rows],
                                     total=total, limit=limit, offset=offset)

    async def delete_cluster(self, name: str, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("DELETE FROM clusters WHERE name = $1 RETURNING 1",
                                   name) is None:
                raise NotFound(f"cluster {name!r} not found", object=f"cluster {name!r}")
            await audit(conn, actor, "cluster.delete", f"cluster {name!r}", None)

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
                project_id = (await self.project_row(conn, project))["id"]
            row = await conn.fetchrow(
                "WITH t AS (INSERT INTO api_tokens (token_sha256, name, project_id, admin,"
                " created_by) VALUES ($1, $2, $3, $4, $5) RETURNING *)"
                " SELECT t.*, p.name AS project FROM t LEFT JOIN projects p ON p.id = t.project_id",
                token_hash(token), name, project_id, project is None, actor,
            )
            await audit(conn, actor, "token.create",
                        f"token {row['id']} ({name}) for "
                        + (f"project {project!r}" if project else "admin"), project)
        return token, TokenRecord.from_row(row)

    async def authenticate(self, token: str) -> TokenRecord | None:
        row = await self.pool.fetchrow(
            "WITH t AS (UPDATE api_tokens SET last_used_at = now() WHERE token_sha256 = $1"
            " RETURNING *)"
            " SELECT t.*, p.name AS project FROM t LEFT JOIN projects p ON p.id = t.project_id",
            token_hash(token),
        )
        return TokenRecord.from_row(row) if row else None

    async def list_tokens(self, *, limit: int = 50, offset: int = 0) -> Page[TokenRecord]:
        limit, offset = page_bounds(limit, offset)
        async with self.pool.acquire() as conn, conn.transaction(readonly=True):
            total = await conn.fetchval("SELECT count(*) FROM api_tokens")
            rows = await conn.fetch(
                "SELECT t.*, p.name AS project FROM api_tokens t LEFT JOIN projects p"
                " ON p.id = t.project_id ORDER BY t.id LIMIT $1 OFFSET $2", limit, offset,
            )
        return Page[TokenRecord](items=[TokenRecord.from_row(r) for r in rows], total=total,
                                 limit=limit, offset=offset)

    async def delete_token(self, token_id: int, actor: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "WITH t AS (DELETE FROM api_tokens WHERE id = $1 RETURNING *)"
                " SELECT t.*, p.name AS project FROM t LEFT JOIN projects p ON p.id = t.project_id",
                token_id,
            )
            if row is None:
                raise NotFound(f"token {token_id} not found", object=f"token {token_id}")
            await audit(conn, actor, "token.delete", f"token {token_id} ({row['name']})",
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
        limit, offset = page_bounds(limit, offset)
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
