"""API tokens (admin tokens only) and the audit log they are named in."""

from typing import Annotated

from fastapi import Path, Response
from pydantic import BaseModel, ConfigDict, Field

from starter.api.auth import AdminAuth, ProjectAuth, StoreDep
from starter.api.errors import api_router, error_responses
from starter.api.params import BIGINT, Limit, Offset, ProjectName, Text
from store import AuditEntry, Page, TokenRecord

router = api_router()


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Text = Field(min_length=1, max_length=100, description="What the token is for")
    project: str | None = Field(None, description="Scope it to this project; None: admin")


class TokenCreated(TokenRecord):
    token: str = Field(description="The token; shown once, only its SHA-256 is stored")


@router.post("/tokens", status_code=201, response_model=TokenCreated, tags=["tokens"],
             responses=error_responses(403, 404))
async def create_token(body: TokenCreate, principal: AdminAuth, store: StoreDep) -> TokenCreated:
    token, record = await store.create_token(body.name, body.project, principal.actor)
    return TokenCreated(token=token, **record.model_dump())


@router.get("/tokens", response_model=Page[TokenRecord], tags=["tokens"],
            responses=error_responses(403))
async def list_tokens(
    _: AdminAuth, store: StoreDep, limit: Limit = 50, offset: Offset = 0
) -> Page[TokenRecord]:
    return await store.list_tokens(limit=limit, offset=offset)


@router.delete("/tokens/{token_id}", status_code=204, response_class=Response, tags=["tokens"],
               responses=error_responses(403, 404))
async def delete_token(
    token_id: Annotated[int, Path(ge=1, le=BIGINT)], principal: AdminAuth, store: StoreDep
) -> None:
    await store.delete_token(token_id, principal.actor)


@router.get("/projects/{project}/audit", response_model=Page[AuditEntry], tags=["audit"],
            responses=error_responses(403))
async def project_audit(
    project: ProjectName, _: ProjectAuth, store: StoreDep, limit: Limit = 50,
    offset: Offset = 0,
) -> Page[AuditEntry]:
    """Who did what in this project, newest first (never values)."""
    return await store.audit_entries(project=project, limit=limit, offset=offset)


@router.get("/audit", response_model=Page[AuditEntry], tags=["audit"],
            responses=error_responses(403))
async def audit(
    _: AdminAuth, store: StoreDep, limit: Limit = 50, offset: Offset = 0
) -> Page[AuditEntry]:
    return await store.audit_entries(limit=limit, offset=offset)
