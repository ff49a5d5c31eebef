"""A project's secrets, write-only: a PUT stores a value, everything else sees metadata."""

import asyncio
import logging
from typing import Annotated, Any

from fastapi import Query, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from domain.blueprint import AppliesTo, DnsName, VariableScope
from starter.api.auth import AdminAuth, ProjectAuth, SealerDep, StoreDep
from starter.api.errors import api_router, error_responses
from starter.api.params import Key, Limit, Offset, ProjectName, RefDep, Text
from store import Page, SecretMetadata

log = logging.getLogger(__name__)

router = api_router()


class SecretWrite(BaseModel):
    """A secret value (write-only: no response ever contains it) and where it applies."""

    model_config = ConfigDict(extra="forbid")
    value: SecretStr = Field(max_length=65536, description="The value; never returned")
    scope: VariableScope = VariableScope.project
    environment: DnsName | None = None
    application: Text | None = None
    applies_to: AppliesTo = AppliesTo.both


@router.get("/projects/{project}/secrets", response_model=Page[SecretMetadata],
            tags=["secrets"], responses=error_responses(403, 404))
async def list_secrets(
    project: ProjectName, _: ProjectAuth, store: StoreDep,
    key: Annotated[str | None, Query()] = None, limit: Limit = 50, offset: Offset = 0,
) -> Page[SecretMetadata]:
    """The project's secrets: metadata only."""
    return await store.secret_metadata(project, key=key, limit=limit, offset=offset)


@router.put("/projects/{project}/secrets/{key}", status_code=201, response_model=SecretMetadata,
            tags=["secrets"],
            responses={201: {"description": "Created; metadata only"},
                       204: {"description": "Replaced (version incremented)"},
                       **error_responses(403, 404, 409)})
async def put_secret(
    project: ProjectName, key: Key, body: SecretWrite, principal: ProjectAuth,
    store: StoreDep, sealer: SealerDep,
) -> Any:
    """Seal and store a value: 201 with metadata when new, 204 when replaced."""
    log.debug("put secret %s of project %s by %s", key, project, principal.actor)
    metadata, created = await store.put_secret(
        project, key, body.value.get_secret_value(), body.scope, body.application,
        body.applies_to, principal.actor, environment=body.environment, sealer=sealer,
    )
    if not created:
        return Response(status_code=204)
    return metadata


@router.get("/projects/{project}/secrets/{key}", response_model=SecretMetadata,
            tags=["secrets"], responses=error_responses(403, 404))
async def get_secret(
    project: ProjectName, ref: RefDep, _: ProjectAuth, store: StoreDep
) -> SecretMetadata:
    """Metadata of one secret (never its value)."""
    return await store.get_secret_metadata(project, ref)


@router.delete("/projects/{project}/secrets/{key}", status_code=204, response_class=Response,
               tags=["secrets"], responses=error_responses(403, 404, 409))
async def delete_secret(
    project: ProjectName, ref: RefDep, principal: ProjectAuth, store: StoreDep
) -> None:
    await store.delete_secret(project, ref, principal.actor)


class Rewrapped(BaseModel):
    rewrapped: int = Field(description="Sealed values (secrets, cluster kubeconfigs) whose "
                           "data key was wrapped again")
    key_id: str = Field(description="The master key that now wraps every secret")


@router.post("/secrets/rewrap", response_model=Rewrapped, tags=["secrets"],
             responses=error_responses(403))
async def rewrap_secrets(principal: AdminAuth, store: StoreDep, sealer: SealerDep) -> Rewrapped:
    """After a master-key rotation (or a switch to KMS): wrap every secret's data key with
    the current master key. Values are never decrypted; run it until it answers 0."""
    count = await store.rewrap_secrets(sealer, principal.actor)
    # With KMS, the current id may take a DescribeKey call: not on the event loop.
    return Rewrapped(rewrapped=count, key_id=await asyncio.to_thread(lambda: sealer.current_id))
