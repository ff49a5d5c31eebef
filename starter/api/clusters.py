"""Dedicated clusters' kubeconfigs, sealed and write-only; admin tokens only."""

from typing import Annotated, Any

from fastapi import Path, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from domain.clusters import CLUSTER_NAME, MAX_KUBECONFIG_BYTES
from starter.api.auth import AdminAuth, SealerDep, StoreDep
from starter.api.errors import api_router, error_responses
from starter.api.params import Limit, Offset, Text
from store import ClusterMetadata, Page

router = api_router()

ClusterName = Annotated[str, Path(pattern=CLUSTER_NAME, max_length=63,
                                  description="Name that blueprints use in cluster.name")]


class ClusterWrite(BaseModel):
    """A dedicated cluster's kubeconfig (write-only: no response ever contains it)."""

    model_config = ConfigDict(extra="forbid")
    kubeconfig: SecretStr = Field(max_length=MAX_KUBECONFIG_BYTES,
                                  description="The kubeconfig file's text; never returned")
    context: Text | None = Field(None, max_length=253,
                                description="Context to use; default: its current-context")


@router.put("/clusters/{name}", status_code=201, response_model=ClusterMetadata,
            tags=["clusters"],
            responses={201: {"description": "Created; metadata only"},
                       204: {"description": "Replaced (version incremented)"},
                       **error_responses(403)})
async def put_cluster(
    name: ClusterName, body: ClusterWrite, principal: AdminAuth, store: StoreDep,
    sealer: SealerDep,
) -> Any:
    """Seal and store the kubeconfig of a dedicated cluster (`isolation: cluster`): the
    workers of that cluster reach it without a file of their own."""
    metadata, created = await store.put_cluster(
        name, body.kubeconfig.get_secret_value(), body.context, principal.actor, sealer=sealer)
    return metadata if created else Response(status_code=204)


@router.get("/clusters", response_model=Page[ClusterMetadata], tags=["clusters"],
            responses=error_responses(403))
async def list_clusters(
    _: AdminAuth, store: StoreDep, limit: Limit = 50, offset: Offset = 0
) -> Page[ClusterMetadata]:
    """Stored clusters: metadata only."""
    return await store.list_clusters(limit=limit, offset=offset)


@router.delete("/clusters/{name}", status_code=204, response_class=Response,
               tags=["clusters"], responses=error_responses(403, 404))
async def delete_cluster(name: ClusterName, principal: AdminAuth, store: StoreDep) -> None:
    await store.delete_cluster(name, principal.actor)
